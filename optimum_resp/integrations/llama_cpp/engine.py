"""A GGUF in llama.cpp (through llama-cpp-python) behind the `generate` call the evaluation harness makes.

`evaluate_model(LlamaCppModel("model.gguf"), tokenizer, EvalConfig(...))` scores a GGUF with the same prompts,
answer extraction and metrics as a transformers model: the harness tokenizes with the model's own tokenizer and
hands llama.cpp token ids, so the comparison is the model's computation, not two tokenizers. Greedy decoding only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch

__all__ = ["LlamaCppModel"]


class LlamaCppModel:
    """A llama.cpp model that answers `generate(input_ids, attention_mask, generation_config)` as transformers does.

    `n_ctx` bounds prompt plus answer; `f32_cache=True` keeps the KV cache in float32 (llama.cpp's default is
    f16), for comparisons with transformers' float32 to within float rounding.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        f32_cache: bool = False,
    ) -> None:
        import llama_cpp

        cache = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
        self.llm = llama_cpp.Llama(
            str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, seed=0, **cache
        )
        self.device = torch.device("cpu")
        self.generation_config = None

    def greedy(self, prompt: Sequence[int], max_new_tokens: int, end_ids: Iterable[int]) -> list[int]:
        """Greedy continuation of `prompt`, up to `max_new_tokens`, stopping after the first end token."""
        ends, out = set(end_ids), []
        self.llm.reset()
        if max_new_tokens <= 0:
            return out
        for token in self.llm.generate(list(prompt), temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if token in ends or len(out) == max_new_tokens:
                break
        return out

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config, **_
    ) -> torch.Tensor:
        """Prompt rows (left-padded) followed by their greedy answers, right-filled with the pad id."""
        if generation_config.do_sample:
            raise ValueError("LlamaCppModel decodes greedily; evaluate with do_sample=False.")
        ends = generation_config.eos_token_id
        ends = ends if isinstance(ends, list | tuple) else [ends]
        answers = [
            self.greedy(
                [t for t, m in zip(row, mask, strict=True) if m], generation_config.max_new_tokens, ends
            )
            for row, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True)
        ]
        width = max(len(a) for a in answers)
        pad = generation_config.pad_token_id
        new = torch.tensor([a + [pad] * (width - len(a)) for a in answers], dtype=torch.long)
        return torch.cat([input_ids.cpu(), new], dim=1)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
