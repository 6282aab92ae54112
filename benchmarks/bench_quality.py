"""Accuracy of RESP and the baselines at several sparsities on the testbed reasoner, over calibration seeds.

Every method is the same `RESPPruner` pipeline with a different `RESPConfig` (so every comparison runs identical
code); calibration prompts come from the train split, each evaluation split is scored separately (never a
calibration prompt): `test` (same frame family as training), `held_out_frames` (frames and names never trained on)
and `hard` (more steps). RESP and the strongest baselines run with several
calibration seeds (mean, sd, and a Wilson interval over the pooled problems), the rest with the first seed.

Besides accuracy, every pruned model's decode speed is measured against the dense model in the same process, and
its answers' length against the dense answers: effective speedup = per-token decode speedup x (dense tokens per
answer / pruned tokens per answer), which is what a user serving it sees.

    python benchmarks/bench_quality.py                          # the full benchmark (hours on CPU, resumable)
    python benchmarks/bench_quality.py --quick                  # a smoke run in a few minutes

A stopped benchmark resumes: each finished run's record is kept in benchmarks/quality_runs/, named by a hash
of everything that decides it (method, sparsity, overrides, seed, model weights, data, settings), and the same
command later reuses it. A retrained model or new data hash differently, so stale records are never reused.
`--quick` smoke runs keep theirs apart, in quality_runs/quick/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
README = HERE.parent / "README.md"

from quality_records import (  # noqa: E402
    METHODS,
    SSGR,
    UNIFORM,
    canonical_overrides,
    keyed_config,
    run_one,
    worker,
)
from quality_render import PLOT, plot, readme_summary, render  # noqa: E402
from results_md import write_results  # noqa: E402

# bench_llama_cpp.py keys its prunes as this benchmark does: UNIFORM, canonical_overrides and keyed_config stay here.
__all__ = ["UNIFORM", "canonical_overrides", "keyed_config", "main"]


def collect(args: argparse.Namespace) -> dict:
    """Every run the benchmark needs (each kept or run), grouped as the tables use them."""

    def seeds_of(method: str) -> list[int]:
        return args.seeds if method in args.seeded_methods else args.seeds[:1]

    def setting(method: str, sparsity: float, overrides: dict | None = None, **extra) -> dict:
        runs = [run_one(args, method, sparsity, overrides, seed) for seed in seeds_of(method)]
        return dict(method=method, target=sparsity, overrides=overrides or {}, runs=runs, **extra)

    dense = run_one(args, "dense", 0.0)
    grid = [setting(m, s) for m in args.methods for s in args.sparsities]
    uniform = [setting(m, s, UNIFORM) for m in args.uniform_methods for s in args.sparsities]
    ssgr = []
    if args.ssgr:
        ssgr += [setting("wanda-sp", 0.4, {"calibration_source": "gold"}, label="wanda-sp, gold solutions")]
        ssgr += [setting("resp", 0.4, SSGR[name], label=f"resp, {name} selection") for name in SSGR]
    sweep = [setting("resp", 0.4, {"num_stages": k}, num_stages=k) for k in args.stage_sweep]
    single = args.seeds[:1]
    lora = [
        dict(run_one(args, "resp", s, {"recovery": "lora"}, single[0]), target=s)
        for s in args.lora_sparsities
    ]
    recovery = [
        setting("resp", s, {"recovery": m, **({"recovery_tokens": t} if t else {})}, recovery=m, tokens=t)
        for s in args.recovery_sparsities
        for m in args.recovery_methods
        for t in args.recovery_tokens
    ]
    fractions = [
        dict(run_one(args, "resp", 0.4, {"regeneration_fraction": f}, single[0]), fraction=f)
        for f in args.regen_fractions
    ]
    norms = [
        dict(run_one(args, "resp", 0.4, {"normalization": n}, single[0]), normalization=n)
        for n in args.normalizations
    ]
    return dict(
        dense=dense,
        grid=grid,
        uniform=uniform,
        ssgr=ssgr,
        sweep=sweep,
        lora=lora,
        recovery=recovery,
        fractions=fractions,
        norms=norms,
    )


def plan_summary(kept: dict[Path, dict], to_run: dict[Path, str]) -> str:
    """One line: runs kept and still to run (keyed by record path, so a run two tables share counts once), and
    the time left at the kept runs' mean wall time."""
    line = f"{len(kept)} runs kept, {len(to_run)} to run"
    if to_run and kept:
        mean = statistics.fmean(r.get("wall_seconds", 0.0) for r in kept.values())
        line += f" (about {len(to_run) * mean / 3600:.1f} h at the kept runs' mean of {mean / 60:.1f} min)"
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="resp", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--sparsity", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--eval-data-json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="default: the shipped testbed model")
    parser.add_argument(
        "--train-data", default=None, help="calibration prompts (default: the shipped train split)"
    )
    parser.add_argument(
        "--eval-splits", nargs="+", default=None, help="default: every shipped evaluation split"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeded-methods", nargs="+", default=["resp", "wanda-sp", "flap"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--uniform-methods", nargs="*", default=["resp", "wanda-sp"])
    parser.add_argument("--no-ssgr", dest="ssgr", action="store_false", help="skip the SSGR rows")
    parser.add_argument("--stage-sweep", type=int, nargs="*", default=[2, 4, 8, 16])
    parser.add_argument("--regen-fractions", type=float, nargs="*", default=[0.25, 0.5])
    parser.add_argument("--lora-sparsities", type=float, nargs="*", default=[0.3, 0.4, 0.5])
    parser.add_argument(
        "--recovery-sparsities",
        type=float,
        nargs="*",
        default=[0.4, 0.5],
        help="RESP + each recovery method and token budget, at RESP's seeds",
    )
    parser.add_argument("--recovery-methods", nargs="*", default=["lora", "distill"])
    parser.add_argument(
        "--recovery-tokens",
        type=int,
        nargs="*",
        default=[0, 60000],
        help="recovery token budgets (0: the dense calibration traces alone, ~20k tokens on the testbed)",
    )
    parser.add_argument("--normalizations", nargs="*", default=["params", "none"])
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--eval-limit", type=int, default=300, help="problems per evaluation split")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="few prompts, few problems, two methods, two seeds"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--plan",
        action="store_true",
        help="list the runs these settings need, kept and still to run, with an estimate of the time left; "
        "run nothing",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="re-render RESULTS.md, the README block and the plot from a saved quality.json (no runs); pass "
        "the same settings flags as the run",
    )
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults: the shipped model, calibration and evaluation files; the quick settings."""
    from optimum_resp.testbed import SPLITS, testbed_data_path, testbed_model_path

    args.kept, args.to_run = {}, {}  # record path -> what run_one found / (with --plan) would run
    args.model = args.model or str(testbed_model_path())
    args.model_name = Path(args.model).name
    args.train_data = args.train_data or str(testbed_data_path("gsm8k", "train"))
    splits = args.eval_splits or [s for s in SPLITS if s != "train"]
    args.eval_data = {split: str(testbed_data_path("gsm8k", split)) for split in splits}
    args.primary_split = "held_out_frames" if "held_out_frames" in args.eval_data else splits[0]
    if args.quick:
        args.methods, args.sparsities, args.seeds, args.seeded_methods = (
            ["resp", "magnitude"],
            [0.3],
            [0, 1],
            ["resp"],
        )
        args.uniform_methods, args.stage_sweep, args.lora_sparsities = ["resp"], [2], [0.3]
        args.recovery_sparsities, args.recovery_methods, args.recovery_tokens = [0.3], ["distill"], [0]
        args.regen_fractions, args.normalizations, args.ssgr = [], ["params"], False
        args.num_prompts, args.eval_limit = 16, 30
    unknown = set(args.methods + args.seeded_methods + args.uniform_methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
    if args.ssgr and not {"resp", "wanda-sp"} <= set(args.methods):
        raise SystemExit(
            "error: the SSGR rows compare with resp and wanda-sp: keep both in --methods, or --no-ssgr."
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.eval_data = args.eval_data_json
        worker(args)
        return
    args = resolve(args)
    command = " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--render", args.render)
    )
    if args.plan:
        collect(args)
        print(plan_summary(args.kept, args.to_run))
        return
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        data = collect(args)
        if not args.no_write:  # the raw records first: a rendering bug must not cost hours of runs
            (HERE / "quality.json").write_text(json.dumps(data, indent=1))
    text = render(args, data, command)
    print(text)
    if not args.no_write:
        plot(args, data, PLOT)
        write_results("quality", text)
        write_results("quality-summary", readme_summary(args, data, command), README)


if __name__ == "__main__":
    main()
