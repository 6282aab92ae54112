"""Allocation: scores -> balanced keep-sets meeting a parameter target."""

from __future__ import annotations

import pytest
import torch

from optimum_resp.accounting import decoder_linear_params
from optimum_resp.allocation import allocate, max_removable_params
from optimum_resp.architectures import get_architecture, layer_sizes
from optimum_resp.importance.base import LayerScores
from optimum_resp.runtimes import ExportConfig
from optimum_resp.surgery import pruned_config, validate_plan
from optimum_resp.testing_utils import tiny_config


def export(**settings) -> ExportConfig:
    """An export section that protects no layer unless told (the tests pick their own)."""
    return ExportConfig(**{"protected_layers": [], **settings})


def random_scores(config, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        LayerScores(
            query_heads=torch.rand(s.num_attention_heads, generator=gen, dtype=torch.float64),
            kv_heads=torch.rand(s.num_key_value_heads, generator=gen, dtype=torch.float64),
            channels=torch.rand(s.intermediate_size, generator=gen, dtype=torch.float64),
        )
        for s in layer_sizes(config)
    ]


def removed_params(config, plan) -> int:
    return sum(decoder_linear_params(config)) - sum(
        decoder_linear_params(pruned_config(config, plan, "per_layer"))
    )


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("normalization", ["resp", "params", "none"])
@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_plans_are_valid_and_meet_the_target(model_type, allocation, normalization, sparsity):
    config = tiny_config(model_type)
    dense = sum(decoder_linear_params(config))
    target = int(sparsity * dense)
    plan = allocate(
        config, random_scores(config), target, export(allocation=allocation), normalization=normalization
    )
    validate_plan(plan, config)
    removed = removed_params(config, plan)
    spec = get_architecture(config)
    cost = spec.structure_param_costs(config)
    biggest_step = max(
        cost["kv_heads"] + 2 * cost["query_heads"], 4 * cost["query_heads"], cost["channels"]
    ) * (len(layer_sizes(config)) if allocation == "uniform" else 1)
    assert target <= removed < target + biggest_step
    if allocation == "uniform":
        assert plan.is_uniform


def test_global_allocation_prunes_the_least_important_layer_first():
    config = tiny_config("qwen3")
    scores = random_scores(config)
    scores[2].channels *= 1e-6  # layer 2's MLP barely matters
    plan = allocate(config, scores, 20 * 3 * config.hidden_size, export(), structures=["channels"])
    assert [len(k.channels) for k in plan.layers] == [96, 96, 76, 96]
    # and the channels removed are the lowest-scoring ones of that layer
    removed = set(range(96)) - set(plan.layers[2].channels)
    assert removed == set(scores[2].channels.argsort()[:20].tolist())


def test_head_steps_remove_the_weakest_head_of_every_group():
    config = tiny_config("qwen3")  # 8 heads, 4 KV groups: 2 heads per group
    scores = random_scores(config)
    for s in scores:
        s.channels += 100.0  # keep channels out of it
        s.kv_heads += 100.0  # and whole groups
    weakest = [0, 3, 4, 7]  # one per group (groups are heads {0,1}, {2,3}, {4,5}, {6,7})
    scores[1].query_heads[weakest] = -1.0
    plan = allocate(config, scores, 1, export(), structures=["query_heads", "kv_heads", "channels"])
    assert plan.layers[1].query_heads == (1, 2, 5, 6)
    assert plan.layers[1].kv_heads == (0, 1, 2, 3)
    validate_plan(plan, config)


def test_group_step_removes_a_whole_kv_group():
    config = tiny_config("qwen3")
    scores = random_scores(config)
    for s in scores:
        s.channels += 100.0
        s.query_heads += 100.0
        s.kv_heads += 100.0
    scores[0].kv_heads[2] = 0.0
    scores[0].query_heads[[4, 5]] = 0.0
    plan = allocate(config, scores, 1, export())
    assert plan.layers[0].kv_heads == (0, 1, 3)
    assert plan.layers[0].query_heads == (0, 1, 2, 3, 6, 7)


def test_protected_layers_are_never_pruned():
    config = tiny_config("qwen3", num_hidden_layers=10)
    protected = [0, 9]
    scores = random_scores(config)
    scores[0].channels *= 0  # even if they look unimportant
    plan = allocate(
        config, scores, int(0.4 * sum(decoder_linear_params(config))), export(protected_layers=protected)
    )
    full = layer_sizes(config)[0]
    for i in protected:
        assert plan.layers[i].sizes == full
    assert all(plan.layers[i].sizes != full for i in range(1, 9))


def test_the_maximum_leaves_every_layer_minimal_and_more_is_refused():
    config = tiny_config("llama")
    limit = max_removable_params(config, protected=[3])
    plan = allocate(config, random_scores(config), limit, export(protected_layers=[3]))
    for i, keep in enumerate(plan.layers[:3]):
        assert (len(keep.query_heads), len(keep.kv_heads), len(keep.channels)) == (1, 1, 1), i
    assert removed_params(config, plan) == limit
    with pytest.raises(ValueError, match=r"Cannot remove .* with protected layers \[3\].*at most"):
        allocate(config, random_scores(config), limit + 1, export(protected_layers=[3]))


def test_bad_arguments_are_refused():
    config = tiny_config("qwen3")
    scores = random_scores(config)
    with pytest.raises(ValueError, match="scores for 3 layers; the model has 4"):
        allocate(config, scores[:3], 10, export())
    with pytest.raises(ValueError, match="structures must be a non-empty subset"):
        allocate(config, scores, 10, export(), structures=["rows"])
    with pytest.raises(ValueError, match="allocation must be"):
        allocate(config, scores, 10, export(allocation="random"))
    with pytest.raises(ValueError, match="normalization must be"):
        allocate(config, scores, 10, export(), normalization="mean")
    bad = list(scores)
    bad[1] = LayerScores(bad[1].query_heads[:4], bad[1].kv_heads, bad[1].channels)
    with pytest.raises(ValueError, match="Layer 1: scores have shapes"):
        allocate(config, bad, 10, export())


@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("multiple", [8, 32, 64])
def test_channel_multiple_keeps_mlp_widths_multiples_and_drops_the_weakest(allocation, multiple):
    # 100 channels (not a multiple of 8/32/64): the first step trims the remainder, later steps whole blocks.
    config = tiny_config("qwen3", intermediate_size=100)
    scores = random_scores(config, seed=3)
    target = int(0.6 * max_removable_params(config, structures=["channels"], channel_multiple=multiple))
    plan = allocate(
        config,
        scores,
        target,
        export(allocation=allocation, channel_multiple=multiple),
        structures=["channels"],
    )
    validate_plan(plan, config)
    assert removed_params(config, plan) >= target
    for keep, sc in zip(plan.layers, scores):
        width = len(keep.channels)
        assert width == 100 or width % multiple == 0, width
        if width < 100:  # what went is exactly the weakest channels of the layer
            dropped = set(range(100)) - set(keep.channels)
            assert max(sc.channels[sorted(dropped)]) <= min(sc.channels[list(keep.channels)])


def test_channel_multiple_limits_and_errors():
    config = tiny_config("qwen3", intermediate_size=100)
    cost = get_architecture(config).structure_param_costs(config)
    one = max_removable_params(config, structures=["channels"])
    assert one == 4 * 99 * cost["channels"]
    limit = max_removable_params(config, structures=["channels"], channel_multiple=32)
    assert limit == 4 * (100 - 32) * cost["channels"]  # every layer can go down to one block of 32
    plan = allocate(
        config, random_scores(config), limit, export(channel_multiple=32), structures=["channels"]
    )
    assert [len(k.channels) for k in plan.layers] == [32] * 4
    with pytest.raises(ValueError, match="channel_multiple 32, at most"):
        allocate(
            config, random_scores(config), limit + 1, export(channel_multiple=32), structures=["channels"]
        )
    with pytest.raises(ValueError, match="channel_multiple must be an integer >= 1"):
        allocate(config, random_scores(config), 10, export(channel_multiple=0))
    # A layer narrower than the multiple cannot take a step at all.
    assert max_removable_params(config, structures=["channels"], channel_multiple=128) == 0
