"""What a prune did, typed: one `StageRecord` per stage and the final `PruneReport` (`resp_report.json`).

The model card, `optimum-resp info`, the demo and the benchmarks all read these classes; the JSON form
(`to_dict` / `from_dict`) is the file format, flat as it has always been: the size report's keys, then
`stages`, `source`, `resp_config`, `recovery` and `checkpoint_traits`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .accounting import SPARSITY_DEFINITION, SizeReport
from .architectures import LayerSizes
from .configuration_resp import RESPConfig
from .profiling import PhaseCost
from .runtimes import RuntimeSupport, export_target

__all__ = ["PruneReport", "RecoveryRecord", "StageRecord"]


class _Record:
    """A flat dataclass record whose JSON form is its fields (unknown keys are ignored on reading)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class StageRecord(_Record):
    """One finished stage: where sparsity stood, on which traces it was scored, and what it cost."""

    stage: int
    target_sparsity: float
    sparsity: float
    regenerated: bool
    num_traces: int
    mean_trace_tokens: float
    truncated_fraction: float
    calibration_loss: float | None
    seconds: float
    correct_fraction: float | None = None
    """Fraction of the stage's traces whose answer is right (None: no gold answers to judge them by)."""
    phases: dict[str, PhaseCost] = field(default_factory=dict)
    """Seconds, peak memory and tokens of each phase: regeneration, scoring, allocation, surgery, checkpoint
    (stage 1 also carries the dense generation and SSGR selection before it)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageRecord:
        record = super().from_dict(d)
        record.phases = {k: PhaseCost.from_dict(v) for k, v in (d.get("phases") or {}).items()}
        return record


@dataclass
class RecoveryRecord(_Record):
    """Recovery after the last stage (`RESPConfig.recovery`)."""

    method: str
    train_loss: float | None
    seconds: float
    trainable_parameters: int
    tokens: int | None = None
    """Decode tokens trained on per epoch."""
    kl_before: float | None = None
    """Distillation: mean KL to the dense model's top-k distributions on its traces, before and after."""
    kl_after: float | None = None


@dataclass
class PruneReport:
    """Dense vs pruned sizes, the stage history, the recipe and the source of one prune."""

    size: SizeReport
    stages: list[StageRecord] = field(default_factory=list)
    source: str | None = None
    resp_config: RESPConfig | None = None
    recovery: RecoveryRecord | None = None
    checkpoint_traits: list[str] | None = None
    """The pruned checkpoint's `runtimes.TRAITS` (untied embeddings, biases) some runtime cannot take; None in
    reports written before they were recorded."""

    @property
    def sparsity(self) -> float:
        return self.size.sparsity

    @property
    def model_type(self) -> str:
        return self.size.model_type

    @property
    def dense_total_params(self) -> int | None:
        return self.size.dense_total_params

    @property
    def pruned_total_params(self) -> int | None:
        return self.size.pruned_total_params

    @property
    def pruned_layers(self) -> tuple[LayerSizes, ...]:
        return self.size.pruned_layers

    @property
    def export(self) -> str:
        """`uniform` or `per_layer`: from the recipe, else from whether the pruned layers differ."""
        if self.resp_config is not None:
            return self.resp_config.export.mode
        return "uniform" if len(set(self.size.pruned_layers)) <= 1 else "per_layer"

    @property
    def query_heads_lost(self) -> bool:
        """Whether some layer kept fewer query heads than the dense model had."""
        return any(
            p.num_attention_heads < d.num_attention_heads
            for d, p in zip(self.size.dense_layers, self.size.pruned_layers)
        )

    def runtime_support(self) -> list[RuntimeSupport]:
        """Where the pruned model loads (transformers, lm-evaluation-harness, vLLM, llama.cpp), and how."""
        target = export_target(
            self.export, (), self.model_type, self.checkpoint_traits, query_heads_lost=self.query_heads_lost
        )
        return list(target.support)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.size.to_dict(),
            "sparsity_definition": SPARSITY_DEFINITION,
            "stages": [s.to_dict() for s in self.stages],
            "source": self.source,
            "resp_config": self.resp_config.to_dict() if self.resp_config is not None else None,
            "recovery": self.recovery.to_dict() if self.recovery is not None else None,
            "checkpoint_traits": self.checkpoint_traits,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneReport:
        """Inverse of `to_dict`; `stages`, `source`, `resp_config`, `recovery` and `checkpoint_traits` may be absent."""
        config, recovery = d.get("resp_config"), d.get("recovery")
        return cls(
            size=SizeReport.from_dict(d),
            stages=[StageRecord.from_dict(s) for s in d.get("stages") or []],
            source=d.get("source"),
            resp_config=RESPConfig.from_dict(config) if config else None,
            recovery=RecoveryRecord.from_dict(recovery) if recovery else None,
            checkpoint_traits=d.get("checkpoint_traits"),
        )

    @classmethod
    def coerce(cls, report: PruneReport | Mapping[str, Any]) -> PruneReport:
        """A PruneReport from itself or from its JSON form (a loaded resp_report.json)."""
        return report if isinstance(report, PruneReport) else cls.from_dict(report)
