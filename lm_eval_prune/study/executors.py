"""Where units run: in this process one after another (``local``), or each as a Ray task (``ray``).

Both report per-run records to the driver, which keeps the progress bar and the manifest. Ray is optional: it is
imported only for ``--executor ray``; tasks ask for ``num_gpus`` = the tensor-parallel size when the cluster has GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.study.plan import Unit
from lm_eval_prune.study.runner import RunRecord, run_unit
from lm_eval_prune.study.spec import StudySpec

EXECUTORS = ("local", "ray")
OnRun = Callable[[RunRecord], None]


def run_local(spec: StudySpec, units: list[Unit], out: Path, on_run: OnRun) -> list[RunRecord]:
    records: list[RunRecord] = []
    for unit in units:
        records.extend(run_unit(spec, unit, out, on_run))
    return records


def _ray_unit(spec: StudySpec, unit: Unit, out: str) -> list[dict[str, Any]]:
    """Body of one Ray task (a fresh worker process: lm-eval's registrations happen there)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    return [vars(r) for r in run_unit(spec, unit, Path(out))]


def ray_gpus(spec: StudySpec, cluster_gpus: float) -> float:
    if cluster_gpus <= 0:
        return 0
    return float(spec.model_args.get("tensor_parallel_size", 1)) if spec.backend == "vllm" else 1.0


def connect_ray(address: str | None = None) -> Any:
    """The existing cluster (``address="auto"``), else a local one."""
    try:
        import ray
    except ImportError:
        raise PruneConfigError(
            "--executor ray needs Ray: pip install 'lm-eval-prune[ray]' (or pip install ray)"
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address or "auto", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError):
            ray.init(log_to_driver=False)
    return ray


def run_ray(spec: StudySpec, units: list[Unit], out: Path, on_run: OnRun) -> list[RunRecord]:
    """Each unit as one Ray task; records arrive per unit, as tasks finish."""
    ray = connect_ray()
    gpus = ray_gpus(spec, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(_ray_unit)
    pending = {task.remote(spec, unit, str(out)): unit for unit in units}
    records: list[RunRecord] = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            pending.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, PruneConfigError):
                    raise PruneConfigError(str(cause)) from None
                raise
            for row in rows:
                record = RunRecord(**row)
                records.append(record)
                on_run(record)
    return records


def execute(executor: str, spec: StudySpec, units: list[Unit], out: Path, on_run: OnRun) -> list[RunRecord]:
    if executor not in EXECUTORS:
        raise PruneConfigError(f"--executor {executor!r} is not allowed; use {' or '.join(EXECUTORS)}")
    return (run_local if executor == "local" else run_ray)(spec, units, out, on_run)
