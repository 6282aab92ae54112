"""Prune Qwen3-8B with the RESP paper's settings on a GPU (documented; it cannot run on a CPU-only machine).

Paper settings (arXiv 2512.02185): 500 GSM8K training prompts, self-generated traces with thinking on,
temperature 0.6 (top_p 0.95, top_k 20), up to 2048 new tokens, decode-only Taylor importance, one
global ranking across layers with the first 10% and the last layer protected, progressive schedule
with regeneration at 10/20/30/40/50% sparsity. The reference recomputes gradients over all 500
samples at 112 steps; optimum-resp's default of 8 stages is far cheaper (the fewest stages the seeds
cannot tell from the best in the 2/4/8/16 stage sweep on the testbed, benchmarks/RESULTS.md; that sweep
is on a tiny model, so `--stages 16` is worth a try on an 8B one).

    pip install "optimum-resp[vllm]"            # calibration rounds through vLLM, and serving
    python examples/prune_qwen3_8b_gpu.py --sparsity 0.4 --output qwen3-8b-resp40
    optimum-resp eval qwen3-8b-resp40 --task gsm8k --data openai/gsm8k --limit 500
    vllm serve qwen3-8b-resp40                  # per_layer or uniform: optimum-resp's vLLM plugin loads both

With vLLM installed, the default generator='auto' times the first calibration round through vLLM
against a transformers probe and keeps the faster backend for the regenerations. Each vLLM round starts
an engine for the model as it is at that stage and shuts it down before scoring, so the engine and the
pruner share the GPU (its KV cache is sized to the round, within half of the free memory).

Memory: the model in bf16 (16 GB) plus one forward+backward of a 2.5k-token sequence; importance is
accumulated per structure in gradient hooks, so no full set of gradients is ever stored. The same
script runs under `accelerate launch` / `torchrun` with several GPUs: the Trainer shards the
calibration traces and the per-structure scores are all-reduced.
"""

from __future__ import annotations

import argparse
import logging

import torch

from optimum_resp import RESPConfig, RESPPruner
from optimum_resp.calibration import prompts_from_task


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="Qwen/Qwen3-8B")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--calibration", default="openai/gsm8k", help="GSM8K-format Hub id or local file")
    parser.add_argument("--output", default="qwen3-8b-resp")
    parser.add_argument("--export", choices=["per_layer", "uniform"], default="per_layer")
    parser.add_argument("--stages", type=int, default=8, help="progressive stages (the reference: 112)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("This example needs a CUDA GPU (Qwen3-8B in bf16 is 16 GB).")

    config = RESPConfig(
        target_sparsity=args.sparsity,
        num_calibration_prompts=500,
        generation={"max_new_tokens": 2048, "batch_size": 64},
        num_stages=args.stages,
        batch_size=1,
        export=args.export,  # uniform: its uniform allocation and no protected layer follow
    )
    pruner = RESPPruner.from_pretrained(
        args.model, config=config, task="gsm8k", dtype=torch.bfloat16, device_map="cuda"
    )
    prompts = prompts_from_task("gsm8k", args.calibration, split="train", limit=500, seed=0)
    result = pruner.prune(prompts, output_dir=args.output)  # re-run the same command to resume
    pruner.save_pretrained(args.output)
    print(f"sparsity {result.report.sparsity:.1%}; saved to {args.output}")


if __name__ == "__main__":
    main()
