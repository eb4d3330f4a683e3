"""Matplotlib figures (matplotlib is imported only when a plot is asked for, and checked before any work)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval_prune.errors import PruneConfigError

if TYPE_CHECKING:
    from lm_eval_prune.publish.leaderboard import Table

MATPLOTLIB_MISSING = "--plot needs matplotlib: pip install 'lm-eval-prune[plot]'"


def require_matplotlib() -> None:
    """Fail in one line before the expensive work when ``--plot`` cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PruneConfigError(MATPLOTLIB_MISSING) from None


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_plot_path(path: str | Path) -> Path:
    """``--plot PATH`` before any work: a file name of a format matplotlib writes, whose folder exists (created if
    missing) and takes a new file. A failure after an hour of scoring would lose the plot, not the run."""
    import os

    from lm_eval_prune.files import check_writable_file

    text = os.fspath(path)
    if text.strip() and not Path(text).expanduser().is_dir() and Path(text).suffix.lower() not in PLOT_SUFFIXES:
        raise PruneConfigError(f"--plot {text!r} must end in one of {', '.join(PLOT_SUFFIXES)}")
    return check_writable_file(text, "--plot")


def _save(fig: Any, path: str | Path) -> None:
    """Write the figure beside ``path`` first, then rename it into place (a kill leaves the old plot or none)."""

    from lm_eval_prune.files import write_atomically

    write_atomically(Path(path).expanduser(), lambda tmp: fig.savefig(tmp, dpi=120))


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _budget_number(budget: str) -> float | None:
    try:
        return float(budget)
    except ValueError:
        return None


def leaderboard_figure(table: Table) -> Any:
    """One panel per task: the metric against thinking budget, one line per variant (same colour in every panel).

    A variant scored without a numeric budget is a dashed horizontal line. Every line is in the legend, which sits
    outside the panels; constrained layout keeps titles, labels and legend inside the figure.
    """
    from lm_eval_prune.publish.results import ACCURACY_METRICS

    plt = _pyplot()
    tasks = table.tasks
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False, layout="constrained", sharey=False
    )
    variants = sorted({v for v, _ in table.rows}, key=lambda v: (v.base_model, not v.dense, v.label))
    several_bases = len({v.base_model for v in variants}) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    numeric_budgets = {b for _, b in table.rows if _budget_number(b) is not None}
    handles: dict[str, Any] = {}
    for ax, task in zip(axes[0], tasks, strict=True):
        for i, variant in enumerate(variants):
            name = f"{variant.base_model}: {variant.label}" if several_bases else variant.label
            colour = colours[i % len(colours)]
            cells = [(b, c) for (v, b, t), c in table.cells.items() if v == variant and t == task]
            numeric = sorted((_budget_number(b), c) for b, c in cells if _budget_number(b) is not None)
            if numeric:
                xs = [x for x, _ in numeric]
                line = ax.errorbar(
                    xs,
                    [c.mean for _, c in numeric],
                    yerr=[c.std for _, c in numeric],
                    marker="o",
                    capsize=3,
                    color=colour,
                    label=name,
                )
                handles.setdefault(name, line)
            for budget, cell in cells:
                if _budget_number(budget) is None:
                    label = f"{name} (budget {budget})"
                    handles.setdefault(label, ax.axhline(cell.mean, color=colour, linestyle="--", label=label))
        ax.set_title(task)
        ax.set_xlabel("thinking budget (tokens)")
        ax.set_ylabel(table.metric)
        if table.metric in ACCURACY_METRICS:
            ax.set_ylim(0.0, 1.0)
        if len(numeric_budgets) > 2:
            ax.set_xscale("log", base=2)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncol=min(3, len(handles)), fontsize=8
        )
    return fig


def plot_leaderboard(table: Table, path: str | Path) -> None:
    """Save :func:`leaderboard_figure` as a PNG."""
    plt = _pyplot()
    fig = leaderboard_figure(table)
    _save(fig, path)
    plt.close(fig)


def layer_scores_figure(
    scores: Sequence[float], sparsities: Sequence[float], kind: str, title: str, target: float | None = None
) -> Any:
    """Bars of the score per block, and the resulting sparsity per block (with the target as a line) when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(scores)), 3.5), layout="constrained")
    blocks = list(range(len(scores)))
    handles = [ax.bar(blocks, scores, color="tab:blue", label=f"{kind} score")]
    ax.set_xlabel("decoder block")
    ax.set_ylabel(f"{kind} score")
    if sparsities:
        twin = ax.twinx()
        (line,) = twin.plot(blocks, sparsities, color="tab:red", marker="o", label="sparsity")
        twin.set_ylabel("sparsity")
        twin.set_ylim(0.0, 1.0)
        handles.append(line)
        if target is not None:
            handles.append(twin.axhline(target, color="tab:gray", linestyle="--", label=f"target {target:g}"))
    fig.legend(handles, [h.get_label() for h in handles], loc="outside upper right", fontsize=8)
    ax.set_title(str(title))
    return fig


def plot_layer_scores(
    scores: Sequence[float],
    sparsities: Sequence[float],
    kind: str,
    title: str,
    path: str | Path,
    target: float | None = None,
) -> None:
    """Save :func:`layer_scores_figure` as a PNG."""
    plt = _pyplot()
    fig = layer_scores_figure(scores, sparsities, kind, title, target)
    _save(fig, path)
    plt.close(fig)
