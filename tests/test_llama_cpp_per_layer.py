"""per_layer exports in llama.cpp as it ships: GGUFs written by `write_gguf` load and compute what transformers does.

Qwen3 goes through llama.cpp's `openelm` graph, Qwen2 and Llama through its `deci` graph. Runs where
llama-cpp-python is installed and RESP_LLAMA_CPP_CONVERTER names llama.cpp's convert_hf_to_gguf.py (whose code
writes the tokenizer); CI sets RESP_REQUIRE_LLAMA_CPP=1, so there a missing llama.cpp is an error, not a skip.
Logits are compared in float32 (f32 GGUF, f32 KV cache).
"""

from __future__ import annotations

import importlib.util
import os
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from optimum_resp import RESPConfig, RESPPruner  # noqa: E402
from optimum_resp.architectures import layer_sizes  # noqa: E402
from optimum_resp.calibration import prompts_from_task  # noqa: E402
from optimum_resp.commands.cli import main  # noqa: E402
from optimum_resp.evaluation import EvalConfig, evaluate_model  # noqa: E402
from optimum_resp.generation import build_prompt  # noqa: E402
from optimum_resp.integrations.llama_cpp import LlamaCppModel, write_gguf  # noqa: E402
from optimum_resp.surgery import LayerKeep, PruningPlan, prune_model  # noqa: E402
from optimum_resp.testbed import testbed_data_path, testbed_model_path  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # an inference engine

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
"""DeepSeek-R1-Distill-Llama's rope scaling, with a short original context so the tiny model's low frequencies
are scaled: llama.cpp's converter code writes it as `rope_freqs`."""


def tokenizer():
    """The shipped reasoner's BPE tokenizer (llama.cpp needs merges; its pre-tokenizer maps to llama.cpp's gpt-2)."""
    return AutoTokenizer.from_pretrained(testbed_model_path())


def uneven_plan(config, seed: int = 0) -> PruningPlan:
    """Every shape a per_layer prune makes, in 4 layers of 4 KV groups x 2 query heads: a whole layer; lost KV
    groups; one query head left in every group; one group with one head. MLP widths all differ."""
    g = torch.Generator().manual_seed(seed)
    per_group = config.num_attention_heads // config.num_key_value_heads
    shapes = [
        ((0, 1, 2, 3), per_group, 1.0),
        ((0, 2), per_group, 0.5),
        ((0, 1, 2, 3), 1, 0.35),
        ((3,), 1, 0.08),
    ]
    layers = []
    for groups, heads_per_group, keep in shapes:
        heads = tuple(gr * per_group + j for gr in groups for j in range(heads_per_group))
        width = config.intermediate_size
        channels = torch.randperm(width, generator=g)[: max(1, round(keep * width))]
        layers.append(LayerKeep(heads, groups, tuple(sorted(channels.tolist()))))
    return PruningPlan(tuple(layers))


def per_layer_export(tmp_path: Path, model_type: str, **overrides):
    """(pruned model, its saved folder) for a tiny random model pruned with `uneven_plan`."""
    tok = tokenizer()
    dense = tiny_model(model_type, tokenizer=tok, **overrides)
    pruned = prune_model(dense, uneven_plan(dense.config), export="per_layer").eval()
    folder = tmp_path / model_type
    pruned.save_pretrained(folder)
    tok.save_pretrained(folder)
    return pruned, folder


def llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (f32 KV cache, so only float rounding differs)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(gguf), n_ctx=128, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0, seed=0
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], new: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None
        )
    return out[0, len(ids) :].tolist()


def random_ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 760, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(
    "model_type, overrides",
    [
        ("qwen3", {"tie_word_embeddings": True}),  # openelm
        ("llama", {}),  # deci: untied output, q/k/v/o and MLP biases (the tiny Llama carries them all)
        ("llama", {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE}),  # deci + rope_freqs
        ("qwen2", {"tie_word_embeddings": True}),  # deci: q/k/v biases
        ("qwen2", {}),
    ],
    ids=["qwen3-tied", "llama-untied-biases", "llama-tied-llama3-rope", "qwen2-tied", "qwen2-untied"],
)
def test_per_layer_gguf_gives_transformers_logits_and_greedy_text(tmp_path, model_type, overrides):
    pruned, folder = per_layer_export(tmp_path, model_type, **overrides)
    sizes = layer_sizes(pruned.config)
    assert len({(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in sizes}) == 4
    gguf = write_gguf(folder, tmp_path / "m-f32.gguf", "f32", converter=_CONVERTER)
    ids = random_ids(48)
    ours, theirs = hf_logits(pruned, ids), llama_logits(gguf, ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    with LlamaCppModel(gguf, n_ctx=128, n_threads=1, f32_cache=True) as llm:
        assert llm.greedy(ids[:12], 24, end_ids=[]) == hf_greedy(pruned, ids[:12], 24)


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_q8_0_gguf_loads_and_stays_close(tmp_path, model_type):
    pruned, folder = per_layer_export(tmp_path, model_type, tie_word_embeddings=True)
    f32 = write_gguf(folder, tmp_path / "m-f32.gguf", "f32", converter=_CONVERTER)
    q8 = write_gguf(folder, tmp_path / "m-q8_0.gguf", "q8_0", converter=_CONVERTER)
    assert q8.stat().st_size < 0.5 * f32.stat().st_size
    ids = random_ids(48, seed=1)
    ours, theirs = hf_logits(pruned, ids), llama_logits(q8, ids)
    spread = ours.std()
    assert np.abs(theirs - ours).max() < 0.1 * spread  # q8_0 rounding, nothing structural
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9


def test_llama_cpp_tokenizes_the_testbed_as_transformers(tmp_path):
    """The GGUF's tokenizer (llama.cpp's converter code, with the pre-tokenizer rule for the testbed's digit split)
    turns the chat prompts and answers into transformers' ids."""
    import llama_cpp

    _, folder = per_layer_export(tmp_path, "qwen3", tie_word_embeddings=True)
    gguf = write_gguf(folder, tmp_path / "m.gguf", "q8_0", converter=_CONVERTER)
    tok = tokenizer()
    llm = llama_cpp.Llama(str(gguf), n_ctx=64, verbose=False, vocab_only=True)
    try:
        rows = prompts_from_task("gsm8k", str(testbed_data_path("gsm8k", "held_out_frames")), limit=64)
        texts = [build_prompt(tok, r.question) for r in rows] + [r.solution or "" for r in rows]
        for text in texts + ["x \n5", "a\n\n12 b", "  305 apples, 7.5 kg <think>\n\n</think>"]:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok(text)["input_ids"], text
        assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    finally:
        llm.close()


def test_shipped_reasoner_pruned_per_layer_answers_in_llama_cpp_as_in_transformers(tmp_path):
    """RESP at 40% per_layer for llama.cpp (a tied Qwen3: nothing is forced uniform), exported with the CLI: on
    64 held-out problems llama.cpp (f32) answers every one as transformers does, and q8_0 stays close."""
    tok = tokenizer()
    dense = AutoModelForCausalLM.from_pretrained(testbed_model_path()).eval()
    config = RESPConfig(
        target_sparsity=0.4,
        num_stages=2,
        regeneration_milestones=[],
        num_calibration_prompts=16,
        generation={"max_new_tokens": 192, "batch_size": 16},
        batch_size=8,
        runtimes=["llama.cpp"],
    )
    assert config.export.mode == "per_layer"
    prompts = prompts_from_task("gsm8k", str(testbed_data_path("gsm8k", "train")), limit=16)
    pruner = RESPPruner(dense, tok, config, task="gsm8k", generator="hf")
    result = pruner.prune(prompts)
    assert result.report.sparsity >= 0.39 and len(set(layer_sizes(result.model.config))) > 1
    folder = pruner.save_pretrained(tmp_path / "pruned")
    card = (folder / "README.md").read_text()
    assert "| llama.cpp | yes | `optimum-resp export-gguf DIR" in card

    ggufs = {}
    for outtype in ("f32", "q8_0"):
        ggufs[outtype] = tmp_path / f"pruned-{outtype}.gguf"
        args = ["export-gguf", str(folder), "--outfile", str(ggufs[outtype]), "--outtype", outtype]
        assert main([*args, "--converter", _CONVERTER]) == 0

    evaluation = EvalConfig(
        task="gsm8k",
        data=str(testbed_data_path("gsm8k", "held_out_frames")),
        limit=64,
        generation={"max_new_tokens": 384, "batch_size": 16},
    )
    hf = evaluate_model(result.model, tok, evaluation, show_progress=False)
    with LlamaCppModel(ggufs["f32"], n_ctx=1024, n_threads=1, f32_cache=True) as llm:
        f32 = evaluate_model(llm, tok, evaluation, show_progress=False)
    with LlamaCppModel(ggufs["q8_0"], n_ctx=1024, n_threads=1) as llm:
        q8 = evaluate_model(llm, tok, evaluation, show_progress=False)
    assert [s["extracted"] for s in f32.samples] == [s["extracted"] for s in hf.samples]
    assert f32.summary["accuracy"] == hf.summary["accuracy"]
    agree = np.mean([a["extracted"] == b["extracted"] for a, b in zip(q8.samples, hf.samples, strict=True)])
    assert agree >= 0.85 and abs(q8.summary["accuracy"] - hf.summary["accuracy"]) <= 0.1
