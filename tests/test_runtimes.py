"""Which runtimes load which export: the data, the prune it shapes, and what the card, `info` and the log say.

tests/test_llama_cpp.py checks the same claims against llama.cpp itself (and tests/test_vllm_compat.py
against vLLM's rules); these run everywhere.
"""

from __future__ import annotations

import json
import logging

import pytest
from helpers_tokenizer import build_tiny_model, build_tiny_tokenizer

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.architectures import ARCHITECTURES
from optimum_resp.commands.cli import main
from optimum_resp.runtimes import RUNTIMES, export_support, kept_structures

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (10, 4), (6, 6)]]
UNIFORM = dict(export="uniform", allocation="uniform", protected_layers=[])


def quick(**overrides) -> RESPConfig:
    base = dict(
        target_sparsity=0.3,
        num_stages=1,
        regeneration_milestones=[],
        num_calibration_prompts=4,
        generation={"max_new_tokens": 6, "batch_size": 4},
        batch_size=2,
        allow_unfinished_traces=True,
        **UNIFORM,
    )
    return RESPConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    "typed, name",
    [("llama.cpp", "llama.cpp"), ("LLaMA.cpp", "llama.cpp"), ("llamacpp", "llama.cpp"), ("vLLM", "vllm")]
    + [("lm-eval", "lm-evaluation-harness"), ("lm_evaluation_harness", "lm-evaluation-harness")],
)
def test_runtime_names_are_forgiving(typed, name):
    assert RUNTIMES.lookup(typed).name == name
    assert RESPConfig(runtimes=[typed, name], **UNIFORM).runtimes == [name]


def test_runtime_config_refusals():
    with pytest.raises(ValueError, match=r"Unknown runtime 'ollama'; choose one of \['transformers'"):
        RESPConfig(runtimes=["ollama"])
    with pytest.raises(ValueError, match="runtimes must be a list"):
        RESPConfig(runtimes="llama.cpp")
    with pytest.raises(
        ValueError, match=r"'llama.cpp', which loads only stock checkpoints.*export='uniform'"
    ):
        RESPConfig(runtimes=["llama.cpp"])  # per_layer by default
    config = RESPConfig(runtimes=["vllm"])  # vLLM loads per_layer exports (optimum-resp's plugin)
    assert RESPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "model_type, runtimes, export, kept",
    [
        ("qwen2", ["llama.cpp"], "uniform", {"query_heads", "kv_heads"}),
        ("qwen2", ["vllm"], "uniform", {"query_heads", "kv_heads"}),
        ("qwen2", ["transformers", "lm-evaluation-harness"], "uniform", set()),
        ("qwen2", ["vllm"], "per_layer", set()),  # the per_layer class reads head_dim
        ("qwen3", ["llama.cpp", "vllm"], "uniform", set()),  # their Qwen3 reads head_dim (key_length)
        ("llama", ["llama.cpp", "vllm"], "uniform", set()),
    ],
)
def test_kept_structures(model_type, runtimes, export, kept):
    assert set(kept_structures(ARCHITECTURES[model_type], runtimes, export)) == kept


@pytest.mark.parametrize(
    "model_type, export, lost, refused",
    [
        ("qwen3", "per_layer", True, {"llama.cpp"}),
        ("qwen2", "per_layer", True, {"llama.cpp"}),
        ("qwen3", "uniform", True, set()),
        ("llama", "uniform", True, set()),
        ("qwen2", "uniform", True, {"llama.cpp", "vllm"}),
        ("qwen2", "uniform", False, set()),
    ],
)
def test_export_support(model_type, export, lost, refused):
    support = export_support(model_type, export, lost)
    assert [s.runtime for s in support] == list(RUNTIMES)
    assert {s.runtime for s in support if not s.loads} == refused
    for s in support:
        assert s.how  # how to load it, or why not and what to do
    if "llama.cpp" in refused:
        fix = "--export uniform" if export == "per_layer" else "--runtime llama.cpp"
        assert fix in next(s.how for s in support if s.runtime == "llama.cpp")


def test_runtimes_narrow_the_structures_of_a_uniform_qwen2_prune(caplog):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, "qwen2")
    with caplog.at_level(logging.INFO, logger="optimum_resp"):
        pruner = RESPPruner(model, tokenizer, quick(runtimes=["llama.cpp"]), generator="hf")
    assert pruner.config.structures == ["channels"]
    assert any("channels only" in r.getMessage() and "llama.cpp" in r.getMessage() for r in caplog.records)
    # The same request for Qwen3 changes nothing: llama.cpp's Qwen3 reads head_dim.
    qwen3 = RESPPruner(build_tiny_model(tokenizer), tokenizer, quick(runtimes=["llama.cpp"]), generator="hf")
    assert qwen3.config.structures == ["query_heads", "kv_heads", "channels"]
    with pytest.raises(ValueError, match=r"leaves nothing to prune from structures \['query_heads'\]"):
        RESPPruner(model, tokenizer, quick(runtimes=["vllm"], structures=["query_heads"]), generator="hf")


def test_uniform_qwen2_that_loses_query_heads_warns_and_its_card_says_where_it_runs(tmp_path, caplog):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, "qwen2")
    pruner = RESPPruner(model, tokenizer, quick(structures=["kv_heads"]), generator="hf")
    with caplog.at_level(logging.WARNING, logger="optimum_resp"):
        result = pruner.prune(PROMPTS)
    assert result.report.query_heads_lost
    warnings = [r.getMessage() for r in caplog.records if "will not load in" in r.getMessage()]
    assert len(warnings) == 2 and "--runtime llama.cpp" in " ".join(warnings)
    folder = pruner.save_pretrained(tmp_path / "out")
    card = (folder / "README.md").read_text()
    for row in (
        "| transformers | yes |",
        "| lm-evaluation-harness | yes |",
        "| vllm | no |",
        "| llama.cpp | no |",
    ):
        assert row in card
    assert "vLLM does not serve this uniform export" in card


def test_per_layer_card_and_info_say_where_it_runs(tmp_path, capsys):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    pruner = RESPPruner(model, tokenizer, quick(export="per_layer", allocation="global"), generator="hf")
    pruner.prune(PROMPTS)
    folder = pruner.save_pretrained(tmp_path / "out")
    card = (folder / "README.md").read_text()
    assert "| llama.cpp | no |" in card and "| vllm | yes |" in card
    assert "trust_remote_code=True" in card.split("### Where it runs")[1]
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "Where it runs (per_layer export):" in out
    assert "llama.cpp: no - per_layer exports do not load there" in out
    assert "lm-evaluation-harness: yes" in out


def test_cli_runtime_flag(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    args = ["prune", "m", "--output", str(tmp_path / "o"), "--calibration", str(data)]
    assert main([*args, "--runtime", "llama.cpp"]) == 2  # per_layer by default: refused before loading
    assert "--export uniform" in capsys.readouterr().err
    from optimum_resp.commands.cli import build_parser
    from optimum_resp.commands.prune import build_config

    parsed = build_parser().parse_args(
        [*args, "--runtime", "llama.cpp", "--runtime", "vLLM", "--export", "uniform"]
    )
    assert build_config(parsed).runtimes == ["llama.cpp", "vllm"]
