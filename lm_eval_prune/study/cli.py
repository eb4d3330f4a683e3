"""``lm-eval-prune study``: a whole pruning x budget grid as one resumable, shardable command.

Registered in the main CLI with ``main.add_command(study)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.study.plan import describe, expand, parse_shard, shard
from lm_eval_prune.study.runner import RunRecord, manifest_path, write_manifest
from lm_eval_prune.study.spec import StudySpec, check_environment, load_spec, parse_spec


def build_spec(path: str | None, preset_name: str | None, models: str | None, limit: float | None) -> StudySpec:
    """The study from a file or a preset, narrowed by ``--models`` and ``--limit``."""
    if (path is None) == (preset_name is None):
        raise PruneConfigError("give a STUDY.yaml or --preset NAME (one of them)")
    if preset_name is not None:
        from lm_eval_prune.study.presets import preset

        data: dict[str, Any] = preset(preset_name)
        source = f"preset {preset_name}"
    else:
        import yaml

        assert path is not None
        spec = load_spec(path)  # checks the file as written first
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # type: ignore[arg-type]
        source = spec.source
    if models is not None:
        data["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if limit is not None:
        data["limit"] = int(limit) if float(limit).is_integer() and limit >= 1 else limit
    return parse_spec(data, source)


def run_study(
    spec: StudySpec,
    out: Path,
    *,
    dry_run: bool = False,
    shard_text: str | None = None,
    executor: str = "local",
    echo: Any = click.echo,
    plots: bool | None = None,
) -> list[RunRecord]:
    """Check, plan, (run), write the manifest and, once the whole plan is done, the leaderboard, the paired
    comparison and the plots (``plots``: True needs matplotlib, checked first; None: when it is installed)."""
    shard_spec = parse_shard(shard_text)
    if plots:
        from lm_eval_prune.publish.plots import require_matplotlib

        require_matplotlib()
    check_environment(spec)
    every = expand(spec)
    units = shard(every, shard_spec)
    echo(describe(spec, units, out, shard_spec))
    if dry_run:
        return []
    from tqdm import tqdm

    from lm_eval_prune.study.executors import execute

    header = {"study": spec.source, "shard": shard_text, "ladder": spec.ladder, "backend": spec.backend}
    records: dict[str, RunRecord] = {}
    done_before = set()
    for unit in units:
        for run in unit.runs:
            state = "done" if run.done(out) else "pending"
            records[run.run_id] = RunRecord(run.run_id, unit.key, state)
            if state == "done":
                done_before.add(run.run_id)
    path = manifest_path(out, shard_spec)
    write_manifest(path, header, records)
    bar = tqdm(total=len(records), initial=len(done_before), desc="study", unit="run", file=sys.stderr)

    def on_run(record: RunRecord) -> None:
        if record.run_id in done_before:
            return
        records[record.run_id] = record
        write_manifest(path, header, records)
        bar.update(1)
        tokens = record.counts.get("thinking_generated", 0)
        served = record.counts.get("thinking_served", 0)
        what = f"{record.seconds}s, thinking tokens generated {tokens}, reused {served}"
        bar.write(f"{record.state} {record.run_id} ({what})" + (f": {record.error}" if record.error else ""))

    try:
        execute(executor, spec, units, out, on_run)
    finally:
        bar.close()
        write_manifest(path, header, records)
    failed = [r for r in records.values() if r.state == "failed"]
    totals = _token_totals(records.values())
    echo(f"thinking tokens generated {totals[0]:,}, reused from larger budgets {totals[1]:,}; manifest {path}")
    if all(run.done(out) for unit in every for run in unit.runs):
        _leaderboard(out, echo)
        _reports(out, echo, plots)
    if failed:
        raise click.ClickException(f"{len(failed)} runs failed; their logs: {failed[0].log} ...; re-run to redo them")
    return list(records.values())


def _token_totals(records: Any) -> tuple[int, int]:
    rows = list(records)
    return (
        sum(r.counts.get("thinking_generated", 0) for r in rows),
        sum(r.counts.get("thinking_served", 0) for r in rows),
    )


def _leaderboard(out: Path, echo: Any) -> None:
    """The table (and the plot when matplotlib is there) of every run under ``DIR/runs``."""
    from lm_eval_prune.files import write_atomically
    from lm_eval_prune.publish.leaderboard import leaderboard

    plot: Path | None = out / "leaderboard.png" if _has_matplotlib() else None
    table = leaderboard([out / "runs"], "markdown", "exact_match", plot, on_skip=lambda line: None)
    write_atomically(out / "leaderboard.md", table + "\n")
    echo(table)


def _reports(out: Path, echo: Any, plots: bool | None) -> None:
    """The paired comparison with dense (``comparison.md``/``.json``) and the accuracy plots."""
    from lm_eval_prune.study.compare import markdown, write_comparison

    rows = write_comparison(out)
    echo(markdown(rows))
    if plots is False or (plots is None and not _has_matplotlib()):
        return
    from lm_eval_prune.study.plots import write_plots

    for path in write_plots(out):
        echo(f"plot {path}")


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@click.command()
@click.argument("study_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name", help="a named study instead of a file: tts-pruning")
@click.option("--models", help="comma-separated models replacing the study's (narrowing a preset)")
@click.option("--limit", type=float, help="problems per task (a fraction below 1)")
@click.option("--dry-run", is_flag=True, help="print the plan and what is done; run nothing")
@click.option("--shard", "shard_text", help="K/N: run the K-th of N disjoint parts, split by (model, variant)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--output", "output", type=click.Path(file_okay=False), help="results folder (default: the study's)")
@click.option("--ladder/--no-ladder", default=None, help="derive smaller budgets from the largest (default: study's)")
@click.option("--plots/--no-plots", default=None, help="accuracy plots at the end (default: when matplotlib is there)")
def study(
    study_file: str | None,
    preset_name: str | None,
    models: str | None,
    limit: float | None,
    dry_run: bool,
    shard_text: str | None,
    executor: str,
    output: str | None,
    ladder: bool | None,
    plots: bool | None,
) -> None:
    """Run a pruning x thinking-budget grid (STUDY.yaml or --preset): resumable, shardable, one engine per variant."""
    try:
        spec = build_spec(study_file, preset_name, models, limit)
        if ladder is not None:
            spec.ladder = ladder
        out = output or spec.output
        if out is None:
            raise PruneConfigError("give --output DIR (or output: in the study file)")
        run_study(spec, Path(out), dry_run=dry_run, shard_text=shard_text, executor=executor, plots=plots)
    except PruneConfigError as exc:
        raise click.UsageError(str(exc)) from None
