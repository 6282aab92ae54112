"""Baseline criteria (magnitude, Wanda-sp, FLAP) against brute force, and FLAP's bias compensation."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from optimum_resp.allocation import allocate
from optimum_resp.architectures import get_architecture, layer_sizes
from optimum_resp.compensation import check_bias_compensation
from optimum_resp.configuration_resp import RESPConfig
from optimum_resp.importance import (
    SCORERS,
    FeatureStats,
    FLAPScorer,
    MagnitudeScorer,
    WandaSPScorer,
    collect_input_stats,
    get_scorer,
)
from optimum_resp.importance.data import IGNORE_INDEX
from optimum_resp.pruner import RESPPruner
from optimum_resp.runtimes import ExportConfig
from optimum_resp.surgery import LayerKeep, PruningPlan, PruningPlanError, prune_model
from optimum_resp.testing_utils import random_plan, tiny_config

ARCHS = ["qwen3", "llama"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_examples(n: int = 4, seed: int = 0, vocab: int = 128):
    """Decode-only examples of different lengths: labels -100 on a 4-token prompt."""
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        ids = torch.randint(3, vocab, (7 + 2 * i,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 4 + ids[4:]})
    return examples


def captured_inputs(model, examples, positions: str = "labelled"):
    """Brute force: every linear's full input, one unpadded example at a time, selected rows only."""
    spec = get_architecture(model)
    layers = model.get_submodule(spec.layers_path)
    paths = [s.module for slices in spec.structures.values() for s in slices]
    store: dict[tuple[int, str], list[torch.Tensor]] = {}
    current: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        for path in paths:

            def hook(module, args, key=(i, path)):
                x = args[0].reshape(-1, args[0].shape[-1])
                store.setdefault(key, []).append(x[current["mask"]].double())

            handles.append(layer.get_submodule(path).register_forward_pre_hook(hook))
    with torch.no_grad():
        for e in examples:
            labels = torch.tensor(e["labels"])
            current["mask"] = (
                labels.ne(IGNORE_INDEX) if positions == "labelled" else torch.ones_like(labels).bool()
            )
            model(torch.tensor([e["input_ids"]]), use_cache=False)
    for h in handles:
        h.remove()
    return {key: torch.cat(v) for key, v in store.items()}


def brute_scores(model, criterion: str, inputs=None):
    """Per layer {structure: scores}, computed structure by structure from the definitions."""
    spec = get_architecture(model)
    layers = model.get_submodule(spec.layers_path)
    sizes = layer_sizes(model.config)
    return [
        brute_layer(spec, layer, size, spec.head_dim(model.config), criterion, inputs, i)
        for i, (layer, size) in enumerate(zip(layers, sizes))
    ]


def brute_layer(spec, layer, size, d, criterion, inputs, i):
    paths = (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj, spec.gate_proj, spec.up_proj, spec.down_proj)
    mod = {p: layer.get_submodule(p) for p in paths}
    W = {p: m.weight.detach().double() for p, m in mod.items()}
    b = {p: m.bias.detach().double() for p, m in mod.items() if m.bias is not None}
    norm = {p: inputs[(i, p)].norm(dim=0) for p in mod} if inputs else {}
    var = {p: inputs[(i, p)].var(dim=0) for p in mod} if inputs else {}

    def structure(out_paths, in_paths, sl):
        if criterion == "magnitude":
            parts = [W[p][sl].flatten() for p in out_paths] + [b[p][sl] for p in out_paths if p in b]
            parts += [W[p][:, sl].flatten() for p in in_paths]
            return torch.cat(parts).square().sum().item()
        if criterion == "wanda":
            total = sum((W[p][sl].abs() * norm[p]).sum() for p in out_paths)
            return (total + sum((W[p][:, sl].abs() * norm[p][sl]).sum() for p in in_paths)).item()
        return sum((var[p][sl] * W[p][:, sl].square().sum(dim=0)).sum() for p in in_paths).item()

    heads = [
        structure([spec.q_proj], [spec.o_proj], slice(h * d, (h + 1) * d))
        for h in range(size.num_attention_heads)
    ]
    if criterion == "flap":  # FLAP scores a KV group as the sum of its query heads
        per = size.heads_per_group
        kv = [sum(heads[g * per : (g + 1) * per]) for g in range(size.num_key_value_heads)]
    else:
        kv = [
            structure([spec.k_proj, spec.v_proj], [], slice(g * d, (g + 1) * d))
            for g in range(size.num_key_value_heads)
        ]
    channels = [
        structure([spec.gate_proj, spec.up_proj], [spec.down_proj], slice(c, c + 1))
        for c in range(size.intermediate_size)
    ]
    return {"query_heads": heads, "kv_heads": kv, "channels": channels}


def assert_scores_equal(scores, expected):
    assert len(scores) == len(expected)
    for layer, exp in zip(scores, expected):
        for kind in ("query_heads", "kv_heads", "channels"):
            torch.testing.assert_close(
                layer[kind], torch.tensor(exp[kind], dtype=torch.float64), rtol=2e-5, atol=1e-7
            )


# ------------------------------------------------------------------------------------------------
# Scores against brute force.
# ------------------------------------------------------------------------------------------------


def test_scorers_are_registered_with_what_they_need():
    assert {"magnitude", "wanda-sp", "flap", "taylor"} <= set(SCORERS)
    assert isinstance(get_scorer("wanda-sp"), WandaSPScorer) and isinstance(get_scorer("flap"), FLAPScorer)
    assert isinstance(get_scorer("magnitude"), MagnitudeScorer)
    assert [SCORERS[n].requires for n in ("magnitude", "wanda-sp", "flap")] == [
        "weights",
        "activations",
        "activations",
    ]
    assert get_scorer("wanda-sp", positions="all", batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="positions"):
        get_scorer("flap", positions="prompt")


@pytest.mark.parametrize("model_type", ARCHS)
def test_magnitude_is_the_squared_l2_norm_of_each_structure(model_type):
    model = tiny_model(model_type, random_biases=True, num_hidden_layers=2)
    assert_scores_equal(MagnitudeScorer().score(model), brute_scores(model, "magnitude"))


@pytest.mark.parametrize("model_type", ARCHS)
def test_wanda_sp_and_flap_match_brute_force(model_type):
    model = tiny_model(model_type, random_biases=True, num_hidden_layers=2)
    examples = make_examples()
    inputs = captured_inputs(model, examples)
    # Batched with padding (batch 3 over 4 examples of different lengths): padding must not count.
    wanda = WandaSPScorer(batch_size=3, progress=False)
    assert_scores_equal(wanda.score(model, examples), brute_scores(model, "wanda", inputs))
    assert wanda.last_stats.num_tokens == sum(len(e["input_ids"]) - 4 for e in examples)
    assert wanda.last_stats.num_batches == 2
    flap = FLAPScorer(batch_size=2, progress=False)
    assert_scores_equal(flap.score(model, examples), brute_scores(model, "flap", inputs))
    spec = get_architecture(model)
    for i in range(2):  # the means kept for bias compensation are the input means of o_proj / down_proj
        for path in (spec.o_proj, spec.down_proj):
            torch.testing.assert_close(flap.feature_means[i][path], inputs[(i, path)].mean(dim=0))


def test_labelled_positions_differ_from_all_positions():
    model = tiny_model("qwen3", random_biases=True, num_hidden_layers=2)
    examples = make_examples()
    labelled = WandaSPScorer(progress=False).score(model, examples)
    everything = WandaSPScorer(positions="all", batch_size=4, progress=False)
    all_scores = everything.score(model, examples)
    assert_scores_equal(all_scores, brute_scores(model, "wanda", captured_inputs(model, examples, "all")))
    assert everything.last_stats.num_tokens == sum(len(e["input_ids"]) for e in examples)
    assert not torch.allclose(labelled[1].channels, all_scores[1].channels)
    flap_labelled = FLAPScorer(progress=False).score(model, examples)
    flap_all = FLAPScorer(positions="all", progress=False).score(model, examples)
    assert not torch.allclose(flap_labelled[0].query_heads, flap_all[0].query_heads)


def test_feature_stats_stay_accurate_with_a_large_offset():
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(3000, 5, generator=gen, dtype=torch.float64) * torch.arange(1, 6)
    stats = FeatureStats.zeros(5)
    for chunk in (x[:1], x[1:700], x[700:701], x[701:]):  # uneven blocks, one of a single row
        stats.update(chunk.float())
    x32 = x.float().double()  # what the hook sees: the activations' own precision
    torch.testing.assert_close(stats.variance, x32.var(dim=0), rtol=1e-9, atol=0)
    torch.testing.assert_close(stats.mean, x32.mean(dim=0), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.norm, x32.norm(dim=0), rtol=1e-12, atol=0)
    assert stats.count == 3000 and torch.allclose(stats.sum, x32.sum(dim=0))


def test_collection_restores_the_model_and_counts_only_labelled_tokens():
    model = tiny_model("qwen3", random_biases=True, num_hidden_layers=2).train()
    stats, run = collect_input_stats(model, [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}])
    assert model.training and not any(m._forward_pre_hooks for m in model.modules())
    assert run.num_tokens == 2 and stats[(1, "mlp.down_proj")].count == 2
    assert not stats[(0, "self_attn.q_proj")].mean.is_inference()
    assert stats[(0, "self_attn.q_proj")].mean.device.type == "cpu"


def test_scorers_work_on_a_per_layer_pruned_model():
    model = tiny_model("llama", random_biases=True, num_hidden_layers=2)
    pruned = prune_model(
        model, random_plan(model.config, 0.4, per_layer=True, spread=0.9), export="per_layer"
    )
    sizes = layer_sizes(pruned.config)
    assert sizes[0] != sizes[1]
    examples = make_examples(3)
    inputs = captured_inputs(pruned, examples)
    for scorer, criterion in (
        (MagnitudeScorer(), "magnitude"),
        (WandaSPScorer(batch_size=2, progress=False), "wanda"),
        (FLAPScorer(progress=False), "flap"),
    ):
        scores = scorer.score(pruned, examples)
        assert_scores_equal(scores, brute_scores(pruned, criterion, inputs))
        plan = allocate(
            pruned.config, scores, 5000, ExportConfig(protected_layers=[]), normalization="params"
        )
        prune_model(pruned, plan, export="per_layer")


# ------------------------------------------------------------------------------------------------
# FLAP bias compensation.
# ------------------------------------------------------------------------------------------------


def layer_output_means(model, pruned, plan, inputs):
    """Per layer and compensated linear: (dense output mean, pruned output mean) on the dense inputs."""
    spec = get_architecture(model)
    d = spec.head_dim(model.config)
    out = {}
    with torch.no_grad():
        for i, keep in enumerate(plan.layers):
            for path, kept in (
                (spec.o_proj, [h * d + j for h in keep.query_heads for j in range(d)]),
                (spec.down_proj, list(keep.channels)),
            ):
                x = inputs[(i, path)].float()
                dense = model.get_submodule(spec.layers_path)[i].get_submodule(path)(x)
                small = pruned.get_submodule(spec.layers_path)[i].get_submodule(path)(x[:, kept])
                out[(i, path)] = (dense.double().mean(0), small.double().mean(0))
    return out


@pytest.mark.parametrize("model_type", ARCHS)
def test_compensation_keeps_each_layers_mean_output(model_type, tmp_path):
    model = tiny_model(model_type, random_biases=True, num_hidden_layers=2)
    examples = make_examples()
    scorer = FLAPScorer(progress=False)
    scorer.score(model, examples)
    plan = random_plan(model.config, 0.4, per_layer=True)
    spec = get_architecture(model)
    dense_o_bias = None if model_type == "qwen3" else model.model.layers[0].self_attn.o_proj.bias.clone()
    plain = prune_model(model, plan, export="per_layer")
    compensated = scorer.after_surgery(model, prune_model(model, plan, export="per_layer"), plan)
    inputs = captured_inputs(model, examples)
    for dense_mean, plain_mean in layer_output_means(model, plain, plan, inputs).values():
        assert not torch.allclose(dense_mean, plain_mean, atol=1e-4)
    for dense_mean, comp_mean in layer_output_means(model, compensated, plan, inputs).values():
        torch.testing.assert_close(comp_mean, dense_mean, atol=2e-5, rtol=1e-4)
    if dense_o_bias is not None:  # the dense model's (shared) biases are untouched
        assert torch.equal(model.model.layers[0].self_attn.o_proj.bias, dense_o_bias)
    if model_type == "qwen3":
        assert compensated.config.o_proj_bias and compensated.config.down_proj_bias
        assert plain.model.layers[0].self_attn.o_proj.bias is None
    assert all(layer.get_submodule(spec.down_proj).bias is not None for layer in compensated.model.layers)

    # A compensated model saves and reloads with its biases, and pruning it again keeps them.
    compensated.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(3, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, compensated(x).logits)
        assert not torch.equal(plain(x).logits, compensated(x).logits)
    again = prune_model(compensated, random_plan(compensated.config, 0.2, per_layer=True, seed=3))
    for a, b in zip(again.model.layers, compensated.model.layers):
        assert torch.equal(a.self_attn.o_proj.bias, b.self_attn.o_proj.bias)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys, json, torch

    class Block:  # any import of optimum_resp fails loudly
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "optimum_resp":
                raise ImportError("optimum_resp must not be imported here")
    sys.meta_path.insert(0, Block())

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
    print(json.dumps(logits.tolist()))
    """
)


@pytest.mark.slow
def test_compensated_model_loads_with_trust_remote_code_without_optimum_resp(tmp_path):
    model = tiny_model("qwen3", random_biases=True, num_hidden_layers=2)
    examples = make_examples(2)
    scorer = FLAPScorer(progress=False)
    scorer.score(model, examples)
    plan = random_plan(model.config, 0.4, per_layer=True)
    compensated = scorer.after_surgery(model, prune_model(model, plan), plan)
    compensated.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["o_proj_bias"] is True and saved["down_proj_bias"] is True
    x = torch.randint(3, 128, (1, 6))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(tmp_path), json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
            "HF_HOME": str(tmp_path / "hf"),
            "OMP_NUM_THREADS": "1",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = compensated(x).logits
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected)


def test_uniform_compensation_needs_native_biases():
    qwen3 = tiny_model("qwen3", random_biases=True, num_hidden_layers=2)
    examples = make_examples(2)
    scorer = FLAPScorer(progress=False)
    scorer.score(qwen3, examples)
    plan = random_plan(qwen3.config, 0.3)
    with pytest.raises(ValueError, match="export='per_layer'"):
        check_bias_compensation(qwen3.config, "uniform")
    check_bias_compensation(qwen3.config, "per_layer")
    with pytest.raises(PruningPlanError, match="export='per_layer'"):
        scorer.after_surgery(qwen3, prune_model(qwen3, plan, export="uniform"), plan)
    # A compensated per_layer model cannot become a stock Qwen3 (it would drop the biases on reload).
    compensated = scorer.after_surgery(qwen3, prune_model(qwen3, plan), plan)
    with pytest.raises(PruningPlanError, match="export='per_layer'"):
        prune_model(compensated, PruningPlan.full(compensated.config), export="uniform")
    assert (
        FLAPScorer(bias_compensation=False)
        .after_surgery(qwen3, prune_model(qwen3, plan), plan)
        .config.to_dict()
        .get("o_proj_bias")
        is None
    )

    # Llama with attention_bias and mlp_bias has the biases: uniform works, and only pruned layers change.
    llama = tiny_model("llama", random_biases=True, num_hidden_layers=2)
    check_bias_compensation(llama.config, "uniform")
    scorer.score(llama, examples)
    sizes = layer_sizes(llama.config)[0]
    keep = LayerKeep(tuple(range(2, 8)), (1, 2, 3), tuple(range(10, 96)))
    plan = PruningPlan((LayerKeep.full(sizes), keep))
    uniform_plan = PruningPlan((keep, keep))
    stock = scorer.after_surgery(llama, prune_model(llama, uniform_plan, export="uniform"), uniform_plan)
    assert type(stock).__name__ == "LlamaForCausalLM"
    inputs = captured_inputs(llama, examples)
    for dense_mean, comp_mean in layer_output_means(llama, stock, uniform_plan, inputs).values():
        torch.testing.assert_close(comp_mean, dense_mean, atol=2e-5, rtol=1e-4)
    partial = scorer.after_surgery(llama, prune_model(llama, plan), plan)
    assert torch.equal(partial.model.layers[0].mlp.down_proj.bias, llama.model.layers[0].mlp.down_proj.bias)
    assert not torch.equal(
        partial.model.layers[1].mlp.down_proj.bias, llama.model.layers[1].mlp.down_proj.bias
    )


# ------------------------------------------------------------------------------------------------
# End to end through RESPPruner.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", ["magnitude", "wanda-sp", "flap"])
def test_pruner_runs_with_each_baseline(importance):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer, num_hidden_layers=3)
    resp_config = RESPConfig(
        importance=importance,
        target_sparsity=0.2,
        num_stages=2,
        regeneration_milestones=[],
        num_calibration_prompts=3,
        generation={"max_new_tokens": 6, "batch_size": 3},
        batch_size=2,
        protected_layers=[0],
        allow_unfinished_traces=True,
    )
    pruner = RESPPruner(model, tokenizer, resp_config, generator="hf")
    assert pruner.scorer.name == importance
    result = pruner.prune([f"What is {a} plus {b}?" for a, b in [(2, 3), (7, 5), (10, 4)]])
    assert [s.stage for s in result.stages] == [1, 2]
    assert 0.2 <= result.report.sparsity < 0.3
    assert result.report.size.pruned_layers[0] == result.report.size.dense_layers[0]
    assert layer_sizes(result.model.config) != layer_sizes(model.config)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
def test_the_spec_names_the_biases_the_per_layer_classes_build(model_type):
    """`ArchitectureSpec.added_bias_flags` and the per_layer classes (which import only transformers) agree."""
    config = tiny_config(model_type, attention_bias=False, mlp_bias=False)
    spec = get_architecture(config)
    model = prune_model(AutoModelForCausalLM.from_config(config), random_plan(config, 0.3, per_layer=True))
    assert not any(
        layer.get_submodule(p).bias is not None for layer in model.model.layers for p in spec.added_bias_flags
    )
    for path, flag in spec.added_bias_flags.items():
        flagged = copy.deepcopy(model.config)
        setattr(flagged, flag, True)
        rebuilt = type(model)(flagged)
        assert all(layer.get_submodule(path).bias is not None for layer in rebuilt.model.layers), (path, flag)
        others = [p for p in spec.added_bias_flags if p != path]
        assert not any(
            layer.get_submodule(p).bias is not None for layer in rebuilt.model.layers for p in others
        )
