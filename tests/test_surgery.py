"""Physical surgery: pruned model == dense model with the removed structures zeroed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

from optimum_resp.accounting import size_report
from optimum_resp.architectures import (
    UnsupportedArchitectureError,
    get_architecture,
    layer_sizes,
    supported_model_types,
)
from optimum_resp.surgery import (
    LayerKeep,
    PruningPlan,
    PruningPlanError,
    prune_model,
    slice_linear,
    structure_index,
    validate_plan,
)
from optimum_resp.testing_utils import random_plan, tiny_config

ARCHS = ["qwen3", "qwen2", "llama"]
EXPORTS = ["uniform", "per_layer"]
KINDS = ["query_heads", "kv_heads", "channels", "all"]


def kind_plan(config, kind: str, export: str) -> PruningPlan:
    """A plan removing structures of one kind; layers differ unless export is uniform."""
    sizes = layer_sizes(config)
    keeps = []
    gen = torch.Generator().manual_seed(1)
    for i, size in enumerate(sizes):
        v = 0 if export == "uniform" else i % 2  # per_layer: alternate between two different sizes
        groups = list(range(size.num_key_value_heads))
        per_group = size.heads_per_group
        slots = list(range(per_group))
        channels = list(range(size.intermediate_size))
        if kind in ("query_heads", "all"):  # the same slot removed in every group keeps groups balanced
            slots = [s for s in slots if s != (i % per_group)][: per_group - 1 - v] or [i % per_group]
        if kind in ("kv_heads", "all"):
            drop = torch.randperm(len(groups), generator=gen)[: 1 + v].tolist()
            groups = [g for g in groups if g not in drop]
        if kind in ("channels", "all"):
            keep_n = size.intermediate_size // 2 - 7 * v
            channels = sorted(torch.randperm(size.intermediate_size, generator=gen)[:keep_n].tolist())
        heads = [g * per_group + s for g in groups for s in sorted(slots)]
        keeps.append(LayerKeep(tuple(heads), tuple(groups), tuple(channels)))
    return PruningPlan(tuple(keeps))


def zero_removed(model, plan: PruningPlan):
    """The dense model with every removed structure's weights (and biases) set to zero."""
    masked = copy.deepcopy(model)
    spec = get_architecture(model)
    d = spec.head_dim(model.config)
    with torch.no_grad():
        for keep, layer, size in zip(plan.layers, masked.model.layers, layer_sizes(model.config)):
            attn, mlp = layer.self_attn, layer.mlp
            for h in set(range(size.num_attention_heads)) - set(keep.query_heads):
                attn.q_proj.weight[h * d : (h + 1) * d] = 0
                if attn.q_proj.bias is not None:
                    attn.q_proj.bias[h * d : (h + 1) * d] = 0
                attn.o_proj.weight[:, h * d : (h + 1) * d] = 0
            for g in set(range(size.num_key_value_heads)) - set(keep.kv_heads):
                for proj in (attn.k_proj, attn.v_proj):
                    proj.weight[g * d : (g + 1) * d] = 0
                    if proj.bias is not None:
                        proj.bias[g * d : (g + 1) * d] = 0
            for c in set(range(size.intermediate_size)) - set(keep.channels):
                for proj in (mlp.gate_proj, mlp.up_proj):
                    proj.weight[c] = 0
                    if proj.bias is not None:
                        proj.bias[c] = 0
                mlp.down_proj.weight[:, c] = 0
    return masked


def padded_batch(vocab: int = 128):
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, vocab, (3, 11), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding
    attention_mask[2, :7] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


def assert_same_outputs(reference, candidate):
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        ref = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        out = candidate(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    kwargs = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        ref_gen = reference.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        out_gen = candidate.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    assert torch.equal(ref_gen, out_gen)


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("export", EXPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_pruned_equals_zeroed_dense(model_type, export, kind):
    model = tiny_model(model_type, random_biases=True)
    plan = kind_plan(model.config, kind, export)
    pruned = prune_model(model, plan, export=export)
    assert pruned.num_parameters() < model.num_parameters()
    # The model is physically smaller: no zero rows left behind.
    for keep, layer in zip(plan.layers, pruned.model.layers):
        d = pruned.config.head_dim
        assert layer.self_attn.q_proj.weight.shape[0] == len(keep.query_heads) * d
        assert layer.self_attn.o_proj.weight.shape[1] == len(keep.query_heads) * d
        assert layer.self_attn.k_proj.weight.shape[0] == len(keep.kv_heads) * d
        assert layer.self_attn.v_proj.weight.shape[0] == len(keep.kv_heads) * d
        assert layer.mlp.gate_proj.weight.shape[0] == len(keep.channels)
        assert layer.mlp.down_proj.weight.shape[1] == len(keep.channels)
        assert layer.self_attn.num_key_value_groups == len(keep.query_heads) // len(keep.kv_heads)
    assert_same_outputs(zero_removed(model, plan), pruned)


def test_export_modes_give_the_expected_classes():
    model = tiny_model("qwen3", random_biases=True)
    uniform = prune_model(model, random_plan(model.config, 0.3), export="uniform")
    assert type(uniform).__name__ == "Qwen3ForCausalLM" and uniform.config.model_type == "qwen3"
    assert not uniform.config.is_heterogeneous
    assert uniform.config.num_attention_heads == 6 and uniform.config.head_dim == 16
    per_layer = prune_model(model, random_plan(model.config, 0.3, per_layer=True), export="per_layer")
    assert type(per_layer).__name__ == "RESPQwen3ForCausalLM" and per_layer.config.model_type == "resp_qwen3"
    assert per_layer.config.is_heterogeneous
    assert len({s.intermediate_size for s in layer_sizes(per_layer.config)}) > 1


def test_original_model_is_untouched():
    model = tiny_model("qwen2", random_biases=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_model(model, kind_plan(model.config, "all", "per_layer"), export="per_layer")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pruning_a_pruned_model_composes():
    """Progressive pruning: indices of the second plan refer to the once-pruned model."""
    model = tiny_model("qwen3", random_biases=True)
    plan1 = kind_plan(model.config, "all", "per_layer")
    once = prune_model(model, plan1, export="per_layer")
    plan2 = random_plan(once.config, 0.3, per_layer=True, seed=5)
    twice = prune_model(once, plan2, export="per_layer")
    # Compose the two plans into one against the dense model and compare.
    composed = []
    for k1, k2 in zip(plan1.layers, plan2.layers):
        per_group_2 = len(k1.query_heads) // len(k1.kv_heads)
        heads = tuple(k1.query_heads[i] for i in k2.query_heads)
        groups = tuple(k1.kv_heads[g] for g in k2.kv_heads)
        assert len(heads) == len(groups) * (len(k2.query_heads) // len(k2.kv_heads)) and per_group_2 > 0
        composed.append(LayerKeep(heads, groups, tuple(k1.channels[c] for c in k2.channels)))
    assert_same_outputs(zero_removed(model, PruningPlan(tuple(composed))), twice)


def test_tied_embeddings_stay_tied():
    model = tiny_model("qwen3", tie_word_embeddings=True, random_biases=True)
    pruned = prune_model(model, random_plan(model.config, 0.4), export="uniform")
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # one Parameter, as in the source
    assert_same_outputs(zero_removed(model, random_plan(model.config, 0.4)), pruned)


def test_dtype_and_requires_grad_are_kept():
    model = tiny_model("llama", random_biases=True).to(torch.bfloat16)
    pruned = prune_model(model, random_plan(model.config, 0.4, per_layer=True), export="per_layer")
    assert {p.dtype for p in pruned.parameters()} == {torch.bfloat16}
    assert all(p.requires_grad for p in pruned.parameters())
    assert pruned.model.rotary_emb.inv_freq.dtype == model.model.rotary_emb.inv_freq.dtype


# ------------------------------------------------------------------------------------------------
# Pure tensor functions: exhaustive shapes.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [1, 4, 16])
@pytest.mark.parametrize("kept", [(0,), (1, 3), (0, 1, 2, 5)])
def test_structure_index(unit, kept):
    index = structure_index(kept, unit)
    expected = [k * unit + j for k in kept for j in range(unit)]
    assert index.tolist() == expected and index.dtype == torch.long


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [None, (0, 2)])
@pytest.mark.parametrize("cols", [None, (1, 3, 4)])
def test_slice_linear_shapes(bias, dtype, rows, cols):
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4, bias=bias).to(dtype)
    out_index = torch.tensor(rows) if rows is not None else None
    in_index = torch.tensor(cols) if cols is not None else None
    new = slice_linear(linear, out_index, in_index)
    r = list(rows) if rows is not None else list(range(4))
    c = list(cols) if cols is not None else list(range(6))
    assert new.weight.shape == (len(r), len(c)) and new.in_features == len(c) and new.out_features == len(r)
    assert new.weight.dtype == dtype
    assert torch.equal(new.weight, linear.weight[r][:, c])
    if bias:
        assert torch.equal(new.bias, linear.bias[r])
    else:
        assert new.bias is None
    x = torch.randn(2, 6).to(dtype)
    full = linear(x * torch.isin(torch.arange(6), torch.tensor(c)).to(dtype))[:, r]
    torch.testing.assert_close(new(x[:, c]), full, atol=1e-2 if dtype == torch.bfloat16 else 1e-6, rtol=1e-2)


# ------------------------------------------------------------------------------------------------
# Round trip and loading without optimum_resp.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("export", EXPORTS)
def test_save_and_reload_gives_identical_logits(tmp_path, model_type, export):
    model = tiny_model(model_type, random_biases=True)
    pruned = prune_model(
        model, random_plan(model.config, 0.4, per_layer=export == "per_layer"), export=export
    )
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    if export == "uniform":
        assert saved["model_type"] == model_type and "auto_map" not in saved
        assert not (tmp_path / "modeling_per_layer.py").exists()
    else:
        assert saved["model_type"] == f"resp_{model_type}"
        assert set(saved["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
        assert {"modeling_per_layer.py", "configuration_per_layer.py"} <= {p.name for p in tmp_path.iterdir()}
        assert len(saved["per_layer_config"]) == model.config.num_hidden_layers
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(pruned)
    assert layer_sizes(reloaded.config) == layer_sizes(pruned.config)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        a = pruned(input_ids=input_ids, attention_mask=attention_mask).logits
        b = reloaded(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(a, b)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys, json, torch

    class Block:  # make any import of optimum_resp fail loudly
        def find_spec(self, name, path=None, target=None):
            if name == "optimum_resp" or name.startswith("optimum_resp."):
                raise ImportError("optimum_resp must not be imported here")
    sys.meta_path.insert(0, Block())

    from transformers import AutoModelForCausalLM
    path, ids, mask = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert not any(m.startswith("optimum_resp") for m in sys.modules)
    print(json.dumps({"cls": type(model).__name__, "logits": logits.tolist()}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_per_layer_loads_with_trust_remote_code_without_optimum_resp(tmp_path, model_type):
    model = tiny_model(model_type, random_biases=True)
    pruned = prune_model(model, random_plan(model.config, 0.5, per_layer=True), export="per_layer")
    pruned.save_pretrained(tmp_path)
    input_ids, attention_mask = padded_batch()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_CODE_SCRIPT,
            str(tmp_path),
            json.dumps(input_ids.tolist()),
            json.dumps(attention_mask.tolist()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cls"] == type(pruned).__name__
    with torch.no_grad():
        expected = pruned(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)


def test_a_per_layer_folder_saved_with_the_old_file_names_still_loads(tmp_path):
    # Before the rename, save_pretrained wrote configuration_resp.py / modeling_resp.py and an auto_map naming them.
    model = tiny_model("qwen3", random_biases=True)
    pruned = prune_model(model, random_plan(model.config, 0.4, per_layer=True), export="per_layer")
    pruned.save_pretrained(tmp_path)
    for new, old in (
        ("configuration_per_layer", "configuration_resp"),
        ("modeling_per_layer", "modeling_resp"),
    ):
        text = (tmp_path / f"{new}.py").read_text().replace("configuration_per_layer", "configuration_resp")
        (tmp_path / f"{old}.py").write_text(text)
        (tmp_path / f"{new}.py").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_resp.RESPQwen3Config",
        "AutoModelForCausalLM": "modeling_resp.RESPQwen3ForCausalLM",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # optimum_resp's registered classes
    assert type(reloaded) is type(pruned)
    input_ids, attention_mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=input_ids, attention_mask=attention_mask).logits,
            pruned(input_ids=input_ids, attention_mask=attention_mask).logits,
        )


def test_per_layer_auto_classes_are_registered_on_import():
    import optimum_resp  # noqa: F401

    config = AutoConfig.for_model(
        "resp_qwen3",
        **{
            k: v
            for k, v in tiny_config().to_dict().items()
            if k not in ("model_type", "transformers_version")
        },
    )
    assert type(AutoModelForCausalLM.from_config(config)).__name__ == "RESPQwen3ForCausalLM"


# ------------------------------------------------------------------------------------------------
# Accounting.
# ------------------------------------------------------------------------------------------------


def decoder_linear_tensor_params(model) -> list[int]:
    return [
        sum(p.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
        for layer in model.model.layers
    ]


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("export", EXPORTS)
def test_reported_sparsity_matches_tensors(model_type, export):
    model = tiny_model(model_type, random_biases=True)
    pruned = prune_model(
        model, random_plan(model.config, 0.4, per_layer=export == "per_layer"), export=export
    )
    report = size_report(model, pruned)
    dense_t, pruned_t = decoder_linear_tensor_params(model), decoder_linear_tensor_params(pruned)
    assert list(report.dense_layer_params) == dense_t
    assert list(report.pruned_layer_params) == pruned_t
    assert report.sparsity == pytest.approx(1 - sum(pruned_t) / sum(dense_t), abs=1e-12)
    assert 0.3 < report.sparsity < 0.5
    assert report.pruned_total_params == sum(p.numel() for p in pruned.parameters())
    table = report.format_table()
    for i, sizes in enumerate(layer_sizes(pruned.config)):
        assert f"| {i} | {sizes.num_attention_heads}/8 | {sizes.num_key_value_heads}/4 |" in table
    d = report.to_dict()
    assert len(d["layers"]) == 4 and d["sparsity"] == report.sparsity
    json.dumps(d)


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors that name the layer and the fix, before any work.
# ------------------------------------------------------------------------------------------------


def test_unsupported_architecture_names_the_supported_ones():
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*qwen3") as err:
        get_architecture(config)
    for model_type in supported_model_types():
        assert model_type in str(err.value)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError):
        prune_model(model, PruningPlan(()), export="uniform")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"query_heads": (0, 1, 2, 3, 4, 5, 6, 8)}, r"Layer 2: query_heads indices \[8\] are out of range"),
        ({"channels": (0, 0, 1)}, r"Layer 2: channels indices \[0\] are listed more than once"),
        ({"kv_heads": (-1, 0)}, r"Layer 2: kv_heads indices \[-1\] are out of range"),
        ({"channels": (3, 1)}, r"Layer 2: channels indices must be sorted"),
        ({"query_heads": (0, 1, 2, 3, 4, 5)}, r"Layer 2: KV groups \[3\] are kept with no query head"),
        (
            {"kv_heads": (0, 1, 2)},
            r"Layer 2: query heads \[6, 7\] are kept but their KV groups \[3\] are removed",
        ),
        ({"query_heads": (0, 1, 2, 4, 6)}, r"Layer 2: KV groups keep different numbers of query heads"),
        ({"query_heads": (), "kv_heads": ()}, r"Layer 2 would keep no attention heads"),
        ({"channels": ()}, r"Layer 2 would keep no MLP channels"),
    ],
)
def test_bad_plans_are_refused_with_layer_and_fix(changes, message):
    model = tiny_model("qwen3", random_biases=True)
    keeps = list(PruningPlan.full(model.config).layers)
    keeps[2] = LayerKeep(**{**{k: tuple(v) for k, v in keeps[2].to_dict().items()}, **changes})
    plan = PruningPlan(tuple(keeps))
    with pytest.raises(PruningPlanError, match=message):
        validate_plan(plan, model.config)
    with pytest.raises(PruningPlanError, match=message):
        prune_model(model, plan)


def test_wrong_layer_count_and_non_uniform_export_are_refused():
    model = tiny_model("qwen3", random_biases=True)
    with pytest.raises(PruningPlanError, match="plan has 3 layers but the model has 4"):
        prune_model(model, PruningPlan(PruningPlan.full(model.config).layers[:3]))
    with pytest.raises(PruningPlanError, match="uniform export needs the same"):
        prune_model(model, random_plan(model.config, 0.4, per_layer=True), export="uniform")
    with pytest.raises(ValueError, match="export must be one of"):
        prune_model(model, PruningPlan.full(model.config), export="ragged")


def test_plan_round_trips_through_json():
    model = tiny_model("qwen3", random_biases=True)
    plan = kind_plan(model.config, "all", "per_layer")
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_uniform_llama_with_head_count_stock_llama_refuses():
    """Stock LlamaConfig needs hidden_size % heads == 0; uniform export says so, per_layer works."""
    model = tiny_model("llama", hidden_size=64, random_biases=True)
    plan = kind_plan(model.config, "kv_heads", "uniform")  # 6 heads: 64 % 6 != 0
    with pytest.raises(PruningPlanError, match="stock LlamaConfig refuses.*export='per_layer'"):
        prune_model(model, plan, export="uniform")
    assert_same_outputs(zero_removed(model, plan), prune_model(model, plan, export="per_layer"))


def test_untied_heads_stay_untied_even_if_the_config_says_tied():
    """Surgery mirrors the tensors it is given: it never ties (or unties) lm_head behind the model's back."""
    model = tiny_model("qwen3", tie_word_embeddings=True, random_biases=True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 1.0)
    pruned = prune_model(model, random_plan(model.config, 0.4), export="uniform")
    assert pruned.lm_head.weight.data_ptr() != pruned.model.embed_tokens.weight.data_ptr()
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
def test_per_layer_classes_set_what_the_stock_classes_set(model_type):
    """The per_layer decoder re-does the stock __init__ with per-layer sizes: an attribute or submodule
    upstream adds must be added there too, and this fails loudly when it is not."""
    config = tiny_config(model_type)
    spec = get_architecture(config)
    stock = spec.causal_lm_class(config)
    rebuilt = spec.per_layer_causal_lm_class(prune_model(stock, PruningPlan.full(config)).config)

    def shape(module):
        return {k for k in vars(module) if not k.startswith("_")}, set(dict(module.named_children()))

    assert shape(rebuilt.model) == shape(stock.model)
    assert shape(rebuilt) == shape(stock)
    assert [type(layer) for layer in rebuilt.model.layers] == [type(layer) for layer in stock.model.layers]
