"""Budget-forced generation speed of pruned-hf vs pruned-vllm, and what a prune-cache hit saves.

    python benchmarks/bench_generation.py [--requests 32] [--budget 64]

Generation: the scripted tiny Llama of the tests (hidden 128, head_dim 64, so vLLM's CPU backend runs it), whose
script ends thinking every 3 tokens ("mid" mode) and each end is answered with "Wait" (N large), so every request
runs many rounds of s1's protocol: tokens/s counts thinking plus answer tokens.
Cache: pruned-hf on ../shared/models/stories260k (Wanda + OWL, 128 x 128 calibration from War and Peace),
first with an empty cache, then again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


class Request:
    def __init__(self, context: str, gen_kwargs: dict) -> None:
        self.args = (context, gen_kwargs)


def generation(model_type: str, model_dir: Path, requests: list[Request], extra: dict) -> dict:
    from lm_eval.api.registry import get_model

    lm = get_model(model_type).create_from_arg_string(f"pretrained={model_dir},method=none", extra)
    lm.generate_until(requests[:2])  # warm-up
    start = time.perf_counter()
    responses = lm.generate_until(requests)
    seconds = time.perf_counter() - start
    tokens = sum(r.thinking_tokens + len(r.answer.split()) for r in responses)  # ThinkingResponse traces
    return {
        "model": model_type,
        "requests": len(requests),
        "generated_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def cache_hit(root: Path) -> dict:
    from lm_eval.api.registry import get_model

    calib = root / "wp.txt"
    calib.write_text((SHARED / "data" / "calibration" / "war_and_peace_pg2600.txt").read_text()[:400_000])
    args = (
        f"pretrained={SHARED / 'models' / 'stories260k'},method=wanda,alloc=owl,sparsity=0.5,"
        f"calibration={calib},nsamples=128,seqlen=128,"
        f"prune_cache={root / 'cache'}"
    )
    times = {}
    for label in ("fresh prune", "cache hit"):
        start = time.perf_counter()
        lm = get_model("pruned-hf").create_from_arg_string(args, {"device": "cpu", "batch_size": 1})
        times[label] = round(time.perf_counter() - start, 3)
        assert lm.prune_cache_status == ("built" if label == "fresh prune" else "hit")
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sys.path.insert(0, str(REPO / "tests"))
    from scripted import save_scripted

    from lm_eval_prune.harness.plugin import register

    register()
    root = Path(tempfile.mkdtemp(prefix="bench_gen_"))
    try:
        model_dir = save_scripted(root / "scripted")
        gen = {
            "until": ["."],
            "max_gen_toks": 16,
            "do_sample": False,
            "max_tokens_thinking": args.budget,
            "thinking_n_ignore": 50,
            "thinking_n_ignore_str": "Wait",
        }
        requests = [Request(" ".join(["x"] * (i % 7)) + " question mid", gen) for i in range(args.requests)]
        out = {
            "budget": args.budget,
            "hf": generation("pruned-hf", model_dir, requests, {"device": "cpu", "batch_size": 1}),
        }
        if not args.skip_vllm:
            out["vllm"] = generation("pruned-vllm", model_dir, requests, {"batch_size": "auto", "max_model_len": 512})
        out["cache_seconds"] = cache_hit(root)
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
