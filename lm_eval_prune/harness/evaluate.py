"""lm-eval's evaluator for callers outside the harness (the study): one run into a folder, task lookups.

Only ``harness/`` imports lm-eval; the study asks here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm_eval_prune.harness.lm_eval_cli import include_our_tasks
from lm_eval_prune.harness.plugin import register


def task_manager(include_defaults: bool, data_dir: str | None) -> Any:
    """lm-eval's TaskManager with our models registered and our tasks indexed (``data_dir`` as task metadata)."""
    from lm_eval.tasks import TaskManager

    register()
    include_our_tasks()
    metadata = {"data_dir": data_dir} if data_dir else None
    return TaskManager(include_defaults=include_defaults, metadata=metadata)


def known_tasks() -> set[str]:
    """Every task name lm-eval knows here, ours included (building the index takes seconds)."""
    from lm_eval.tasks import TaskManager

    include_our_tasks()
    return set(TaskManager().all_tasks)


def evaluate_into(
    lm: Any,
    task: str,
    gen_kwargs: dict[str, Any],
    limit: float | None,
    manager: Any,
    seed: int,
    folder: Path,
    model: str,
    model_slug: str,
    model_name: str,
    model_args: str,
) -> dict[str, Any]:
    """One ``simple_evaluate`` of ``task`` on ``lm``; results and samples saved in lm-eval's layout under ``folder``,
    recorded as ``--model model --model_args model_args`` would record them (so lm-eval's tools read them)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(folder))
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        gen_kwargs=gen_kwargs,
        limit=limit,
        task_manager=manager,
        evaluation_tracker=tracker,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:
        raise RuntimeError(f"lm-eval returned no results for {task}")
    samples = results.pop("samples")
    results["config"]["model"] = model
    results["config"]["model_args"] = model_args
    tracker.general_config_tracker.model_name = model_name
    tracker.general_config_tracker.model_name_sanitized = model_slug
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return dict(results)
