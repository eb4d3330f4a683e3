"""The first-GPU-run check (issue 14): one script, no download, about 8 minutes on one H200.

Measures on a Qwen3-8B-shaped random model in bfloat16 with 128 x 2048 calibration tokens:
1. Wanda + OWL prune, seconds per pass and peak memory, in GPU memory and with ``offload`` (model in CPU memory),
   against the FLOP bound (about 3.8 PFLOP per calibration forward; 790 TFLOP/s dense bf16 achievable);
2. the free GPU memory an inference engine (vLLM) would see after the prune's memory is returned;
3. LayerIF (identity Hessian) seconds per training sample and peak memory;
4. budget-forced generation tokens/s of ``pruned-vllm`` against ``pruned-hf`` on a small model (when vLLM is installed).

Run from the repository root: ``PYTHONPATH=. python benchmarks/gpu_check.py [--quick]`` (``--quick``: the 0.6B shape and
short calibration, to check the script itself on any machine). Prints one JSON object per step.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import torch

from benchmarks.bench_prune import SHAPES, forward_flops
from lm_eval_prune import PruneConfig, prune_
from lm_eval_prune.engine.layer_scores import layerif_influence
from lm_eval_prune.store.pipeline import release_accelerator_memory

ACHIEVABLE_BF16 = 790e12


def emit(step: str, **values: Any) -> None:
    print(json.dumps({"step": step, **values}), flush=True)


def build(shape: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def prune_step(shape: str, nsamples: int, seqlen: int, offload: bool, device: torch.device) -> None:
    model = build(shape, torch.bfloat16, torch.device("cpu") if offload else device)
    ids = torch.randint(4, model.config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    config = PruneConfig(method="wanda", alloc="owl", sparsity=0.5, nsamples=nsamples, seqlen=seqlen,
                         calib_batch_size=8, device=str(device), offload=offload)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    report = prune_(model, config, calibration=ids)
    flops = forward_flops(model, nsamples * seqlen, seqlen)
    passes = {k: round(v, 2) for k, v in report.passes.items()}
    forwards = 3  # OWL dense pass, Wanda statistics, the re-run after pruning each block
    bound = forwards * flops / ACHIEVABLE_BF16
    emit("prune", shape=shape, offload=offload, passes=passes, seconds=round(report.seconds, 2),
         flop_per_forward=f"{flops:.3e}", flop_bound_seconds=round(bound, 2),
         peak_memory_gib=round(report.peak_memory_bytes / 2**30, 2))  # fmt: skip
    del model, report
    free = release_accelerator_memory()
    if free is not None:
        total = torch.cuda.mem_get_info()[1]
        emit("free_after_prune", free_gib=round(free / 2**30, 2), total_gib=round(total / 2**30, 2),
             vllm_needs_gib_at_0_9=round(0.9 * total / 2**30, 2))  # fmt: skip


def layerif_step(shape: str, samples: int, device: torch.device) -> None:
    model = build(shape, torch.bfloat16, device)
    vocab = model.config.vocab_size
    train = torch.randint(4, vocab, (samples, 128), generator=torch.Generator().manual_seed(1))
    val = torch.randint(4, vocab, (2, 128), generator=torch.Generator().manual_seed(2))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    layerif_influence(model, train, val, batch_size=2)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    emit("layerif", shape=shape, samples=samples, seconds_per_sample=round(seconds / samples, 3),
         peak_memory_gib=round(peak / 2**30, 2))  # fmt: skip
    del model
    gc.collect()
    release_accelerator_memory()


def generation_step() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        emit("generation", skipped="vLLM is not installed")
        return
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "benchmarks/bench_generation.py"], capture_output=True, text=True, check=False
    )
    emit("generation", returncode=run.returncode, output=run.stdout.strip().splitlines()[-5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.6B shape, 16 x 256 tokens: checks the script itself")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape, nsamples, seqlen = ("qwen3-0.6b", 16, 256) if args.quick else ("qwen3-8b", 128, 2048)
    emit("device", device=str(device), name=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    prune_step(shape, nsamples, seqlen, offload=False, device=device)
    if device.type == "cuda":
        prune_step(shape, nsamples, seqlen, offload=True, device=device)
    layerif_step(shape, 2 if args.quick else 8, device)
    generation_step()


if __name__ == "__main__":
    main()
