"""Benchmark the pruning engine: seconds per pass, calibration tokens/s, peak memory, FLOP/s on GPU.

Examples:
    python benchmarks/bench_prune.py --model ../shared/models/stories260k --nsamples 128 --seqlen 128
    python benchmarks/bench_prune.py --shape qwen3-8b --dtype bfloat16 --nsamples 128 --seqlen 2048 [--offload]

``--shape`` builds a random-init model of a known config shape with ``from_config`` (no download), directly on the
device. Calibration tokens are random ids (the speed does not depend on their content).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lm_eval_prune import PruneConfig, prune_
from lm_eval_prune.engine.model_utils import block_linear_params, decoder_blocks

SHAPES = {  # Hub config shapes, written out so that no download is needed
    "qwen3-8b": dict(
        model_type="qwen3",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    ),
    "qwen3-0.6b": dict(
        model_type="qwen3",
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
    ),
}
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 spec sheets


def build(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    shape = dict(SHAPES[args.shape])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    home = torch.device("cpu") if args.offload else device
    torch.manual_seed(0)
    with home:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def forward_flops(model: torch.nn.Module, tokens: int, seqlen: int) -> float:
    """Block-linear matmuls (2 FLOP per weight per token) plus causal attention scores and values."""
    blocks = decoder_blocks(model)
    linear = sum(block_linear_params(b) for b in blocks)
    attn_width = model.config.num_attention_heads * getattr(
        model.config, "head_dim", model.config.hidden_size // model.config.num_attention_heads
    )
    attention = len(blocks) * 2 * 2 * attn_width * seqlen / 2  # QK^T and AV, half of the square under the causal mask
    return tokens * (2 * linear + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local model directory")
    source.add_argument("--shape", choices=sorted(SHAPES), help="random-init model of this config shape")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--alloc", default="owl")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--offload", action="store_true")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.dtype == "auto":
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    start = time.perf_counter()
    model = build(args, device)
    load_seconds = time.perf_counter() - start
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    config = PruneConfig(
        method=args.method,
        alloc=args.alloc,
        sparsity=args.sparsity,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        calib_batch_size=args.batch_size,
        device=str(device),
        offload=args.offload,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    report = prune_(model, config, calibration=ids)
    tokens = args.nsamples * args.seqlen
    forwards = (2 if config.needs_calibration and args.method == "wanda" else 0) + (1 if args.alloc == "owl" else 0)
    flops = forward_flops(model, tokens, args.seqlen) * forwards
    out = {
        "model": args.model or args.shape,
        "device": str(device),
        "dtype": args.dtype,
        "offload": args.offload,
        "method": args.method,
        "alloc": args.alloc,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "load_seconds": round(load_seconds, 3),
        "prune_seconds": round(report.seconds, 3),
        "passes_seconds": {k: round(v, 3) for k, v in report.passes.items()},
        "block_forwards": forwards,
        "calibration_tokens_per_second": round(
            tokens * forwards / max(report.passes.get("allocation", 0) + report.passes.get("prune", 0), 1e-9)
        ),
        "peak_memory_bytes": report.peak_memory_bytes,
        "peak_memory_kind": report.peak_memory_kind,
        "overall_sparsity": round(report.overall_sparsity, 5),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        busy = report.passes.get("allocation", 0) + report.passes.get("prune", 0)
        out["gpu"] = name
        out["achieved_tflops"] = round(flops / busy / 1e12, 1)
        if peak:
            out["flop_bound_seconds"] = round(flops / peak, 2)
            out["times_flop_bound"] = round(busy / (flops / peak), 2)
        blocks = decoder_blocks(model)
        block_bytes = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
        out["one_block_bytes"] = block_bytes
        out["activation_bytes"] = (
            2 * tokens * model.config.hidden_size * torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
