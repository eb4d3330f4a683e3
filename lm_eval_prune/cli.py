"""The ``lm-eval-prune`` command line (click)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import check_writable_file, write_atomically

log = logging.getLogger("lm_eval_prune")


def _fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a PruneConfigError into click's one-line ``Error: ...`` and exit code 2."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PruneConfigError as exc:
            raise click.UsageError(str(exc)) from None

    return wrapper


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Prune reasoning LLMs, evaluate them with lm-eval, publish and compare them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=min(level, logging.INFO), format="%(levelname)s %(name)s: %(message)s")


def prune_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every PruneConfig field as a click option (``owl_lambda`` -> ``--owl-lambda``), defaults and help from it."""
    kinds = {"int": int, "float": float, "str": str}
    for field in reversed(fields(PruneConfig)):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            option = click.option(flag, field.name, is_flag=True, help=field.metadata.get("help"))
        else:
            option = click.option(
                flag,
                field.name,
                default=field.default,
                type=kinds[str(field.type)],
                show_default=True,
                help=field.metadata.get("help"),
            )
        func = option(func)
    return func


def config_from_options(options: dict[str, Any]) -> PruneConfig:
    return PruneConfig.from_mapping({key: options.pop(key) for key in PruneConfig.keys() if key in options})


@main.command()
@click.argument("model")
@click.option("--output", "-o", required=True, help="Directory for the pruned checkpoint.")
@prune_options
@click.option("--dtype", default="auto", show_default=True, help="auto, bfloat16, float16, float32")
@click.option("--revision", default=None, help="Hub revision of MODEL.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUTPUT (only once the new one is complete).")
@_fail_cleanly
def prune(model: str, output: str, dtype: str, revision: str | None, overwrite: bool, **options: Any) -> None:
    """Prune MODEL (Hub id or local directory) and write a checkpoint with prune_report.json to OUTPUT."""
    from lm_eval_prune.store.cache import PruneCache
    from lm_eval_prune.store.identity import BaseModel, check_dtype
    from lm_eval_prune.store.pipeline import prune_to_directory

    config = config_from_options(options)
    check_dtype(dtype)
    result = prune_to_directory(
        BaseModel(model, revision, dtype), config, output, overwrite, PruneCache.from_setting(None, given=False)
    )
    report = result.report
    summary = {
        "output": output,
        "overall_sparsity": round(report.overall_sparsity, 6),
        "seconds": round(report.seconds, 3),
        "fingerprint": report.fingerprint,
    }
    click.echo(json.dumps(summary))


@main.command(name="layer-scores")
@click.argument("model")
@prune_options
@click.option("--dtype", default="auto", show_default=True)
@click.option("--revision", default=None)
@click.option(
    "--kind",
    type=click.Choice(["layerif", "block-influence", "alphapruning"]),
    default="layerif",
    show_default=True,
    help="LayerIF influence, ShortGPT's Block Influence, or AlphaPruning's alpha (data-free).",
)
@click.option(
    "--save", "save_path", default=None, help="Write the scores as JSON here (usable as layerif_scores=PATH)."
)
@click.option("--plot", "plot_path", default=None, help="Save a PNG of score and resulting sparsity per block.")
@_fail_cleanly
def layer_scores(
    model: str,
    dtype: str,
    revision: str | None,
    kind: str,
    save_path: str | None,
    plot_path: str | None,
    **options: Any,
) -> None:
    """Compute and print one quality score per decoder block of MODEL (cached), with the sparsity LayerIF would give."""
    from lm_eval_prune.store.cache import PruneCache
    from lm_eval_prune.store.identity import BaseModel, check_dtype
    from lm_eval_prune.store.pipeline import SCORE_KINDS, compute_layer_scores

    if kind in ("layerif", "alphapruning"):
        if options.get("alloc", "uniform") not in ("uniform", kind):
            raise PruneConfigError(
                f"--alloc {options['alloc']!r} does not apply to --kind {kind} (it sets alloc={kind})"
            )
        options["alloc"] = kind
    config = config_from_options(options)
    check_dtype(dtype)
    if plot_path is not None:
        from lm_eval_prune.publish.plots import check_plot_path, require_matplotlib

        require_matplotlib()  # before the expensive work, not after
        check_plot_path(plot_path)
    if save_path is not None:
        check_writable_file(save_path, "--save")
    kind_value = next(k for k in SCORE_KINDS if k == kind)
    result = compute_layer_scores(
        BaseModel(model, revision, dtype), config, kind_value, PruneCache.from_setting(None, given=False)
    )
    scores, sparsities = result.scores, result.sparsities
    rows = [
        {"block": i, "score": s, **({"sparsity": sparsities[i]} if sparsities else {})} for i, s in enumerate(scores)
    ]
    click.echo(json.dumps({"kind": kind, "model": model, "blocks": rows}, indent=1))
    if save_path is not None:
        write_atomically(
            Path(save_path).expanduser(), json.dumps({"scores": scores, "kind": kind, "model": model}) + "\n"
        )
    if plot_path is not None:
        from lm_eval_prune.publish.plots import plot_layer_scores

        plot_layer_scores(scores, sparsities, kind, model, plot_path, config.sparsity if sparsities else None)


@main.command()
@click.argument("checkpoint", type=click.Path(file_okay=False))
@click.option("--repo-id", required=True, help="USER/NAME on the Hub.")
@click.option(
    "--results",
    "results",
    multiple=True,
    type=click.Path(),
    help="lm-eval results JSON of this model (or its dense base); repeatable.",
)
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--dry-run", is_flag=True, help="Render the card, list files, check repo id and token; write nothing.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--revision", default=None, help="Branch to commit to (created if missing).")
@click.option(
    "--base-model", default=None, help="Hub id of the base model, when the checkpoint was pruned from a local copy."
)
@click.option(
    "--license", "license_id", default=None, help="License id for the card (default: the base model's, when known)."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (never asked without a terminal).")
@click.option("--show-card", is_flag=True, help="Print the rendered model card.")
def publish(
    checkpoint: str,
    repo_id: str,
    results: tuple[str, ...],
    private: bool,
    dry_run: bool,
    create_pr: bool,
    revision: str | None,
    base_model: str | None,
    license_id: str | None,
    yes: bool,
    show_card: bool,
) -> None:
    """Upload a pruned CHECKPOINT directory with a generated model card to the Hugging Face Hub."""
    import sys

    from lm_eval_prune.publish.hub import PublishError, check_publish_options, check_repo_id, load_checkpoint_report
    from lm_eval_prune.publish.hub import publish as run_publish

    try:
        check_repo_id(repo_id)
        check_publish_options(revision, license_id, base_model)
        load_checkpoint_report(checkpoint)
        if not dry_run and not yes and sys.stdin.isatty():
            click.confirm(f"Upload {checkpoint} to {repo_id}{' (private)' if private else ''}?", abort=True)
        plan = run_publish(
            checkpoint,
            repo_id,
            list(results),
            private=private,
            dry_run=dry_run,
            create_pr=create_pr,
            revision=revision,
            base_model=base_model,
            license_id=license_id,
        )
    except (PublishError, ValueError) as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from None
    if show_card or dry_run:
        click.echo(plan.card)
    summary = {
        "repo_id": plan.repo_id,
        "dry_run": dry_run,
        "files": [{"name": n, "bytes": b} for n, b in plan.files],
        "commits": plan.commits,
    }
    click.echo(json.dumps(summary, indent=1))


@main.command()
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "csv", "html", "json"]), default="markdown", show_default=True
)
@click.option("--metric", default="exact_match", show_default=True)
@click.option(
    "--plot", "plot_path", default=None, help="PNG of accuracy against thinking budget, one line per variant, per task."
)
def leaderboard(results_dirs: tuple[str, ...], fmt: str, metric: str, plot_path: str | None) -> None:
    """Compare pruned variants from lm-eval results files (mean ± std over seeds, best per column, change vs dense)."""
    from lm_eval_prune.publish.leaderboard import leaderboard as build

    try:
        click.echo(build(list(results_dirs), fmt, metric, plot_path), nl=False)
    except ValueError as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from None


@main.command(
    name="eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(lm_eval_args: tuple[str, ...]) -> None:
    """Run lm-eval (every lm_eval argument passes on) with pruned-hf/pruned-vllm and this package's tasks available."""
    from lm_eval_prune.harness.lm_eval_cli import run_lm_eval

    run_lm_eval(list(lm_eval_args))


@main.command(name="tasks-path")
def tasks_path() -> None:
    """Print the folder of this package's task YAMLs (for plain lm_eval --include_path)."""
    from lm_eval_prune.harness.lm_eval_cli import tasks_dir

    click.echo(str(tasks_dir()))


def _add_study() -> None:
    """``lm-eval-prune study``: its module imports click and the torch-free spec only."""
    from lm_eval_prune.study.cli import study

    main.add_command(study)


_add_study()

if __name__ == "__main__":
    main()
