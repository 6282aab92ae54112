"""The per_layer GGUF writer's pure parts and its refusals: tensor layout, types, pre-tokenizer rules, checks.

Runs wherever gguf-py is installed; the tests that need llama.cpp's converter (the tokenizer step) run where
RESP_LLAMA_CPP_CONVERTER names it. tests/test_llama_cpp_per_layer.py loads the files in llama.cpp itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import tiny_model, tiny_tokenizer  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

from optimum_resp.architectures import ARCHITECTURES, LayerSizes, layer_sizes  # noqa: E402
from optimum_resp.commands.cli import main  # noqa: E402
from optimum_resp.integrations.llama_cpp import GRAPHS, GGUFExportError, write_gguf  # noqa: E402
from optimum_resp.integrations.llama_cpp.checks import (  # noqa: E402
    checkpoint_problems,
    layer_problems,
    output_problem,
)
from optimum_resp.integrations.llama_cpp.pretokenizers import (  # noqa: E402
    byte_level_text,
    llama_cpp_pre_tokenizer,
)
from optimum_resp.integrations.llama_cpp.tensors import (  # noqa: E402
    encode,
    fuse_rows,
    rope_pairs,
    stored_shape,
    tensor_recipes,
    tensor_type,
)
from optimum_resp.surgery import prune_model  # noqa: E402
from optimum_resp.testbed import SPLITS, testbed_data_path, testbed_model_path  # noqa: E402
from optimum_resp.testing_utils import random_plan, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERTER = os.environ.get("RESP_LLAMA_CPP_CONVERTER")
needs_converter = pytest.mark.skipif(
    not CONVERTER or not Path(CONVERTER).is_file(),
    reason="needs llama.cpp's converter (RESP_LLAMA_CPP_CONVERTER)",
)
F32, F16, Q8_0 = (
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.Q8_0,
)


def per_layer_folder(tmp_path: Path, model_type: str = "qwen3", tied: bool = True, **overrides) -> Path:
    """A per_layer export of a tiny random model with the testbed's tokenizer, saved."""
    tokenizer = AutoTokenizer.from_pretrained(testbed_model_path())
    dense = tiny_model(model_type, tokenizer=tokenizer, tie_word_embeddings=tied, **overrides)
    pruned = prune_model(dense, random_plan(dense.config, 0.4, per_layer=True, seed=3), export="per_layer")
    folder = tmp_path / f"{model_type}-per-layer"
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- tensors


def test_rope_pairs_moves_each_heads_halves_into_consecutive_pairs():
    heads, head_dim = 3, 4
    rows = torch.arange(heads * head_dim * 2, dtype=torch.float32).reshape(heads * head_dim, 2)
    out = rope_pairs(rows, heads)
    assert out.shape == rows.shape
    for h in range(heads):
        for j in range(head_dim // 2):  # row j of the first half and row j of the second become a pair
            assert torch.equal(out[h * head_dim + 2 * j], rows[h * head_dim + j])
            assert torch.equal(out[h * head_dim + 2 * j + 1], rows[h * head_dim + head_dim // 2 + j])
    bias = torch.arange(heads * head_dim, dtype=torch.float32)
    assert torch.equal(
        rope_pairs(bias, heads), rope_pairs(bias[:, None], heads)[:, 0]
    )  # biases follow their rows


def test_fuse_rows_stacks_q_then_k_then_v():
    q, k, v = torch.zeros(6, 4), torch.ones(2, 4), torch.full((2, 4), 2.0)
    fused = fuse_rows([q, k, v])
    assert fused.shape == (10, 4) and fused[6:8].eq(1).all() and fused[8:].eq(2).all()


@pytest.mark.parametrize(
    "name, shape, outtype, expected",
    [
        ("blk.0.attn_norm.weight", (64,), "q8_0", F32),
        ("blk.0.attn_q_norm.weight", (16,), "f16", F32),
        ("blk.0.attn_q.bias", (96,), "f16", F32),
        ("blk.0.ffn_up.weight", (83, 64), "f32", F32),
        ("blk.0.ffn_up.weight", (83, 64), "f16", F16),
        ("blk.0.ffn_up.weight", (83, 64), "q8_0", Q8_0),
        ("blk.0.ffn_down.weight", (64, 83), "q8_0", F16),  # a row of 83: not whole q8_0 blocks of 32
        ("token_embd.weight", (770, 64), "q8_0", Q8_0),
    ],
)
def test_tensor_types_follow_llama_cpps_converter(name, shape, outtype, expected):
    assert tensor_type(name, shape, outtype) == expected


def test_encode_matches_the_stored_shape():
    t = torch.randn(5, 64)
    for qtype in (F32, F16, Q8_0):
        data = encode(t, qtype)
        shape, dtype = stored_shape(t.shape, qtype)
        assert data.shape == shape and data.dtype == dtype
    assert stored_shape((5, 64), Q8_0)[0] == (5, 2 * 34)  # 32 int8 values and an f16 scale per block


def recipes_of(model_type: str, tied: bool):
    config = tiny_config(model_type, tie_word_embeddings=tied)
    model = prune_model(
        tiny_model(model_type, tokenizer=tiny_tokenizer(), tie_word_embeddings=tied),
        random_plan(config, 0.4, per_layer=True, seed=3),
        export="per_layer",
    )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        shapes.pop("lm_head.weight", None)
    spec = ARCHITECTURES[model_type]
    layers = layer_sizes(model.config)
    return {r.name: r for r in tensor_recipes(spec, GRAPHS[model_type], layers, shapes, tied)}, layers, model


def test_qwen3_is_laid_out_as_openelm():
    recipes, layers, model = recipes_of("qwen3", tied=True)
    head_dim = model.config.head_dim
    assert "output.weight" not in recipes  # openelm's output is the token embedding
    for i, s in enumerate(layers):
        qkv = recipes[f"blk.{i}.attn_qkv.weight"]
        assert qkv.shape == ((s.num_attention_heads + 2 * s.num_key_value_heads) * head_dim, 64)
        assert recipes[f"blk.{i}.attn_q_norm.weight"].shape == (head_dim,)
        assert recipes[f"blk.{i}.ffn_down.weight"].shape == (64, s.intermediate_size)
        assert f"blk.{i}.attn_q.weight" not in recipes
    tensors = [torch.randn(shape) for shape in (recipes["blk.0.attn_qkv.weight"].shape,)]
    assert recipes["blk.0.attn_norm.weight"].make(tensors) is tensors[0]


def test_llama_is_laid_out_as_deci_with_every_bias_and_its_own_output():
    recipes, layers, model = recipes_of("llama", tied=False)
    assert recipes["output.weight"].sources == ("lm_head.weight",)
    for i, s in enumerate(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            assert (
                f"blk.{i}.{name}.weight" in recipes and f"blk.{i}.{name}.bias" in recipes
            )  # tiny Llama: all biases
        k_bias = recipes[f"blk.{i}.attn_k.bias"]
        source = model.state_dict()[k_bias.sources[0]]
        assert torch.equal(k_bias.make([source]), rope_pairs(source, s.num_key_value_heads))
        v_bias = recipes[f"blk.{i}.attn_v.bias"]
        assert v_bias.make([source]) is source  # v is not rotated


# ---------------------------------------------------------------------------------------------- checks


def test_layer_problems_name_the_layer_and_the_fix():
    graph = GRAPHS["qwen3"]
    assert layer_problems([LayerSizes(8, 4, 96), LayerSizes(2, 1, 5)], graph) == []
    (zero,) = layer_problems([LayerSizes(8, 4, 96), LayerSizes(0, 0, 10)], graph)
    assert "layer 1 keeps no query heads and no KV heads" in zero and "protect it" in zero
    (no_mlp,) = layer_problems([LayerSizes(4, 2, 0)], GRAPHS["llama"])
    assert "no MLP channels" in no_mlp and "deci" in no_mlp
    (uneven,) = layer_problems([LayerSizes(3, 2, 10)], graph)
    assert "3 query heads over 2 KV heads" in uneven


def test_checkpoint_problems_of_each_graph():
    qwen3, llama = ARCHITECTURES["qwen3"], ARCHITECTURES["llama"]
    tied = tiny_config("qwen3", tie_word_embeddings=True)
    assert checkpoint_problems(qwen3, GRAPHS["qwen3"], tied, [], tied=True) == []
    (untied,) = checkpoint_problems(qwen3, GRAPHS["qwen3"], tied, [], tied=False)
    assert "untied" in untied and "--export uniform" in untied and "convert_hf_to_gguf.py" in untied
    tied.o_proj_bias = True
    (biases,) = checkpoint_problems(
        qwen3, GRAPHS["qwen3"], tied, ["model.layers.0.self_attn.o_proj.bias"], True
    )
    assert "bias compensation (FLAP)" in biases and "not FLAP" in biases
    own = tiny_config("qwen3", tie_word_embeddings=True, attention_bias=True)  # Qwen3's own q/k/v/o biases
    (biases,) = checkpoint_problems(
        qwen3, GRAPHS["qwen3"], own, ["model.layers.0.self_attn.q_proj.bias"], True
    )
    assert "qwen3's own biases" in biases and "openelm graph" in biases
    config = tiny_config("llama")  # every bias, untied: deci takes both
    assert checkpoint_problems(llama, GRAPHS["llama"], config, ["x.bias"], tied=False) == []


def test_output_problems(tmp_path):
    assert output_problem(tmp_path / "new" / "deeper" / "m.gguf") is None  # folders are made
    assert "is a folder" in output_problem(tmp_path)
    (tmp_path / "file").write_text("")
    assert "is not a folder" in output_problem(tmp_path / "file" / "m.gguf")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: nothing to test
        pytest.skip("running as root")
    assert "no write permission" in output_problem(locked / "m.gguf")


# ---------------------------------------------------------------------------------------------- refusals


def refused(tmp_path: Path, folder: Path, match: str, **kwargs) -> None:
    """write_gguf refuses, and neither the file nor a temporary one is left behind."""
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(GGUFExportError, match=match):
        write_gguf(folder, out, **kwargs)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_refusals_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("RESP_LLAMA_CPP_CONVERTER", raising=False)
    untied = per_layer_folder(tmp_path, tied=False)
    refused(tmp_path, untied, r"openelm graph: its embeddings are untied.*--export uniform")
    refused(tmp_path, untied, "outtype must be one of", outtype="q4_0")
    refused(tmp_path, tmp_path / "nowhere", "is not a folder")
    refused(tmp_path, tmp_path, "has no config.json")

    tokenizer = AutoTokenizer.from_pretrained(testbed_model_path())
    stock = tmp_path / "uniform"
    tiny_model(tokenizer=tokenizer).save_pretrained(stock)
    refused(tmp_path, stock, r"stock qwen3 checkpoint.*convert_hf_to_gguf.py")

    compensated = per_layer_folder(tmp_path, tied=True)
    config = json.loads((compensated / "config.json").read_text())
    (compensated / "config.json").write_text(json.dumps({**config, "o_proj_bias": True}))
    refused(tmp_path, compensated, r"biases \(bias compensation \(FLAP\)")  # the weights lack them too

    uneven = per_layer_folder(tmp_path, tied=True)
    config = json.loads((uneven / "config.json").read_text())
    config["per_layer_config"]["1"]["num_key_value_heads"] = 4  # e.g. a hand-edited config
    config["per_layer_config"]["1"]["num_attention_heads"] = 6
    (uneven / "config.json").write_text(json.dumps(config))
    refused(tmp_path, uneven, "layer 1 has 6 query heads over 4 KV heads")

    headless = per_layer_folder(tmp_path, tied=True)
    config = json.loads((headless / "config.json").read_text())
    config["per_layer_config"]["2"]["num_attention_heads"] = 0  # a layer with no query head
    (headless / "config.json").write_text(json.dumps(config))
    refused(tmp_path, headless, r"openelm graph: layer 2 keeps no query heads.*protect it")

    resized = per_layer_folder(tmp_path, "llama", tied=False)
    config = json.loads((resized / "config.json").read_text())
    config["per_layer_config"]["1"]["intermediate_size"] += 1  # sizes the weights do not have
    (resized / "config.json").write_text(json.dumps(config))
    refused(
        tmp_path, resized, r"deci graph: its weights do not have the sizes its config.json gives them \(model"
    )

    (resized / "config.json").write_text('{"model_type": "no-such-model"}')
    refused(tmp_path, resized, "does not load as a transformers config")

    tied = per_layer_folder(tmp_path, tied=True)  # everything fits: only the converter is missing
    (tmp_path / "a-file").write_text("")
    with pytest.raises(GGUFExportError, match="a-file is not a folder"):
        write_gguf(tied, tmp_path / "a-file" / "model.gguf")  # an output path that cannot be written
    with pytest.raises(GGUFExportError, match="is a folder: name the .gguf file"):
        write_gguf(tied, tmp_path)
    refused(tmp_path, tied, "RESP_LLAMA_CPP_CONVERTER")
    refused(tmp_path, tied, "not llama.cpp's converter", converter=tmp_path)


def test_cli_refusal_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RESP_LLAMA_CPP_CONVERTER", raising=False)
    folder = per_layer_folder(tmp_path, tied=False)
    assert main(["export-gguf", str(folder), "--outfile", str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert "optimum-resp export-gguf: error:" in err and "--export uniform" in err
    assert not (tmp_path / "m.gguf").exists()


@needs_converter
def test_unknown_pre_tokenizer_is_refused_unless_named(tmp_path):
    tokenizer = tiny_tokenizer()  # byte-level without GPT-2's regex: llama.cpp has no such pre-tokenizer
    dense = tiny_model("llama", tokenizer=tokenizer)
    folder = tmp_path / "llama"
    prune_model(dense, random_plan(dense.config, 0.3, per_layer=True), export="per_layer").save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    refused(tmp_path, folder, "tokenizer_pre=.*--tokenizer-pre", converter=CONVERTER)
    out = write_gguf(folder, tmp_path / "m.gguf", "f32", converter=CONVERTER, tokenizer_pre="gpt-2")
    reader = gguf.GGUFReader(out)
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"


@needs_converter
def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import optimum_resp.integrations.llama_cpp.writer as writer

    folder = per_layer_folder(tmp_path, "llama")
    calls = []

    def failing(tensor, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return encode(tensor, qtype)

    monkeypatch.setattr(writer, "encode", failing)
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(OSError, match="disk full"):
        write_gguf(folder, out, converter=CONVERTER)
    assert list(out.parent.iterdir()) == []


@needs_converter
@pytest.mark.parametrize("model_type, arch", [("qwen3", "openelm"), ("qwen2", "deci"), ("llama", "deci")])
def test_metadata_is_per_layer_and_the_tokenizer_is_llama_cpps(tmp_path, model_type, arch):
    folder = per_layer_folder(tmp_path, model_type)
    out = write_gguf(folder, tmp_path / "m.gguf", "q8_0", converter=CONVERTER)
    reader = gguf.GGUFReader(out)

    def field(key):
        f = reader.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    layers = layer_sizes(AutoConfig.from_pretrained(folder))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == arch
    assert field(f"{arch}.attention.head_count") == [s.num_attention_heads for s in layers]
    assert field(f"{arch}.attention.head_count_kv") == [s.num_key_value_heads for s in layers]
    assert field(f"{arch}.feed_forward_length") == [s.intermediate_size for s in layers]
    assert "tokenizer.chat_template" in reader.fields and "tokenizer.ggml.merges" in reader.fields
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"  # the testbed's rule


# ---------------------------------------------------------------------------------------------- pre-tokenizers


def test_the_testbed_tokenizer_splits_as_gpt2s_regex():
    """The rule that lets llama.cpp tokenize the testbed's text: GPT-2's regex alone gives the same tokens."""
    assert llama_cpp_pre_tokenizer(testbed_model_path())[0] == "gpt-2"
    ours = AutoTokenizer.from_pretrained(testbed_model_path())
    gpt2 = AutoTokenizer.from_pretrained(testbed_model_path())
    gpt2.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = ["x \n5", "a\n\n12 b", "  305 apples, 7.5 kg", "It costs $1200.", "5th 2x x2 -3"]
    for split in SPLITS:
        for line in testbed_data_path("gsm8k", split).read_text().splitlines()[:200]:
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    for text in texts:
        assert ours(text)["input_ids"] == gpt2(text)["input_ids"], text


def test_the_rule_needs_its_condition(tmp_path):
    tokenizer = json.loads((testbed_model_path() / "tokenizer.json").read_text())
    tokenizer["model"]["merges"].append("1 2")  # a merge GPT-2's regex could reach and the digit split never
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert llama_cpp_pre_tokenizer(tmp_path) is None
    assert byte_level_text("Ġ12Ċ") == " 12\n"
