"""Distillation recovery (`recovery="distill"`): the pruned student learns the dense teacher's next-token
distributions on the decode tokens of the traces the dense model wrote.

The teacher is the dense model, on the reasoning traces it wrote itself (the distribution RESP calibrates on). Its
distributions are kept as the top-k log-probabilities per decode token (`TeacherTargets`), written once while the
dense model is loaded: k=32 costs 192 bytes per token (fp16 log-probabilities, int32 ids), so the teacher need not
stay in memory beside the student nor be loaded again. The loss is the KL divergence from the teacher's top-k
distribution (renormalized over its k tokens) to the student's, at temperature T and scaled by T^2 as in Hinton
et al., optionally mixed with the hard-label loss on the trace tokens; training runs through the `Trainer`.

In a prune (`DistillRecoveryConfig`), the targets are written to the run folder's `recovery/` before the first stage
frees the dense model, and the Trainer checkpoints there: a prune killed during recovery resumes it (same seed:
same result) without the teacher's forward pass again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer

from ..files import atomic_write
from ..importance.data import IGNORE_INDEX, CalibrationCollator, check_examples, quiet_progress
from ..importance.no_step_trainer import set_checkpointing
from ..memory import free_memory
from ..validation import check_int, check_range
from .base import (
    RECOVERY,
    RecoveryConfig,
    RecoveryData,
    RecoveryResult,
    lora_target_modules,
    training_arguments,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DistillRecoveryConfig",
    "DistillationCollator",
    "DistillationTrainer",
    "TeacherTargets",
    "collect_teacher_targets",
    "distill",
    "distillation_loss",
    "mean_distillation_loss",
]


def _scored_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, L-1] bool: the positions whose next token is a scored label (the causal shift)."""
    return labels[:, 1:] != IGNORE_INDEX


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's top-k next-token log-probabilities at every scored position of each example, in order.

    `ids[i]` and `logprobs[i]` are [n_i, k] (int32, float16) for example i, n_i its scored tokens after the shift;
    the log-probabilities are of the teacher's full softmax at `temperature` (not renormalized over the k)."""

    ids: tuple[torch.Tensor, ...]
    logprobs: tuple[torch.Tensor, ...]
    temperature: float
    examples_digest: str = ""
    """`examples_digest` of the examples they were written for ("": not recorded)."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.logprobs):
            raise ValueError(f"{len(self.ids)} id tensors but {len(self.logprobs)} log-probability tensors.")
        for i, (ids, logprobs) in enumerate(zip(self.ids, self.logprobs)):
            if ids.shape != logprobs.shape or ids.dim() != 2:
                raise ValueError(
                    f"Example {i}: ids {tuple(ids.shape)} and log-probabilities {tuple(logprobs.shape)} must be the "
                    "same [tokens, k] shape."
                )

    @property
    def k(self) -> int:
        return self.ids[0].shape[1] if self.ids else 0

    @property
    def tokens(self) -> int:
        return sum(t.shape[0] for t in self.ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.ids, *self.logprobs))

    def check(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> None:
        """Refuse targets that do not belong to `examples` (another run's, or examples built differently)."""
        if len(examples) != len(self.ids):
            raise ValueError(
                f"The teacher targets cover {len(self.ids)} examples but {len(examples)} were given: they were "
                "written for other traces. Delete them to have the dense model write them again."
            )
        for i, example in enumerate(examples):
            scored = sum(1 for t in list(example["labels"])[1:] if t != IGNORE_INDEX)
            if scored != self.ids[i].shape[0]:
                raise ValueError(
                    f"Example {i} has {scored} scored tokens but its teacher targets {self.ids[i].shape[0]}: they "
                    "were written for other traces. Delete them to have the dense model write them again."
                )
        if self.examples_digest and self.examples_digest != examples_digest(examples):
            raise ValueError(
                "The teacher targets were written for other traces (their token ids differ from these): delete "
                "them to have the dense model write them again."
            )

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file (the rows of all examples concatenated, with their counts), written atomically."""
        lengths = torch.tensor([t.shape[0] for t in self.ids], dtype=torch.int64)
        tensors = {
            "ids": torch.cat(self.ids).contiguous(),
            "logprobs": torch.cat(self.logprobs).contiguous(),
            "lengths": lengths,
        }
        atomic_write(
            path,
            lambda tmp: save_file(
                tensors,
                str(tmp),
                metadata={"temperature": repr(self.temperature), "examples_digest": self.examples_digest},
            ),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherTargets:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        lengths = tensors["lengths"].tolist()
        return cls(
            tuple(tensors["ids"].split(lengths)),
            tuple(tensors["logprobs"].split(lengths)),
            float(metadata["temperature"]),
            metadata.get("examples_digest", ""),
        )


def examples_digest(examples: Sequence[Mapping[str, Sequence[int]]]) -> str:
    """sha256 of the examples' token ids and labels: what ties teacher targets to the traces they score."""
    h = hashlib.sha256()
    for example in examples:
        for key in ("input_ids", "labels"):
            h.update(torch.as_tensor(list(example[key]), dtype=torch.int64).numpy().tobytes())
            h.update(b"|")
    return h.hexdigest()


@torch.no_grad()
def collect_teacher_targets(
    model: PreTrainedModel,
    examples: Sequence[Mapping[str, Sequence[int]]],
    k: int = 32,
    temperature: float = 1.0,
    batch_size: int = 4,
    progress: bool = True,
) -> TeacherTargets:
    """The teacher's top-k log-probabilities (softmax at `temperature`) at every scored position of `examples`."""
    if k < 1 or k > model.config.vocab_size:
        raise ValueError(f"k must be between 1 and the vocabulary size {model.config.vocab_size}; got {k}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")
    examples = check_examples(examples)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = getattr(model.config, "pad_token_id", None)
    collate = CalibrationCollator(0 if pad is None else pad)
    ids: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="Teacher distributions", disable=not progress):
        batch = collate(examples[start : start + batch_size])
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits[:, :-1]
        mask = _scored_mask(batch["labels"]).to(device)
        for row in range(logits.shape[0]):
            scored = torch.log_softmax(logits[row][mask[row]].float() / temperature, dim=-1)
            top = scored.topk(k, dim=-1)
            ids.append(top.indices.to(torch.int32).cpu())
            logprobs.append(top.values.to(torch.float16).cpu())
    model.train(was_training)
    return TeacherTargets(tuple(ids), tuple(logprobs), temperature, examples_digest(examples))


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    temperature: float = 1.0,
    hard_weight: float = 0.0,
) -> torch.Tensor:
    """KL(teacher top-k || student) per scored token, times T^2, mixed with `hard_weight` x the label loss.

    `student_logits` [B, L, V]; `labels` [B, L] (-100: not scored); `teacher_ids` / `teacher_logprobs` [N, k] for
    the N scored positions of the batch in row-major order (what `DistillationCollator` stacks). The teacher is
    renormalized over its k tokens; the student's log-probabilities are its full softmax at T, so the loss is zero
    only where the student puts the teacher's top-k mass exactly on those k tokens."""
    mask = _scored_mask(labels)
    scored = student_logits[:, :-1][mask].float()  # [N, V]
    if scored.shape[0] != teacher_ids.shape[0]:
        raise ValueError(
            f"The batch has {scored.shape[0]} scored positions but {teacher_ids.shape[0]} teacher rows: the "
            "teacher targets do not belong to these examples."
        )
    student = torch.log_softmax(scored / temperature, dim=-1).gather(-1, teacher_ids.long())
    teacher = torch.log_softmax(teacher_logprobs.float(), dim=-1)  # renormalized over the top-k
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean() * temperature**2
    if hard_weight == 0:
        return kl
    hard = F.cross_entropy(scored, labels[:, 1:][mask])
    return (1 - hard_weight) * kl + hard_weight * hard


class DistillationCollator(CalibrationCollator):
    """Pad examples as `CalibrationCollator` does and stack their teacher rows in the loss's row-major order."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        plain = [{k: v for k, v in f.items() if not k.startswith("teacher_")} for f in features]
        batch = super().__call__(plain)
        batch["teacher_ids"] = torch.cat([torch.as_tensor(f["teacher_ids"]) for f in features])
        batch["teacher_logprobs"] = torch.cat([torch.as_tensor(f["teacher_logprobs"]) for f in features])
        return batch


class DistillationTrainer(Trainer):
    """A `Trainer` whose loss is `distillation_loss` against the teacher rows each batch carries."""

    def __init__(self, *args: Any, temperature: float = 1.0, hard_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.hard_weight = hard_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_ids = inputs.pop("teacher_ids")
        teacher_logprobs = inputs.pop("teacher_logprobs")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs.logits, labels, teacher_ids, teacher_logprobs, self.temperature, self.hard_weight
        )
        return (loss, outputs) if return_outputs else loss


def with_teacher(
    examples: Sequence[Mapping[str, Sequence[int]]], targets: TeacherTargets
) -> list[dict[str, Any]]:
    """`examples` with their teacher rows attached (checked to belong to them)."""
    targets.check(examples)
    return [
        {**example, "teacher_ids": ids, "teacher_logprobs": logprobs}
        for example, ids, logprobs in zip(examples, targets.ids, targets.logprobs)
    ]


@torch.no_grad()
def mean_distillation_loss(
    model: PreTrainedModel,
    examples: Sequence[Mapping[str, Sequence[int]]],
    targets: TeacherTargets,
    batch_size: int = 4,
) -> float:
    """The token-weighted mean KL of `model` against the teacher targets (the figure recovery lowers)."""
    rows = with_teacher(examples, targets)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = getattr(model.config, "pad_token_id", None)
    collate = DistillationCollator(0 if pad is None else pad)
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size])
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        n = batch["teacher_ids"].shape[0]
        loss = distillation_loss(
            logits,
            batch["labels"].to(device),
            batch["teacher_ids"].to(device),
            batch["teacher_logprobs"].to(device),
            targets.temperature,
        )
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count if count else math.nan


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def distill(
    model: PreTrainedModel,
    examples: Sequence[Mapping[str, Sequence[int]]],
    targets: TeacherTargets,
    *,
    epochs: float = 1.0,
    learning_rate: float = 5e-5,
    batch_size: int = 4,
    hard_weight: float = 0.0,
    lora: Any = None,
    gradient_checkpointing: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    save_steps: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> RecoveryResult:
    """Train `model` (every parameter, or the adapters of `lora`, a `peft.LoraConfig`, merged after) to match the
    teacher targets of `examples`. With `checkpoint_dir`, the Trainer saves there every `save_steps` steps and a
    later call resumes from its last checkpoint (same seed: same result as an uninterrupted run)."""
    rows = with_teacher(examples, targets)
    loss_before = mean_distillation_loss(model, examples, targets, batch_size)
    student = model
    if lora is not None:
        from peft import get_peft_model

        if lora.target_modules is None:
            lora = dataclasses.replace(lora, target_modules=lora_target_modules(model))
        student = get_peft_model(model, lora)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    if gradient_checkpointing:
        set_checkpointing(model, True)
    pad = getattr(model.config, "pad_token_id", None)
    with tempfile.TemporaryDirectory(prefix="resp-distill-") as tmp:
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        args = training_arguments(
            folder,
            batch_size=batch_size,
            epochs=epochs,
            learning_rate=learning_rate,
            seed=seed,
            progress=progress,
            save_steps=save_steps if checkpoint_dir is not None else None,
            data_seed=seed,
        )
        trainer = DistillationTrainer(
            model=student,
            args=args,
            train_dataset=rows,  # a list is a map-style dataset to the DataLoader
            data_collator=DistillationCollator(0 if pad is None else pad),
            temperature=targets.temperature,
            hard_weight=hard_weight,
        )
        resume = _last_checkpoint(folder) if checkpoint_dir is not None else None
        if resume:
            logger.info("Distillation resumes from %s.", resume)
        output = quiet_progress(trainer, "Distillation").train(resume_from_checkpoint=resume)
    if gradient_checkpointing:
        set_checkpointing(model, False)
    recovered = student.merge_and_unload() if lora is not None else student
    recovered.eval()
    loss_after = mean_distillation_loss(recovered, examples, targets, batch_size)
    seconds = output.metrics.get("train_runtime", 0.0)
    logger.info(
        "Distillation: %d trainable parameters, %d tokens, KL to the teacher %.4f -> %.4f, %.1fs",
        trainable,
        targets.tokens,
        loss_before,
        loss_after,
        seconds,
    )
    return RecoveryResult(
        recovered, output.training_loss, seconds, trainable, targets.tokens, loss_before, loss_after
    )


TARGETS_FILE = "teacher_targets.safetensors"
"""The teacher targets' file in the run folder's `recovery/` (beside the Trainer's `checkpoints/`)."""


class RecoveryMemoryError(MemoryError, ValueError):
    """Recovery cannot fit in the memory this machine has (raised before any work)."""


def _lora_config(value: Any):
    """None (full parameters), a peft `LoraConfig`, or a dict of its fields laid over LoRA recovery's defaults."""
    if value is None:
        return None
    from peft import LoraConfig

    from .lora import _default_lora

    if isinstance(value, Mapping):
        from ..config_mixin import check_keys

        check_keys("LoraConfig", value, [f.name for f in dataclasses.fields(LoraConfig) if f.init])
        value = dataclasses.replace(_default_lora(), **value)
    if not isinstance(value, LoraConfig):
        raise ValueError(
            f"lora must be None (full parameters), a peft LoraConfig or a dict of its fields; got {value!r}"
        )
    return value


@RECOVERY.register("distill")
@dataclass
class DistillRecoveryConfig(RecoveryConfig):
    """Distillation from the dense model on its own traces: KL to its top-k next-token distributions."""

    top_k: int = 32
    """Teacher log-probabilities kept per decode token (k=32 of a 151k vocabulary: 192 bytes per token)."""
    temperature: float = 1.0
    hard_weight: float = 0.0
    """Weight of the hard-label loss on the trace tokens mixed into the KL (0: KL only)."""
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 4
    lora: Any = field(default=None)
    """None: train every parameter of the pruned model; a peft LoraConfig (or dict of its fields): adapters, merged."""
    gradient_checkpointing: bool = False
    save_steps: int = 50
    """Steps between the Trainer's checkpoints in the run folder (where a killed recovery resumes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("top_k", self.top_k)
        check_int("save_steps", self.save_steps)
        check_range("temperature", self.temperature, 0.0, 100.0, low_open=True)
        check_range("hard_weight", self.hard_weight, 0.0, 1.0)
        check_range("epochs", self.epochs, 0.0, 1000.0, low_open=True)
        check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        check_int("batch_size", self.batch_size)
        self.lora = _lora_config(self.lora)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.lora is not None:
            from .lora import LoraRecoveryConfig

            out["lora"] = LoraRecoveryConfig(lora=self.lora).to_dict()["lora"]
        return out

    def describe(self) -> str:
        trained = "LoRA adapters (merged)" if self.lora is not None else "all parameters"
        return (
            f"distillation from the dense model (top-{self.top_k} KL at T={self.temperature:g}, {trained}, "
            f"{self.epochs:g} epoch(s) on the dense traces)"
        )

    def check_memory(self, model: PreTrainedModel, longest_sequence: int, target_sparsity: float) -> None:
        """Full-parameter AdamW keeps 12 bytes per trainable parameter beside the weights (gradient and two
        moments, float32), and the student's logits cost ~12 bytes per position and vocabulary entry (logits,
        their float copy and gradient); refused where that exceeds the memory free now plus what pruning frees."""
        from ..accounting import decoder_linear_params

        weights = next(model.parameters())
        removed = int(target_sparsity * sum(decoder_linear_params(model.config)))
        trainable = 0 if self.lora is not None else model.num_parameters() - removed
        logits = self.batch_size * longest_sequence * model.config.vocab_size * 12
        need = trainable * 12 + logits
        free = free_memory(weights.device)
        if free is None or need <= free + removed * weights.element_size():
            return
        gib = 2**30
        raise RecoveryMemoryError(
            f"Distillation recovery needs about {need / gib:.1f} GiB beside the pruned model ({trainable:,} trainable "
            f"parameters x 12 bytes of gradient and AdamW moments, plus {logits / gib:.1f} GiB of logits at batch "
            f"{self.batch_size} x {longest_sequence} tokens x {model.config.vocab_size:,}), but about "
            f"{(free + removed * weights.element_size()) / gib:.1f} GiB will be free. Train LoRA adapters instead "
            "(recovery={'method': 'distill', 'lora': {'r': 16}}), lower its batch_size, or use a larger machine."
        )

    def prepare(self, teacher: PreTrainedModel, data: RecoveryData) -> None:
        """The teacher's top-k targets for the dense traces: read from the run folder when a run wrote them (and
        they belong to these traces), else computed now and written there."""
        examples = data.examples()
        path = data.folder / TARGETS_FILE if data.folder is not None else None
        if path is not None and path.is_file():
            targets = TeacherTargets.load(path)
            targets.check(examples)
            if targets.k != self.top_k or targets.temperature != self.temperature:
                raise ValueError(
                    f"{path} holds top-{targets.k} targets at T={targets.temperature:g}, but the recipe asks for "
                    f"top-{self.top_k} at T={self.temperature:g}: delete it to have the dense model write them again."
                )
            logger.info("Reusing the teacher targets of %d tokens in %s", targets.tokens, path)
        else:
            targets = collect_teacher_targets(
                teacher, examples, k=self.top_k, temperature=self.temperature, batch_size=self.batch_size
            )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                targets.save(path)
            logger.info(
                "Teacher targets: top-%d log-probabilities for %d decode tokens (%.1f MB)",
                targets.k,
                targets.tokens,
                targets.nbytes / 1e6,
            )
        data.teacher = targets

    def run(self, model: PreTrainedModel, data: RecoveryData) -> RecoveryResult:
        if data.teacher is None:
            raise RuntimeError(
                "Distillation recovery has no teacher targets: `prepare` runs while the dense model is loaded."
            )
        return distill(
            model,
            data.examples(),
            data.teacher,
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            hard_weight=self.hard_weight,
            lora=self.lora,
            gradient_checkpointing=self.gradient_checkpointing,
            checkpoint_dir=data.folder / "checkpoints" if data.folder is not None else None,
            save_steps=self.save_steps,
            seed=data.seed,
        )
