"""Leaderboard tables of pruned variants: mean ± std over seeds, best per column, change against the dense row."""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.publish.results import ACCURACY_METRICS, Run, Score, Variant, read_runs

FORMATS = ("markdown", "csv", "html", "json")


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    delta: float | None = None
    best: bool = False


@dataclass
class Table:
    metric: str
    tasks: list[str]
    rows: list[tuple[Variant, str]]
    cells: dict[tuple[Variant, str, str], Cell]


def _budget_key(budget: str) -> tuple[int, float, str]:
    try:
        return (0, float(budget), budget)
    except ValueError:
        return (1, 0.0, budget)


def check_comparable(scores: list[Score]) -> None:
    """Refuse to put side by side runs of one task whose generation settings differ (budget and seeds may)."""
    by_task: dict[str, list[Score]] = defaultdict(list)
    for score in scores:
        by_task[score.task].append(score)
    for task, group in by_task.items():
        first = group[0]
        for other in group[1:]:
            if other.settings != first.settings:
                key = next(
                    k
                    for k in sorted(set(first.settings) | set(other.settings))
                    if first.settings.get(k) != other.settings.get(k)
                )
                raise PruneConfigError(
                    f"task {task}: runs differ in generation setting {key!r}: {first.settings.get(key)!r} "
                    f"({first.path}) vs {other.settings.get(key)!r} ({other.path}); "
                    "compare only runs made with the same settings"
                )


def build_table(runs: list[Run], metric: str = "exact_match") -> Table:
    scores = [s for run in runs for s in run.scores if s.metric == metric]
    if not scores:
        present = sorted({s.metric for run in runs for s in run.scores})
        raise PruneConfigError(
            f"no {metric!r} scores in the results given; metrics there: {', '.join(present) or 'none'}"
        )
    check_comparable(scores)
    values: dict[tuple[Variant, str, str], list[float]] = defaultdict(list)
    for score in scores:
        values[(score.variant, score.budget, score.task)].append(score.value)
    tasks = sorted({s.task for s in scores})
    rows = sorted(
        {(s.variant, s.budget) for s in scores},
        key=lambda r: (
            r[0].base_model,
            not r[0].dense,
            r[0].method,
            r[0].alloc,
            r[0].sparsity,
            r[0].drop_layers,
            _budget_key(r[1]),
        ),
    )
    cells = {
        key: Cell(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for key, v in values.items()
    }
    for (variant, budget, task), cell in cells.items():
        dense = next(
            (
                c
                for (v, b, t), c in cells.items()
                if v.dense and v.base_model == variant.base_model and b == budget and t == task
            ),
            None,
        )
        if dense is not None and not variant.dense:
            cell.delta = cell.mean - dense.mean
    higher = {s.task: s.higher_is_better for s in scores}  # lm-eval's higher_is_better (thinking_tokens: lower)
    for task in tasks:
        column = [c for (_, _, t), c in cells.items() if t == task]
        top = (max if higher[task] else min)(c.mean for c in column)
        for c in column:
            c.best = c.mean == top
    return Table(metric, tasks, rows, cells)


def _cell_text(cell: Cell | None, bold: tuple[str, str] = ("**", "**"), digits: int = 3) -> str:
    if cell is None:
        return "–"
    text = f"{cell.mean:.{digits}f} ± {cell.std:.{digits}f} (n={cell.n})"
    if cell.best:
        text = f"{bold[0]}{text}{bold[1]}"
    if cell.delta is not None:
        text += f" {cell.delta:+.{digits}f}"
    return text


def records(table: Table) -> list[dict[str, object]]:
    out = []
    for variant, budget in table.rows:
        for task in table.tasks:
            cell = table.cells.get((variant, budget, task))
            if cell is None:
                continue
            out.append(
                {
                    "base_model": variant.base_model,
                    "variant": variant.label,
                    "method": variant.method,
                    "alloc": variant.alloc,
                    "sparsity": variant.sparsity,
                    "pattern": variant.pattern,
                    "drop_layers": variant.drop_layers,
                    "thinking_budget": budget,
                    "task": task,
                    "metric": table.metric,
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": cell.n,
                    "delta_vs_dense": cell.delta,
                    "best": cell.best,
                }
            )
    return out


def render(table: Table, fmt: str) -> str:
    """The table as markdown (best in bold, change against dense after the value), csv, html or json."""
    check_format(fmt)
    if fmt == "json":
        return json.dumps(records(table), indent=1)
    if fmt == "csv":
        rows = records(table)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    header = ["base model", "variant", "thinking budget", *table.tasks]
    digits = 3 if table.metric in ACCURACY_METRICS else 1
    body = [
        [
            v.base_model,
            v.label,
            b,
            *(
                _cell_text(table.cells.get((v, b, t)), ("<b>", "</b>") if fmt == "html" else ("**", "**"), digits)
                for t in table.tasks
            ),
        ]
        for v, b in table.rows
    ]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return (
            f"{table.metric}: mean ± std over seeds (n runs); best per column in bold; "
            "+/- is the change against the dense row\n\n" + "\n".join(lines) + "\n"
        )
    cells = lambda row, tag: "".join(f"<{tag}>{c if '<b>' in c else html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    return (
        "<table>\n<tr>"
        + cells(header, "th")
        + "</tr>\n"
        + "\n".join("<tr>" + cells(row, "td") + "</tr>" for row in body)
        + "\n</table>\n"
    )


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise PruneConfigError(f"format {fmt!r} is not allowed; use {', '.join(FORMATS)}")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def leaderboard(
    paths: list[str | Path],
    fmt: str = "markdown",
    metric: str = "exact_match",
    plot_path: str | Path | None = None,
    on_skip: Callable[[str], None] = _to_stderr,
) -> str:
    """Read results files under ``paths`` and render the table (and the plot when asked).

    Files that are not lm-eval results, and scores that are not finite, are left out with one line each to
    ``on_skip`` (stderr by default). A missing matplotlib fails before any file is read.
    """
    check_format(fmt)
    if plot_path is not None:
        from lm_eval_prune.publish.plots import check_plot_path, require_matplotlib

        require_matplotlib()
        check_plot_path(plot_path)
    skipped: list[str] = []

    def skip(line: str) -> None:
        skipped.append(line)
        on_skip(line)

    runs = read_runs(paths, skip)
    if not runs:
        told = f"; {len(skipped)} skipped, see the lines above" if skipped else ""
        raise PruneConfigError(
            f"no lm-eval results files under {', '.join(map(str, paths))}{told}"
            " (lm_eval writes them with --output_path)"
        )
    table = build_table(runs, metric)
    if plot_path:
        from lm_eval_prune.publish.plots import plot_leaderboard

        plot_leaderboard(table, plot_path)
    return render(table, fmt)
