"""`CalibrationConfig`: where the calibration traces come from and which are kept (`RESPConfig.calibration`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config_mixin import ConfigMixin
from ..generation import GenerationSettings
from ..validation import check_int, check_range

__all__ = ["CALIBRATION_GENERATION", "CalibrationConfig"]

CALIBRATION_GENERATION = GenerationSettings(do_sample=True, batch_size=32)
"""The decoding defaults of calibration: Qwen3's thinking-mode sampling, 32 prompts per batch."""


@dataclass
class CalibrationConfig(ConfigMixin):
    """The calibration traces of a prune: their source, how many prompts, how they are generated and selected."""

    source: Literal["self", "gold", "text"] = "self"
    """`self`: the model's own traces; `gold`: a dataset's human solutions; `text`: plain text."""
    num_prompts: int = 500
    generation: GenerationSettings = field(
        default_factory=lambda: dataclasses.replace(CALIBRATION_GENERATION)
    )
    """How the model answers the calibration prompts (a GenerationSettings, or a dict of its fields laid
    over these defaults): Qwen3's thinking-mode sampling (T 0.6, top_p 0.95, top_k 20), up to 2048 new
    tokens, 32 prompts per batch. Each stage samples from its own seed, derived from `seed`."""
    keep_truncated: bool = True
    """Keep traces cut at max_new_tokens (the reference keeps them)."""
    allow_unfinished_traces: bool = False
    """Prune even when none of the dense model's traces finished within max_new_tokens (otherwise refused: it
    means a mismatched tokenizer or chat template, or far too few new tokens). For random-weight models."""
    filter_correct: bool = False
    """Keep only traces whose answer is right (needs gold answers; off in RESP, on in SSGR)."""
    selection_difficulty_samples: int = 0
    """SSGR: samples per prompt to estimate difficulty (the model's failure rate); 0 = off."""
    selection_keep_fraction: float = 1.0
    """SSGR: keep this fraction of prompts, hardest first (needs selection_difficulty_samples > 0)."""
    selection_length_quantiles: list[float] | None = None
    """SSGR: keep traces whose token length lies between these two quantiles, e.g. [0.25, 0.75]."""

    def __post_init__(self) -> None:
        """Refuse every invalid value with a message that gives the valid range."""
        self.check_literals()
        check_int("num_prompts", self.num_prompts)
        self.generation = GenerationSettings.coerce(self.generation, CALIBRATION_GENERATION, "generation")
        check_int("selection_difficulty_samples", self.selection_difficulty_samples, minimum=0)
        check_range("selection_keep_fraction", self.selection_keep_fraction, 0.0, 1.0, low_open=True)
        if self.selection_keep_fraction < 1.0 and self.selection_difficulty_samples == 0:
            raise ValueError(
                "selection_keep_fraction < 1 selects the hardest prompts, which needs "
                "selection_difficulty_samples > 0 (samples per prompt to measure difficulty)."
            )
        if self.selection_length_quantiles is not None:
            q = self.selection_length_quantiles
            if len(q) != 2 or not all(isinstance(x, int | float) for x in q) or not 0.0 <= q[0] < q[1] <= 1.0:
                raise ValueError(
                    f"selection_length_quantiles must be two numbers 0 <= low < high <= 1; got {q!r}."
                )
            self.selection_length_quantiles = list(q)
        if (self.filter_correct or self.selection_difficulty_samples) and self.source != "self":
            raise ValueError(
                "filter_correct and difficulty selection judge self-generated traces: use calibration source='self'."
            )
