"""Test helpers: a tiny byte-level tokenizer with a Qwen3-style chat template and a tiny random Qwen3."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

# The testbed's Qwen3-style chat template and special tokens (same turn markers, same `enable_thinking`
# switch: an empty think block is pre-filled in the generation prompt when thinking is disabled).
from optimum_resp.testbed.tokenizer import CHAT_TEMPLATE as QWEN3_STYLE_CHAT_TEMPLATE
from optimum_resp.testbed.tokenizer import SPECIAL_TOKENS, THINK_END, THINK_START

THINK_TOKENS = [THINK_START, THINK_END]


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run tiny-model code on one intra-op thread (much faster than contended threads on a busy CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_tiny_tokenizer(
    *,
    chat_template: str | None = QWEN3_STYLE_CHAT_TEMPLATE,
    think_special: bool = False,
    name: str = "tiny-qwen3",
    bos: bool = False,
    merges: Sequence[tuple[str, str]] = (),
) -> PreTrainedTokenizerFast:
    """Build a byte-level fast tokenizer that round-trips any text, with Qwen3 special tokens; with `bos`, it adds a
    `<s>` BOS to every encoding (as Llama-3's does); with `merges`, byte-level BPE merges (no merges by default, so
    every character is one token)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        name_or_path=name,
        clean_up_tokenization_spaces=False,
    )
    if think_special:
        tokenizer.add_special_tokens({"additional_special_tokens": THINK_TOKENS})
    else:
        tokenizer.add_tokens(THINK_TOKENS)
    if bos:
        tokenizer.add_special_tokens({"bos_token": "<s>"})
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
        )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_qwen3(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3ForCausalLM:
    """Build a 2-layer random-weight Qwen3 matching ``tokenizer`` (eval mode, float32, CPU)."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.eval()
    return model


class ScriptedModel:
    """A stand-in for a causal LM: ``generate`` answers each prompt with a scripted reply, like HF would.

    ``script(prompt_text) -> reply``: a reply text is tokenized, a list of ids is generated as it is; either is
    followed by ``<|im_end|>`` unless ``end=False``, cut at ``max_new_tokens``, and finished rows are right-filled
    with the pad id. Every call is recorded (input ids, attention mask, generation config, and the ids generated)
    so tests can check padding, batching and what was generated.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, script, end: bool = True) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.end = end
        self.device = torch.device("cpu")
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, generation_config=None, **kwargs):
        self.calls.append(
            {"input_ids": input_ids, "attention_mask": attention_mask, "config": generation_config}
        )
        end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        max_new = generation_config.max_new_tokens
        replies = []
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt_ids = [tok for tok, m in zip(row, mask, strict=True) if m]
            prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
            reply = self.script(prompt)
            ids = (
                list(reply)
                if isinstance(reply, list)
                else self.tokenizer.encode(reply, add_special_tokens=False)
            )
            if self.end:
                ids = ids + [end_id]
            replies.append(ids[:max_new])
        self.calls[-1]["generated"] = replies
        width = max(len(r) for r in replies)
        pad = generation_config.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in replies], dtype=torch.long)
        return torch.cat([input_ids, new], dim=1)


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, model_type: str = "qwen3", seed: int = 0, **overrides
):
    """A 4-layer random model of `optimum_resp.testing_utils.tiny_config` whose vocabulary and special ids match
    ``tokenizer`` (eval mode): what pruner, CLI and Hub tests prune end to end."""
    from transformers import AutoModelForCausalLM

    from optimum_resp.testing_utils import tiny_config

    torch.manual_seed(seed)
    config = tiny_config(
        model_type,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **overrides,
    )
    return AutoModelForCausalLM.from_config(config).eval()
