"""Each pruned variant against the dense variant of the same model, per task and budget, with its uncertainty.

Paired bootstrap over problems: for each problem (paired on ``doc_id``) take the mean over seeds of the per-sample
correctness, for the variant and for dense, and their difference; resample the problems with replacement (10,000
times by default, from a fixed seed, so the report is reproducible) and report the mean difference with the 2.5 and
97.5 percentiles of the resampled means. Seeds are averaged within a problem, not resampled: they are the repeated
measurements of that problem. Only the seeds both sides ran, and the problems every one of those runs scored, enter.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lm_eval_prune.study.outputs import RunSamples, load_study

DENSE = "dense"
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK = 1_000  # resamples drawn at a time: 10,000 x a 500-problem task at once would hold 40 MB of indices


@dataclass(frozen=True)
class Comparison:
    """One variant against dense on one task at one budget (differences are variant minus dense)."""

    model: str
    variant: str
    task: str
    budget: int
    problems: int
    seeds: list[int]
    dense: float
    pruned: float
    difference: float
    low: float
    high: float
    better: int  # problems where the variant's mean over seeds beats dense's
    worse: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"


def paired_bootstrap(
    differences: Iterable[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 % percentile) of the mean of ``differences`` under resampling with replacement."""
    values = np.asarray(list(differences), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no paired problems to compare")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        picks = rng.integers(0, values.size, size=(size, values.size))
        means[start : start + size] = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def per_problem(runs: list[RunSamples], seeds: list[int], docs: list[int]) -> dict[int, float]:
    """Mean over ``seeds`` of each problem's correctness."""
    by_seed = {r.seed: r.correct for r in runs}
    return {doc: sum(by_seed[s][doc] for s in seeds) / len(seeds) for doc in docs}


def compare_pair(
    dense: list[RunSamples], pruned: list[RunSamples], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> Comparison | None:
    """The comparison of one variant's runs with dense's (same model, task, budget); None when nothing pairs."""
    seeds = sorted({r.seed for r in dense} & {r.seed for r in pruned})
    if not seeds:
        return None
    chosen = [r for r in [*dense, *pruned] if r.seed in seeds]
    docs = sorted(set.intersection(*(set(r.correct) for r in chosen)))
    if not docs:
        return None
    base = per_problem([r for r in dense if r.seed in seeds], seeds, docs)
    other = per_problem([r for r in pruned if r.seed in seeds], seeds, docs)
    differences = [other[d] - base[d] for d in docs]
    mean, low, high = paired_bootstrap(differences, resamples, seed)
    first = pruned[0]
    return Comparison(
        model=first.model,
        variant=first.variant,
        task=first.task,
        budget=first.budget,
        problems=len(docs),
        seeds=seeds,
        dense=sum(base.values()) / len(docs),
        pruned=sum(other.values()) / len(docs),
        difference=mean,
        low=low,
        high=high,
        better=sum(d > 0 for d in differences),
        worse=sum(d < 0 for d in differences),
    )


def compare_runs(
    runs: list[RunSamples], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, dense_name: str = DENSE
) -> list[Comparison]:
    """Every (model, variant other than dense, task, budget) that dense of the same model also ran."""
    groups: dict[tuple[str, str, str, int], list[RunSamples]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.variant, run.task, run.budget)].append(run)
    out = []
    for (model, variant, task, budget), group in sorted(groups.items()):
        dense = groups.get((model, dense_name, task, budget))
        if variant == dense_name or not dense:
            continue
        found = compare_pair(dense, group, resamples, seed)
        if found is not None:
            out.append(found)
    return out


def compare_study(
    out: Path, metric: str = "exact_match", resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> list[Comparison]:
    """The comparisons of the study written under ``out`` (its samples files)."""
    return compare_runs(load_study(Path(out), metric), resamples, seed)


def markdown(
    rows: list[Comparison], metric: str = "exact_match", resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> str:
    """The comparison as a Markdown table with a line saying how it was computed."""
    lines = [
        f"Pruned vs dense, {metric}: per-problem paired bootstrap over problems (mean over seeds per problem,"
        f" paired on doc_id), {resamples:,} resamples (seed {seed}), 95 % percentile interval.",
        "",
        "| model | variant | task | budget | problems | seeds | dense | pruned | difference | 95 % interval"
        " | problems better / worse | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.variant} | {r.task} | {r.budget} | {r.problems} | {len(r.seeds)} | {r.dense:.3f}"
            f" | {r.pruned:.3f} | {r.difference:+.3f} | [{r.low:+.3f}, {r.high:+.3f}] | {r.better} / {r.worse}"
            f" | {r.verdict} |"
        )
    if not rows:
        lines.append("| (no variant has dense runs of the same model, task and budget to pair with) |||||||||||")
    return "\n".join(lines) + "\n"


def write_comparison(
    out: Path, metric: str = "exact_match", resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> list[Comparison]:
    """``out/comparison.md`` and ``out/comparison.json`` (each written whole)."""
    from lm_eval_prune.files import write_atomically

    rows = compare_study(out, metric, resamples, seed)
    write_atomically(Path(out) / "comparison.md", markdown(rows, metric, resamples, seed))
    record = {
        "metric": metric,
        "method": "paired bootstrap over problems; per problem the mean over seeds; percentile interval",
        "resamples": resamples,
        "seed": seed,
        "level": 0.95,
        "rows": [asdict(r) | {"verdict": r.verdict} for r in rows],
    }
    write_atomically(Path(out) / "comparison.json", json.dumps(record, indent=1) + "\n")
    return rows
