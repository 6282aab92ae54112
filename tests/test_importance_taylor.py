"""Decode-only first-order Taylor importance through a Trainer run, checked against plain autograd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from optimum_resp.architectures import get_architecture, layer_sizes
from optimum_resp.importance import (
    SCORERS,
    CalibrationCollator,
    LayerScores,
    TaylorScorer,
    build_examples,
    get_scorer,
    load_scores,
    save_scores,
)
from optimum_resp.importance.taylor import bf16_autocast_supported
from optimum_resp.surgery import prune_model
from optimum_resp.testing_utils import random_plan

WORKER = Path(__file__).with_name("_dist_taylor_worker.py")
REPO = WORKER.parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def make_examples(lengths=(10, 12, 7, 9, 11), prompt_len: int = 4, seed: int = 0, vocab: int = 128):
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt_len + ids[prompt_len:]})
    return examples


def sample_loss(model, example) -> torch.Tensor:
    """Token-mean cross-entropy over the labelled next tokens of one sample (the RESP per-sample loss)."""
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])[1:]
    logits = model(input_ids=ids).logits[0, :-1]
    scored = labels != -100
    return F.cross_entropy(logits[scored], labels[scored])


def structure_taylor(model, weight_grads: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """|W * g| summed per structure, written out slice by slice (independently of the library helpers)."""
    spec = get_architecture(model)
    d = spec.head_dim(model.config)
    out = []
    for i, layer in enumerate(model.get_submodule(spec.layers_path)):

        def t(path, attr="weight", layer=layer, i=i):
            param = getattr(layer.get_submodule(path), attr)
            if param is None:
                return None
            return (param.detach().double() * weight_grads[f"{i}.{path}.{attr}"].double()).abs()

        q, k, v, o = t(spec.q_proj), t(spec.k_proj), t(spec.v_proj), t(spec.o_proj)
        gate, up, down = t(spec.gate_proj), t(spec.up_proj), t(spec.down_proj)
        heads = q.shape[0] // d
        groups = k.shape[0] // d
        qh = torch.stack(
            [q[h * d : (h + 1) * d].sum() + o[:, h * d : (h + 1) * d].sum() for h in range(heads)]
        )
        kv = torch.stack([k[g * d : (g + 1) * d].sum() + v[g * d : (g + 1) * d].sum() for g in range(groups)])
        ch = gate.sum(1) + up.sum(1) + down.sum(0)
        for path, target, unit in ((spec.q_proj, "qh", d), (spec.k_proj, "kv", d), (spec.v_proj, "kv", d)):
            bias = t(path, "bias")
            if bias is not None:
                add = bias.view(-1, unit).sum(1)
                if target == "qh":
                    qh = qh + add
                else:
                    kv = kv + add
        for path in (spec.gate_proj, spec.up_proj):
            bias = t(path, "bias")
            if bias is not None:
                ch = ch + bias
        out.append({"query_heads": qh, "kv_heads": kv, "channels": ch})
    return out


def per_sample_grads(model, examples) -> list[dict[str, torch.Tensor]]:
    """Plain-autograd gradients of each sample's loss w.r.t. every prunable weight and bias."""
    spec = get_architecture(model)
    named = {}
    for i, layer in enumerate(model.get_submodule(spec.layers_path)):
        paths = (
            spec.q_proj,
            spec.k_proj,
            spec.v_proj,
            spec.o_proj,
            spec.gate_proj,
            spec.up_proj,
            spec.down_proj,
        )
        for path in paths:
            module = layer.get_submodule(path)
            named[f"{i}.{path}.weight"] = module.weight
            if module.bias is not None:
                named[f"{i}.{path}.bias"] = module.bias
    grads = []
    for example in examples:
        g = torch.autograd.grad(sample_loss(model, example), list(named.values()))
        grads.append(dict(zip(named, g)))
    return grads


def reference_all(model, examples):
    """RESP's estimator: |W * (mean over samples of the per-sample gradient)| per structure."""
    grads = per_sample_grads(model, examples)
    mean = {k: torch.stack([g[k] for g in grads]).mean(0) for k in grads[0]}
    return structure_taylor(model, mean)


def reference_per_sample(model, examples):
    """Mean over samples of the per-sample |W * g_i| per structure (abs_after='batch' at batch size 1)."""
    per = [structure_taylor(model, g) for g in per_sample_grads(model, examples)]
    return [{k: torch.stack([p[i][k] for p in per]).mean(0) for k in per[0][i]} for i in range(len(per[0]))]


def assert_scores_close(scores, reference, rtol=1e-4, atol=1e-9):
    assert len(scores) == len(reference)
    for got, want in zip(scores, reference):
        for name in ("query_heads", "kv_heads", "channels"):
            assert got[name].dtype == torch.float64 and got[name].device.type == "cpu"
            torch.testing.assert_close(got[name], want[name].double(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------------
def test_registry_and_json_roundtrip(tmp_path):
    assert SCORERS["taylor"] is TaylorScorer and TaylorScorer.name == "taylor"
    assert TaylorScorer.requires == "gradients"
    scorer = get_scorer("taylor", abs_after="all", progress=False)
    assert isinstance(scorer, TaylorScorer) and scorer.abs_after == "all"
    with pytest.raises(ValueError, match="Unknown importance criterion 'nope'.*taylor"):
        get_scorer("nope")
    with pytest.raises(ValueError, match="abs_after"):
        TaylorScorer(abs_after="step")

    layer = LayerScores(query_heads=[1, 2.5], kv_heads=torch.tensor([3.0]), channels=[0.125, 4, 5])
    assert layer.query_heads.dtype == torch.float64 and layer["channels"].tolist() == [0.125, 4.0, 5.0]
    back = LayerScores.from_dict(json.loads(json.dumps(layer.to_dict())))
    assert torch.equal(back.query_heads, layer.query_heads) and torch.equal(back.channels, layer.channels)
    save_scores([layer, back], tmp_path / "scores.json", scorer="taylor")
    loaded = load_scores(tmp_path / "scores.json")
    assert len(loaded) == 2 and torch.equal(loaded[1].kv_heads, layer.kv_heads)


def test_build_examples_boundary_labels_and_truncation():
    prompt, completion = [1, 2, 3], [4, 5, 6]
    decode = build_examples([prompt], [completion], loss="decode")
    # The label boundary falls exactly between the ids the model was prompted with and those it generated.
    assert decode[0]["input_ids"] == [1, 2, 3, 4, 5, 6]
    assert decode[0]["labels"] == [-100] * 3 + [4, 5, 6]

    full = build_examples([prompt], [completion], loss="full")
    assert full[0]["labels"] == full[0]["input_ids"] == [1, 2, 3, 4, 5, 6]

    # max_length cuts the completion after the whole prompt; a pair with an empty completion is skipped.
    cut = build_examples([prompt, prompt], [completion, []], loss="decode", max_length=4)
    assert len(cut) == 1 and cut[0]["input_ids"] == [1, 2, 3, 4]
    assert cut[0]["labels"] == [-100, -100, -100, 4]


def test_build_examples_refuses_unusable_input():
    with pytest.raises(ValueError, match="no \\(prompt, completion\\) pairs"):
        build_examples([], [])
    with pytest.raises(ValueError, match="completions are empty.*Generate"):
        build_examples([[1, 2], [1, 3]], [[], []])
    with pytest.raises(ValueError, match="one completion per prompt"):
        build_examples([[1]], [[2], [3]])
    with pytest.raises(ValueError, match="Raise max_length"):
        build_examples([[1, 2, 3]], [[4]], max_length=3)
    with pytest.raises(ValueError, match="loss must be"):
        build_examples([[1]], [[2]], loss="prompt")


def test_collator_right_pads():
    batch = CalibrationCollator(pad_token_id=7)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_all_matches_autograd_reference(model_type):
    """abs_after='all' == |W * mean_i grad(loss_i)| per structure, whatever the batching (5 samples, batch 2)."""
    model = tiny_model(model_type, random_biases=True)
    examples = make_examples()
    scorer = TaylorScorer(abs_after="all", batch_size=2, progress=False, bf16_autocast=False)
    scores = scorer.score(model, examples)
    assert_scores_close(scores, reference_all(model, examples))
    stats = scorer.last_stats
    assert (stats.num_samples, stats.num_batches, stats.world_size) == (5, 3, 1)
    assert stats.num_tokens == sum(len(e["input_ids"]) - 4 for e in examples)
    assert stats.peak_memory_bytes is None and stats.wall_time_s > 0


def test_batch_mode_matches_per_sample_reference():
    """abs_after='batch' at batch size 1 == mean over samples of |W * grad(loss_i)|, and differs from 'all'."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples()
    scores = TaylorScorer(abs_after="batch", batch_size=1, progress=False, bf16_autocast=False).score(
        model, examples
    )
    assert_scores_close(scores, reference_per_sample(model, examples))
    # |mean g| <= mean |g| per weight, strictly somewhere: the two estimators are really different.
    all_scores = TaylorScorer(abs_after="all", batch_size=1, progress=False, bf16_autocast=False).score(
        model, examples
    )
    assert (all_scores[0].channels <= scores[0].channels + 1e-12).all()
    assert not torch.allclose(all_scores[0].channels, scores[0].channels)


def test_loss_is_decode_only_token_mean_per_sample():
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples(lengths=(9, 16, 6))
    # One padded batch of samples of different lengths.
    scorer = TaylorScorer(abs_after="all", batch_size=3, progress=False, bf16_autocast=False)
    decode = scorer.score(model, examples)
    with torch.no_grad():
        hand = torch.stack([sample_loss(model, e) for e in examples]).mean().item()
        token_mean = F.cross_entropy(  # pooling tokens across samples would weight long samples more
            torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0, 3:-1] for e in examples]),
            torch.cat([torch.tensor(e["input_ids"][4:]) for e in examples]),
        ).item()
    assert scorer.last_stats.mean_loss == pytest.approx(hand, rel=1e-5)
    assert abs(hand - token_mean) > 1e-4
    assert scorer.last_stats.num_tokens == 5 + 12 + 2

    # Changing a prompt token's label matters: full-sequence loss gives other scores.
    full_examples = [{"input_ids": e["input_ids"], "labels": list(e["input_ids"])} for e in examples]
    full = scorer.score(model, full_examples)
    assert scorer.last_stats.num_tokens == 8 + 15 + 5
    assert not torch.allclose(full[0].query_heads, decode[0].query_heads, rtol=1e-3)
    assert_scores_close(full, reference_all(model, full_examples))


def test_model_state_restored_after_scoring():
    model = tiny_model("qwen3", random_biases=True)
    model.train()
    model.model.embed_tokens.weight.requires_grad_(False)  # a user's own freezing pattern is kept
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert model.config.use_cache is True
    for mode in ("batch", "all"):
        TaylorScorer(abs_after=mode, batch_size=2, progress=False, bf16_autocast=False).score(
            model, make_examples()
        )
    assert model.config.use_cache is True  # the Trainer's training setting does not leak into exports
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    for param in model.parameters():  # no hook left behind: a later backward keeps its gradients
        assert not getattr(param, "_post_accumulate_grad_hooks", None)
    sample_loss(model, make_examples()[0]).backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_per_layer_pruned_model_with_different_layer_sizes():
    model = tiny_model("qwen2", random_biases=True)
    pruned = prune_model(
        model, random_plan(model.config, 0.4, per_layer=True, seed=3), export="per_layer"
    ).eval()
    sizes = layer_sizes(pruned.config)
    assert len(set(sizes)) > 1
    examples = make_examples(lengths=(8, 11, 6))
    scores = TaylorScorer(abs_after="all", batch_size=2, progress=False, bf16_autocast=False).score(
        pruned, examples
    )
    for layer, size in zip(scores, sizes):
        assert layer.query_heads.shape == (size.num_attention_heads,)
        assert layer.kv_heads.shape == (size.num_key_value_heads,)
        assert layer.channels.shape == (size.intermediate_size,)
    assert_scores_close(scores, reference_all(pruned, examples))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo): each scores its shard; the summed scores equal a 1-process run."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples()  # 5 samples: the shards are uneven (3 and 2), padding must not count
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(tmp_path / "model"),
        str(tmp_path / "examples.json"),
        str(tmp_path / "out.json"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out.json").read_text())

    for mode in ("batch", "all"):
        scorer = TaylorScorer(abs_after=mode, batch_size=1, progress=False, bf16_autocast=False)
        single = scorer.score(model, examples)
        stats = result[mode]["stats"]
        assert stats["world_size"] == 2 and stats["samples_per_process"] == [3, 2]
        assert stats["num_samples"] == 5 and stats["num_batches"] == 5
        assert stats["num_tokens"] == scorer.last_stats.num_tokens
        assert stats["mean_loss"] == pytest.approx(scorer.last_stats.mean_loss, rel=1e-5)
        dist_scores = [LayerScores.from_dict(layer) for layer in result[mode]["scores"]]
        assert_scores_close(
            dist_scores, [{k: s[k] for k in ("query_heads", "kv_heads", "channels")} for s in single]
        )


def test_gradient_checkpointing_gives_the_plain_scores_and_is_switched_off_after():
    """Recomputing activations in the backward pass changes memory, not the scores."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples(lengths=(14, 9, 12, 7))
    for mode in ("batch", "all"):
        plain = TaylorScorer(abs_after=mode, batch_size=2, progress=False, bf16_autocast=False).score(
            model, examples
        )
        ckpt = TaylorScorer(
            abs_after=mode, batch_size=2, progress=False, bf16_autocast=False, gradient_checkpointing=True
        )
        assert_scores_close(ckpt.score(model, examples), plain, rtol=1e-5)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # as it found it


def test_gradient_checkpointing_really_recomputes_in_the_backward_pass(monkeypatch):
    model = tiny_model("qwen3", random_biases=True)
    mlp = type(model.model.layers[0].mlp)
    forward, calls = mlp.forward, []

    def counted(self, *args, **kwargs):  # module hooks do not fire in a recomputation: count the method
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(mlp, "forward", counted)
    layers = model.config.num_hidden_layers
    TaylorScorer(batch_size=1, progress=False, bf16_autocast=False).score(model, make_examples(lengths=(9,)))
    assert len(calls) == layers
    calls.clear()
    TaylorScorer(batch_size=1, progress=False, bf16_autocast=False, gradient_checkpointing=True).score(
        model, make_examples(lengths=(9,))
    )
    assert len(calls) == 2 * layers  # the forward, then each layer again during the backward pass


@pytest.mark.skipif(
    not bf16_autocast_supported(tiny_model("qwen3", random_biases=True)), reason="no bf16 matmuls on this CPU"
)
def test_bf16_autocast_runs_the_matmuls_in_bf16_and_gives_close_scores(monkeypatch):
    """Autocast changes the forward's precision, not what is measured: the scores stay close to float32, the
    gradients reach the float32 weights, and the model's own forward is left as it was."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples(lengths=(14, 9, 12, 7))
    with torch.no_grad():
        before = model(torch.tensor([examples[0]["input_ids"]])).logits
    dtypes = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fp32 = TaylorScorer(batch_size=2, progress=False, bf16_autocast=False).score(model, examples)
    bf16 = TaylorScorer(batch_size=2, progress=False, bf16_autocast=True).score(model, examples)
    handle.remove()
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2
    for got, want in zip(bf16, fp32):
        for name in ("query_heads", "kv_heads", "channels"):
            assert not torch.equal(got[name], want[name])  # really a different precision
            torch.testing.assert_close(got[name], want[name], rtol=0.1, atol=1e-6)
            assert torch.corrcoef(torch.stack([got[name], want[name]]))[0, 1] > 0.98
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([examples[0]["input_ids"]])).logits, before)


@pytest.mark.skipif(
    not bf16_autocast_supported(tiny_model("qwen3", random_biases=True)), reason="no bf16 matmuls on this CPU"
)
def test_bf16_with_checkpointing_keeps_no_cast_cache_and_gives_the_plain_bf16_scores(monkeypatch):
    """Autocast's cache would hold every layer's bf16 weight copy through a checkpointed forward (which keeps
    nothing else of a layer): off there, on for the plain pass (whose backward keeps those copies anyway)."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples(lengths=(14, 9, 12, 7))
    mlp = type(model.model.layers[0].mlp)
    forward, cache = mlp.forward, []

    def seen(self, *args, **kwargs):  # a method patch sees the recomputation too (module hooks do not)
        cache.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(mlp, "forward", seen)
    plain = TaylorScorer(batch_size=2, progress=False, bf16_autocast=True).score(model, examples)
    assert cache and set(cache) == {(True, True)}
    cache.clear()
    ckpt = TaylorScorer(batch_size=2, progress=False, bf16_autocast=True, gradient_checkpointing=True)
    assert_scores_close(ckpt.score(model, examples), plain, rtol=1e-5)
    assert len(cache) == 2 * 2 * model.config.num_hidden_layers  # two batches, each forward and recompute
    assert set(cache) == {(True, False)}


def test_bf16_autocast_default_follows_the_weights_dtype_and_the_device():
    model = tiny_model("qwen3", random_biases=True)
    cpu_bf16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_autocast_supported(model) is cpu_bf16
    assert (
        bf16_autocast_supported(model.to(torch.bfloat16)) is False
    )  # already half precision: nothing to gain


def test_batches_group_similar_lengths_longest_first():
    """Sequences are scored longest first, so a batch pads little (and the largest batch runs first)."""
    model = tiny_model("qwen3", random_biases=True)
    examples = make_examples(lengths=(10, 50, 12, 48))  # in this order, batches of 2 would pad 76 of 196
    scorer = TaylorScorer(abs_after="all", batch_size=2, progress=False, bf16_autocast=False)
    grouped = scorer.score(model, examples)
    assert scorer.last_stats.extra["padding_fraction"] == pytest.approx(4 / 124)
    # With the reference estimator the order cannot change the scores.
    one_by_one = TaylorScorer(abs_after="all", batch_size=1, progress=False, bf16_autocast=False)
    assert_scores_close(one_by_one.score(model, examples), grouped, rtol=1e-5)
    assert one_by_one.last_stats.extra["padding_fraction"] == 0.0
