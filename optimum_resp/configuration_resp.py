"""`RESPConfig`: every knob of a RESP prune, validated on construction, saved as `resp_config.json`.

A peft-style dataclass rather than optimum's `BaseConfig`: `BaseConfig` is a transformers
`PretrainedConfig`, which in transformers 5 is a strict model-config dataclass whose serialization
adds model fields (`output_attentions`, `transformers_version`, ...) and per-layer machinery that mean
nothing for a pruning recipe. A plain dataclass keeps the file to exactly the recipe, gives typed
fields the command line can be generated from, and still offers the same `save_pretrained` /
`from_pretrained` / `push_to_hub` surface and file naming.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .architectures import STRUCTURES
from .files import atomic_write
from .generation import GenerationSettings
from .registry import Registry
from .validation import check_bool, check_choice, check_int, check_range

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "METHOD_PRESETS", "RESPConfig"]

CONFIG_NAME = "resp_config.json"

CALIBRATION_GENERATION = GenerationSettings(do_sample=True, batch_size=32)
"""The decoding defaults of calibration: Qwen3's thinking-mode sampling, 32 prompts per batch."""

# Flat keys of resp_config.json files written before the settings moved into `generation`.
_LEGACY_GENERATION_KEYS = {
    **{k: k for k in ("thinking", "do_sample", "temperature", "top_p", "top_k", "max_new_tokens")},
    "generation_batch_size": "batch_size",
}

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


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """{field: its Literal's values} for every `Literal[...]` field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


@dataclass
class RESPConfig:
    """The recipe of one RESP prune (the defaults follow the RESP paper unless noted)."""

    # What to remove.
    target_sparsity: float = 0.4
    """Fraction of decoder-linear parameters to remove, in (0, 1)."""
    structures: list[str] = field(default_factory=lambda: list(STRUCTURES))
    """Structure kinds that may be removed: query_heads, kv_heads (whole groups), channels."""
    allocation: Literal["global", "uniform"] = "global"
    """`global`: one ranking across layers (non-uniform sizes); `uniform`: the same counts per layer."""
    protected_layers: list[int] | None = None
    """Layers never pruned. None: the first int(0.1 * num_layers) layers and the last one."""
    channel_multiple: int = 1
    """Keep each pruned layer's MLP width a multiple of this (e.g. 64 or 128 for GPU-friendly shapes)."""

    # Schedule.
    num_stages: int = 8
    """Sparsity rises linearly from 0 to target_sparsity over this many stages, one scoring pass each (8: the
    fewest stages the seeds cannot tell from the best in benchmarks/bench_quality.py's 2/4/8/16 sweep; the
    reference uses 112)."""
    regeneration_milestones: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    """Sparsities at which the pruned model regenerates its calibration traces ([] = never)."""
    regeneration_fraction: float = 1.0
    """Fraction of the prompts whose traces are regenerated at a milestone (the rest keep theirs)."""

    # Calibration.
    calibration_source: Literal["self", "gold", "text"] = "self"
    """`self`: the model's own traces; `gold`: a dataset's human solutions; `text`: plain text."""
    num_calibration_prompts: int = 500
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

    # Importance.
    importance: str = "taylor"
    """A registered importance criterion: `taylor` (RESP) or a baseline (`optimum_resp.importance.SCORERS`)."""
    loss: Literal["decode", "full"] = "decode"
    """`decode`: loss on generated tokens only (prompt labels -100); `full`: on every token."""
    taylor_abs_after: Literal["batch", "all"] = "batch"
    """`batch`: |W*g| per backward (memory-light); `all`: |W * mean g| as the reference (one fp32
    buffer per prunable weight)."""
    normalization: Literal["resp", "params", "none"] = "resp"
    """Head vs channel balance: the reference's constants, importance per parameter, or raw sums."""

    # Recovery.
    recovery: Literal["none", "lora"] = "none"
    """`lora`: LoRA self-distillation on the dense model's traces after pruning, merged into the weights."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    recovery_epochs: float = 1.0
    recovery_learning_rate: float = 2e-4

    # Output and machinery.
    export: Literal["uniform", "per_layer"] = "per_layer"
    """`per_layer`: sizes per layer (transformers, lm-evaluation-harness, vLLM with optimum-resp, llama.cpp through
    `optimum-resp export-gguf` for Qwen2, Llama and tied Qwen3); `uniform`: a stock checkpoint (needs
    allocation='uniform') that llama.cpp's own converter takes."""
    runtimes: list[str] = field(default_factory=list)
    """Runtimes the export must load in (`optimum_resp.runtimes.RUNTIMES`: transformers, lm-evaluation-harness,
    vllm, llama.cpp). The prune then keeps what their loaders fix (a uniform Qwen2 for llama.cpp or vLLM
    keeps every query head), and an export they cannot load is refused before any work."""
    batch_size: int = 4
    """Examples per backward pass when scoring (sequences of similar length share a batch, longest first)."""
    gradient_checkpointing: bool | None = None
    """Scoring keeps only each layer's input and recomputes its activations in the backward pass: on the 0.6B
    shape (CPU, 2 x 1024 tokens) 3.3x less memory for 4% more time (benchmarks/bench_memory.py). None: chosen before any work, from
    the estimated memory of the scoring pass, off when the plain pass fits and on when only the checkpointed one
    does (neither fitting is refused with the fixes); True / False force it. The scores are the same."""
    bf16_autocast: bool | None = None
    """The scoring pass's forward runs under bf16 autocast (weights and their gradients keep their dtype). None:
    on where it speeds the model up (float32 weights on a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX);
    True / False force it. Measured (benchmarks/bench_memory.py, bench_precision.py): on the 0.6B shape, CPU, 2 x
    1024 tokens, 1.6x faster and 0.75x the memory; on the testbed reasoner at 40% the keep-sets share 0.92 (Jaccard)
    with float32 against 0.71 between two float32 calibration draws, same mean accuracy (2 seeds)."""
    max_length: int = 4096
    """Longest prompt + trace scored, in tokens."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...]:
        """The values a `Literal` field accepts, read from its annotation (the one place they are written)."""
        return _literal_fields(cls)[name]

    def validate(self) -> None:
        """Refuse every invalid value with a message that gives the valid range."""
        for name, choices in _literal_fields(type(self)).items():
            check_choice(name, getattr(self, name), choices)
        check_range("target_sparsity", self.target_sparsity, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(self.structures, list | tuple) or not self.structures:
            raise ValueError(
                f"structures must be a non-empty list drawn from {list(STRUCTURES)}; got {self.structures!r}."
            )
        for s in self.structures:
            check_choice("each of structures", s, STRUCTURES)
        self.structures = [s for s in STRUCTURES if s in self.structures]
        if self.protected_layers is not None:
            if not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.protected_layers
            ):
                raise ValueError(
                    f"protected_layers must be a list of layer indices >= 0; got {self.protected_layers!r}."
                )
            self.protected_layers = sorted(set(self.protected_layers))
        check_int("num_stages", self.num_stages)
        check_int("channel_multiple", self.channel_multiple)
        for m in self.regeneration_milestones:
            check_range("each regeneration milestone", m, 0.0, 1.0, low_open=True, high_open=True)
        self.regeneration_milestones = sorted(set(self.regeneration_milestones))
        check_range("regeneration_fraction", self.regeneration_fraction, 0.0, 1.0, low_open=True)
        check_int("num_calibration_prompts", self.num_calibration_prompts)
        self.generation = GenerationSettings.coerce(self.generation, CALIBRATION_GENERATION)
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
        if (self.filter_correct or self.selection_difficulty_samples) and self.calibration_source != "self":
            raise ValueError(
                "filter_correct and difficulty selection judge self-generated traces: use calibration_source='self'."
            )
        from .importance import SCORERS  # registered criteria (baselines register themselves on import)

        check_choice("importance", self.importance, tuple(SCORERS))
        if self.loss == "decode" and self.calibration_source == "text":
            raise ValueError(
                "loss='decode' needs prompt/completion pairs; plain-text calibration has no prompt: use loss='full'."
            )
        check_int("lora_r", self.lora_r)
        check_int("lora_alpha", self.lora_alpha)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        check_range("recovery_epochs", self.recovery_epochs, 0.0, 1000.0, low_open=True)
        check_range("recovery_learning_rate", self.recovery_learning_rate, 0.0, 1.0, low_open=True)
        if self.export == "uniform" and self.allocation != "uniform":
            raise ValueError(
                "export='uniform' needs the same sizes in every layer: set allocation='uniform' "
                "(or export='per_layer' to keep RESP's global ranking)."
            )
        if self.export == "uniform" and self.protected_layers != []:
            raise ValueError(
                "export='uniform' needs every layer pruned alike, so no layer can be protected: set "
                "protected_layers=[] (the default protects the first 10% and the last layer), or use "
                "export='per_layer'."
            )
        self._check_runtimes()
        check_int("batch_size", self.batch_size)
        if self.gradient_checkpointing is not None:
            check_bool("gradient_checkpointing", self.gradient_checkpointing)
        if self.bf16_autocast is not None:
            check_bool("bf16_autocast", self.bf16_autocast)
        check_int("max_length", self.max_length, minimum=2)
        check_int("seed", self.seed, minimum=0)

    def _check_runtimes(self) -> None:
        from .runtimes import RUNTIMES

        if not isinstance(self.runtimes, list | tuple) or not all(isinstance(r, str) for r in self.runtimes):
            raise ValueError(
                f"runtimes must be a list of runtime names from {list(RUNTIMES)}; got {self.runtimes!r}."
            )
        self.runtimes = list(dict.fromkeys(RUNTIMES.lookup(r).name for r in self.runtimes))
        for name in self.runtimes:  # per architecture, the pruner checks again (runtimes.export_support)
            runtime = RUNTIMES[name]
            if (
                self.export == "per_layer"
                and runtime.per_layer is None
                and not runtime.per_layer_by_architecture
            ):
                raise ValueError(
                    f"runtimes includes {name!r}, which loads only stock checkpoints, but export='per_layer' writes "
                    "sizes per layer. Use export='uniform' with allocation='uniform' and protected_layers=[] "
                    "(CLI: --export uniform)."
                )

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

    def protected_for(self, num_layers: int) -> list[int]:
        """The protected layer indices for a model with `num_layers` layers."""
        if self.protected_layers is None:
            return sorted(set(range(int(0.1 * num_layers))) | {num_layers - 1})
        bad = [i for i in self.protected_layers if i >= num_layers]
        if bad:
            raise ValueError(
                f"protected_layers {bad} do not exist: the model has {num_layers} layers (0..{num_layers - 1})."
            )
        return list(self.protected_layers)

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    def from_dict(cls, data: dict[str, Any]) -> RESPConfig:
        """Build from a dict; unknown keys are an error that lists the valid ones. Decoding keys at the top
        level (files written before `generation` existed) are read into `generation`."""
        data = dict(data)
        legacy = {_LEGACY_GENERATION_KEYS[k]: data.pop(k) for k in list(data) if k in _LEGACY_GENERATION_KEYS}
        if legacy:
            data["generation"] = {**legacy, **dict(data.get("generation") or {})}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"optimum_resp_version"})
        if unknown:
            raise ValueError(f"Unknown RESPConfig keys {unknown}; valid keys: {sorted(names)}.")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json_string(self) -> str:
        from . import __version__

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
