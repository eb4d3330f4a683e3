"""Seconds and peak memory of LayerIF's estimators on the Qwen3-0.6B shape (random init, CPU, fp32, small n).

Each estimator runs in a fresh process so its peak resident memory (ru_maxrss) is its own; the model's own footprint
is measured the same way and reported beside it. Also prints the memory plan of DataInf for Qwen3-8B.
Usage: ``python benchmarks/bench_layerif.py [--train 8 --val 4 --seqlen 64]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

QWEN3_0_6B = {
    "vocab_size": 151936,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": True,
}
QWEN3_8B = {"hidden": 4096, "intermediate": 12288, "layers": 36, "q_out": 32 * 128, "kv_out": 8 * 128, "params": 8.19e9}
GIB = 1024**3


def run_one(kind: str, n_train: int, n_val: int, seqlen: int) -> dict[str, float]:
    """Build the model, then time one estimator (``none`` only builds the model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **QWEN3_0_6B)).eval()
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(4, 151936, (n_train, seqlen), generator=generator)
    val = torch.randint(4, 151936, (n_val, seqlen), generator=generator)
    start = time.perf_counter()
    if kind == "layer_scores.layerif_influence":
        from lm_eval_prune.engine.layer_scores import layerif_influence

        layerif_influence(model, train, val, batch_size=4)
    elif kind != "none":
        from lm_eval_prune.engine.datainf import datainf_block_scores

        estimator, modules = kind.split("/")
        datainf_block_scores(model, train, val, modules, batch_size=4, estimator=estimator)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}


def datainf_plan_8b(n_train: int = 128, n_val: int = 32, seqlen: int = 128, bank_gib: float = 32.0) -> None:
    """Memory of DataInf on Qwen3-8B in bf16: stored factors, dense fp32 validation gradient, model."""
    h, i, q, kv, layers = (QWEN3_8B[k] for k in ("hidden", "intermediate", "q_out", "kv_out", "layers"))
    plans = {
        # (distinct inputs, output dims, weight elements) per layer; q/k/v share an input, gate/up share one
        "attn": (2 * h, q + 2 * kv + h, h * (q + 2 * kv) + q * h),
        "all": (3 * h + i, q + 2 * kv + h + 2 * i + h, h * (q + 2 * kv) + q * h + 3 * h * i),
    }
    model_gib = QWEN3_8B["params"] * 2 / GIB
    print(f"Qwen3-8B bf16, n_train={n_train}, n_val={n_val}, seqlen={seqlen}: model {model_gib:.1f} GiB")
    for modules, (ins, outs, numel) in plans.items():
        per_sample = layers * seqlen * (ins + outs) * 2 / GIB
        bank = max(1, min(n_train, int(bank_gib // per_sample)))
        backwards = sum(n_train - s for s in range(0, n_train, bank))
        g_val = layers * numel * 4 / GIB
        print(
            f"  {modules}: factors {per_sample:.3f} GiB/sample, all {n_train}: {n_train * per_sample:.1f} GiB; "
            f"bank_gib={bank_gib:g} holds {bank} -> {backwards} training backwards; fp32 G_val {g_val:.1f} GiB; "
            f"stored total {model_gib + g_val + min(bank, n_train) * per_sample:.1f} GiB + activations"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.train, args.val, args.seqlen)))
        return
    kinds = ["none", "identity/all", "layer_scores.layerif_influence", "identity/attn", "datainf/attn", "datainf/all"]
    print(f"Qwen3-0.6B shape, random init, CPU fp32, n_train={args.train}, n_val={args.val}, seqlen={args.seqlen}")
    for kind in kinds:
        command = [sys.executable, __file__, "--one", kind, "--train", str(args.train), "--val", str(args.val)]
        out = subprocess.run([*command, "--seqlen", str(args.seqlen)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        label = "model only" if kind == "none" else kind
        print(f"  {label:32s} {result['seconds']:8.1f} s   peak RSS {result['peak_gib']:.2f} GiB")
    datainf_plan_8b()


if __name__ == "__main__":
    main()
