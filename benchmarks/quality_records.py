"""The quality benchmark's runs: what keys a run's record (everything that decides its result), where the record
is kept, the worker subprocess that measures one run, and `run_one`, which keeps or runs it.

A record is named by a hash of its method, sparsity, overrides (as they differ from the keyed reference config),
seed, the model's weights, the data and the settings: a changed library default re-keys only the runs it changes,
and a retrained model or new data never reuse a stale record. benchmarks/bench_llama_cpp.py prunes with the same
keyed config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from optimum_resp.configuration_resp import METHOD_PRESETS, RESPConfig

HERE = Path(__file__).resolve().parent
RUNS = HERE / "quality_runs"  # one record per finished run: a stopped benchmark resumes from here
CLI = HERE / "bench_quality.py"  # its --worker flag runs `worker` in a subprocess

METHODS = {name: overrides for name, (overrides, _) in METHOD_PRESETS.items()}
DESCRIPTIONS = {name: description for name, (_, description) in METHOD_PRESETS.items()}
UNIFORM = {
    k: RESPConfig(export="uniform").to_flat_dict()[k] for k in ("export", "allocation", "protected_layers")
}
"""The servable stock checkpoint (llama.cpp, stock vLLM): what a uniform export fixes (`runtimes.export_target`: the
same sizes in every layer, no layer protected), under the flat names the records are keyed by."""
SSGR = {
    "difficulty": {"selection_difficulty_samples": 4, "selection_keep_fraction": 0.5},
    "length": {"selection_length_quantiles": [0.25, 0.75]},
}
"""SSGR selections run with RESP: the hardest half of the prompts (4 samples each), or the middle half by length."""


def kept_fractions(report) -> dict[str, float]:
    """Fraction of the dense query heads, KV groups and MLP channels kept (a PruneReport), summed over layers."""
    size = report.size
    return {
        kind: sum(p.count(kind) for p in size.pruned_layers) / sum(d.count(kind) for d in size.dense_layers)
        for kind in ("query_heads", "kv_heads", "channels")
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


KEY_DEFAULTS = {"num_stages": 4}
"""RESPConfig defaults when the first records were keyed. A record is keyed by how its config differs from its
method's preset laid over these, so changing a library default re-keys (and re-runs) exactly the runs it changes
and every other record stays valid."""


def keyed_config(method: str, overrides: dict) -> RESPConfig:
    """The config a record's key names: the method's preset over KEY_DEFAULTS, then the overrides."""
    return RESPConfig(**{**KEY_DEFAULTS, **METHOD_PRESETS.lookup(method)[0], **overrides})


def canonical_overrides(method: str, overrides: dict) -> dict:
    """How `RESPConfig.for_method(method, **overrides)` (today's defaults) differs from the keyed reference: an
    override equal to the reference is dropped, so the stage sweep's reference point and the main table's row are
    one run, and a changed default appears as an override."""
    reference = keyed_config(method, {}).to_flat_dict()
    current = RESPConfig.for_method(method, **overrides).to_flat_dict()
    changed = {k: v for k, v in overrides.items() if reference.get(k) != v}
    changed |= {k: current[k] for k in KEY_DEFAULTS if current[k] != reference[k]}
    return dict(sorted(changed.items()))


def run_record_path(
    args: argparse.Namespace, method: str, sparsity: float, overrides: dict, seed: int
) -> Path:
    """Where one run's record is kept: named by everything that decides its result (weights and data by hash)."""
    model = Path(args.model)
    key = {
        "method": method,
        "sparsity": sparsity,
        "overrides": overrides,
        "seed": seed,
        "model": [_sha256(f) for f in sorted(model.glob("*.safetensors")) + [model / "config.json"]],
        "train": _sha256(Path(args.train_data)),
        "eval": {split: _sha256(Path(path)) for split, path in sorted(args.eval_data.items())},
        **{k: getattr(args, k) for k in ("num_prompts", "eval_limit", "max_new_tokens", "threads")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return (RUNS / "quick" if args.quick else RUNS) / f"{method}-{sparsity:.2f}-s{seed}-{digest}.json"


def worker(args: argparse.Namespace) -> None:
    """One prune (or none, for sparsity 0), one evaluation per split and one speed comparison; a JSON line."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_resp import RESPPruner
    from optimum_resp.calibration import prompts_from_task
    from optimum_resp.evaluation import EvalConfig, evaluate_model
    from optimum_resp.speed import compare_speed

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dense = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rss_loaded = psutil.Process().memory_info().rss
    record: dict = {"method": args.method, "target": args.sparsity, "seed": args.seed}
    model = dense
    if args.sparsity > 0:
        config = keyed_config(
            args.method,
            dict(
                json.loads(args.overrides),
                target_sparsity=args.sparsity,
                num_calibration_prompts=args.num_prompts,
                generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
                batch_size=8,
                seed=args.seed,
            ),
        )
        # A recovery token budget also draws on the prompts past the calibration set (the rest of the train split).
        budget = config.recovery is not None and config.recovery.tokens
        limit = None if budget else args.num_prompts
        prompts = prompts_from_task("gsm8k", args.train_data, limit=limit, seed=args.seed)
        result = RESPPruner(dense, tokenizer, config, task="gsm8k", generator="hf").prune(prompts)
        model = result.model
        if result.report.recovery is not None:
            record["recovery"] = result.report.recovery.to_dict()
        record.update(
            sparsity=result.report.sparsity,
            stages=len(result.stages),
            prune_seconds=time.perf_counter() - start,
            kept=kept_fractions(result.report),
        )
        speed = compare_speed(dense, model, prefill_tokens=256, decode_tokens=64, repeats=3, seed=args.seed)
        record.update(decode_speedup=speed.decode_speedup, ideal_speedup=speed.ideal_speedup)
    else:
        record.update(sparsity=0.0, stages=0, prune_seconds=0.0, decode_speedup=1.0, ideal_speedup=1.0)
    record["splits"] = {}
    for split, path in json.loads(args.eval_data).items():
        evaluation = evaluate_model(
            model,
            tokenizer,
            EvalConfig(
                task="gsm8k",
                data=path,
                limit=args.eval_limit,
                generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
                seed=args.seed,
            ),
            show_progress=False,
        )
        summary = evaluation.summary
        record["splits"][split] = {
            "accuracy": summary["accuracy"],
            "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"],
            "n": summary["n"],
            "mean_generated_tokens": summary["mean_generated_tokens"],
            "truncated_fraction": summary["truncated_fraction"],
            "correct": "".join("1" if s["correct"] else "0" for s in evaluation.samples),
        }
    record.update(
        rss_model_mib=rss_loaded / 2**20,
        parameters=model.num_parameters(),
        wall_seconds=time.time() - psutil.Process().create_time(),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(record), flush=True)


def run_one(
    args, method: str, sparsity: float, overrides: dict | None = None, seed: int | None = None
) -> dict:
    """One run's record: kept from an earlier benchmark with the same settings, else from a worker subprocess.

    The worker measures its own wall time (from process start) and peak RSS, so every run is isolated.
    """
    seed = args.seeds[0] if seed is None else seed
    overrides = canonical_overrides(method, overrides or {}) if sparsity > 0 else {}
    path = run_record_path(args, method, sparsity, overrides, seed)
    label = f"{method:14s} {sparsity:.2f} seed {seed} {json.dumps(overrides)}"
    if path.exists():
        record = json.loads(path.read_text())
        print(f"{label}: kept from {path.name}", flush=True)
        args.kept[path] = record
        return record
    if args.plan:
        print(f"{label}: to run", flush=True)
        args.to_run[path] = label
        return {}
    cmd = [sys.executable, str(CLI), "--worker", "--method", method, "--sparsity", str(sparsity)]
    cmd += ["--overrides", json.dumps(overrides), "--seed", str(seed), "--model", str(args.model)]
    cmd += ["--train-data", str(args.train_data), "--eval-data-json", json.dumps(args.eval_data)]
    for flag in ("num_prompts", "eval_limit", "max_new_tokens", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stdout[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    record = dict(json.loads(line[len("RESULT ") :]), overrides=overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: a killed benchmark leaves no half-written record
    accuracies = " ".join(f"{s} {r['accuracy']:.3f}" for s, r in record["splits"].items())
    print(
        f"{label}: {accuracies}; {record['wall_seconds']:.0f}s {record['peak_rss_mib']:.0f} MiB", flush=True
    )
    return record
