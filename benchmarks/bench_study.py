"""Study runner benchmark on the scripted model: the ladder against separate budgets and separate lm_eval calls.

Grid: 2 variants (dense, magnitude 10 %) x 2 tasks x budgets 32, 64, 128, 256 x 2 seeds = 32 runs. Prints wall time
and thinking tokens generated for each way. ``--lm-eval-calls`` also times each run as its own ``lm-eval-prune eval``
process (model load, prune-cache hit, one task) as users script it today.

    OMP_NUM_THREADS=1 python benchmarks/bench_study.py [--backend hf|vllm] [--lm-eval-calls]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "study"))

PROBLEMS = ["endless", "question long", "endless question", "x endless", "question mid", "endless x"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--lm-eval-calls", action="store_true")
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
    # warm the prune cache so both ways start equal
    run_study(parse_spec({**study, "budgets": [4], "seeds": [0]}), root / "warm", echo=lambda text: None)
    rows = {}
    for ladder in (True, False):
        out = root / f"out-{ladder}"
        begin = time.perf_counter()
        records = run_study(parse_spec({**study, "ladder": ladder}), out, echo=lambda text: None)
        seconds = time.perf_counter() - begin
        tokens = sum(r.counts["thinking_generated"] for r in records)
        rows["ladder" if ladder else "separate budgets"] = (seconds, tokens)
    if args.lm_eval_calls:
        rows["separate lm_eval calls"] = (lm_eval_calls(study, root), rows["separate budgets"][1])
    base_seconds, base_tokens = rows["separate budgets"]
    print(f"grid: 2 variants x 2 tasks x 4 budgets x 2 seeds = 32 runs, {len(PROBLEMS)} problems, {args.backend}")
    for name, (seconds, tokens) in rows.items():
        print(
            f"{name:24s} {seconds:7.1f} s  {tokens:7d} thinking tokens"
            f"  ({seconds / base_seconds:.2f}x time, {tokens / base_tokens:.2f}x tokens of separate budgets)"
        )
    shutil.rmtree(root, ignore_errors=True)


def lm_eval_calls(study: dict, root: Path) -> float:
    """Every run as its own ``lm-eval-prune eval`` process."""
    exe = Path(sys.executable).parent / "lm-eval-prune"
    begin = time.perf_counter()
    for variant in ("method=none", "method=magnitude,sparsity=0.1"):
        for task in study["tasks"]:
            for budget in study["budgets"]:
                for seed in study["seeds"]:
                    gen = {**study["gen_kwargs"], "max_tokens_thinking": budget, "seed": seed}
                    cmd = [
                        str(exe),
                        "eval",
                        "--model",
                        f"pruned-{study['backend']}",
                        "--model_args",
                        f"pretrained={study['models'][0]},{variant},prune_cache={study['prune_cache']}",
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
                        "--seed",
                        str(seed),
                    ]
                    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - begin


if __name__ == "__main__":
    main()
