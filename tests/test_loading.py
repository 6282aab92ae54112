"""Loading a model: what a local folder is checked for before its weights load, and what a load may not hide."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from optimum_resp.loading import (
    ModelLoadError,
    check_dtype,
    check_loading_info,
    check_model_config,
    check_model_folder,
    check_model_source,
    load_model,
    load_model_config,
)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    """A tiny model whose lm_head is the embedding matrix: its checkpoint holds the tensor once."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tied")
    model.save_pretrained(path)
    return path


def test_tied_weights_are_not_missing(tied_dir):
    from safetensors import safe_open

    with safe_open(str(tied_dir / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    config, parameters = check_model_folder(tied_dir)
    model = load_model(tied_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert parameters == model.num_parameters()
    # Some transformers versions report the tied lm_head as missing: that is not a missing tensor...
    check_loading_info(model, {"missing_keys": {"lm_head.weight"}}, "here")
    # ...but a tensor missing under every name it has is.
    with pytest.raises(ModelLoadError, match=r"missing: lm_head\.weight"):
        check_loading_info(model, {"missing_keys": {"lm_head.weight", "model.embed_tokens.weight"}}, "here")
    with pytest.raises(ModelLoadError, match=r"another shape .*model\.norm\.weight \(\[3\] saved, \[64\]"):
        check_loading_info(model, {"mismatched_keys": {("model.norm.weight", (3,), (64,))}}, "here")


def test_per_layer_sizes_are_checked_against_themselves():
    base = {
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    }
    check_model_config({**base, "per_layer_config": {"1": {"intermediate_size": 30}}})
    for per_layer, message in (
        ({"1": {"num_attention_heads": 0}}, r"layer 1 has num_attention_heads=0"),
        ({"2": {"intermediate_size": 1.5}}, r"layer 2 has intermediate_size=1\.5"),
        (
            {"1": {"num_key_value_heads": 3}},
            r"layer 1 has num_attention_heads=8, not a multiple of its num_key_value",
        ),
        ([{"intermediate_size": 30}], r"per_layer_config must be an object mapping layer indices"),
        ({"3": {"intermediate_size": 30}}, r"entry '3', but layers are numbered 0\.\.2"),
        ({"1": [30]}, r"per_layer_config\['1'\] must be an object of that layer's sizes"),
    ):
        with pytest.raises(ModelLoadError, match=message):
            check_model_config({**base, "per_layer_config": per_layer})
    with pytest.raises(ModelLoadError, match=r"layer 0 has num_key_value_heads=0"):
        check_model_config({**base, "num_key_value_heads": 0})


def test_bias_compensated_per_layer_models_load(tmp_path):
    """FLAP adds o_proj / down_proj biases the stock layers lack: the per_layer config's flags make room for them,
    so they are neither unexpected nor missing."""
    from test_pruner import PROMPTS, small_config

    from optimum_resp.pruner import RESPPruner

    tokenizer = tiny_tokenizer()
    config = small_config(importance="flap", num_stages=1, regeneration_milestones=[])
    pruner = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf")
    result = pruner.prune(PROMPTS)
    pruner.save_pretrained(tmp_path / "flap")
    assert json.loads((tmp_path / "flap" / "config.json").read_text())["down_proj_bias"]
    reloaded = load_model(tmp_path / "flap")
    x = torch.randint(3, 200, (1, 7))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, result.model(x).logits)


def test_a_dtype_transformers_cannot_load_is_named(tied_dir):
    assert check_dtype("bfloat16") == "bfloat16" and check_dtype(torch.float16) is torch.float16
    for bad in ("float13", "int8", "bool"):
        with pytest.raises(
            ValueError, match=rf"Unknown dtype '{bad}': use auto .*bfloat16, float16 or float32"
        ):
            load_model(tied_dir, dtype=bad)


def test_a_hub_id_while_offline_is_refused_at_once_unless_cached(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE set, a Hub id the cache does not hold cannot load: refused before any work (exit 2 on
    the command line), not after the calibration data and the output folder were prepared."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"org/model is not a local folder, and HF_HUB_OFFLINE is set while"
    ):
        check_model_source("org/model", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set while the Hub cache holds no copy"):
        load_model_config("org/model", cache_dir=tmp_path)
    repo = tmp_path / "models--org--model"  # the layout huggingface_hub caches a download in
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    check_model_source("org/model", cache_dir=tmp_path)  # cached: it loads offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_model_source("org/elsewhere", cache_dir=tmp_path)  # online: the Hub is asked


def test_load_model_config_checks_the_folder_without_loading_a_weight(tied_dir, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    monkeypatch.setattr(
        "optimum_resp.loading.AutoModelForCausalLM.from_pretrained",
        lambda *a, **k: pytest.fail("a weight was loaded"),
    )
    config = load_model_config(tied_dir)
    assert config.num_hidden_layers == json.loads((tied_dir / "config.json").read_text())["num_hidden_layers"]
    broken = tmp_path / "broken"
    shutil.copytree(tied_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model_config(broken)


@pytest.mark.parametrize("bf16_matmuls", [False, True])
def test_auto_dtype_loads_a_bf16_checkpoint_in_float32_on_a_cpu_without_bf16_matmuls(
    tmp_path, monkeypatch, caplog, bf16_matmuls
):
    """On an AVX2-only CPU bf16 runs several times slower than float32: `auto` loads float32 there (and says so);
    with bf16 matmuls, or an explicit dtype, the checkpoint's own dtype stays."""
    import optimum_resp.loading as loading

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer=tokenizer).to(torch.bfloat16).save_pretrained(tmp_path)
    monkeypatch.setattr(loading, "cpu_has_bf16_matmuls", lambda: bf16_matmuls)
    with caplog.at_level("WARNING", logger="optimum_resp.loading"):
        auto = load_model(tmp_path)
    assert auto.dtype == (torch.bfloat16 if bf16_matmuls else torch.float32)
    assert ("no bf16 matmuls" in caplog.text) is not bf16_matmuls
    assert load_model(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
    config = load_model_config(tmp_path)
    config.dtype = torch.float32
    assert loading.cpu_load_dtype(config) == "auto"  # a float32 checkpoint loads as it is
