"""Calibration examples for data-driven importance: token ids plus labels marking the scored tokens.

An example is ``{"input_ids": list[int], "labels": list[int]}``. With the decode-only loss RESP uses,
labels are -100 on the prompt and equal to the ids on the model's own reasoning trace, so the loss
(and every gradient) comes from the tokens the model generates; with the full-sequence loss labels
equal the ids everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer

__all__ = [
    "IGNORE_INDEX",
    "CalibrationCollator",
    "LossMode",
    "QuietProgressCallback",
    "build_examples",
    "check_examples",
    "quiet_progress",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
LossMode = Literal["decode", "full"]


def build_examples(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    loss: LossMode = "decode",
    max_length: int | None = None,
) -> list[dict[str, list[int]]]:
    """Calibration examples from (prompt ids, generated ids) pairs: the ids the model was prompted with and
    the ids it generated (`calibration.trace_token_ids`), never text tokenized again.

    The decode-only label boundary falls exactly between prompt and trace tokens. With `max_length`, the
    completion is cut to fit after the whole prompt; a pair left without completion tokens (empty trace, or a
    prompt filling `max_length`) is skipped with a warning.
    """
    if loss not in ("decode", "full"):
        raise ValueError(f"loss must be 'decode' (trace tokens only) or 'full' (every token); got {loss!r}.")
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(
            f"Got {len(prompt_ids)} prompts but {len(completion_ids)} completions; pass one completion per prompt."
        )
    if len(prompt_ids) == 0:
        raise ValueError(
            "build_examples got no (prompt, completion) pairs. Pass the chat-formatted prompts' ids and the "
            "model's generated ids for them (e.g. from the self-generated calibration step)."
        )
    if all(not c for c in completion_ids):
        raise ValueError(
            f"All {len(completion_ids)} completions are empty, so there is no decode token to score. Generate "
            "the model's traces for the prompts first (and check the generation step returned tokens)."
        )
    if max_length is not None and max_length < 2:
        raise ValueError(
            f"max_length must be at least 2 (a prompt token and a scored token); got {max_length}."
        )

    examples: list[dict[str, list[int]]] = []
    skipped_empty, skipped_long, truncated = 0, 0, 0
    for prompt, completion in zip(prompt_ids, completion_ids):
        prompt, completion = [int(t) for t in prompt], [int(t) for t in completion]
        if not completion:
            skipped_empty += 1
            continue
        if max_length is not None:
            room = max_length - len(prompt)
            if room < 1:
                skipped_long += 1
                continue
            if len(completion) > room:
                completion = completion[:room]
                truncated += 1
        if len(prompt) + len(completion) < 2:
            skipped_empty += 1
            continue
        input_ids = prompt + completion
        if loss == "decode":
            labels = [IGNORE_INDEX] * len(prompt) + completion
        else:
            labels = list(input_ids)
        examples.append({"input_ids": input_ids, "labels": labels})

    if skipped_empty:
        logger.warning("Skipped %d pair(s) whose completion has no tokens.", skipped_empty)
    if skipped_long:
        logger.warning(
            "Skipped %d pair(s) whose prompt leaves no room for a completion token in max_length=%s.",
            skipped_long,
            max_length,
        )
    if truncated:
        logger.info("Truncated %d completion(s) to fit max_length=%s.", truncated, max_length)
    if not examples:
        raise ValueError(
            f"No usable calibration example: every pair was skipped (max_length={max_length}). Raise "
            "max_length above the prompt lengths, or pass non-empty completions."
        )
    return examples


def _scored_tokens(labels: Sequence[int]) -> int:
    """Tokens a causal LM is trained to predict: labels after the one-position shift, not -100."""
    return sum(1 for t in list(labels)[1:] if t != IGNORE_INDEX)


def check_examples(examples: Sequence[Mapping[str, Sequence[int]]]) -> list[dict[str, list[int]]]:
    """Validate calibration examples; drop (with a warning) those with no scored token after the shift."""
    if examples is None or len(examples) == 0:
        raise ValueError(
            "No calibration examples. Build them with optimum_resp.importance.build_examples(tokenizer, "
            "prompts, completions)."
        )
    kept: list[dict[str, list[int]]] = []
    for i, example in enumerate(examples):
        if "input_ids" not in example or "labels" not in example:
            raise ValueError(f"Example {i} needs 'input_ids' and 'labels'; it has keys {sorted(example)}.")
        input_ids, labels = [int(t) for t in example["input_ids"]], [int(t) for t in example["labels"]]
        if len(input_ids) != len(labels):
            raise ValueError(
                f"Example {i} has {len(input_ids)} input_ids but {len(labels)} labels; they must align."
            )
        if _scored_tokens(labels) == 0:
            continue
        kept.append({"input_ids": input_ids, "labels": labels})
    if len(kept) < len(examples):
        logger.warning(
            "Dropped %d example(s) without any labelled token to score.", len(examples) - len(kept)
        )
    if not kept:
        raise ValueError(
            "No calibration example has a labelled token after the first position (all labels are -100). "
            "Use labels equal to input_ids on the completion tokens."
        )
    return kept


class CalibrationCollator:
    """Right-pad a list of examples into a batch: input_ids, attention_mask, labels (-100 on padding).

    Any other numeric per-example field (e.g. a sample weight) is stacked into a tensor as is.
    """

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        length = max(len(f["input_ids"]) for f in features)
        batch_size = len(features)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key in features[0]:
            if key not in batch:
                batch[key] = torch.as_tensor([f[key] for f in features])
        return batch


class QuietProgressCallback(ProgressCallback):
    """The Trainer's step bar, named after its phase, without its log lines: the stock callback writes each
    metrics dict (`{'train_runtime': ...}`) under the bar, where a library should show its own log lines."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # the stock bar, named from its first line on
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=self.desc)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def quiet_progress(trainer: Trainer, desc: str) -> Trainer:
    """Swap the Trainer's printing callbacks for a `QuietProgressCallback` (a bar only where tqdm is enabled)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(QuietProgressCallback(desc))
    return trainer
