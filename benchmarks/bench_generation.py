"""Budget-forced generation speed of pruned-hf vs pruned-vllm, and what a prune-cache hit saves.

    OMP_NUM_THREADS=1 python benchmarks/bench_generation.py [--requests 32] [--budget 64] [--hf-batch-size 8]
        [--skip-vllm] [--stop-check-only]

Generation: the scripted tiny Llama of the tests (hidden 128, head_dim 64, so vLLM's CPU backend runs it), whose
script ends thinking every 3 tokens ("mid" mode) and each end is answered with "Wait" (N large), so every request
runs many rounds of s1's protocol: tokens/s counts thinking plus answer tokens. Batching is s1's in both: pruned-hf
runs chunks of ``--hf-batch-size`` requests, pruned-vllm (``batch_size=auto``) one chunk per round.
Cache: pruned-hf on ../shared/models/stories260k (Wanda + OWL, 128 x 128 calibration from War and Peace),
first with an empty cache, then again.
Stop check: the HF driver's per-token bookkeeping (incremental detokenization + stop strings in the new characters)
against decoding each row's whole generated text every step, 8 rows x 4096 tokens of War and Peace (stories260k's
BPE tokenizer), in ms per step (one token for every row).
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


def stop_check(rows: int = 8, tokens: int = 4096, tail_steps: int = 64) -> dict:
    from transformers import AutoTokenizer

    from lm_eval_prune.generation.drivers import EngineRow
    from lm_eval_prune.generation.protocol import Sampling, Step

    tok = AutoTokenizer.from_pretrained(SHARED / "models" / "stories260k")
    text = (SHARED / "data" / "calibration" / "war_and_peace_pg2600.txt").read_text()[:400_000]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stops = ("</think>", "<|im_start|>", "Question:")
    streams = [ids[r * tokens : (r + 1) * tokens] for r in range(rows)]
    params = Sampling(max_tokens=tokens + 1, stop=stops)
    engine_rows = [EngineRow(tok, Step([1], params), 10**9, []) for _ in range(rows)]
    per_step = []
    for t in range(tokens):
        start = time.perf_counter()
        for row, stream in zip(engine_rows, streams, strict=True):
            assert not row.push(stream[t])
        per_step.append(time.perf_counter() - start)
    # the old way: decode the whole generated text of every row each step, then look for the stops in it
    old = []
    for t in range(tokens - tail_steps, tokens):
        start = time.perf_counter()
        for stream in streams:
            whole = tok.decode(stream[: t + 1], skip_special_tokens=False)
            assert not any(stop in whole[-len(stop) - 16 :] for stop in stops)
        old.append(time.perf_counter() - start)
    head = len(tok.decode([1], skip_special_tokens=False))
    same = all(
        row.text == tok.decode([1, *stream], skip_special_tokens=False)[head:]
        for row, stream in zip(engine_rows, streams, strict=True)
    )
    return {
        "rows": rows,
        "tokens": tokens,
        "incremental_ms_per_step_mean": round(1000 * sum(per_step) / tokens, 3),
        "incremental_ms_per_step_last_64": round(1000 * sum(per_step[-tail_steps:]) / tail_steps, 3),
        "whole_decode_ms_per_step_at_4k": round(1000 * sum(old) / tail_steps, 3),
        "incremental_text_equals_whole_decode": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=8, help="pruned-hf requests per batch = rows per generate")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--stop-check-only", action="store_true")
    args = parser.parse_args()
    if args.stop_check_only:
        print(json.dumps({"stop_check": stop_check()}, indent=1))
        return
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
            "hf": generation("pruned-hf", model_dir, requests, {"device": "cpu", "batch_size": args.hf_batch_size}),
        }
        if not args.skip_vllm:
            out["vllm"] = generation("pruned-vllm", model_dir, requests, {"batch_size": "auto", "max_model_len": 512})
        out["cache_seconds"] = cache_hit(root)
        out["stop_check"] = stop_check()
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
