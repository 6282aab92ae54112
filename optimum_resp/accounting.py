"""Parameter accounting for pruned models: what was removed, per layer and in total.

Sparsity here is removed decoder-linear parameters / dense decoder-linear parameters (weights and
biases of q/k/v/o and gate/up/down; embeddings, norms and lm_head excluded): what a user means by
"40% pruned". The RESP reference divides by all decoder-layer parameters instead; reports say which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from .architectures import LayerSizes, get_architecture, layer_sizes

__all__ = ["SPARSITY_DEFINITION", "SizeReport", "decoder_linear_params", "size_report"]

SPARSITY_DEFINITION = "removed decoder-linear parameters / dense decoder-linear parameters"


def decoder_linear_params(config: PretrainedConfig) -> list[int]:
    """Linear-layer parameters (weights and biases) of each decoder layer, from the config alone."""
    spec = get_architecture(config)
    return [spec.layer_linear_params(config, sizes) for sizes in layer_sizes(config)]


@dataclass(frozen=True)
class SizeReport:
    """Dense vs pruned sizes, per layer and in total."""

    model_type: str
    dense_layers: tuple[LayerSizes, ...]
    pruned_layers: tuple[LayerSizes, ...]
    dense_layer_params: tuple[int, ...]
    pruned_layer_params: tuple[int, ...]
    dense_total_params: int | None = None
    pruned_total_params: int | None = None

    @property
    def dense_decoder_linear_params(self) -> int:
        return sum(self.dense_layer_params)

    @property
    def pruned_decoder_linear_params(self) -> int:
        return sum(self.pruned_layer_params)

    @property
    def sparsity(self) -> float:
        """Removed decoder-linear parameters / dense decoder-linear parameters."""
        return 1.0 - self.pruned_decoder_linear_params / self.dense_decoder_linear_params

    def layer_sparsity(self, i: int) -> float:
        return 1.0 - self.pruned_layer_params[i] / self.dense_layer_params[i]

    def with_pruned(self, config: PretrainedConfig, total_params: int | None = None) -> SizeReport:
        """This report with the pruned side read from `config`: what a saved model loads as, whatever the report
        recorded (a hand-edited or damaged config.json makes them differ)."""
        return dataclasses.replace(
            self,
            pruned_layers=tuple(layer_sizes(config)),
            pruned_layer_params=tuple(decoder_linear_params(config)),
            pruned_total_params=total_params,
        )

    def with_dense(self, origin: SizeReport) -> SizeReport:
        """This report with `origin`'s dense side: when this report's dense model was itself a prune (`origin`
        its report), sizes and sparsity count against the original dense model."""
        return dataclasses.replace(
            self,
            dense_layers=origin.dense_layers,
            dense_layer_params=origin.dense_layer_params,
            dense_total_params=origin.dense_total_params,
        )

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "sparsity": self.sparsity,
            "sparsity_definition": SPARSITY_DEFINITION,
            "dense_decoder_linear_params": self.dense_decoder_linear_params,
            "pruned_decoder_linear_params": self.pruned_decoder_linear_params,
            "dense_total_params": self.dense_total_params,
            "pruned_total_params": self.pruned_total_params,
            "layers": [
                {
                    "layer": i,
                    "dense": d.to_dict(),
                    "pruned": p.to_dict(),
                    "dense_params": dp,
                    "pruned_params": pp,
                    "sparsity": self.layer_sparsity(i),
                }
                for i, (d, p, dp, pp) in enumerate(
                    zip(
                        self.dense_layers,
                        self.pruned_layers,
                        self.dense_layer_params,
                        self.pruned_layer_params,
                    )
                )
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SizeReport:
        """Inverse of `to_dict` (the derived fields, sparsity and sums, are recomputed)."""
        layers = d["layers"]
        return cls(
            model_type=d["model_type"],
            dense_layers=tuple(LayerSizes(**layer["dense"]) for layer in layers),
            pruned_layers=tuple(LayerSizes(**layer["pruned"]) for layer in layers),
            dense_layer_params=tuple(layer["dense_params"] for layer in layers),
            pruned_layer_params=tuple(layer["pruned_params"] for layer in layers),
            dense_total_params=d.get("dense_total_params"),
            pruned_total_params=d.get("pruned_total_params"),
        )

    def format_table(self) -> str:
        """A Markdown table of per-layer sizes followed by the totals."""
        lines = [
            "| layer | query heads | KV heads | MLP channels | linear params | sparsity |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for i, (d, p) in enumerate(zip(self.dense_layers, self.pruned_layers)):
            lines.append(
                f"| {i} | {p.num_attention_heads}/{d.num_attention_heads} | "
                f"{p.num_key_value_heads}/{d.num_key_value_heads} | {p.intermediate_size}/{d.intermediate_size} | "
                f"{self.pruned_layer_params[i]:,}/{self.dense_layer_params[i]:,} | {self.layer_sparsity(i):.1%} |"
            )
        lines.append("")
        lines.append(
            f"Decoder-linear parameters: {self.dense_decoder_linear_params:,} -> "
            f"{self.pruned_decoder_linear_params:,} (sparsity {self.sparsity:.2%}: {SPARSITY_DEFINITION})."
        )
        if self.dense_total_params is not None and self.pruned_total_params is not None:
            lines.append(f"All parameters: {self.dense_total_params:,} -> {self.pruned_total_params:,}.")
        return "\n".join(lines)


def size_report(dense, pruned) -> SizeReport:
    """Compare two models (or configs) of the same architecture, the second a pruned form of the first."""
    dense_config = getattr(dense, "config", dense)
    pruned_config = getattr(pruned, "config", pruned)
    if get_architecture(dense_config) is not get_architecture(pruned_config):
        raise ValueError(
            f"Cannot compare a {dense_config.model_type} model with a {pruned_config.model_type} model."
        )

    def total(m) -> int | None:
        return sum(p.numel() for p in m.parameters()) if hasattr(m, "parameters") else None

    return SizeReport(
        model_type=get_architecture(dense_config).model_type,
        dense_layers=tuple(layer_sizes(dense_config)),
        pruned_layers=tuple(layer_sizes(pruned_config)),
        dense_layer_params=tuple(decoder_linear_params(dense_config)),
        pruned_layer_params=tuple(decoder_linear_params(pruned_config)),
        dense_total_params=total(dense),
        pruned_total_params=total(pruned),
    )
