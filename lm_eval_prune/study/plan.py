"""The plan: every run of a study, grouped in units of (model, variant) that one lm-eval model serves; shards.

A run's results live in ``DIR/runs/<model>/<variant>/<task>/budget-<B>/seed-<S>/`` in lm-eval's own layout (its
``<model_name_sanitized>/results_<time>.json`` and ``samples_<task>_<time>.jsonl``); the folder appears whole or not at
all, so "the folder exists" is "the run is done".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.study.ladder import ladder_order
from lm_eval_prune.study.spec import KNOWN_SIZES, OUR_TASK_FILES, StudySpec, VariantSpec

RUNS = "runs"


def slug(text: str) -> str:
    """A folder name for a model id or path: ``Qwen/Qwen3-8B`` -> ``Qwen__Qwen3-8B``."""
    text = text.rstrip("/")
    if Path(text).is_absolute():
        text = Path(text).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "__")) or "model"


@dataclass(frozen=True)
class Run:
    model: str
    variant: str
    task: str
    budget: int
    seed: int

    @property
    def run_id(self) -> str:
        return f"{slug(self.model)}/{self.variant}/{self.task}/budget-{self.budget}/seed-{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / RUNS / self.run_id

    def done(self, out: Path) -> bool:
        return any(self.folder(out).rglob("results_*.json")) if self.folder(out).is_dir() else False


@dataclass(frozen=True)
class Unit:
    """One (model, variant): pruned once and served by one lm-eval model for all its runs."""

    model: str
    variant: VariantSpec
    runs: tuple[Run, ...]

    @property
    def key(self) -> str:
        return f"{slug(self.model)}/{self.variant.name}"


def expand(spec: StudySpec) -> list[Unit]:
    """Units in the study's order; runs in each by task, seed, then budget (largest first with the ladder)."""
    units = []
    for model in spec.models:
        for variant in spec.variants:
            runs = tuple(
                Run(model, variant.name, task, budget, seed)
                for task in spec.tasks
                for seed in spec.seeds
                for budget in ladder_order(spec.budgets, spec.ladder)
            )
            units.append(Unit(model, variant, runs))
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise PruneConfigError(f"{spec.source}: models give the same folder name twice ({keys}); rename one")
    return units


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise PruneConfigError(f"--shard {text!r} must be K/N with 1 <= K <= N (e.g. 2/8)")
    return int(match[1]), int(match[2])


def shard(units: list[Unit], shard_spec: tuple[int, int] | None) -> list[Unit]:
    """Shard K of N: units (sorted by key) at positions K-1, K-1+N, ...: disjoint, and together the plan."""
    if shard_spec is None:
        return units
    k, n = shard_spec
    ordered = sorted(units, key=lambda u: u.key)
    mine = {u.key for i, u in enumerate(ordered) if i % n == k - 1}
    return [u for u in units if u.key in mine]


# ----------------------------------------------------------------------------------------------- estimates
def problems(spec: StudySpec, task: str) -> int | None:
    """Problems a run of ``task`` evaluates: the data file's records (or the benchmark's size), cut by ``limit``."""
    n: int | None = None
    name = OUR_TASK_FILES.get(task)
    if spec.data_dir and name and (Path(spec.data_dir) / name).is_file():
        path = Path(spec.data_dir) / name
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        n = len(lines) - (1 if name.endswith(".csv") else 0)
    elif task in KNOWN_SIZES:
        n = KNOWN_SIZES[task]
    if n is None or spec.limit is None:
        return n
    return min(n, int(spec.limit) if spec.limit >= 1 else int(n * spec.limit))


def thinking_rounds(spec: StudySpec) -> int:
    n = spec.gen_kwargs.get("thinking_n_ignore")
    return 1 if n is None else int(n) + 1


def thinking_bound(spec: StudySpec, units: list[Unit], ladder: bool) -> int | None:
    """At most this many thinking tokens are generated (every round of every problem runs to its budget)."""
    per_problem = max(spec.budgets) if ladder else sum(spec.budgets)
    total = 0
    for task in spec.tasks:
        n = problems(spec, task)
        if n is None:
            return None
        total += n * len(spec.seeds) * per_problem * thinking_rounds(spec)
    return total * len(units)


def describe(spec: StudySpec, units: list[Unit], out: Path, shard_spec: tuple[int, int] | None = None) -> str:
    """The dry-run text: runs per model/variant/task, prune jobs, what is done, thinking tokens both ways."""
    lines = [
        f"study {spec.source}: backend {spec.backend}, output {out}"
        + (f", shard {shard_spec[0]}/{shard_spec[1]}" if shard_spec else "")
    ]
    total = done = prunes = 0
    for unit in units:
        unit_done = sum(run.done(out) for run in unit.runs)
        pruned = not unit.variant.config.is_dense
        prunes += pruned
        lines.append(
            f"  {unit.key}: {len(unit.runs)} runs ({unit_done} done), {'prune job' if pruned else 'dense, no prune'}"
        )
        for task in spec.tasks:
            runs = [r for r in unit.runs if r.task == task]
            lines.append(
                f"    {task}: {len(runs)} runs = {len(spec.budgets)} budgets x {len(spec.seeds)} seeds,"
                f" {problems(spec, task) or '?'} problems, {sum(r.done(out) for r in runs)} done"
            )
        total += len(unit.runs)
        done += unit_done
    lines.append(f"total: {len(units)} units (one model load each), {prunes} prune jobs, {total} runs, {done} done")
    with_ladder, without = thinking_bound(spec, units, True), thinking_bound(spec, units, False)
    if with_ladder is None or without is None:
        lines.append("thinking tokens: unknown (a task's size is not known before it loads)")
    else:
        lines.append(
            f"thinking tokens to generate, at most: {with_ladder:,} with the ladder, {without:,} without"
            f" ({with_ladder / without:.2f}x); ladder is {'on' if spec.ladder else 'off'}"
        )
    return "\n".join(lines)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, default=str)
