"""Trace generators behind one interface: transformers `generate` everywhere, vLLM where it runs."""

from __future__ import annotations

import abc
import importlib.util
import logging
import tempfile
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..generation import Completion, GenerationSettings, end_token_ids, generate

logger = logging.getLogger(__name__)

__all__ = ["GENERATORS", "AutoGenerator", "HFGenerator", "TraceGenerator", "VLLMGenerator", "get_generator"]


class TraceGenerator(abc.ABC):
    """Turns chat-formatted prompts into completions; every backend returns the same `Completion` format."""

    name: ClassVar[str]

    @abc.abstractmethod
    def generate(
        self, model, tokenizer, prompts: Sequence[str], settings: GenerationSettings
    ) -> list[Completion]:
        """One completion per prompt, in input order, cut after the first end-of-turn token."""


class HFGenerator(TraceGenerator):
    """Batched transformers `generate` with left padding and KV cache (works for every model we build)."""

    name = "hf"

    def generate(self, model, tokenizer, prompts, settings):
        return list(generate(model, tokenizer, prompts, settings))


class VLLMGenerator(TraceGenerator):
    """vLLM offline generation (GPU only) for stock-architecture models; same output format as HFGenerator."""

    name = "vllm"

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()

    def generate(self, model, tokenizer, prompts, settings):
        if not self.available():
            raise RuntimeError(
                "The vLLM backend needs the `vllm` package and a CUDA GPU; use generator='hf'."
            )
        if getattr(model.config, "is_heterogeneous", False):
            raise RuntimeError(
                "vLLM cannot load per-layer (heterogeneous) models; use generator='hf' for them."
            )
        from vllm import LLM, SamplingParams  # noqa: PLC0415 - optional dependency

        end_ids = end_token_ids(tokenizer, model)
        params = SamplingParams(
            n=1,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            top_k=settings.top_k if (settings.do_sample and settings.top_k) else -1,
            seed=settings.seed,
            stop_token_ids=end_ids,
        )
        with tempfile.TemporaryDirectory(prefix="resp-vllm-") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            llm = LLM(model=tmp, dtype=str(model.dtype).replace("torch.", ""), seed=settings.seed)
            outputs = llm.generate(list(prompts), params)
        completions = []
        for prompt, out in zip(prompts, outputs):
            ids = list(out.outputs[0].token_ids)
            finished = bool(ids) and ids[-1] in end_ids
            body = ids[:-1] if finished else ids
            completions.append(
                Completion(
                    prompt=prompt,
                    text=tokenizer.decode(body, skip_special_tokens=False),
                    token_ids=ids,
                    num_tokens=len(ids),
                    truncated=not finished,
                )
            )
        return completions


class AutoGenerator(TraceGenerator):
    """vLLM for stock-architecture models when it is installed and a GPU is present, else transformers."""

    name = "auto"

    def generate(self, model, tokenizer, prompts, settings):
        use_vllm = VLLMGenerator.available() and not getattr(model.config, "is_heterogeneous", False)
        backend = VLLMGenerator() if use_vllm else HFGenerator()
        return backend.generate(model, tokenizer, prompts, settings)


GENERATORS: dict[str, type[TraceGenerator]] = {
    "auto": AutoGenerator,
    "hf": HFGenerator,
    "vllm": VLLMGenerator,
}


def get_generator(name: str = "auto", **kwargs: Any) -> TraceGenerator:
    """A generator by name: `auto` (vLLM where it can run, else transformers), `hf` or `vllm`."""
    if name not in GENERATORS:
        raise ValueError(f"Unknown generator {name!r}; choose one of {list(GENERATORS)}.")
    return GENERATORS[name](**kwargs)
