"""Which runtimes load which export: the data, the prune it shapes, and what the card, `info` and the log say.

tests/test_llama_cpp.py checks the same claims against llama.cpp itself (and tests/test_vllm_compat.py
against vLLM's rules); these run everywhere.
"""

from __future__ import annotations

import itertools
import json
import logging

import pytest
from conftest import tiny_model, tiny_tokenizer

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.architectures import ARCHITECTURES
from optimum_resp.commands.cli import main
from optimum_resp.runtimes import (
    EXPORT_MODES,
    RUNTIMES,
    ExportConfig,
    Runtime,
    checkpoint_traits,
    export_target,
)
from optimum_resp.testing_utils import tiny_config

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
    assert RESPConfig(runtimes=[typed, name], **UNIFORM).export.runtimes == [name]


def test_runtime_config_refusals():
    with pytest.raises(ValueError, match=r"Unknown runtime 'ollama'; choose one of \['transformers'"):
        RESPConfig(runtimes=["ollama"])
    with pytest.raises(ValueError, match="runtimes must be a list"):
        RESPConfig(runtimes="llama.cpp")
    # llama.cpp loads per_layer exports of some architectures (export-gguf): the pruner checks the model's.
    assert RESPConfig(runtimes=["llama.cpp"]).export.runtimes == ["llama.cpp"]
    stock_only = Runtime("stock-only", uniform="its converter", per_layer=None)
    RUNTIMES.register(stock_only.name, stock_only)
    try:
        with pytest.raises(
            ValueError, match=r"'stock-only', which loads only stock checkpoints.*export='uniform'"
        ):
            RESPConfig(runtimes=["stock-only"])  # per_layer by default
    finally:
        RUNTIMES.unregister(stock_only.name)
    config = RESPConfig(runtimes=["vllm"])  # vLLM loads per_layer exports (optimum-resp's plugin)
    assert RESPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


HEADS = {"query_heads", "kv_heads"}
TARGETS = {
    # (architecture, export mode, runtime asked for): (structures the prune keeps whole, refused), for an untied
    # checkpoint without biases (the tiny Qwen3's traits) that lost no query head it was asked to keep.
    ("qwen3", "uniform", "transformers"): (set(), False),
    ("qwen3", "uniform", "lm-evaluation-harness"): (set(), False),
    ("qwen3", "uniform", "vllm"): (set(), False),  # vLLM's Qwen3 reads head_dim
    ("qwen3", "uniform", "llama.cpp"): (set(), False),  # so does llama.cpp's (GGUF key_length)
    ("qwen3", "per_layer", "transformers"): (set(), False),
    ("qwen3", "per_layer", "lm-evaluation-harness"): (set(), False),
    ("qwen3", "per_layer", "vllm"): (set(), False),  # optimum-resp's plugin
    ("qwen3", "per_layer", "llama.cpp"): (set(), True),  # the openelm graph ties the output to the embedding
    ("qwen2", "uniform", "transformers"): (set(), False),
    ("qwen2", "uniform", "lm-evaluation-harness"): (set(), False),
    ("qwen2", "uniform", "vllm"): (HEADS, False),  # its Qwen2 builds q_proj at hidden_size x hidden_size
    ("qwen2", "uniform", "llama.cpp"): (HEADS, False),  # so does llama.cpp's Qwen2 graph
    ("qwen2", "per_layer", "transformers"): (set(), False),
    ("qwen2", "per_layer", "lm-evaluation-harness"): (set(), False),
    ("qwen2", "per_layer", "vllm"): (set(), False),  # the per_layer class reads head_dim
    ("qwen2", "per_layer", "llama.cpp"): (set(), False),  # the deci graph takes an untied output
    ("llama", "uniform", "transformers"): (set(), False),
    ("llama", "uniform", "lm-evaluation-harness"): (set(), False),
    ("llama", "uniform", "vllm"): (set(), False),
    ("llama", "uniform", "llama.cpp"): (set(), False),
    ("llama", "per_layer", "transformers"): (set(), False),
    ("llama", "per_layer", "lm-evaluation-harness"): (set(), False),
    ("llama", "per_layer", "vllm"): (set(), False),
    ("llama", "per_layer", "llama.cpp"): (set(), False),
}


def test_the_export_table_covers_every_architecture_mode_and_runtime():
    assert set(TARGETS) == set(itertools.product(ARCHITECTURES, EXPORT_MODES, RUNTIMES))


@pytest.mark.parametrize("model_type, mode, runtime", sorted(TARGETS))
def test_export_target(model_type, mode, runtime):
    kept, refused = TARGETS[model_type, mode, runtime]
    target = export_target(mode, [runtime], model_type, traits=["untied_embeddings"])
    uniform = mode == "uniform"
    assert (target.allocation, target.protected_layers) == (("uniform", ()) if uniform else (None, None))
    assert set(target.kept) == kept
    assert bool(target.refusals) == refused
    if refused:
        assert target.refusals[0].startswith(
            f"runtimes includes {runtime!r}, where this model's {mode} export"
        )
    assert [s.runtime for s in target.support] == list(RUNTIMES)
    # Where the checkpoint loads does not depend on what was asked for: every runtime its row refuses.
    refusing = {r for (arch, m, r), (_, no) in TARGETS.items() if (arch, m) == (model_type, mode) and no}
    assert {s.runtime for s in target.support if not s.loads} == refusing
    # Before the architecture is known (the config), every registered runtime is allowed in either mode, and the
    # mode fixes the same allocation and protected layers.
    early = export_target(mode, [runtime])
    assert (early.allocation, early.protected_layers, early.refusals, early.kept) == (
        target.allocation,
        target.protected_layers,
        (),
        {},
    )
    config = ExportConfig(mode=mode, runtimes=[runtime])
    assert (config.allocation, config.protected_layers) == (("uniform", []) if uniform else ("global", None))


@pytest.mark.parametrize(
    "model_type, export, lost, traits, refused",
    [
        ("qwen3", "per_layer", True, [], set()),  # tied, no biases: llama.cpp's openelm graph
        ("qwen3", "per_layer", True, ["untied_embeddings"], {"llama.cpp"}),
        ("qwen3", "per_layer", True, ["biases"], {"llama.cpp"}),
        ("qwen3", "per_layer", True, None, set()),  # an older report: the conditions are named
        ("qwen2", "per_layer", True, ["biases", "untied_embeddings"], set()),  # llama.cpp's deci graph
        ("llama", "per_layer", True, ["biases", "untied_embeddings"], set()),
        ("qwen3", "uniform", True, ["untied_embeddings"], set()),
        ("llama", "uniform", True, [], set()),
        ("qwen2", "uniform", True, [], {"llama.cpp", "vllm"}),
        ("qwen2", "uniform", False, [], set()),
    ],
)
def test_where_a_pruned_checkpoint_loads(model_type, export, lost, traits, refused):
    support = export_target(export, (), model_type, traits, query_heads_lost=lost).support
    assert [s.runtime for s in support] == list(RUNTIMES)
    assert {s.runtime for s in support if not s.loads} == refused
    for s in support:
        assert s.how  # how to load it, or why not and what to do
    llama_cpp = next(s.how for s in support if s.runtime == "llama.cpp")
    if "llama.cpp" in refused:
        fix = "--export uniform" if export == "per_layer" else "--runtime llama.cpp"
        assert fix in llama_cpp
    elif export == "per_layer":
        assert "optimum-resp export-gguf" in llama_cpp
        assert ("not for a checkpoint with untied embeddings" in llama_cpp) == (traits is None)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
def test_llama_cpp_facts_agree_with_the_gguf_writer(model_type):
    """runtimes.py says which traits llama.cpp's per_layer route cannot take; the writer's graph refuses the same."""
    from optimum_resp.integrations.llama_cpp import GRAPHS

    graph = GRAPHS[model_type]
    route = RUNTIMES["llama.cpp"].per_layer_route(model_type)
    assert f"`{graph.arch}` graph" in route.how
    assert ("untied_embeddings" in route.cannot_take) == (not graph.untied_output)
    assert ("biases" in route.cannot_take) == (not graph.takes_biases)


def test_checkpoint_traits():
    assert checkpoint_traits(tiny_config("qwen3", tie_word_embeddings=True)) == frozenset()
    assert checkpoint_traits(tiny_config("qwen3")) == {"untied_embeddings"}
    assert checkpoint_traits(tiny_config("qwen2", tie_word_embeddings=True)) == {"biases"}  # q/k/v biases
    assert (
        checkpoint_traits(
            tiny_config("llama", tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
        )
        == set()
    )
    compensated = tiny_config("qwen3", tie_word_embeddings=True)
    compensated.o_proj_bias = True  # FLAP's bias compensation
    assert checkpoint_traits(compensated) == {"biases"}


def test_per_layer_prunes_for_llama_cpp_are_refused_only_where_its_graph_cannot_take_the_model():
    tokenizer = tiny_tokenizer()
    per_layer = dict(export="per_layer", allocation="global", protected_layers=None, runtimes=["llama.cpp"])
    with pytest.raises(
        ValueError, match=r"'llama.cpp', where this model's per_layer export will not load.*openelm"
    ):
        RESPPruner(
            tiny_model(tokenizer=tokenizer), tokenizer, quick(**per_layer), generator="hf"
        )  # untied Qwen3
    tied = tiny_model(tokenizer=tokenizer, tie_word_embeddings=True)
    pruner = RESPPruner(tied, tokenizer, quick(**per_layer), generator="hf")
    assert pruner.config.structures == ["query_heads", "kv_heads", "channels"]  # nothing forced, nothing kept
    for model_type in ("qwen2", "llama"):  # llama.cpp's deci graph: biases and an untied output load
        RESPPruner(tiny_model(model_type, tokenizer=tokenizer), tokenizer, quick(**per_layer), generator="hf")
    with pytest.raises(
        ValueError, match="FLAP bias compensation adds biases, and runtimes includes 'llama.cpp'"
    ):
        RESPPruner(tied, tokenizer, quick(importance="flap", **per_layer), generator="hf")


def test_runtimes_narrow_the_structures_of_a_uniform_qwen2_prune(caplog):
    tokenizer = tiny_tokenizer()
    model = tiny_model("qwen2", tokenizer=tokenizer)
    with caplog.at_level(logging.INFO, logger="optimum_resp"):
        pruner = RESPPruner(model, tokenizer, quick(runtimes=["llama.cpp"]), generator="hf")
    assert pruner.config.structures == ["channels"]
    assert any("channels only" in r.getMessage() and "llama.cpp" in r.getMessage() for r in caplog.records)
    # The same request for Qwen3 changes nothing: llama.cpp's Qwen3 reads head_dim.
    qwen3 = RESPPruner(
        tiny_model(tokenizer=tokenizer), tokenizer, quick(runtimes=["llama.cpp"]), generator="hf"
    )
    assert qwen3.config.structures == ["query_heads", "kv_heads", "channels"]
    with pytest.raises(ValueError, match=r"leaves nothing to prune from structures \['query_heads'\]"):
        RESPPruner(model, tokenizer, quick(runtimes=["vllm"], structures=["query_heads"]), generator="hf")


def test_uniform_qwen2_that_loses_query_heads_warns_and_its_card_says_where_it_runs(tmp_path, caplog):
    tokenizer = tiny_tokenizer()
    model = tiny_model("qwen2", tokenizer=tokenizer)
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


@pytest.mark.parametrize("tied", [False, True])
def test_per_layer_card_and_info_say_where_it_runs(tmp_path, capsys, tied):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, tie_word_embeddings=tied)
    pruner = RESPPruner(model, tokenizer, quick(export="per_layer", allocation="global"), generator="hf")
    result = pruner.prune(PROMPTS)
    assert result.report.checkpoint_traits == ([] if tied else ["untied_embeddings"])
    folder = pruner.save_pretrained(tmp_path / "out")
    card = (folder / "README.md").read_text()
    assert f"| llama.cpp | {'yes' if tied else 'no'} |" in card and "| vllm | yes |" in card
    assert "trust_remote_code=True" in card.split("### Where it runs")[1]
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "Where it runs (per_layer export):" in out
    if tied:
        assert "llama.cpp: yes - `optimum-resp export-gguf DIR" in out and "`openelm` graph" in out
    else:
        assert "llama.cpp: no - llama.cpp's `openelm` graph" in out and "--export uniform" in out
    assert "lm-evaluation-harness: yes" in out


def test_cli_runtime_flag(tmp_path, capsys):
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    args = ["prune", "m", "--output", str(tmp_path / "o"), "--calibration", str(data)]
    from optimum_resp.commands.cli import build_parser
    from optimum_resp.commands.prune import build_config

    # per_layer (the default) with llama.cpp: the pruner decides once it knows the model (export-gguf's graphs)
    assert build_config(build_parser().parse_args([*args, "--runtime", "llama.cpp"])).export.runtimes == [
        "llama.cpp"
    ]
    parsed = build_parser().parse_args(
        [*args, "--runtime", "llama.cpp", "--runtime", "vLLM", "--export", "uniform"]
    )
    assert build_config(parsed).export.runtimes == ["llama.cpp", "vllm"]
