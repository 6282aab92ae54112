"""Pruned models in llama.cpp: dense, uniform and per_layer speed side by side, and the testbed's accuracy there.

Speed (default): a random-weight model with Qwen3-0.6B's shape pruned to 20/40/60% of its decoder-linear
parameters (random keep-sets: speed does not depend on which structures go) with the uniform export (a stock
checkpoint, converted by llama.cpp's convert_hf_to_gguf.py) and the per_layer export (sizes differ per layer,
written by `optimum_resp.integrations.llama_cpp.write_gguf` as llama.cpp's `openelm` graph), q8_0 by default (the
usual CPU choice); dense and pruned are loaded side by side in llama-cpp-python and their measurements alternate
(dense, pruned, dense, pruned ...), so every ratio comes from one run. Measured per model:
- batch-1 decode tokens/s: N single-token steps after a 16-token prompt;
- prompt processing tokens/s: one P-token prompt.
Each speedup is shown beside the ideal (linear weights read per token, dense / pruned). Writes the
`llama-cpp-<outtype>` block of benchmarks/RESULTS.md.

Accuracy (`--quality`): the shipped testbed reasoner pruned by RESP at 30% and 40% (the quality benchmark's recipe
and calibration seeds), per_layer and uniform, each written as a q8_0 GGUF and answering the held-out-frames split
in llama.cpp (greedy), beside the same pruned model's accuracy in transformers. Resumable: each finished run's
record is kept in benchmarks/llama_cpp_runs/ (named by a hash of what decides it), and `--max-runs N` stops after
N new runs, so a long benchmark runs in pieces. Writes the `llama-cpp-quality` block.

    RESP_LLAMA_CPP_CONVERTER=/path/to/llama.cpp/convert_hf_to_gguf.py python benchmarks/bench_llama_cpp.py
    RESP_LLAMA_CPP_CONVERTER=... python benchmarks/bench_llama_cpp.py --quality
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from optimum_resp import prune_model, size_report
from optimum_resp.files import atomic_write
from optimum_resp.speed import linear_weights
from optimum_resp.testbed import testbed_data_path, testbed_model_path
from optimum_resp.testing_utils import random_plan

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import SHAPES, build_dense  # noqa: E402
from results_md import write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
CONVERT = HERE.parent / "tests" / "llama_cpp_convert.py"
RUNS = HERE / "llama_cpp_runs"  # one record per finished --quality run: a stopped benchmark resumes from here
EXPORTS = ("uniform", "per_layer")


def to_gguf(folder: Path, export: str, converter: str, outtype: str) -> Path:
    """The GGUF of a saved model: llama.cpp's own converter for a stock (uniform or dense) checkpoint, optimum-resp's
    writer (llama.cpp's openelm graph) for a per_layer one."""
    out = folder / f"model-{outtype}.gguf"
    if export == "per_layer":
        from optimum_resp.integrations.llama_cpp import write_gguf

        return write_gguf(folder, out, outtype, converter=converter)
    cmd = [sys.executable, str(CONVERT), converter, str(folder), "--outfile", str(out), "--outtype", outtype]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def convert(model, tokenizer, folder: Path, converter: str, outtype: str, export: str = "uniform") -> Path:
    """Save `model` (with a BPE tokenizer: the random shape has no tokenizer of its own) and write its GGUF."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = to_gguf(folder, export, converter, outtype)
    for f in folder.glob("*.safetensors"):
        f.unlink()  # only the GGUF is needed from here on
    return out


def matrix_types(gguf_path: Path) -> dict[str, int]:
    """How many of the GGUF's matrices (2-D tensors) are stored in each GGML type, e.g. {"Q8_0": 38, "F16": 5}."""
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(gguf_path).tensors:
        if len(tensor.shape) == 2:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def other_matrices(types: dict[str, int], outtype: str) -> str:
    """ "5 of 43 in F16": the matrices a GGUF could not store in its file type (rows not whole blocks)."""
    if not types:
        return "-"  # not recorded
    other = {t: n for t, n in types.items() if t != outtype.upper()}
    total = sum(types.values())
    return ", ".join(f"{n} of {total} in {t}" for t, n in other.items()) or "none"


def load(gguf: Path, threads: int, n_ctx: int):
    import llama_cpp

    return llama_cpp.Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False, seed=0)


def measure(llm, args, gen: torch.Generator) -> tuple[float, float]:
    """(batch-1 decode tokens/s, prompt tokens/s) of one model, on fresh random token ids."""
    ids = torch.randint(10, 700, (16 + args.decode_tokens + args.prompt_tokens,), generator=gen).tolist()
    llm.reset()
    llm.eval(ids[:16])
    start = time.perf_counter()
    for token in ids[16 : 16 + args.decode_tokens]:
        llm.eval([token])
    decode = args.decode_tokens / (time.perf_counter() - start)
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids[-args.prompt_tokens :])
    prompt = args.prompt_tokens / (time.perf_counter() - start)
    return decode, prompt


def speed_row(dense, dense_llm, dense_gguf: Path, pruned, gguf: Path, args, gen) -> dict:
    """One pruned model against the dense one, measurements alternating: speedups, rates and file size."""
    report = size_report(dense, pruned)
    ideal = linear_weights(dense) / linear_weights(pruned)
    pruned_llm = load(gguf, args.threads, args.n_ctx)
    measure(dense_llm, args, gen), measure(pruned_llm, args, gen)  # warm-up (page cache, threads)
    dense_m, pruned_m = [], []
    for _ in range(args.repeats):
        dense_m.append(measure(dense_llm, args, gen))
        pruned_m.append(measure(pruned_llm, args, gen))
    pruned_llm.close()
    return dict(
        sparsity=report.sparsity,
        ideal=ideal,
        decode=statistics.median(p[0] / d[0] for d, p in zip(dense_m, pruned_m)),
        prompt=statistics.median(p[1] / d[1] for d, p in zip(dense_m, pruned_m)),
        dense_decode=statistics.median(d[0] for d in dense_m),
        pruned_decode=statistics.median(p[0] for p in pruned_m),
        dense_prompt=statistics.median(d[1] for d in dense_m),
        pruned_prompt=statistics.median(p[1] for p in pruned_m),
        file_ratio=gguf.stat().st_size / dense_gguf.stat().st_size,
        matrix_types=matrix_types(gguf),
    )


def speed(args: argparse.Namespace, command: str) -> str:
    """The speed table (every export and sparsity beside the dense model) as a RESULTS.md block."""
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(testbed_model_path())
    dense = build_dense(args.shape, torch.float32, "cpu")
    args.n_ctx = 16 + args.decode_tokens + args.prompt_tokens + 16
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-llama-cpp-") as tmp:
        dense_gguf = convert(dense, tokenizer, Path(tmp, "dense"), args.converter, args.outtype)
        dense_llm = load(dense_gguf, args.threads, args.n_ctx)
        for sparsity in args.sparsities:
            for export in args.exports:
                per_layer = export == "per_layer"
                plan = random_plan(
                    dense.config,
                    sparsity,
                    per_layer=per_layer,
                    seed=0,
                    channel_multiple=args.channel_multiple,
                )
                pruned = prune_model(dense, plan, export=export)
                folder = Path(tmp, f"{export}-{sparsity}")
                gguf = convert(pruned, tokenizer, folder, args.converter, args.outtype, export)
                row = dict(export=export, **speed_row(dense, dense_llm, dense_gguf, pruned, gguf, args, gen))
                del pruned
                rows.append(row)
                print(json.dumps(row), flush=True)
        dense_llm.close()

    cfg = dense.config
    device = f"{platform.processor() or 'CPU'}, {args.threads} threads"
    lines = [
        f"## llama.cpp: random-weight {args.shape} shape, {' and '.join(args.exports)} exports, {args.outtype} GGUF, "
        f"cpu ({device}), llama-cpp-python {llama_cpp.__version__}",
        "",
        f"Command: `RESP_LLAMA_CPP_CONVERTER=... {command}`",
        "",
        f"Shape: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} query / "
        f"{cfg.num_key_value_heads} KV heads, intermediate {cfg.intermediate_size}. Dense and uniform exports "
        f"converted by llama.cpp's convert_hf_to_gguf.py, per_layer exports written by `optimum-resp export-gguf` "
        f"(llama.cpp's openelm graph), all to {args.outtype} (a matrix whose rows are not whole blocks of the type "
        f"stays f16, as llama.cpp's converter keeps it: the last column counts them); dense and pruned loaded side "
        f"by side, measurements alternating after one "
        f"warm-up each, {args.repeats} repeats, speedup = median of per-pair ratios. Batch-1 decode: "
        f"{args.decode_tokens} single-token steps after a 16-token prompt. Prompt: one {args.prompt_tokens}-token "
        "prompt. Ideal = linear weights read per token, dense / pruned (the embedding and LM head, unpruned, are not "
        "in it). Random keep-sets (whole KV groups with their query heads, then MLP channels, every MLP width a "
        f"multiple of {args.channel_multiple}, as `--channel-multiple {args.channel_multiple}` prunes); per_layer: "
        "layer sparsity ramping from half to 1.5x the target across the layers.",
        "",
        "| export | sparsity | ideal | batch-1 decode speedup | of ideal | prompt speedup | decode tok/s dense -> "
        f"pruned | prompt tok/s dense -> pruned | GGUF size (of dense) | matrices not {args.outtype} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['export']} | {r['sparsity']:.1%} | {r['ideal']:.2f}x | {r['decode']:.2f}x | "
            f"{r['decode'] / r['ideal']:.2f} | {r['prompt']:.2f}x | {r['dense_decode']:.1f} -> "
            f"{r['pruned_decode']:.1f} | {r['dense_prompt']:.1f} -> {r['pruned_prompt']:.1f} | {r['file_ratio']:.2f} | "
            f"{other_matrices(r['matrix_types'], args.outtype)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- accuracy


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe(export: str) -> dict:
    """How the quality benchmark's RESP run of this export differs from its keyed reference (today's defaults
    included, as benchmarks/bench_quality.py keys its runs), so both benchmarks prune the same model."""
    from bench_quality import UNIFORM, canonical_overrides

    return canonical_overrides("resp", dict(UNIFORM) if export == "uniform" else {})


def record_path(args: argparse.Namespace, export: str, sparsity: float, seed: int) -> Path:
    """Where one --quality run's record is kept: named by everything that decides it (weights and data by hash)."""
    model = testbed_model_path()
    key = {
        "export": export,
        "recipe": recipe(export),
        "sparsity": sparsity,
        "seed": seed,
        "model": [_sha256(f) for f in sorted(model.glob("*.safetensors")) + [model / "config.json"]],
        "train": _sha256(args.train_data),
        "eval": _sha256(args.eval_data),
        **{k: getattr(args, k) for k in ("num_prompts", "eval_limit", "max_new_tokens", "quality_outtype")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return RUNS / f"{export}-{sparsity:.2f}-s{seed}-{digest}.json"


def _scored(result) -> dict:
    """An evaluation's accuracy, its problems' verdicts ("1"/"0") and answers, and its tokens per answer."""
    return dict(
        accuracy=result.summary["accuracy"],
        n=result.summary["n"],
        mean_generated_tokens=result.summary["mean_generated_tokens"],
        correct="".join("1" if s["correct"] else "0" for s in result.samples),
        answers=[s["extracted"] for s in result.samples],
    )


def quality_run(args: argparse.Namespace, export: str, sparsity: float, seed: int) -> dict:
    """Prune the testbed reasoner (RESP, the quality benchmark's recipe), write its GGUF, score it in transformers
    and in llama.cpp on the same problems."""
    from bench_quality import keyed_config
    from transformers import AutoModelForCausalLM

    from optimum_resp import RESPPruner
    from optimum_resp.calibration import prompts_from_task
    from optimum_resp.evaluation import EvalConfig, evaluate_model
    from optimum_resp.integrations.llama_cpp import LlamaCppModel

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    model_path = testbed_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dense = AutoModelForCausalLM.from_pretrained(model_path).eval()
    overrides = dict(
        recipe(export),
        target_sparsity=sparsity,
        num_calibration_prompts=args.num_prompts,
        generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
        batch_size=8,
        seed=seed,
    )
    config = keyed_config("resp", overrides)
    prompts = prompts_from_task("gsm8k", str(args.train_data), limit=args.num_prompts, seed=seed)
    result = RESPPruner(dense, tokenizer, config, task="gsm8k", generator="hf").prune(prompts)
    evaluation = EvalConfig(
        task="gsm8k",
        data=str(args.eval_data),
        limit=args.eval_limit,
        generation={"max_new_tokens": args.max_new_tokens, "batch_size": 64},
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-llama-cpp-quality-") as tmp:
        folder = Path(tmp, "pruned")
        result.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        gguf = to_gguf(folder, export, args.converter, args.quality_outtype)
        types = matrix_types(gguf)
        hf = evaluate_model(result.model, tokenizer, evaluation, show_progress=False)
        with LlamaCppModel(gguf, n_ctx=1024, n_threads=1) as llm:  # one thread: the model is 5.9M parameters
            lc = evaluate_model(llm, tokenizer, evaluation, show_progress=False)
        size = gguf.stat().st_size
    return dict(
        export=export,
        target=sparsity,
        seed=seed,
        sparsity=result.report.sparsity,
        gguf_mib=size / 2**20,
        matrix_types=types,
        transformers=_scored(hf),
        llama_cpp=_scored(lc),
        seconds=time.perf_counter() - start,
    )


def quality_benchmark_agrees(args: argparse.Namespace, record: dict) -> bool | None:
    """Whether benchmarks/bench_quality.py's records of the same prune (recipe, sparsity, seed, settings) score
    every problem of the split as this run's transformers evaluation does; None when it has no such record."""
    found = []
    for path in (HERE / "quality_runs").glob(f"resp-{record['target']:.2f}-s{record['seed']}-*.json"):
        theirs = json.loads(path.read_text())
        split = theirs.get("splits", {}).get(args.split)
        if (
            theirs.get("overrides") == recipe(record["export"])
            and split
            and split["n"] == record["transformers"]["n"]
        ):
            found.append(split["correct"] == record["transformers"]["correct"])
    return all(found) if found else None


def quality(args: argparse.Namespace, command: str) -> str | None:
    """Every --quality run (kept or run now, at most --max-runs new ones) and their table as a RESULTS.md block."""
    import llama_cpp

    from optimum_resp.evaluation import wilson_interval

    args.train_data = testbed_data_path("gsm8k", "train")
    args.eval_data = testbed_data_path("gsm8k", args.split)
    records, new = {}, 0
    for seed in args.seeds:  # seed by seed: a benchmark stopped part-way has every row for its first seeds
        for sparsity in args.quality_sparsities:
            for export in EXPORTS:
                path = record_path(args, export, sparsity, seed)
                if path.exists():
                    records[export, sparsity, seed] = json.loads(path.read_text())
                    continue
                if args.max_runs is not None and new >= args.max_runs:
                    print(f"{export} {sparsity:.2f} seed {seed}: left for a later run", flush=True)
                    continue
                record = quality_run(args, export, sparsity, seed)
                RUNS.mkdir(exist_ok=True)
                atomic_write(path, json.dumps(record, indent=1) + "\n")
                records[export, sparsity, seed] = record
                new += 1
                print(
                    f"{export} {sparsity:.2f} seed {seed}: llama.cpp {record['llama_cpp']['accuracy']:.3f}, "
                    f"transformers {record['transformers']['accuracy']:.3f}, {record['seconds']:.0f}s",
                    flush=True,
                )
    if not records:
        return None

    def summary(runs: list[dict], where: str) -> str:
        accs = [r[where]["accuracy"] for r in runs]
        pooled = "".join(r[where]["correct"] for r in runs)
        low, high = wilson_interval(pooled.count("1"), len(pooled))
        sd = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
        return f"{statistics.fmean(accs):.3f}{sd} [{low:.2f}, {high:.2f}]"

    lines = [
        f"## llama.cpp: testbed reasoner pruned by RESP, per_layer vs uniform, {args.quality_outtype} GGUF "
        f"(llama-cpp-python {llama_cpp.__version__})",
        "",
        f"Command: `RESP_LLAMA_CPP_CONVERTER=... {command}`",
        "",
        f"RESP with the quality benchmark's recipe (benchmarks/bench_quality.py: {args.num_prompts} calibration "
        f"prompts from the train split, the calibration seed as the prune's seed, decoding up to {args.max_new_tokens} "
        "tokens), per_layer (global ranking) or uniform (uniform allocation, no protected layer). per_layer GGUFs "
        "written by `optimum-resp export-gguf` (llama.cpp's openelm graph), uniform ones by llama.cpp's "
        f"convert_hf_to_gguf.py. Greedy answers to the first {args.eval_limit} problems of the {args.split} split "
        "through the same evaluation harness (`LlamaCppModel`: the harness's token ids, llama.cpp's computation, f16 "
        "KV cache); transformers: the same pruned model, float32. Mean ± sd over the calibration seeds, 95% Wilson "
        "interval over the pooled problems; agreement = problems whose extracted answer is the same in both.",
        "",
        "| sparsity | export | seeds | accuracy in llama.cpp | accuracy in transformers | answers agree | GGUF MiB | "
        f"matrices not {args.quality_outtype} (per GGUF) |",
        "|---:|---|---:|---|---|---:|---:|---|",
    ]
    for sparsity in args.quality_sparsities:
        for export in EXPORTS:
            runs = [records[k] for k in sorted(records) if k[:2] == (export, sparsity)]
            if not runs:
                continue
            agree = statistics.fmean(
                statistics.fmean(
                    a == b for a, b in zip(r["llama_cpp"]["answers"], r["transformers"]["answers"])
                )
                for r in runs
            )
            lines.append(
                f"| {statistics.fmean(r['sparsity'] for r in runs):.1%} | {export} | {len(runs)} | "
                f"{summary(runs, 'llama_cpp')} | {summary(runs, 'transformers')} | {agree:.3f} | "
                f"{statistics.fmean(r['gguf_mib'] for r in runs):.1f} | "
                f"{'; '.join(sorted({other_matrices(r.get('matrix_types', {}), args.quality_outtype) for r in runs}))} |"
            )
    same = [quality_benchmark_agrees(args, r) for r in records.values()]
    if any(v is not None for v in same):
        lines += [
            "",
            f"The transformers column reproduces benchmarks/bench_quality.py: {sum(v is True for v in same)} of "
            f"{sum(v is not None for v in same)} runs with a record there give the same verdict on every problem "
            "(the same prune, evaluated again).",
        ]
    missing = len(args.quality_sparsities) * len(EXPORTS) * len(args.seeds) - len(records)
    if missing:
        lines += ["", f"{missing} run(s) of this setting not run yet (resume with the same command)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--outtype", choices=["q8_0", "f16", "f32"], default="q8_0")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--exports", choices=EXPORTS, nargs="+", default=list(EXPORTS))
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--channel-multiple",
        type=int,
        default=32,
        help="every pruned MLP width a multiple of this (32: whole q8_0 blocks, so no matrix falls back to f16)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--converter", default=os.environ.get("RESP_LLAMA_CPP_CONVERTER"))
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    quality_args = parser.add_argument_group("accuracy (--quality)")
    quality_args.add_argument(
        "--quality", action="store_true", help="the testbed accuracy table instead of speed"
    )
    quality_args.add_argument("--quality-sparsities", type=float, nargs="+", default=[0.3, 0.4])
    quality_args.add_argument("--quality-outtype", choices=["q8_0", "f16", "f32"], default="q8_0")
    quality_args.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    quality_args.add_argument("--split", default="held_out_frames")
    quality_args.add_argument("--num-prompts", type=int, default=128)
    quality_args.add_argument("--eval-limit", type=int, default=300)
    quality_args.add_argument("--max-new-tokens", type=int, default=384)
    quality_args.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    args = parser.parse_args(argv)
    if not args.converter or not Path(args.converter).is_file():
        parser.error(
            "pass --converter (or set RESP_LLAMA_CPP_CONVERTER) to llama.cpp's convert_hf_to_gguf.py"
        )
    command = (
        f"python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    if args.quality:
        section, text = "llama-cpp-quality", quality(args, command)
    else:
        section, text = f"llama-cpp-{args.outtype}", speed(args, command)
    if text is None:
        return
    print(text)
    if not args.no_write:
        write_results(section, text)


if __name__ == "__main__":
    main()
