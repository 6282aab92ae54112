"""`RESPConfig`: the recipe of one RESP prune, one section per component, saved as `resp_config.json`.

The top level is the recipe itself (target sparsity, structures, stages and milestones, criterion, loss, seed);
each component owns the section it reads, the way peft gives each tuner its config: `calibration`
(`calibration.CalibrationConfig`: source, prompts, generation, selection), `scoring` (the chosen criterion's own
dataclass, `Scorer.config_class`: Taylor's abs_after, batch, checkpointing, bf16), `recovery` (None, or a
`recovery.RecoveryConfig` such as LoRA's, holding a peft `LoraConfig`) and `export` (`runtimes.ExportConfig`:
mode, allocation, protected layers, channel multiple, runtimes). The sections are the stored form; the flat
names of files written before them (`LEGACY_KEYS`: `batch_size`, `export='uniform'`, `lora_r`, ...) are still
read, as a file and as keyword arguments, each landing in its section.

A peft-style dataclass rather than optimum's `BaseConfig`: `BaseConfig` is a transformers
`PretrainedConfig`, which in transformers 5 is a strict model-config dataclass whose serialization
adds model fields (`output_attentions`, `transformers_version`, ...) and per-layer machinery that mean
nothing for a pruning recipe. A plain dataclass keeps the file to exactly the recipe and still offers the same
`save_pretrained` / `from_pretrained` / `push_to_hub` surface and file naming.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .architectures import STRUCTURES
from .calibration.config import CalibrationConfig
from .config_mixin import ConfigMixin, check_keys
from .files import atomic_write
from .importance.base import SCORERS, ScoringConfig
from .recovery import RECOVERY, RecoveryConfig
from .registry import Registry
from .runtimes import ExportConfig
from .validation import check_choice, check_int, check_range
from .version import __version__

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "LEGACY_KEYS", "METHOD_PRESETS", "RESPConfig"]

CONFIG_NAME = "resp_config.json"

METHOD_PRESETS: Registry[tuple[dict[str, Any], str]] = Registry(
    "method", hint="Or build a RESPConfig with your own settings."
)
"""Method name (`RESPConfig.for_method`, `--method`) -> (config overrides, description). A baseline is the
same pipeline with another config; baseline criteria are one-shot (num_stages=1), as they were published."""

for _name, _preset in {
    "resp": ({}, "RESP: self-generated traces, decode-only Taylor, progressive with regeneration"),
    "resp-no-regen": (
        {"regeneration_milestones": []},
        "RESP without regeneration (the dense model's traces only)",
    ),
    "taylor-full": (
        {"loss": "full", "regeneration_milestones": []},
        "Taylor on self-generated traces with the full-sequence loss, no regeneration",
    ),
    "taylor-gold": (
        {"calibration_source": "gold", "regeneration_milestones": []},
        "Taylor on human-written gold solutions (GISP / LLM-Pruner style), no regeneration",
    ),
    "magnitude": (
        {"importance": "magnitude", "num_stages": 1, "regeneration_milestones": []},
        "weight magnitude (squared L2 norm per structure), one shot",
    ),
    "wanda-sp": (
        {"importance": "wanda-sp", "num_stages": 1, "regeneration_milestones": []},
        "Wanda-sp (|W| x input-activation norm per structure), one shot",
    ),
    "flap": (
        {"importance": "flap", "num_stages": 1, "regeneration_milestones": []},
        "FLAP (activation fluctuation x weight norm, with bias compensation), one shot",
    ),
}.items():
    METHOD_PRESETS.register(_name, _preset)
del _name, _preset


_DECODING_KEYS = {
    **{
        k: (f"calibration.generation.{k}",)
        for k in ("thinking", "do_sample", "temperature", "top_p", "top_k")
    },
    "max_new_tokens": ("calibration.generation.max_new_tokens",),
    "generation_batch_size": ("calibration.generation.batch_size",),
}
"""Decoding keys of the files written before `generation` existed (read, never written)."""

LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "calibration_source": ("calibration.source",),
    "num_calibration_prompts": ("calibration.num_prompts",),
    **{
        k: (f"calibration.{k}",)
        for k in (
            "generation",
            "keep_truncated",
            "allow_unfinished_traces",
            "filter_correct",
            "selection_difficulty_samples",
            "selection_keep_fraction",
            "selection_length_quantiles",
        )
    },
    "taylor_abs_after": ("scoring.abs_after",),
    "batch_size": ("scoring.batch_size", "recovery.batch_size"),
    "gradient_checkpointing": ("scoring.gradient_checkpointing",),
    "bf16_autocast": ("scoring.bf16_autocast",),
    "recovery": ("recovery.method",),
    "lora_r": ("recovery.lora.r",),
    "lora_alpha": ("recovery.lora.lora_alpha",),
    "lora_dropout": ("recovery.lora.lora_dropout",),
    "recovery_epochs": ("recovery.epochs",),
    "recovery_learning_rate": ("recovery.learning_rate",),
    "recovery_tokens": ("recovery.tokens",),
    "export": ("export.mode",),
    **{k: (f"export.{k}",) for k in ("allocation", "protected_layers", "channel_multiple", "runtimes")},
    **_DECODING_KEYS,
}
"""The flat names of resp_config.json files written before the sections, still read from files and taken as
keyword arguments: name -> the section field(s) it sets. A name whose section this recipe does not have (Taylor's
settings under another criterion, LoRA's without recovery) is ignored, as it always was."""

_SECTIONS = ("calibration", "scoring", "recovery", "export")
_BY_TYPE = ("recovery", "export")
"""Names that are both a section and a flat key: a string given for them is the flat key (`export='uniform'`)."""


def _plain(value: Any) -> dict[str, Any]:
    """A section (or a nested dataclass such as LoraConfig, or a dict, or None) as a dict of its fields."""
    if value is None:
        return {}
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    return dict(value)


def _set_path(tree: Mapping[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """`tree` with `value` at `path` (a dict laid over a section or settings already there)."""
    head, *rest = path
    out = dict(tree)
    if rest:
        out[head] = _set_path(_plain(out.get(head)), rest, value)
    elif isinstance(value, Mapping) and out.get(head) is not None:
        out[head] = {**_plain(out[head]), **value}
    else:
        out[head] = value
    return out


def _get_path(tree: Any, path: list[str]) -> Any:
    """The value at `path` in nested dicts (`dataclasses.MISSING` when absent)."""
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return dataclasses.MISSING
        tree = tree[part]
    return tree


def _recovery_class(value: Any) -> type[RecoveryConfig] | None:
    """The recovery section's class for a section value (None: no recovery)."""
    if value is None:
        return None
    if isinstance(value, RecoveryConfig):
        return type(value)
    if isinstance(value, Mapping) and "method" in value:
        return RECOVERY.lookup(value["method"])
    raise ValueError(
        f"recovery must be 'none', a method of {list(RECOVERY)}, a RecoveryConfig or a dict with its 'method'; "
        f"got {value!r}."
    )


def _recovery(value: Any) -> RecoveryConfig | None:
    cls = _recovery_class(value)
    if cls is None or isinstance(value, RecoveryConfig):
        return value
    return cls.from_dict({k: v for k, v in value.items() if k != "method"})


@dataclass(init=False)
class RESPConfig(ConfigMixin):
    """The recipe of one RESP prune (the defaults follow the RESP paper unless noted).

    Takes its fields by name, each section as an instance or a dict of its fields, and the flat names of
    `LEGACY_KEYS` (`RESPConfig(target_sparsity=0.4, batch_size=8, generation={...})`), which land in their
    sections."""

    # What to remove.
    target_sparsity: float = 0.4
    """Fraction of decoder-linear parameters to remove, in (0, 1)."""
    structures: list[str] = field(default_factory=lambda: list(STRUCTURES))
    """Structure kinds that may be removed: query_heads, kv_heads (whole groups), channels."""

    # Schedule.
    num_stages: int = 8
    """Sparsity rises linearly from 0 to target_sparsity over this many stages, one scoring pass each (8: the
    fewest stages the seeds cannot tell from the best in benchmarks/bench_quality.py's 2/4/8/16 sweep; the
    reference uses 112)."""
    regeneration_milestones: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    """Sparsities at which the pruned model regenerates its calibration traces ([] = never)."""
    regeneration_fraction: float = 1.0
    """Fraction of the prompts whose traces are regenerated at a milestone (the rest keep theirs)."""

    # Importance.
    importance: str = "taylor"
    """A registered importance criterion: `taylor` (RESP) or a baseline (`optimum_resp.importance.SCORERS`)."""
    loss: Literal["decode", "full"] = "decode"
    """`decode`: loss on generated tokens only (prompt labels -100); `full`: on every token."""
    normalization: Literal["resp", "params", "none"] = "resp"
    """Head vs channel balance: the reference's constants, importance per parameter, or raw sums."""
    max_length: int = 4096
    """Longest prompt + trace scored, in tokens."""
    seed: int = 0

    # The components' sections.
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """The calibration traces: source, prompts, generation, selection."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """The criterion's own settings: an instance of `SCORERS[importance].config_class` (Taylor's by default)."""
    recovery: RecoveryConfig | None = None
    """None (no recovery), or a registered method's section (`recovery.RECOVERY`): `'lora'` fine-tunes LoRA adapters
    on the dense model's traces after pruning and merges them into the weights."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """How the model is written and where it must run: mode, allocation, protected layers, channel multiple,
    runtimes."""

    def __init__(self, **values: Any) -> None:
        self._assign(self._layout({}, values))

    # ------------------------------------------------------------------ construction

    @classmethod
    def _layout(cls, base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` (fields, sections, flat names) laid over `base` (fields): every field's value, each section as an
        instance or a dict of its fields."""
        names = [f.name for f in dataclasses.fields(cls)]
        flat = {k: v for k, v in values.items() if k not in names or (k in _BY_TYPE and isinstance(v, str))}
        check_keys("RESPConfig", flat, [*names, *LEGACY_KEYS])
        out = dict(base)
        for key, value in values.items():
            if key in flat:
                continue
            if key in _SECTIONS and isinstance(value, Mapping) and out.get(key) is not None:
                value = {**_plain(out[key]), **value}
            out[key] = value
        importance = out.get("importance", "taylor")
        check_choice("importance", importance, tuple(SCORERS))
        if "recovery" in flat:
            method = flat.pop("recovery")
            current = _recovery_class(out.get("recovery"))
            if method == "none":
                out["recovery"] = None
            elif current is None or current.method != method:
                out["recovery"] = {"method": RECOVERY.lookup(method).method}
        scoring_class = SCORERS[importance].config_class
        if isinstance(out.get("scoring"), ScoringConfig) and not isinstance(out["scoring"], scoring_class):
            out["scoring"] = cls._carry("scoring", out["scoring"], scoring_class)
        classes = {
            "calibration": CalibrationConfig,
            "scoring": scoring_class,
            "recovery": _recovery_class(out.get("recovery")),
            "export": ExportConfig,
        }
        for key, value in flat.items():
            landed = False
            for path in LEGACY_KEYS[key]:
                section, *rest = path.split(".")
                if classes[section] is not None and rest[0] in classes[section].field_names():
                    out[section] = _set_path(_plain(out.get(section)), rest, value)
                    landed = True
            if not landed:
                logger.debug("%s=%r is a setting of no section of this recipe: ignored.", key, value)
        return out

    @staticmethod
    def _carry(name: str, section: ConfigMixin, cls: type[ConfigMixin]) -> dict[str, Any]:
        """The settings of `section` that `cls` (another criterion's section) shares; the others are dropped."""
        values = section.to_dict()
        dropped = sorted(set(values) - set(cls.field_names()))
        if dropped:
            logger.debug("%s settings %s do not apply to %s: dropped.", name, dropped, cls.__name__)
        return {k: v for k, v in values.items() if k in cls.field_names()}

    def _assign(self, values: Mapping[str, Any]) -> None:
        """Set every field from `values` (defaults for the rest), build the sections, and validate."""
        for f in dataclasses.fields(self):
            if f.name in values:
                setattr(self, f.name, values[f.name])
            elif f.default_factory is not dataclasses.MISSING:
                setattr(self, f.name, f.default_factory())
            else:
                setattr(self, f.name, f.default)
        check_choice("importance", self.importance, tuple(SCORERS))
        builders = {
            "calibration": lambda v: CalibrationConfig.coerce(v, name="calibration"),
            "scoring": lambda v: SCORERS[self.importance].config_class.coerce(v, name="scoring"),
            "recovery": _recovery,
            "export": lambda v: ExportConfig.coerce(v, name="export"),
        }
        for name, build in builders.items():
            value = values.get(name)
            try:
                setattr(self, name, build(value))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        self.validate()

    def override(self, **values: Any) -> RESPConfig:
        """A copy with `values` (fields, sections, flat names) laid over this recipe: a flat name or a dict for a
        section changes those settings and keeps the section's others; a new `importance` keeps the scoring
        settings the new criterion shares (e.g. `batch_size`)."""
        new = object.__new__(type(self))
        new._assign(self._layout({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, values))
        return new

    def validate(self) -> None:
        """Refuse every invalid value with a message that gives the valid range (the sections check their own)."""
        self.check_literals()
        check_range("target_sparsity", self.target_sparsity, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(self.structures, list | tuple) or not self.structures:
            raise ValueError(
                f"structures must be a non-empty list drawn from {list(STRUCTURES)}; got {self.structures!r}."
            )
        for s in self.structures:
            check_choice("each of structures", s, STRUCTURES)
        self.structures = [s for s in STRUCTURES if s in self.structures]
        check_int("num_stages", self.num_stages)
        for m in self.regeneration_milestones:
            check_range("each regeneration milestone", m, 0.0, 1.0, low_open=True, high_open=True)
        self.regeneration_milestones = sorted(set(self.regeneration_milestones))
        check_range("regeneration_fraction", self.regeneration_fraction, 0.0, 1.0, low_open=True)
        if self.loss == "decode" and self.calibration.source == "text":
            raise ValueError(
                "loss='decode' needs prompt/completion pairs; plain-text calibration has no prompt: use loss='full'."
            )
        check_int("max_length", self.max_length, minimum=2)
        check_int("seed", self.seed, minimum=0)

    @classmethod
    def for_method(cls, method: str, **kwargs: Any) -> RESPConfig:
        """The config of a named method (`resp` or a baseline, see METHOD_PRESETS), with overrides."""
        return cls(**{**METHOD_PRESETS.lookup(method)[0], **kwargs})

    # ------------------------------------------------------------------ schedule helpers

    def stage_sparsities(self, start: float = 0.0) -> list[float]:
        """Target sparsity after each stage: a linear ramp from `start` (the sparsity of a model that is already a
        prune, pruned further) to target_sparsity."""
        return [
            start + (self.target_sparsity - start) * (k + 1) / self.num_stages for k in range(self.num_stages)
        ]

    # ------------------------------------------------------------------ serialization

    def to_flat_dict(self) -> dict[str, Any]:
        """The recipe under the flat names of `LEGACY_KEYS` (the form of files written before the sections, and of
        the benchmarks' record keys); a name whose section this recipe does not have is left out."""
        tree = self.to_dict()
        out = {k: v for k, v in tree.items() if k not in _SECTIONS}
        for key, paths in LEGACY_KEYS.items():
            found = [
                v for v in (_get_path(tree, p.split(".")) for p in paths) if v is not dataclasses.MISSING
            ]
            if found and key not in _DECODING_KEYS:
                out[key] = found[0]
        out["recovery"] = self.recovery.method if self.recovery is not None else "none"
        return out

    @classmethod
    def coerce(cls, value: RESPConfig | Mapping[str, Any] | str | os.PathLike | None) -> RESPConfig:
        """A config from itself, a dict of its fields (`from_dict`), a resp_config.json file or folder or Hub id
        (`from_pretrained`), or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, str | os.PathLike):
            return cls.from_pretrained(value)
        raise ValueError(
            f"config must be a RESPConfig, a dict of its fields or a resp_config.json path; got {type(value).__name__}."
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: RESPConfig | None = None) -> RESPConfig:
        """Build from a dict, sectioned or flat (`LEGACY_KEYS`), laid over `defaults` (`override`); unknown keys
        are refused naming the closest valid one."""
        values = {k: v for k, v in data.items() if k != "optimum_resp_version"}
        return defaults.override(**values) if defaults is not None else cls(**values)

    def to_json_string(self) -> str:
        return (
            json.dumps({**self.to_dict(), "optimum_resp_version": __version__}, indent=2, sort_keys=True)
            + "\n"
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `resp_config.json` into the folder atomically (temp file, then rename)."""
        directory = Path(save_directory)
        if directory.is_file():
            raise ValueError(f"{directory} is a file; save_pretrained needs a folder.")
        directory.mkdir(parents=True, exist_ok=True)
        return atomic_write(directory / CONFIG_NAME, self.to_json_string())

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, **hub_kwargs) -> RESPConfig:
        """Load from a `resp_config.json` file, a folder holding one, or a Hub repo id."""
        path = Path(path_or_repo_id)
        if path.is_dir():
            path = path / CONFIG_NAME
            if not path.is_file():
                raise FileNotFoundError(
                    f"No {CONFIG_NAME} in {path.parent}; save one with RESPConfig.save_pretrained."
                )
        elif not path.is_file():
            from huggingface_hub import hf_hub_download

            from .hub import offline_mode
            from .loading import looks_local

            local = path.suffix == ".json" or looks_local(path_or_repo_id)
            if local or offline_mode():  # at once: not a minute of Hub retries before the same answer
                why = "that is a local path" if local else "HF_HUB_OFFLINE is set"
                raise FileNotFoundError(
                    f"{path_or_repo_id} does not exist, and {why}, so it is not looked up on the Hub. Pass the "
                    f"path of a {CONFIG_NAME} file or of a folder holding one."
                )
            try:
                path = Path(hf_hub_download(str(path_or_repo_id), CONFIG_NAME, **hub_kwargs))
            except Exception as err:
                raise OSError(
                    f"Could not load {CONFIG_NAME} from {path_or_repo_id!r}: it is not a local file or folder, and "
                    f"the Hub download failed ({type(err).__name__}: {err}). Pass a local path when offline."
                ) from err
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Upload RESP config",
    ) -> str:
        """Upload `resp_config.json` to a Hub repo (created if missing); returns the commit URL."""
        from huggingface_hub import create_repo, upload_file

        create_repo(repo_id, token=token, private=private, exist_ok=True)
        return str(
            upload_file(
                path_or_fileobj=self.to_json_string().encode(),
                path_in_repo=CONFIG_NAME,
                repo_id=repo_id,
                token=token,
                commit_message=commit_message,
            )
        )
