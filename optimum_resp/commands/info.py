"""`optimum-resp info`: what a RESP output folder holds (sizes, sparsity, where it runs, config, stages)."""

from __future__ import annotations

import argparse
import dataclasses
import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show a pruned model's sizes, sparsity, config and stages", description=__doc__
    )
    p.add_argument("directory", help="a folder written by `optimum-resp prune` (finished or not)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    from ..loading import check_model_folder
    from ..run_folder import RunFolder

    run = RunFolder(args.directory)
    if not run.path.is_dir():
        raise FileNotFoundError(f"{run.path} does not exist (or is not a folder).")
    report = run.load_report()
    if report is None and not run.is_run:
        raise ValueError(f"{run.path} holds no RESP output (no {RunFolder.REPORT} or {RunFolder.RUN}).")
    if report is None:
        history = run.load_history()
        stopped = f": {run.reason}" if run.status == "stopped" else ""
        print(f"{run.path}: unfinished RESP run ({run.status}{stopped}), {len(history)} stage(s) done.")
        for h in history:
            print(
                f"  stage {h.stage}: sparsity {h.sparsity:.3f}, loss {h.calibration_loss}, {h.seconds:.1f}s"
            )
        return 0
    # What loads, not what the report says: config.json checked in itself and against the weights (a
    # ModelLoadError names the layer, field or tensors), its sizes shown.
    recorded = report.size
    checked = check_model_folder(run.path) if (run.path / "config.json").is_file() else None
    if checked is not None:
        report = dataclasses.replace(report, size=recorded.with_pruned(*checked))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{run.path}: {report.model_type} pruned from {report.source}")
    print(report.size.format_table())
    if report.size.pruned_layers != recorded.pruned_layers:
        print(
            f"\nNote: {RunFolder.REPORT} records other layer sizes than config.json; shown are config.json's, which "
            "is what loads."
        )
    print(f"\nWhere it runs ({report.export} export):")
    for support in report.runtime_support():
        print(f"  {support.runtime}: {'yes' if support.loads else 'no'} - {support.how}")
    print("\nRESP config:")
    print(json.dumps(report.resp_config.to_dict() if report.resp_config else {}, indent=2))
    print("\nStages:")
    for h in report.stages:
        loss = "n/a" if h.calibration_loss is None else f"{h.calibration_loss:.4f}"
        right = "" if h.correct_fraction is None else f", {h.correct_fraction:.0%} of traces right"
        print(
            f"  {h.stage}: sparsity {h.sparsity:.3f} (target {h.target_sparsity:.3f}), loss {loss}, "
            f"{'regenerated, ' if h.regenerated else ''}{h.truncated_fraction:.0%} of traces unfinished{right}, "
            f"{h.seconds:.1f}s"
        )
        if h.phases:
            print("     " + ", ".join(f"{name} {cost.seconds:.1f}s" for name, cost in h.phases.items()))
    return 0
