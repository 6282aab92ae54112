"""`optimum-resp info`: what a RESP output folder holds (sizes, sparsity, config, stage history)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show a pruned model's sizes, sparsity, config and stages", description=__doc__
    )
    p.add_argument("directory", help="a folder written by `optimum-resp prune` (finished or not)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(resp_func=run)


def run(args: argparse.Namespace) -> int:
    from ..accounting import SizeReport
    from ..architectures import LayerSizes

    directory = Path(args.directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist (or is not a folder).")
    report_file, run_file = directory / "resp_report.json", directory / "resp_run.json"
    if not report_file.exists() and not run_file.exists():
        raise ValueError(f"{directory} holds no RESP output (no resp_report.json or resp_run.json).")
    if not report_file.exists():
        stages = sorted((directory / "stages").glob("stage_*")) if (directory / "stages").exists() else []
        history = json.loads((stages[-1] / "record.json").read_text())["history"] if stages else []
        print(f"{directory}: unfinished RESP run, {len(history)} stage(s) done.")
        for h in history:
            print(
                f"  stage {h['stage']}: sparsity {h['sparsity']:.3f}, loss {h['calibration_loss']}, {h['seconds']:.1f}s"
            )
        return 0
    report = json.loads(report_file.read_text())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    layers = report["layers"]
    size = SizeReport(
        model_type=report["model_type"],
        dense_layers=tuple(LayerSizes(**layer["dense"]) for layer in layers),
        pruned_layers=tuple(LayerSizes(**layer["pruned"]) for layer in layers),
        dense_layer_params=tuple(layer["dense_params"] for layer in layers),
        pruned_layer_params=tuple(layer["pruned_params"] for layer in layers),
        dense_total_params=report.get("dense_total_params"),
        pruned_total_params=report.get("pruned_total_params"),
    )
    print(f"{directory}: {report['model_type']} pruned from {report.get('source')}")
    print(size.format_table())
    print("\nRESP config:")
    print(json.dumps(report.get("resp_config", {}), indent=2))
    print("\nStages:")
    for h in report.get("stages", []):
        loss = "n/a" if h["calibration_loss"] is None else f"{h['calibration_loss']:.4f}"
        print(
            f"  {h['stage']}: sparsity {h['sparsity']:.3f} (target {h['target_sparsity']:.3f}), loss {loss}, "
            f"{'regenerated, ' if h['regenerated'] else ''}{h['seconds']:.1f}s"
        )
    return 0
