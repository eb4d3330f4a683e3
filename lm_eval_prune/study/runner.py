"""Running a study: each unit (model, variant) pruned once and served by one lm-eval model for all its runs.

Each run is one ``simple_evaluate`` call on that model; its results and samples are written by lm-eval's own
``EvaluationTracker`` into a private folder that is renamed into place when complete, so a SIGKILL loses at most the
run in flight, and a re-run skips every run whose folder exists. A manifest (JSON lines, rewritten atomically) lists
each run's state; each run has a log file under ``DIR/logs``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import write_atomically
from lm_eval_prune.study.plan import Run, Unit, slug
from lm_eval_prune.study.spec import StudySpec, our_tasks

log = logging.getLogger("lm_eval_prune")
PARTIAL = ".partial"
LOGS = "logs"


@dataclass
class RunRecord:
    """One run's line in the manifest."""

    run_id: str
    unit: str
    state: str  # pending, done, failed
    seconds: float | None = None
    results: str | None = None
    log: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------------------------- files
def manifest_path(out: Path, shard_spec: tuple[int, int] | None) -> Path:
    tag = f".shard-{shard_spec[0]}-of-{shard_spec[1]}" if shard_spec else ""
    return out / f"study-manifest{tag}.jsonl"


def write_manifest(path: Path, header: dict[str, Any], records: dict[str, RunRecord]) -> None:
    lines = [json.dumps(header, sort_keys=True)] + [json.dumps(vars(r), sort_keys=True) for r in records.values()]
    write_atomically(path, "\n".join(lines) + "\n")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The run lines of a manifest (the header left out)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[1:]


def results_file(folder: Path) -> Path | None:
    found = sorted(folder.rglob("results_*.json")) if folder.is_dir() else []
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------- one unit
def model_args_for(spec: StudySpec, unit: Unit) -> dict[str, Any]:
    """The lm-eval model args of a unit: the study's engine args, the variant's prune settings, the prune cache."""
    args: dict[str, Any] = dict(spec.model_args)
    args.update(_prune_args(unit))
    if spec.prune_cache is not None:
        args["prune_cache"] = spec.prune_cache
    if spec.backend == "hf":
        args.setdefault("device", "cpu")
    return args


def _prune_args(unit: Unit) -> dict[str, Any]:
    """The variant's settings that differ from the defaults (what ``--model_args`` would have to say)."""
    from dataclasses import fields

    from lm_eval_prune.engine.config import PruneConfig

    config = unit.variant.config
    return {
        f.name: getattr(config, f.name)
        for f in fields(PruneConfig)
        if getattr(config, f.name) != f.default and f.name not in ("device", "offload")
    } | {"method": config.method}


def _args_string(pretrained: str, args: dict[str, Any]) -> str:
    return ",".join([f"pretrained={pretrained}", *(f"{k}={v}" for k, v in args.items())])


def _task_manager(spec: StudySpec) -> Any:
    from lm_eval_prune.harness.evaluate import task_manager

    return task_manager(include_defaults=not set(spec.tasks) <= our_tasks(), data_dir=spec.data_dir)


def evaluate_run(spec: StudySpec, lm: Any, run: Run, task_manager: Any, out: Path, model_args: str) -> Path:
    """One ``simple_evaluate`` on the unit's model; its results and samples land in the run's folder, whole."""
    from lm_eval_prune.harness.evaluate import evaluate_into

    partial = out / PARTIAL / run.run_id.replace("/", "~")
    shutil.rmtree(partial, ignore_errors=True)
    gen_kwargs = {**spec.gen_kwargs, "max_tokens_thinking": run.budget, "seed": run.seed}
    # recorded as `lm_eval --model pruned-* --model_args ...` records it: lm-eval's tools and the leaderboard read it
    evaluate_into(
        lm, run.task, gen_kwargs, spec.limit, task_manager, run.seed, partial,
        f"pruned-{spec.backend}", slug(run.model), run.model, model_args,
    )  # fmt: skip
    if results_file(partial) is None:
        raise RuntimeError(f"lm-eval wrote no results file for {run.run_id} (see its log)")
    final = run.folder(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)  # the whole run appears at once
    found = results_file(final)
    assert found is not None
    return found


class RunLog:
    """A log file per run: our lines plus every log record while the run is in flight."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def __enter__(self) -> RunLog:
        logging.getLogger().addHandler(self.handler)
        return self

    def line(self, text: str) -> None:
        self.handler.handle(
            logging.makeLogRecord({"name": "study", "levelno": logging.INFO, "levelname": "INFO", "msg": text})
        )

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def run_unit(
    spec: StudySpec, unit: Unit, out: Path, on_run: Callable[[RunRecord], None] = lambda record: None
) -> list[RunRecord]:
    """Every unfinished run of ``unit`` on one lm-eval model (pruned once); a record per run, in order.

    User errors (:class:`PruneConfigError`) stop the study; any other failure of a run is recorded and the next
    run goes on.
    """
    from lm_eval_prune.study.engines import make_lm

    records: list[RunRecord] = []
    todo = [run for run in unit.runs if not run.done(out)]
    for run in unit.runs:
        if run not in todo:
            record = RunRecord(run.run_id, unit.key, "done", results=str(results_file(run.folder(out))))
            records.append(record)
    if not todo:
        return records
    for run in todo:
        shutil.rmtree(out / PARTIAL / run.run_id.replace("/", "~"), ignore_errors=True)
    args = model_args_for(spec, unit)
    started = time.perf_counter()
    lm = make_lm(spec.backend, unit.model, args, spec.ladder)
    log.info("%s: model ready in %.1fs", unit.key, time.perf_counter() - started)
    task_manager = _task_manager(spec)
    group: tuple[str, int] | None = None
    for run in todo:
        if (run.task, run.seed) != group:
            lm.step_cache.clear()  # nothing of another (task, seed) can match
            group = (run.task, run.seed)
        before = lm.step_cache.counts.as_dict()
        log_path = out / LOGS / f"{run.run_id}.log"
        record = RunRecord(run.run_id, unit.key, "failed", log=str(log_path))
        with RunLog(log_path) as run_log:
            run_log.line(f"run {run.run_id}: model_args {_args_string(unit.model, args)}; ladder {spec.ladder}")
            begin = time.perf_counter()
            try:
                path = evaluate_run(spec, lm, run, task_manager, out, _args_string(unit.model, args))
            except PruneConfigError:
                raise
            except Exception as exc:  # a failed run is recorded; the others go on
                run_log.line(traceback.format_exc())
                record.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                record.state, record.results = "done", str(path)
            record.seconds = round(time.perf_counter() - begin, 3)
            after = lm.step_cache.counts.as_dict()
            record.counts = {k: after[k] - before[k] for k in after}
            run_log.line(f"state {record.state} in {record.seconds}s; tokens {record.counts}")
        records.append(record)
        on_run(record)
    del lm
    return records
