"""Reading a study's runs back per problem: the samples files lm-eval wrote under ``DIR/runs``.

The paired comparison and the token plots need what the results files average away: each problem's correctness and
the thinking tokens each generation actually used. A run folder is ``runs/<model>/<variant>/<task>/budget-<B>/seed-<S>``
(see :mod:`lm_eval_prune.study.plan`); lm-eval's tracker puts ``samples_<task>_<time>.jsonl`` one folder below it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.study.plan import RUNS

_BUDGET = re.compile(r"budget-(\d+)")
_SEED = re.compile(r"seed-(-?\d+)")


@dataclass(frozen=True)
class RunSamples:
    """One run's per-problem values: ``metric`` and thinking tokens by ``doc_id``."""

    model: str
    variant: str
    task: str
    budget: int
    seed: int
    correct: dict[int, float]
    thinking: dict[int, float]

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / len(self.correct)

    @property
    def mean_thinking(self) -> float:
        return sum(self.thinking.values()) / len(self.thinking) if self.thinking else math.nan


def samples_file(folder: Path, task: str) -> Path | None:
    """The newest samples file of ``task`` under a run folder (a re-done run replaces the folder, so one)."""
    found = sorted(folder.rglob(f"samples_{task}_*.jsonl"))
    return found[-1] if found else None


def read_samples(path: Path, metric: str) -> tuple[dict[int, float], dict[int, float]]:
    """(``metric`` by doc_id, thinking tokens by doc_id) of one samples file; PruneConfigError without the metric."""
    correct: dict[int, float] = {}
    thinking: dict[int, float] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        value = row.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PruneConfigError(
                f"metric {metric!r} is not a number in {path} line {number}; use a per-sample metric (exact_match)"
            )
        correct[int(row["doc_id"])] = float(value)
        tokens = row.get("thinking_tokens")
        if isinstance(tokens, (int, float)) and not isinstance(tokens, bool):
            thinking[int(row["doc_id"])] = float(tokens)
    return correct, thinking


def load_study(out: Path, metric: str = "exact_match") -> list[RunSamples]:
    """Every finished run of the study in ``out`` (folders without a samples file are left out: not finished)."""
    runs: list[RunSamples] = []
    root = Path(out) / RUNS
    if not root.is_dir():
        return runs
    for seed_dir in sorted(root.glob("*/*/*/budget-*/seed-*")):
        budget_dir = seed_dir.parent
        task_dir = budget_dir.parent
        budget, seed = _BUDGET.fullmatch(budget_dir.name), _SEED.fullmatch(seed_dir.name)
        if budget is None or seed is None:
            continue
        path = samples_file(seed_dir, task_dir.name)
        if path is None:
            continue
        correct, thinking = read_samples(path, metric)
        if not correct:
            continue
        runs.append(
            RunSamples(
                model=task_dir.parent.parent.name,
                variant=task_dir.parent.name,
                task=task_dir.name,
                budget=int(budget[1]),
                seed=int(seed[1]),
                correct=correct,
                thinking=thinking,
            )
        )
    return runs
