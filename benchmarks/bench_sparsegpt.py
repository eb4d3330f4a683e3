"""Benchmark SparseGPT against Wanda on the linears of one decoder block: seconds and peak memory.

Example:
    OMP_NUM_THREADS=1 python benchmarks/bench_sparsegpt.py --shape qwen3-0.6b --nsamples 16 --seqlen 256

Random-init fp32 weights and random calibration inputs of the block's linear shapes (the cost does not depend on
their values). Each method runs in its own subprocess so that CPU peak RSS (``ru_maxrss``) is its own; on CUDA the
peak is ``max_memory_allocated``. Hessian memory is ``d_in^2 * 4 B`` per linear, all of a block's held at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from lm_eval_prune.engine.masks import apply_mask_, build_mask, wanda_scores
from lm_eval_prune.engine.sparsegpt import Hessian, sparsegpt_prune_
from lm_eval_prune.engine.stats import ColumnSqNorm

SHAPES = {  # (d_out, d_in) of each block linear, in the block's order
    "qwen3-0.6b": {  # hidden 1024, 16 heads x 128, 8 kv heads, intermediate 3072
        "q_proj": (2048, 1024),
        "k_proj": (1024, 1024),
        "v_proj": (1024, 1024),
        "o_proj": (1024, 2048),
        "gate_proj": (3072, 1024),
        "up_proj": (3072, 1024),
        "down_proj": (1024, 3072),
    },
    "qwen3-8b": {
        "q_proj": (4096, 4096),
        "k_proj": (1024, 4096),
        "v_proj": (1024, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (12288, 4096),
        "up_proj": (12288, 4096),
        "down_proj": (4096, 12288),
    },
}


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(args: argparse.Namespace) -> dict[str, object]:
    """Accumulate statistics for every linear over the batches, then prune them all: the layer loop's order."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    shapes = SHAPES[args.shape]
    weights = {name: torch.randn(out, inp, device=device) * 0.02 for name, (out, inp) in shapes.items()}
    inputs = {
        inp: torch.randn(args.nsamples, args.seqlen, inp, device=device) for inp in {i for _, i in shapes.values()}
    }
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = (
        peak_bytes(device) if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )

    tick = time.perf_counter()
    accs: dict[str, Hessian | ColumnSqNorm] = {
        name: (Hessian(inp, device) if args.method == "sparsegpt" else ColumnSqNorm(inp, device))
        for name, (_out, inp) in shapes.items()
    }
    for name, (_out, inp) in shapes.items():
        for batch in inputs[inp].split(args.batch):
            accs[name].add_batch(batch)
    sync(device)
    stats_s = time.perf_counter() - tick

    tick = time.perf_counter()
    per_linear = {}
    for name, weight in weights.items():
        start = time.perf_counter()
        if args.method == "sparsegpt":
            acc = accs.pop(name)
            assert isinstance(acc, Hessian)
            sparsegpt_prune_(weight, acc.matrix, 0.5, nm=(2, 4) if args.nm else None, name=name)
        else:
            acc = accs.pop(name)
            assert isinstance(acc, ColumnSqNorm)
            apply_mask_(weight, build_mask(wanda_scores(weight, acc.scaler), 0.5, "row", (2, 4) if args.nm else None))
        sync(device)
        per_linear[name] = round(time.perf_counter() - start, 4)
    prune_s = time.perf_counter() - tick
    peak = peak_bytes(device)
    return {
        "method": args.method,
        "stats_s": round(stats_s, 3),
        "prune_s": round(prune_s, 3),
        "per_linear_prune_s": per_linear,
        "peak_bytes_over_inputs": peak - baseline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4, help="calibration sequences per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nm", action="store_true", help="2:4 instead of 50%% unstructured")
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), help="run one method here (internal)")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args)))
        return
    hessian_bytes = {name: inp * inp * 4 for name, (_out, inp) in SHAPES[args.shape].items()}
    results = {
        "shape": args.shape,
        "tokens": args.nsamples * args.seqlen,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "pattern": "2:4" if args.nm else "50% unstructured",
        "hessian_bytes_block": sum(hessian_bytes.values()),
        "hessian_bytes_largest": max(hessian_bytes.values()),
    }
    for method in ("wanda", "sparsegpt"):
        command = [sys.executable, __file__, *sys.argv[1:], "--method", method]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
