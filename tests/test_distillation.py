"""Distillation recovery: the loss against a brute-force KL, teacher rows aligned with the scored tokens, a student
that provably moves toward its teacher (full parameters and LoRA), and a killed run that resumes to the same
weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainerCallback

from optimum_resp.distillation import (
    DistillationCollator,
    TeacherTargets,
    collect_teacher_targets,
    distill,
    distillation_loss,
    mean_distillation_loss,
    with_teacher,
)
from optimum_resp.importance.data import IGNORE_INDEX
from optimum_resp.surgery import prune_model
from optimum_resp.testing_utils import random_plan, tiny_config

VOCAB = 128


def teacher_model(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config("qwen3"), dtype=torch.float32).eval()


def make_examples(n: int = 6, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompts of uneven length followed by uneven traces (labels -100 on the prompt), as build_examples makes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, VOCAB, (3 + i % 3,), generator=g).tolist()
        trace = torch.randint(1, VOCAB, (5 + 2 * i,), generator=g).tolist()
        out.append({"input_ids": prompt + trace, "labels": [IGNORE_INDEX] * len(prompt) + trace})
    return out


def test_loss_is_the_kl_divergence_when_the_teacher_keeps_every_token():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 11)
    teacher = torch.randn(2, 5, 11)
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]]
    )
    mask = labels[:, 1:] != IGNORE_INDEX  # positions 1, 2, 3 of row 0 and 0, 1 of row 1
    for temperature in (1.0, 2.0):
        t_logp = torch.log_softmax(teacher[:, :-1][mask] / temperature, -1)
        top = t_logp.topk(11, -1)
        loss = distillation_loss(student, labels, top.indices, top.values, temperature)
        s_logp = torch.log_softmax(student[:, :-1][mask] / temperature, -1)
        brute = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * temperature**2
        assert loss.item() == pytest.approx(brute.item(), rel=1e-5)
    # The student equal to the teacher: nothing to learn.
    top = torch.log_softmax(teacher[:, :-1][mask], -1).topk(11, -1)
    assert distillation_loss(teacher, labels, top.indices, top.values).item() == pytest.approx(0.0, abs=1e-6)
    # Pure hard labels: the causal-LM loss on the scored tokens.
    hard = distillation_loss(student, labels, top.indices, top.values, hard_weight=1.0)
    assert hard.item() == pytest.approx(F.cross_entropy(student[:, :-1][mask], labels[:, 1:][mask]).item())
    with pytest.raises(ValueError, match="5 scored positions but 4 teacher rows"):
        distillation_loss(student, labels, top.indices[:4], top.values[:4])


def test_truncated_teacher_is_renormalized_over_its_top_k():
    """With k < V the target is the teacher's top-k renormalized: a student matching it there and nothing else
    scores zero; one spreading mass elsewhere scores more."""
    teacher_logp = torch.log_softmax(torch.tensor([[4.0, 3.0, 0.0, -1.0]]), -1)
    top = teacher_logp.topk(2, -1)
    labels = torch.tensor([[IGNORE_INDEX, 0]])
    renormalized = torch.log_softmax(top.values, -1)
    exact = torch.full((1, 2, 4), -1e9)
    exact[0, 0, top.indices[0]] = renormalized[0]
    assert distillation_loss(exact, labels, top.indices, top.values).item() == pytest.approx(0.0, abs=1e-6)
    spread = torch.zeros(1, 2, 4)
    spread[0, 0] = teacher_logp[0]
    assert distillation_loss(spread, labels, top.indices, top.values).item() > 0.01


def test_teacher_rows_follow_the_scored_tokens_of_each_example_whatever_the_padding():
    model = teacher_model()
    examples = make_examples()
    targets = collect_teacher_targets(model, examples, k=5, temperature=1.5, batch_size=4, progress=False)
    assert targets.k == 5 and len(targets.ids) == len(examples)
    for example, ids, logprobs in zip(examples, targets.ids, targets.logprobs):
        first = example["labels"].index(next(t for t in example["labels"] if t != IGNORE_INDEX))
        with torch.no_grad():  # alone, unpadded: row j is the position before the j-th scored token
            logits = model(torch.tensor([example["input_ids"]])).logits[0]
        expected = torch.log_softmax(logits[first - 1 : -1] / 1.5, -1).topk(5, -1)
        assert ids.dtype == torch.int32 and logprobs.dtype == torch.float16
        assert torch.equal(ids.long(), expected.indices)
        torch.testing.assert_close(logprobs.float(), expected.values, atol=2e-3, rtol=1e-3)
    # The collator stacks the rows in the loss's order: the model scores ~0 against its own targets at k = V.
    full = collect_teacher_targets(model, examples, k=VOCAB, batch_size=3, progress=False)
    assert mean_distillation_loss(model, examples, full, batch_size=2) == pytest.approx(0.0, abs=1e-3)
    batch = DistillationCollator()(with_teacher(examples, full)[:3])
    assert batch["teacher_ids"].shape == (sum(len(t) for t in full.ids[:3]), VOCAB)


def test_targets_round_trip_and_refuse_other_examples(tmp_path):
    model = teacher_model()
    examples = make_examples()
    targets = collect_teacher_targets(model, examples, k=4, temperature=2.0, progress=False)
    targets.save(tmp_path / "teacher.safetensors")
    again = TeacherTargets.load(tmp_path / "teacher.safetensors")
    assert again.temperature == 2.0 and again.tokens == targets.tokens == sum(len(t) for t in targets.ids)
    assert all(torch.equal(a, b) for a, b in zip(again.ids, targets.ids))
    assert all(torch.equal(a, b) for a, b in zip(again.logprobs, targets.logprobs))
    assert targets.nbytes == targets.tokens * 4 * (4 + 2)
    with pytest.raises(ValueError, match="cover 6 examples but 5"):
        again.check(examples[:5])
    other = make_examples(seed=1)
    other[0]["labels"][-1] = IGNORE_INDEX
    with pytest.raises(ValueError, match="Example 0 has"):
        again.check(other)
    with pytest.raises(ValueError, match="k must be between 1"):
        collect_teacher_targets(model, examples, k=VOCAB + 1, progress=False)


def pruned_student(teacher):
    """A 40% per_layer prune of a copy (prune_model shares the tensors it does not cut: training the student must
    not move the teacher)."""
    return prune_model(copy.deepcopy(teacher), random_plan(teacher.config, 0.4, per_layer=True, seed=0))


@pytest.mark.parametrize("lora", [False, True])
def test_the_pruned_student_moves_toward_its_teacher(lora):
    from peft import LoraConfig

    teacher = teacher_model()
    examples = make_examples(8)
    targets = collect_teacher_targets(teacher, examples, k=16, progress=False)
    student = pruned_student(teacher)
    result = distill(
        student,
        examples,
        targets,
        epochs=30,
        learning_rate=1e-2 if lora else 1e-3,
        batch_size=4,
        lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM") if lora else None,
        progress=False,
    )
    # LoRA's few parameters move it less far in the same steps; both must move.
    assert result.loss_after < (0.95 if lora else 0.7) * result.loss_before
    assert result.loss_after == pytest.approx(mean_distillation_loss(result.model, examples, targets))
    assert not any("lora" in name for name, _ in result.model.named_parameters())
    assert result.tokens == targets.tokens
    dense_params = sum(p.numel() for p in student.parameters())
    assert (
        (result.trainable_parameters < dense_params / 4)
        if lora
        else (result.trainable_parameters == dense_params)
    )


class _Kill(TrainerCallback):
    """Stops training as a kill would, after `step` optimizer steps (after the checkpoint of that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt


def test_a_killed_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    teacher = teacher_model()
    examples = make_examples(8)
    targets = collect_teacher_targets(teacher, examples, k=8, progress=False)
    kwargs = dict(epochs=3, learning_rate=2e-3, batch_size=2, save_steps=2, seed=3, progress=False)

    whole = distill(pruned_student(teacher), examples, targets, checkpoint_dir=tmp_path / "a", **kwargs)

    from optimum_resp import distillation

    original = distillation.DistillationTrainer.__init__

    def killing_init(self, *args, **kw):
        original(self, *args, **kw)
        self.add_callback(_Kill(4))

    monkeypatch.setattr(distillation.DistillationTrainer, "__init__", killing_init)
    with pytest.raises(KeyboardInterrupt):
        distill(pruned_student(teacher), examples, targets, checkpoint_dir=tmp_path / "b", **kwargs)
    monkeypatch.setattr(distillation.DistillationTrainer, "__init__", original)
    assert (tmp_path / "b" / "checkpoint-4").is_dir()
    resumed = distill(pruned_student(teacher), examples, targets, checkpoint_dir=tmp_path / "b", **kwargs)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
