"""Batched chat-style generation for reasoning models (evaluation and self-generated calibration data)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .config_mixin import ConfigMixin
from .validation import check_bool, check_int, check_range

logger = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<｜end▁of▁sentence｜>")

# Tokenizers (by name_or_path) we already warned about missing a chat template.
_WARNED_NO_TEMPLATE: set[str] = set()


@dataclass
class GenerationSettings(ConfigMixin):
    """How to decode: the one settings object of calibration traces (`RESPConfig.generation`) and of
    evaluation (`EvalConfig.generation`). Defaults follow Qwen3's thinking-mode sampling, greedy unless
    `do_sample`. The seed is not a decoding setting: each run passes its own to `generate`."""

    max_new_tokens: int = 2048
    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    thinking: bool = True
    """Render prompts with thinking on (Qwen3's `enable_thinking`; ignored by templates without the switch)."""
    batch_size: int = 8
    """Prompts per `generate` batch (vLLM schedules its own batches)."""

    def __post_init__(self) -> None:
        """Reject settings that would silently produce meaningless generations."""
        check_int("max_new_tokens", self.max_new_tokens)
        check_bool("do_sample", self.do_sample)
        if self.do_sample:  # greedy ignores the sampling knobs
            check_range("temperature", self.temperature, 0.0, 100.0, low_open=True)
        check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_int("top_k", self.top_k, minimum=0)
        check_bool("thinking", self.thinking)
        check_int("batch_size", self.batch_size)


@dataclass
class Completion:
    """One generated continuation: decoded text (cut at the end of turn) and the generated token ids."""

    prompt: str
    text: str
    token_ids: list[int]
    num_tokens: int
    truncated: bool


@dataclass
class GenerationStats:
    """Throughput of one `generate` call (generated tokens counted up to and including the end token)."""

    num_prompts: int = 0
    generated_tokens: int = 0
    elapsed_s: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per wall-clock second spent in `model.generate` (0 if nothing was timed)."""
        return self.generated_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


class CompletionList(list):
    """A ``list[Completion]`` in input order that also carries the call's `GenerationStats` as ``.stats``."""

    def __init__(self, items: Sequence[Completion] = (), stats: GenerationStats | None = None) -> None:
        super().__init__(items)
        self.stats = stats if stats is not None else GenerationStats()


def _template_text(tokenizer: Any) -> str | None:
    """Return the tokenizer's chat template text (all named templates joined), or None if it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if isinstance(template, dict):
        return "\n".join(str(v) for v in template.values())
    return str(template)


def supports_thinking_switch(tokenizer: Any) -> bool:
    """Whether the chat template reacts to ``enable_thinking`` (Qwen3-style hybrid thinking)."""
    text = _template_text(tokenizer)
    return text is not None and "enable_thinking" in text


def build_prompt(
    tokenizer: Any,
    user_text: str,
    thinking: bool = True,
    fewshot: Sequence[tuple[str, str]] = (),
) -> str:
    """Render a generation prompt with the chat template; few-shot pairs become earlier user/assistant turns."""
    if _template_text(tokenizer) is None:
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        if name not in _WARNED_NO_TEMPLATE:
            _WARNED_NO_TEMPLATE.add(name)
            logger.warning(
                "Tokenizer %r has no chat template: falling back to a plain 'Question: ...\\nAnswer:' prompt "
                "format (thinking mode cannot be switched).",
                name,
            )
        shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in fewshot)
        return f"{shots}Question: {user_text}\nAnswer:"

    messages: list[dict[str, str]] = []
    for question, answer in fewshot:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": user_text})
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
    if supports_thinking_switch(tokenizer):
        kwargs["enable_thinking"] = thinking
    prompt = tokenizer.apply_chat_template(messages, **kwargs)
    if not isinstance(prompt, str):  # some versions return a list for batched input
        prompt = prompt[0]
    return prompt


def end_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Ids that end an assistant turn: eos ids of tokenizer and model generation config plus chat end markers."""
    ids: list[int] = []

    def _add(value: Any) -> None:
        if value is None:
            return
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    _add(getattr(tokenizer, "eos_token_id", None))
    gen_config = getattr(model, "generation_config", None)
    _add(getattr(gen_config, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            _add(vocab[token])
    if not ids:
        raise ValueError(
            "Cannot determine an end-of-turn token: the tokenizer has no eos_token and no chat end marker"
        )
    return ids


def adds_special_tokens(tokenizer: Any, prompts: Sequence[str]) -> bool:
    """Whether prompts are tokenized with special tokens: chat templates usually render the BOS themselves."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and all(p.startswith(bos) for p in prompts))


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """The token ids a model is prompted with (a BOS added unless the template rendered it): every generator
    feeds these, and a calibration trace records them, so the ids scored are the ids the model saw."""
    prompts = list(prompts)
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=adds_special_tokens(tokenizer, prompts))["input_ids"]
    return [list(ids) for ids in encoded]


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Text that follows a prompt (a completion, a solution) as ids: no special token added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts' ids, left-padded to the longest, and its attention mask."""
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _pad_id(tokenizer: Any) -> int:
    """The id prompts are padded with: the tokenizer's pad token, else its eos (padding is masked out)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    logger.info("Tokenizer has no pad token: padding with eos %r", tokenizer.eos_token)
    return tokenizer.eos_token_id


def strip_ids(tokenizer: Any) -> set[int]:
    """Special-token ids removed from decoded text; the think tags are kept even when they are special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for idx, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(idx))
    vocab = tokenizer.get_vocab()
    for tag in (THINK_OPEN, THINK_CLOSE):
        ids.discard(vocab.get(tag, -1))
    return ids


def _model_device(model: Any) -> torch.device:
    """The device inputs should be placed on."""
    device = getattr(model, "device", None)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    return torch.device(device)


def _build_generation_config(
    settings: GenerationSettings, pad_id: int, end_ids: list[int]
) -> GenerationConfig:
    """Translate `GenerationSettings` into a transformers `GenerationConfig` (greedy leaves sampling knobs unset)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "use_cache": True,
        "pad_token_id": pad_id,
        "eos_token_id": end_ids,
    }
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return GenerationConfig(**kwargs)


def finish_completion(
    tokenizer: Any, prompt: str, generated: Sequence[int], end_ids: set[int], hidden: set[int]
) -> Completion:
    """Cut a generated id sequence after its first end-of-turn token and decode the visible text."""
    cut = next((i for i, tok in enumerate(generated) if tok in end_ids), None)
    if cut is None:
        token_ids, body, truncated = list(generated), list(generated), True
    else:
        token_ids, body, truncated = list(generated[: cut + 1]), list(generated[:cut]), False
    visible = [tok for tok in body if tok not in hidden]
    text = tokenizer.decode(visible, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return Completion(
        prompt=prompt, text=text, token_ids=token_ids, num_tokens=len(token_ids), truncated=truncated
    )


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    show_progress: bool = True,
    *,
    seed: int = 0,
) -> CompletionList:
    """Generate one completion per prompt with left-padded, length-sorted batches; results keep input order.

    Each batch is seeded with ``seed + (position of its first prompt in the length-sorted order)``
    so a batch's randomness does not depend on which batches ran before it.
    """
    prompts = list(prompts)
    stats = GenerationStats(num_prompts=len(prompts))
    if not prompts:
        return CompletionList([], stats)

    end_ids = end_token_ids(tokenizer, model)
    hidden = strip_ids(tokenizer)
    device = _model_device(model)

    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]

    pad_id = _pad_id(tokenizer)
    gen_config = _build_generation_config(settings, pad_id, end_ids)
    results: list[Completion | None] = [None] * len(prompts)
    for batch_start, batch in zip(
        range(0, len(order), settings.batch_size),
        tqdm(batches, desc="generate", unit="batch", disable=not show_progress),
        strict=True,
    ):
        input_ids, attention_mask = _left_pad([encoded[i] for i in batch], pad_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        torch.manual_seed(seed + batch_start)
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_config)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # count the whole generation, not just the kernel launches
        stats.elapsed_s += time.perf_counter() - start
        sequences = out.sequences if hasattr(out, "sequences") else out
        new_tokens = sequences[:, input_ids.shape[1] :].tolist()
        for row, idx in enumerate(batch):
            completion = finish_completion(tokenizer, prompts[idx], new_tokens[row], set(end_ids), hidden)
            stats.generated_tokens += completion.num_tokens
            results[idx] = completion
    logger.info(
        "Generated %d tokens for %d prompts in %.1fs (%.1f tokens/s)",
        stats.generated_tokens,
        stats.num_prompts,
        stats.elapsed_s,
        stats.tokens_per_second,
    )
    return CompletionList([c for c in results if c is not None], stats)


__all__ = [
    "Completion",
    "CompletionList",
    "GenerationSettings",
    "GenerationStats",
    "adds_special_tokens",
    "build_prompt",
    "encode_prompts",
    "encode_text",
    "end_token_ids",
    "finish_completion",
    "generate",
    "strip_ids",
    "supports_thinking_switch",
]
