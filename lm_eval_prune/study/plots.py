"""A study's plots: accuracy against the thinking budget, and against the thinking tokens actually used.

A budget is a cap; a variant that stops thinking early spends less, so the second plot puts each point at the mean of
the samples' ``thinking_tokens`` (over problems and seeds). One panel per task, one line per (model, variant), the
same colour in every panel, error bars of the std over seeds; every line in the legend outside the panels;
constrained layout (nothing clipped); the accuracy axis is [0, 1]. Matplotlib is optional: callers that were asked
for plots call :func:`lm_eval_prune.publish.plots.require_matplotlib` before any work.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lm_eval_prune.files import write_atomically
from lm_eval_prune.study.outputs import RunSamples, load_study

BUDGET_PLOT = "accuracy_vs_budget.png"
TOKENS_PLOT = "accuracy_vs_tokens.png"


@dataclass(frozen=True)
class Point:
    """One (model, variant, task, budget): accuracy mean and std over seeds, mean thinking tokens used."""

    budget: int
    accuracy: float
    std: float
    tokens: float


def points(runs: list[RunSamples]) -> dict[tuple[str, str], dict[str, list[Point]]]:
    """Per (model, variant), per task: its points in budget order."""
    groups: dict[tuple[str, str, str, int], list[RunSamples]] = defaultdict(list)
    for run in runs:
        groups[(run.model, run.variant, run.task, run.budget)].append(run)
    out: dict[tuple[str, str], dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for (model, variant, task, budget), group in sorted(groups.items()):
        accuracies = [r.accuracy for r in group]
        used = [t for r in group for t in r.thinking.values()]
        out[(model, variant)][task].append(
            Point(
                budget=budget,
                accuracy=statistics.fmean(accuracies),
                std=statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
                tokens=statistics.fmean(used) if used else float("nan"),
            )
        )
    return {key: dict(tasks) for key, tasks in out.items()}


def _series_name(model: str, variant: str, several_models: bool) -> str:
    return f"{model}: {variant}" if several_models else variant


def accuracy_figure(runs: list[RunSamples], x: str, metric: str = "exact_match") -> Any:
    """The figure with ``x`` = ``"budget"`` or ``"tokens"`` on the horizontal axis."""
    from lm_eval_prune.publish.plots import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = points(runs)
    tasks = sorted({task for by_task in series.values() for task in by_task})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.8), squeeze=False)
    fig.set_layout_engine("constrained")
    keys = sorted(series, key=lambda k: (k[0], k[1] != "dense", k[1]))
    several_models = len({model for model, _ in keys}) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles: dict[str, Any] = {}
    for ax, task in zip(axes[0], tasks, strict=False):
        xs_all: list[float] = []
        for i, key in enumerate(keys):
            pts = series[key].get(task, [])
            if not pts:
                continue
            name = _series_name(*key, several_models)
            xs = [float(p.budget) if x == "budget" else p.tokens for p in pts]
            xs_all += xs
            line = ax.errorbar(
                xs,
                [p.accuracy for p in pts],
                yerr=[p.std for p in pts],
                marker="o",
                capsize=3,
                color=colours[i % len(colours)],
                label=name,
            )
            handles.setdefault(name, line)
        ax.set_title(task)
        ax.set_xlabel("thinking budget (tokens)" if x == "budget" else "mean thinking tokens used")
        ax.set_ylabel(metric)
        ax.set_ylim(0.0, 1.0)
        finite = [v for v in xs_all if v == v]
        if finite and min(finite) > 0 and max(finite) / min(finite) >= 8:
            ax.set_xscale("log", base=2)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncol=min(3, len(handles)), fontsize=8
        )
    return fig


def _savefig(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)


def write_plots(out: Path, metric: str = "exact_match") -> list[Path]:
    """``out/accuracy_vs_budget.png`` and ``out/accuracy_vs_tokens.png`` from the study's samples files."""
    import matplotlib.pyplot as plt

    runs = load_study(Path(out), metric)
    written = []
    for x, name in (("budget", BUDGET_PLOT), ("tokens", TOKENS_PLOT)):
        fig = accuracy_figure(runs, x, metric)
        target = Path(out) / name
        try:
            write_atomically(target, partial(_savefig, fig))  # a kill leaves the old plot or the new, never half
        finally:
            plt.close(fig)
        written.append(target)
    return written
