"""Memory: the scoring pass's estimate and refusal, and `release_heap` (freed heap goes back to the OS)."""

from __future__ import annotations

import platform

import pytest
import torch
from conftest import tiny_model

from optimum_resp import memory
from optimum_resp.memory import (
    ScoringMemoryError,
    check_scoring_memory,
    estimate_scoring_memory,
    release_heap,
)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(
    platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only"
)
def test_release_heap_returns_freed_blocks_that_malloc_keeps():
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one stays alive, so the free
    # space below it cannot shrink the heap from the top and stays resident until malloc_trim.
    blocks = [bytearray(b"x" * (64 * 1024)) for _ in range(2048)]  # 128 MiB, touched
    keep = blocks[-1]
    before = _rss_bytes()
    del blocks
    held = _rss_bytes()
    assert held > before - 32 * 2**20  # free() gave (almost) nothing back
    assert release_heap() is True
    assert _rss_bytes() < held - 96 * 2**20  # most of the 128 MiB is back with the OS
    assert len(keep) == 64 * 1024


def _measured_kept_bytes(model, batch: int, length: int, bf16_autocast: bool = False) -> int:
    """Bytes autograd keeps for backward in one real forward of `batch` x `length` tokens, counted directly."""
    from optimum_resp.importance.base import prunable_linears

    prunable = {id(p) for lin in prunable_linears(model) for _, p in lin.params}
    for p in model.parameters():
        p.requires_grad_(id(p) in prunable)
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t.detach()  # the tensor itself could close a reference cycle through its grad_fn

    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    for p in model.parameters():
        p.requires_grad_(True)
    return sum(storages.values())


@pytest.mark.parametrize(
    "batch,length,bf16", [(1, 300, False), (3, 257, False), (4, 700, False), (3, 400, True)]
)
def test_scoring_estimate_extrapolates_the_kept_bytes_exactly(batch, length, bf16):
    """The probe passes are short; what they fix must hold at the real length and batch (and under bf16
    autocast, whose bf16 copies of the weights are kept for the backward pass too)."""
    model = tiny_model()
    estimate = estimate_scoring_memory(model, batch, length, bf16_autocast=bf16)
    measured = _measured_kept_bytes(model, batch, length, bf16)
    assert estimate.activation_bytes == pytest.approx(measured, rel=0.02)
    if bf16:  # half-size activations, but not half the total: the weight copies and float32 parts stay
        assert measured < 0.9 * _measured_kept_bytes(model, batch, length)
    assert estimate.transient_bytes >= batch * length * model.config.vocab_size * 4  # the logits' gradient
    assert estimate.peak_bytes == estimate.activation_bytes + estimate.transient_bytes
    assert all(p.requires_grad for p in model.parameters())  # the probe leaves the model as it found it


def test_scoring_estimate_scales_with_batch_and_length_and_checkpointing_cuts_it():
    model = tiny_model(num_hidden_layers=4)
    base = estimate_scoring_memory(model, 2, 512)
    assert estimate_scoring_memory(model, 4, 512).activation_bytes == pytest.approx(
        2 * base.activation_bytes, rel=0.01
    )
    assert estimate_scoring_memory(model, 2, 1024).activation_bytes > 1.9 * base.activation_bytes
    ckpt = estimate_scoring_memory(model, 2, 512, gradient_checkpointing=True)
    assert ckpt.activation_bytes < 0.6 * base.activation_bytes and ckpt.peak_bytes < base.peak_bytes
    assert "batch 2 x 512 tokens" in base.describe()


def test_a_scoring_pass_that_cannot_fit_is_refused_with_its_fixes(monkeypatch):
    model = tiny_model()
    need = estimate_scoring_memory(model, 4, 1000).peak_bytes
    monkeypatch.setattr(memory, "free_memory", lambda device: need // 2)
    with pytest.raises(ScoringMemoryError, match="batch 4 x 1000 tokens") as err:
        check_scoring_memory(model, 4, 1000, gradient_checkpointing=False)
    message = str(err.value)
    assert "batch_size" in message and "gradient checkpointing" in message and "Nothing was run" in message
    assert isinstance(err.value, ValueError)  # bad input: the CLI exits 2
    assert (
        check_scoring_memory(model, 1, 100, gradient_checkpointing=False).batch_size == 1
    )  # a small one fits
    room = int(need * memory.HEADROOM) + 10  # the estimate with its headroom fits ...
    monkeypatch.setattr(memory, "free_memory", lambda device: room)
    assert check_scoring_memory(model, 4, 1000, gradient_checkpointing=False).peak_bytes == need
    with pytest.raises(ScoringMemoryError, match="plus"):  # ... but not beside the pruned copy
        check_scoring_memory(model, 4, 1000, gradient_checkpointing=False, reserve_bytes=100)


def test_unset_gradient_checkpointing_is_chosen_from_the_estimate(monkeypatch):
    model = tiny_model()
    plain = estimate_scoring_memory(model, 4, 1000, False).peak_bytes
    ckpt = estimate_scoring_memory(model, 4, 1000, True).peak_bytes
    assert ckpt < plain
    h = memory.HEADROOM
    assert ckpt * h < plain
    for free, expected in ((plain * h + 1, False), (plain * h - 1, True), (ckpt * h + 1, True)):
        monkeypatch.setattr(memory, "free_memory", lambda device, free=free: free)
        assert check_scoring_memory(model, 4, 1000).gradient_checkpointing is expected
    monkeypatch.setattr(memory, "free_memory", lambda device: ckpt * h - 1)
    with pytest.raises(ScoringMemoryError) as err:  # fits neither way: no checkpointing to suggest
        check_scoring_memory(model, 4, 1000)
    assert "gradient checkpointing" not in str(err.value) and "batch_size" in str(err.value)
    monkeypatch.setattr(memory, "free_memory", lambda device: 10 * plain)
    assert check_scoring_memory(model, 4, 1000, gradient_checkpointing=True).gradient_checkpointing  # forced


def test_the_probe_frees_what_it_ran():
    """Nothing of the probe passes outlives them: a saved tensor returned as is by the pack hook would close
    a reference cycle through its own grad_fn that is never freed (1.6 GiB a call on the 0.6B shape)."""
    model = tiny_model(vocab_size=32000)
    estimate_scoring_memory(model, 2, 512)
    release_heap()
    before = _rss_bytes()
    for _ in range(3):
        estimate_scoring_memory(model, 2, 512)
    release_heap()
    assert _rss_bytes() - before < 64 * 2**20  # leaking, it grew by about 200 MiB here


def test_checkpointed_estimate_keeps_the_head_once_and_the_layer_inputs():
    """With checkpointing the layers keep only their inputs; what the head keeps (the float32 log-softmax of the
    loss) is counted once, not again as the logits' gradient, which is transient."""
    model = tiny_model(vocab_size=32000, num_hidden_layers=4)
    batch, length = 2, 300
    ckpt = estimate_scoring_memory(model, batch, length, gradient_checkpointing=True)
    plain = estimate_scoring_memory(model, batch, length)
    log_softmax = batch * length * model.config.vocab_size * 4
    layer_inputs = 4 * batch * length * model.config.hidden_size * 4
    assert ckpt.activation_bytes == pytest.approx(log_softmax + layer_inputs, rel=0.1)
    assert ckpt.transient_bytes > plain.transient_bytes  # one layer's activations recomputed at a time
    assert ckpt.transient_bytes < plain.transient_bytes + plain.activation_bytes / 4
