"""Exports through llama.cpp's own converter and runtime: what loads there, and that it computes what
transformers computes.

Runs where llama-cpp-python is installed and RESP_LLAMA_CPP_CONVERTER names llama.cpp's
convert_hf_to_gguf.py (CI builds llama-cpp-python from its sdist and takes the converter from the same
sdist, and sets RESP_REQUIRE_LLAMA_CPP=1, so there a missing llama.cpp is an error, not a skip).
Logits are compared in float32 (f32 GGUF, f32 KV cache).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

_CONVERTER = os.environ.get("RESP_LLAMA_CPP_CONVERTER")
if importlib.util.find_spec("llama_cpp") is None or not _CONVERTER or not Path(_CONVERTER).is_file():
    if os.environ.get("RESP_REQUIRE_LLAMA_CPP"):
        raise RuntimeError(
            "RESP_REQUIRE_LLAMA_CPP is set but llama-cpp-python is not installed or RESP_LLAMA_CPP_CONVERTER "
            f"({_CONVERTER!r}) is not llama.cpp's convert_hf_to_gguf.py."
        )
    pytest.skip(
        "llama.cpp tests need llama-cpp-python and RESP_LLAMA_CPP_CONVERTER (see .ci/run)",
        allow_module_level=True,
    )

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from optimum_resp import RESPConfig, RESPPruner  # noqa: E402
from optimum_resp.architectures import layer_sizes  # noqa: E402
from optimum_resp.surgery import LayerKeep, PruningPlan, prune_model  # noqa: E402
from optimum_resp.testbed import testbed_model_path  # noqa: E402
from optimum_resp.testing_utils import random_plan  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # an inference engine

PROMPTS = [f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (10, 4), (6, 6), (9, 1), (3, 8)]]
# A real Qwen2 has num_attention_heads * head_dim == hidden_size (llama.cpp's Qwen2 relies on it); the
# tiny test config does not, on purpose, so the Qwen2 models here are given hidden_size = 8 x 16.
SHAPES = {"qwen3": {}, "qwen2": {"hidden_size": 128}, "llama": {}}


def reasoner_tokenizer():
    """The shipped reasoner's BPE tokenizer: llama.cpp needs merges, which the tests' byte-level tokenizer lacks."""
    return AutoTokenizer.from_pretrained(testbed_model_path())


def convert(folder: Path) -> Path:
    """llama.cpp's converter on `folder` (f32); returns the GGUF, or raises with the converter's message."""
    out = folder / "model-f32.gguf"
    helper = Path(__file__).with_name("llama_cpp_convert.py")
    cmd = [sys.executable, str(helper), _CONVERTER, str(folder), "--outfile", str(out), "--outtype", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return out


def llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (f32 KV cache, so only float rounding differs)."""
    llm = llama_cpp.Llama(
        str(gguf), n_ctx=128, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0, seed=0
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def assert_runs_as_in_transformers(model, tokenizer, folder: Path) -> None:
    ids = torch.randint(3, len(tokenizer) - 8, (24,), generator=torch.Generator().manual_seed(0)).tolist()
    ours, theirs = hf_logits(model, ids), llama_logits(convert(save(model, tokenizer, folder)), ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


def keep_query_heads_plan(config, seed: int = 0) -> PruningPlan:
    """A uniform plan that keeps every query head and KV group and removes a third of every MLP."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for sizes in layer_sizes(config):
        channels = torch.randperm(sizes.intermediate_size, generator=g)[: 2 * sizes.intermediate_size // 3]
        layers.append(
            LayerKeep(
                tuple(range(sizes.num_attention_heads)),
                tuple(range(sizes.num_key_value_heads)),
                tuple(sorted(channels.tolist())),
            )
        )
    return PruningPlan(tuple(layers))


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_uniform_exports_that_lost_heads_groups_and_channels_load_and_match(tmp_path, model_type):
    tokenizer = reasoner_tokenizer()
    dense = tiny_model(model_type, tokenizer=tokenizer, **SHAPES[model_type])
    plan = random_plan(dense.config, 0.4, per_layer=False, seed=1)
    pruned = prune_model(dense, plan, export="uniform").eval()
    sizes, dense_sizes = layer_sizes(pruned.config)[0], layer_sizes(dense.config)[0]
    assert sizes.num_attention_heads < dense_sizes.num_attention_heads  # query heads and KV groups went
    assert sizes.num_key_value_heads < dense_sizes.num_key_value_heads
    assert sizes.intermediate_size < dense_sizes.intermediate_size
    assert type(pruned).__name__ == type(dense).__name__  # a stock checkpoint
    assert_runs_as_in_transformers(pruned, tokenizer, tmp_path / "pruned")


def test_qwen2_uniform_export_that_keeps_its_query_heads_loads_and_matches(tmp_path):
    tokenizer = reasoner_tokenizer()
    dense = tiny_model("qwen2", tokenizer=tokenizer, **SHAPES["qwen2"])
    assert_runs_as_in_transformers(dense, tokenizer, tmp_path / "dense")
    pruned = prune_model(dense, keep_query_heads_plan(dense.config), export="uniform").eval()
    assert_runs_as_in_transformers(pruned, tokenizer, tmp_path / "pruned")


def test_qwen2_uniform_export_that_lost_query_heads_does_not_load_and_says_so(tmp_path, caplog):
    """What the model card and the export warning promise, checked against llama.cpp itself."""
    tokenizer = reasoner_tokenizer()
    dense = tiny_model("qwen2", tokenizer=tokenizer, **SHAPES["qwen2"])
    config = RESPConfig(
        target_sparsity=0.4,
        structures=["kv_heads"],  # only KV groups (with their query heads) can go: query heads are lost
        num_stages=1,
        regeneration_milestones=[],
        num_calibration_prompts=6,
        generation={"max_new_tokens": 8, "batch_size": 6},
        batch_size=2,
        export="uniform",
        allocation="uniform",
        protected_layers=[],
        allow_unfinished_traces=True,
    )
    with caplog.at_level(logging.WARNING, logger="optimum_resp"):
        pruner = RESPPruner(dense, tokenizer, config, generator="hf")
        result = pruner.prune(PROMPTS)
    assert result.report.query_heads_lost
    warned = [r.getMessage() for r in caplog.records if "will not load in" in r.getMessage()]
    assert any("llama.cpp" in m for m in warned) and any("vllm" in m for m in warned), warned
    support = {s.runtime: s.loads for s in result.report.runtime_support()}
    assert support == {"transformers": True, "lm-evaluation-harness": True, "vllm": False, "llama.cpp": False}

    folder = pruner.save_pretrained(tmp_path / "pruned")
    card = (folder / "README.md").read_text()
    assert "| llama.cpp | no |" in card and "| transformers | yes |" in card
    gguf = convert(folder)  # the converter writes it; llama.cpp's Qwen2 loader refuses the q_proj shape
    with pytest.raises(ValueError, match="Failed to load model"):
        llama_logits(gguf, [5, 6, 7])


def test_runtime_compatible_qwen2_prune_keeps_query_heads_and_loads(tmp_path, caplog):
    """runtimes=['llama.cpp']: the prune keeps what llama.cpp's Qwen2 loader fixes, and the export loads."""
    tokenizer = reasoner_tokenizer()
    dense = tiny_model("qwen2", tokenizer=tokenizer, **SHAPES["qwen2"])
    config = RESPConfig(
        target_sparsity=0.3,
        num_stages=2,
        regeneration_milestones=[],
        num_calibration_prompts=6,
        generation={"max_new_tokens": 8, "batch_size": 6},
        batch_size=2,
        export="uniform",
        allocation="uniform",
        protected_layers=[],
        runtimes=["llama.cpp"],
        allow_unfinished_traces=True,
    )
    with caplog.at_level(logging.INFO, logger="optimum_resp"):
        pruner = RESPPruner(dense, tokenizer, config, generator="hf")
        result = pruner.prune(PROMPTS)
    assert pruner.config.structures == ["channels"]
    assert any("channels only" in r.getMessage() for r in caplog.records)
    assert not any("will not load" in r.getMessage() for r in caplog.records)
    assert result.report.sparsity >= 0.3 and not result.report.query_heads_lost
    assert all(s.loads for s in result.report.runtime_support())
    folder = pruner.save_pretrained(tmp_path / "pruned")
    assert "| llama.cpp | yes |" in (folder / "README.md").read_text()
    ids = list(range(10, 30))
    np.testing.assert_allclose(
        llama_logits(convert(folder), ids), hf_logits(result.model, ids), atol=1e-4, rtol=0
    )


def test_llama_cpps_converter_refuses_per_layer_exports(tmp_path):
    """llama.cpp's converter knows stock architectures only: a per_layer export is refused there (`optimum-resp
    export-gguf` writes it instead, tests/test_llama_cpp_per_layer.py)."""
    tokenizer = reasoner_tokenizer()
    dense = tiny_model("qwen3", tokenizer=tokenizer)
    pruned = prune_model(dense, random_plan(dense.config, 0.4, per_layer=True, seed=2), export="per_layer")
    with pytest.raises(RuntimeError, match="RESPQwen3ForCausalLM"):
        convert(save(pruned, tokenizer, tmp_path / "per_layer"))


def load_benchmark(monkeypatch, tmp_path):
    """benchmarks/bench_llama_cpp.py as a module, writing its RESULTS.md block and run records into tmp_path."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "bench_llama_cpp", repo / "benchmarks" / "bench_llama_cpp.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(
        module, "write_results", lambda section, text: results.write_text(f"{section}\n{text}")
    )
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    return module, results


def test_llama_cpp_benchmark_measures_dense_uniform_and_per_layer_side_by_side(tmp_path, monkeypatch):
    module, results = load_benchmark(monkeypatch, tmp_path)
    args = ["--shape", "tiny", "--sparsities", "0.4", "--decode-tokens", "4", "--prompt-tokens", "8"]
    module.main([*args, "--repeats", "1", "--threads", "1", "--outtype", "f32"])
    text = results.read_text()
    assert text.startswith("llama-cpp-f32\n") and "uniform and per_layer exports, f32 GGUF" in text
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith(("| uniform", "| per_layer"))
    }
    assert set(rows) == {"uniform", "per_layer"}
    for row in rows.values():  # the 40% rows
        ideal, size = float(row.split("|")[3].strip().rstrip("x")), float(row.split("|")[-3])
        assert ideal > 1.3 and 0.3 < size < 1.0  # a smaller file, measured from the written GGUFs
        assert row.split("|")[-2].strip() == "none"  # f32: every matrix in the file's type


def test_llama_cpp_quality_benchmark_runs_in_pieces_and_resumes(tmp_path, monkeypatch):
    module, results = load_benchmark(monkeypatch, tmp_path)
    ran = []

    def fake_run(args, export, sparsity, seed):
        ran.append((export, sparsity, seed))
        right = "11100" if export == "per_layer" else "11000"
        scored = dict(
            accuracy=right.count("1") / 5, n=5, mean_generated_tokens=9.0, correct=right, answers=list(right)
        )
        return dict(
            export=export,
            target=sparsity,
            seed=seed,
            sparsity=sparsity,
            gguf_mib=1.5,
            matrix_types={"Q8_0": 30, "F16": 6} if export == "per_layer" else {"Q8_0": 36},
            transformers=scored,
            llama_cpp=scored,
            seconds=1.0,
        )

    monkeypatch.setattr(module, "quality_run", fake_run)
    args = ["--quality", "--seeds", "0", "1", "--eval-limit", "5"]
    module.main([*args, "--max-runs", "3"])
    assert len(ran) == 3 and "5 run(s) of this setting not run yet" in results.read_text()
    module.main(args)
    assert len(ran) == 8 and len(set(ran)) == 8  # the three kept runs are not run again
    text = results.read_text()
    assert text.startswith("llama-cpp-quality\n") and "not run yet" not in text
    assert (
        "| 40.0% | per_layer | 2 | 0.600 ± 0.000 [" in text
        and "| 30.0% | uniform | 2 | 0.400 ± 0.000 [" in text
    )
    assert "| 1.5 | 6 of 36 in F16 |" in text and "| 1.5 | none |" in text


def test_llama_cpp_quality_table_checks_its_transformers_column_against_the_quality_benchmark(
    tmp_path, monkeypatch
):
    module, _ = load_benchmark(monkeypatch, tmp_path)
    monkeypatch.setattr(module, "HERE", tmp_path)
    (tmp_path / "quality_runs").mkdir()
    args = module.argparse.Namespace(split="held_out_frames")
    ours = dict(export="uniform", target=0.4, seed=1, transformers=dict(n=3, correct="101"))
    assert module.quality_benchmark_agrees(args, ours) is None  # no record of that prune there

    def theirs(name, correct, export="uniform"):
        record = dict(overrides=module.recipe(export), splits={"held_out_frames": dict(n=3, correct=correct)})
        (tmp_path / "quality_runs" / name).write_text(json.dumps(record))

    theirs("resp-0.40-s1-a.json", "100", export="per_layer")  # another recipe: not the same prune
    theirs("resp-0.40-s2-b.json", "100")  # another seed
    assert module.quality_benchmark_agrees(args, ours) is None
    theirs("resp-0.40-s1-c.json", "101")
    assert module.quality_benchmark_agrees(args, ours) is True
    theirs("resp-0.40-s1-d.json", "100")
    assert module.quality_benchmark_agrees(args, ours) is False


def test_llama_cpp_quality_run_scores_one_gguf_in_llama_cpp_and_transformers(tmp_path, monkeypatch):
    module, _ = load_benchmark(monkeypatch, tmp_path)
    args = module.argparse.Namespace(
        converter=_CONVERTER,
        threads=1,
        num_prompts=4,
        eval_limit=4,
        max_new_tokens=256,
        quality_outtype="q8_0",
        train_data=module.testbed_data_path("gsm8k", "train"),
        eval_data=module.testbed_data_path("gsm8k", "held_out_frames"),
    )
    record = module.quality_run(args, "per_layer", 0.3, 0)
    assert record["sparsity"] >= 0.29 and 0 < record["gguf_mib"] < 25
    for where in ("transformers", "llama_cpp"):
        assert record[where]["n"] == 4 and len(record[where]["correct"]) == 4
    # the testbed reasoner's 6 layers of 5 matrices (openelm's fused qkv, o, gate, up, down) and the embedding
    assert sum(record["matrix_types"].values()) == 6 * 5 + 1 and "Q8_0" in record["matrix_types"]
