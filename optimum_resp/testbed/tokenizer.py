"""Builder for the testbed's small byte-level BPE tokenizer (digits split) with a Qwen3-style chat template."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and not loop.last and '</think>' in message['content'] %}"
    "{{- '<|im_start|>assistant\\n' + message['content'].split('</think>')[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)
"""Qwen3-style ChatML template; ``enable_thinking=False`` pre-fills an empty think block."""


def build_tokenizer(texts: Iterable[str], vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (digits always single tokens) on ``texts`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # every digit is its own piece (a leading space may stay attached: ' 2', '8')
            pre_tokenizers.Split(Regex(r" ?\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # <think> / </think> are atomic but not "special": they survive skip_special_tokens=True, as in Qwen3.
    tok.add_tokens(
        [
            AddedToken(THINK_START, normalized=False, special=False),
            AddedToken(THINK_END, normalized=False, special=False),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    logger.info("built tokenizer with %d tokens", len(fast))
    return fast


def build_testbed_tokenizer(
    num_problems: int = 4000, seed: int = 0, vocab_size: int = 768
) -> PreTrainedTokenizerFast:
    """Build the tokenizer from generated testbed text (questions, both solution styles, MathQA variants).

    The text comes from the generator's training family only, so words of the held-out frames are spelled with
    pieces the model has trained on, as unseen words are for a real model.
    """
    from .compositional import generate_split
    from .problems import MATHQA_INSTRUCTION, REASONING_SUFFIX

    probs = generate_split("train", num_problems, seed=seed + 7, steps=(2, 8))
    texts: list[str] = [REASONING_SUFFIX, MATHQA_INSTRUCTION, "user\n", "assistant\n", "system\n"] * 2000
    for p in probs:
        texts += [p.question, p.solution, p.gold, p.mathqa_prompt(), p.mathqa_solution(), p.rationale]
    return build_tokenizer(texts, vocab_size=vocab_size)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """Save ``tokenizer`` with ``save_pretrained`` into ``out_dir``."""
    tokenizer.save_pretrained(str(out_dir))
