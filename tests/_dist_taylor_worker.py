"""Worker for the distributed Taylor test: `torchrun --nproc_per_node N _dist_taylor_worker.py MODEL EXAMPLES OUT`.

Loads a saved tiny model and JSON calibration examples, scores them with TaylorScorer in both
accumulation modes (each process takes its shard through the Trainer), and rank 0 writes the scores
and run stats to OUT as JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from transformers import AutoModelForCausalLM

from optimum_resp.importance import TaylorScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("examples")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    with open(args.examples, encoding="utf-8") as f:
        examples = json.load(f)

    result = {}
    for mode in ("batch", "all"):
        scorer = TaylorScorer(abs_after=mode, batch_size=args.batch_size, progress=False, bf16_autocast=False)
        scores = scorer.score(model, examples)
        result[mode] = {"scores": [s.to_dict() for s in scores], "stats": scorer.last_stats.to_dict()}

    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
