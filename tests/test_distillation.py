"""Distillation recovery: the loss against a brute-force KL, teacher rows aligned with the scored tokens, a student
that provably moves toward its teacher (full parameters and LoRA), and a killed run that resumes to the same
weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainerCallback

from optimum_resp.importance.data import IGNORE_INDEX
from optimum_resp.recovery.distillation import (
    DistillationCollator,
    TeacherTargets,
    collect_teacher_targets,
    distill,
    distillation_loss,
    mean_distillation_loss,
    with_teacher,
)
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
    assert result.kl_after < (0.95 if lora else 0.7) * result.kl_before
    assert result.kl_after == pytest.approx(mean_distillation_loss(result.model, examples, targets))
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

    from optimum_resp.recovery import distillation

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


# ---------------------------------------------------------------------------------------------- in a prune


def _prune_config(**recovery):
    from optimum_resp.configuration_resp import RESPConfig

    section = {
        "method": "distill",
        "top_k": 8,
        "epochs": 3.0,
        "learning_rate": 5e-3,
        "batch_size": 2,
        **recovery,
    }
    return RESPConfig(
        target_sparsity=0.3,
        num_stages=1,
        regeneration_milestones=[],
        num_calibration_prompts=6,
        generation={"max_new_tokens": 16, "batch_size": 6},
        batch_size=2,
        protected_layers=[0],
        allow_unfinished_traces=True,
        recovery=section,
    )


PROMPTS = [f"What is {a} plus {b}?" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 3)]]


def test_distill_recovery_in_a_prune_lowers_the_kl_and_leaves_the_dense_model_as_it_was(tmp_path):
    from conftest import tiny_model, tiny_tokenizer

    from optimum_resp.model_card import _recipe
    from optimum_resp.pruner import RESPPruner
    from optimum_resp.run_folder import RunFolder

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    dense = copy.deepcopy(model.state_dict())
    pruner = RESPPruner(model, tokenizer, _prune_config(), generator="hf")
    result = pruner.prune(PROMPTS, output_dir=tmp_path / "run")
    record = result.report.recovery
    assert record.method == "distill" and record.tokens > 0
    assert record.kl_after < 0.7 * record.kl_before
    assert record.trainable_parameters == result.model.num_parameters()  # all parameters by default
    for (
        name,
        tensor,
    ) in model.state_dict().items():  # surgery shares uncut tensors; training must not reach them
        torch.testing.assert_close(tensor, dense[name], rtol=0, atol=0, msg=name)
    targets = tmp_path / "run" / RunFolder.RECOVERY / "teacher_targets.safetensors"
    assert TeacherTargets.load(targets).tokens == record.tokens
    assert "distillation from the dense model" in _recipe(result.report.resp_config)
    pruner.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / RunFolder.RECOVERY).exists()


def test_a_prune_killed_during_distillation_resumes_without_the_teacher_pass(tmp_path, monkeypatch):
    from conftest import tiny_model, tiny_tokenizer

    from optimum_resp.pruner import RESPPruner
    from optimum_resp.recovery import distillation

    tokenizer = tiny_tokenizer()
    config = _prune_config(save_steps=2)
    whole = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(
        PROMPTS, output_dir=tmp_path / "a"
    )

    original = distillation.DistillationTrainer.__init__

    def killing_init(self, *args, **kw):
        original(self, *args, **kw)
        self.add_callback(_Kill(2))

    monkeypatch.setattr(distillation.DistillationTrainer, "__init__", killing_init)
    with pytest.raises(KeyboardInterrupt):
        RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(
            PROMPTS, output_dir=tmp_path / "b"
        )
    monkeypatch.setattr(distillation.DistillationTrainer, "__init__", original)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher targets in the run folder should have been reused")

    monkeypatch.setattr(distillation, "collect_teacher_targets", no_teacher)
    resumed = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(
        PROMPTS, output_dir=tmp_path / "b"
    )
    assert resumed.plan == whole.plan
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_teacher_targets_of_other_traces_are_refused(tmp_path):
    teacher = teacher_model()
    targets = collect_teacher_targets(teacher, make_examples(4), k=4, progress=False)
    targets.save(tmp_path / "t.safetensors")
    other = make_examples(4, seed=1)
    other = [{**o, "input_ids": o["input_ids"], "labels": o["labels"]} for o in other]
    with pytest.raises(ValueError, match="other traces"):
        TeacherTargets.load(tmp_path / "t.safetensors").check(other)
    TeacherTargets.load(tmp_path / "t.safetensors").check(make_examples(4))  # its own examples pass


def test_distillation_that_cannot_fit_is_refused_before_any_generation(monkeypatch):
    from conftest import tiny_model, tiny_tokenizer

    from optimum_resp.pruner import RESPPruner
    from optimum_resp.recovery import RecoveryMemoryError, distillation

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    monkeypatch.setattr(distillation, "free_memory", lambda device: 1000)
    monkeypatch.setattr(
        model, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated before the check"))
    )
    with pytest.raises(RecoveryMemoryError, match="Train LoRA adapters instead"):
        RESPPruner(model, tokenizer, _prune_config(), generator="hf").prune(PROMPTS)
    # LoRA adapters need no optimizer state for the model's weights: only the logits must fit.
    section = distillation.DistillRecoveryConfig(lora={"r": 4}, batch_size=1)
    monkeypatch.setattr(distillation, "free_memory", lambda device: 10**9)
    section.check_memory(model, 64, 0.3)


def test_distill_section_round_trips_and_refuses_bad_values():
    from optimum_resp.configuration_resp import RESPConfig
    from optimum_resp.recovery import DistillRecoveryConfig

    config = RESPConfig(recovery={"method": "distill", "lora": {"r": 4}, "temperature": 2.0})
    again = RESPConfig.from_dict(config.to_dict())
    assert isinstance(again.recovery, DistillRecoveryConfig) and again.recovery == config.recovery
    assert again.recovery.lora.r == 4 and again.recovery.temperature == 2.0
    with pytest.raises(ValueError, match="hard_weight"):
        DistillRecoveryConfig(hard_weight=1.5)
    with pytest.raises(ValueError, match="top_k"):
        DistillRecoveryConfig(top_k=0)


MORE_PROMPTS = PROMPTS + [
    f"What is {a} times {b}?" for a, b in [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]
]


def test_a_token_budget_adds_the_dense_models_answers_to_spare_prompts(tmp_path):
    from conftest import tiny_model, tiny_tokenizer

    from optimum_resp.calibration import load_traces
    from optimum_resp.pruner import RESPPruner
    from optimum_resp.run_folder import RunFolder

    tokenizer = tiny_tokenizer()
    base = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, _prune_config(), generator="hf").prune(
        MORE_PROMPTS, output_dir=tmp_path / "base"
    )
    dense_tokens = sum(t.num_tokens for t in load_traces(tmp_path / "base" / RunFolder.DENSE_TRACES))
    assert not (
        tmp_path / "base" / RunFolder.RECOVERY / "traces.jsonl"
    ).exists()  # no budget: no extra traces
    config = _prune_config(tokens=dense_tokens + 20)
    result = RESPPruner(tiny_model(tokenizer=tokenizer), tokenizer, config, generator="hf").prune(
        MORE_PROMPTS, output_dir=tmp_path / "run"
    )
    extra = load_traces(tmp_path / "run" / RunFolder.RECOVERY / "traces.jsonl")
    calibration = {t.question for t in load_traces(tmp_path / "run" / RunFolder.DENSE_TRACES)}
    assert extra and all(t.question not in calibration for t in extra)  # answers to the spare prompts only
    assert dense_tokens + sum(t.num_tokens for t in extra) >= dense_tokens + 20
    assert result.report.recovery.tokens > base.report.recovery.tokens
    assert result.plan == base.plan  # the extra traces feed recovery, not scoring


def test_a_token_budget_the_prompts_cannot_supply_is_refused_before_any_work(tmp_path):
    from conftest import tiny_model, tiny_tokenizer

    from optimum_resp.pruner import RESPPruner

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer=tokenizer)
    model.generate = lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated before the check"))
    config = _prune_config(tokens=10_000)  # 12 prompts x 16 new tokens = 192 at most
    with pytest.raises(ValueError, match=r"the 12 prompts given yield at most 192 decode tokens"):
        RESPPruner(model, tokenizer, config, generator="hf").prune(MORE_PROMPTS, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
