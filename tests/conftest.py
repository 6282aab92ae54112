"""What the test files share: the one tiny-tokenizer factory and the one tiny-model factory (test files import them:
`from conftest import tiny_model, tiny_tokenizer`) and the `one_thread` fixture. Tests that run a subprocess,
several processes, an inference engine or a real model carry the `slow` marker (pyproject.toml)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from optimum_resp.testbed.tokenizer import CHAT_TEMPLATE as QWEN3_STYLE_CHAT_TEMPLATE
from optimum_resp.testbed.tokenizer import SPECIAL_TOKENS, THINK_END, THINK_START
from optimum_resp.testing_utils import tiny_config

THINK_TOKENS = [THINK_START, THINK_END]


def tiny_tokenizer(
    *,
    chat_template: str | None = QWEN3_STYLE_CHAT_TEMPLATE,
    think_special: bool = False,
    name: str = "tiny-qwen3",
    bos: bool = False,
    merges: Sequence[tuple[str, str]] = (),
) -> PreTrainedTokenizerFast:
    """A byte-level fast tokenizer that round-trips any text, with the testbed's Qwen3-style chat template and
    special tokens; with `bos`, it adds a `<s>` BOS to every encoding (as Llama-3's does); with `merges`, byte-level
    BPE merges (none by default, so every character is one token)."""
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


def tiny_model(
    model_type: str = "qwen3",
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    random_biases: bool = False,
    **overrides,
) -> PreTrainedModel:
    """A random-weight model of `optimum_resp.testing_utils.tiny_config` (eval mode, float32, CPU), seeded; with
    `tokenizer`, its vocabulary and end / pad ids are the tokenizer's (what generation and pruning tests need); with
    `random_biases`, every linear bias is drawn from N(0, 0.1), so a bias sliced or scored wrongly shows."""
    torch.manual_seed(seed)
    if tokenizer is not None:
        overrides = {
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            **overrides,
        }
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    if random_biases:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0, 0.1)
    return model.eval()


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run tiny-model code on one intra-op thread (much faster than contended threads on a busy CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster on one intra-op thread on a busy CPU (use with `pytestmark`)."""
    with single_torch_thread():
        yield
