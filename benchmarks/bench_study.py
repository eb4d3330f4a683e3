"""Study runner benchmark on the scripted model: the ladder against separate budgets and separate lm_eval calls.

Grid: 2 variants (dense, magnitude 10 %) x 2 tasks x budgets 32, 64, 128, 256 x 2 seeds = 32 runs, greedy. Prints
wall time and the thinking (and answer) tokens the engine generated for each way:

- ``study, ladder``: ``lm-eval-prune study`` as is (one model per variant, thinking generated at 256 only);
- ``study, separate budgets``: the same with ``ladder: false``;
- ``separate lm_eval calls``: each run as its own ``lm-eval-prune eval`` process (lm-eval's own command line with the
  pruned-hf/pruned-vllm models registered; stock ``lm_eval`` does not load them), as users script the grid today:
  model load (prune-cache hit), engine start, one task. ``--calls K`` runs K of the 32 spread over the grid and
  scales their time to 32 (said so in the output). Their thinking tokens are those of separate budgets.

The prune cache is warmed first so every way starts equal. The machine may be shared: use OMP_NUM_THREADS=1 and
read the numbers as ratios.

    OMP_NUM_THREADS=1 python benchmarks/bench_study.py [--backend hf|vllm] [--lm-eval-calls] [--calls K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "study"))

PROBLEMS = ["endless", "question long", "endless question", "x endless", "question mid", "endless x"]
VARIANTS = {"dense": "method=none", "magnitude-uniform-0.1": "method=magnitude,sparsity=0.1"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--lm-eval-calls", action="store_true", help="also time separate lm_eval processes")
    parser.add_argument("--calls", type=int, default=32, help="how many of the 32 lm_eval calls to time (scaled)")
    args = parser.parse_args()

    from scripted import save_scripted
    from study_fixtures import tiny_study, write_data

    from lm_eval_prune.study.cli import run_study
    from lm_eval_prune.study.spec import parse_spec

    root = Path(tempfile.mkdtemp(prefix="bench_study_"))
    model, data = save_scripted(root / "model"), write_data(root / "data", PROBLEMS)
    model_args = {"device": "cpu", "batch_size": 8} if args.backend == "hf" else {"max_model_len": 512}
    study = tiny_study(
        model,
        data,
        backend=args.backend,
        model_args=model_args,
        budgets=[32, 64, 128, 256],
        gen_kwargs={"max_gen_toks": 6, "do_sample": False},
        prune_cache=str(root / "cache"),
    )
    quiet = {"echo": lambda text: None, "plots": False}
    # warm the prune cache so every way starts equal
    run_study(parse_spec({**study, "budgets": [4], "seeds": [0], "tasks": ["tts_aime24"]}), root / "warm", **quiet)
    rows: dict[str, tuple[float, int, int]] = {}
    outs = {}
    for ladder in (True, False):
        out = outs[ladder] = root / f"out-{ladder}"
        begin = time.perf_counter()
        records = run_study(parse_spec({**study, "ladder": ladder}), out, **quiet)
        seconds = time.perf_counter() - begin
        thinking = sum(r.counts["thinking_generated"] for r in records)
        answer = sum(r.counts["generated"] - r.counts["thinking_generated"] for r in records)
        rows["study, ladder" if ladder else "study, separate budgets"] = (seconds, thinking, answer)
    same = responses(outs[True]) == responses(outs[False])
    scaled = ""
    if args.lm_eval_calls:
        seconds, timed = lm_eval_calls(study, root, args.calls)
        sep = rows["study, separate budgets"]
        rows["separate lm_eval calls"] = (seconds, sep[1], sep[2])
        scaled = "" if timed == 32 else f" (timed {timed} of the 32 calls, scaled to 32)"
    print(
        f"grid: 2 variants x 2 tasks x budgets 32-256 x 2 seeds = 32 runs, {len(PROBLEMS)} problems, {args.backend},"
        f" OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(f"ladder and separate budgets wrote the same responses: {same}")
    base = rows["study, separate budgets"]
    for name, (seconds, thinking, answer) in rows.items():
        note = scaled if name == "separate lm_eval calls" else ""
        print(
            f"{name:26s} {seconds:8.1f} s  thinking tokens {thinking:7d} ({thinking / base[1]:.2f}x)"
            f"  answer tokens {answer:5d}{note}"
        )
    if "separate lm_eval calls" in rows:
        speedup = rows["separate lm_eval calls"][0] / rows["study, ladder"][0]
        print(f"study with ladder vs lm_eval calls: {speedup:.1f}x faster")
    shutil.rmtree(root, ignore_errors=True)


def responses(out: Path) -> dict[str, list]:
    """Every run's responses by doc, read from its samples file."""
    found = {}
    for path in sorted((out / "runs").rglob("samples_*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found[str(path.parent.parent.relative_to(out))] = sorted((r["doc_id"], r["resps"]) for r in rows)
    return found


def lm_eval_calls(study: dict, root: Path, calls: int) -> tuple[float, int]:
    """``calls`` of the grid's runs, spread evenly, each its own ``lm-eval-prune eval`` process; time scaled to 32."""
    exe = Path(sys.executable).parent / "lm-eval-prune"
    grid = [
        (variant, task, budget, seed)
        for variant in VARIANTS.values()
        for task in study["tasks"]
        for budget in study["budgets"]
        for seed in study["seeds"]
    ]
    step = max(1, len(grid) // max(1, calls))
    chosen = grid[::step][:calls]
    extra = ",max_model_len=512" if study["backend"] == "vllm" else ""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    begin = time.perf_counter()
    for variant, task, budget, seed in chosen:
        gen = {**study["gen_kwargs"], "max_tokens_thinking": budget, "seed": seed}
        cmd = [
            str(exe),
            "eval",
            "--model",
            f"pruned-{study['backend']}",
            "--model_args",
            f"pretrained={study['models'][0]},{variant},prune_cache={study['prune_cache']}{extra}",
            "--tasks",
            task,
            "--device",
            "cpu",
            "--batch_size",
            "8",
            "--gen_kwargs",
            ",".join(f"{k}={v}" for k, v in gen.items()),
            "--metadata",
            json.dumps({"data_dir": study["data_dir"]}),
            "--output_path",
            str(root / "calls"),
            "--log_samples",
            "--seed",
            str(seed),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"lm_eval call failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - begin
    return seconds * len(grid) / len(chosen), len(chosen)


if __name__ == "__main__":
    main()
