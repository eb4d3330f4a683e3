"""The ``lm-eval-prune`` command line (click)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import click

from .config import PruneConfig
from .errors import PruneConfigError

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
    """The engine's settings as click options (defaults from PruneConfig)."""
    defaults = PruneConfig.__dataclass_fields__
    options = [
        click.option("--method", default=defaults["method"].default, show_default=True, help="magnitude, wanda or none"),
        click.option("--alloc", default=defaults["alloc"].default, show_default=True, help="uniform or owl"),
        click.option("--sparsity", default=defaults["sparsity"].default, type=float, show_default=True),
        click.option("--pattern", default=defaults["pattern"].default, show_default=True, help="unstructured, 2:4, 4:8"),
        click.option("--calibration", default=defaults["calibration"].default, show_default=True, help="c4, wikitext2 or a path"),
        click.option("--nsamples", default=defaults["nsamples"].default, type=int, show_default=True),
        click.option("--seqlen", default=defaults["seqlen"].default, type=int, show_default=True),
        click.option("--seed", default=defaults["seed"].default, type=int, show_default=True),
        click.option("--owl-m", "owl_m", default=defaults["owl_m"].default, type=float, show_default=True),
        click.option("--owl-lambda", "owl_lambda", default=defaults["owl_lambda"].default, type=float, show_default=True),
        click.option("--calib-batch-size", "calib_batch_size", default=defaults["calib_batch_size"].default, type=int, show_default=True),
        click.option("--device", default=defaults["device"].default, show_default=True, help="auto, cpu, cuda, cuda:N"),
        click.option("--offload", is_flag=True, help="Keep only the block in work (and activations) on the device."),
    ]
    for option in reversed(options):
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
    from .calibration import load_calibration
    from .checkpoint import check_output_dir, load_config_and_tokenizer, load_model, save_pruned, torch_dtype
    from .pruner import check_seqlen, prune_, resolve_device

    config = config_from_options(options)
    torch_dtype(dtype)
    check_output_dir(output, overwrite)
    model_config, tokenizer = load_config_and_tokenizer(model, revision)
    check_seqlen(config, model_config)
    calibration = load_calibration(config, tokenizer) if config.needs_calibration else None
    device = resolve_device(config.device)
    weights = load_model(model, dtype, None if config.offload or device.type == "cpu" else str(device), revision)
    report = prune_(weights, config, tokenizer, calibration=calibration)
    report.extra["base_model"] = model
    report.extra["revision"] = revision
    save_pruned(weights, tokenizer, report, output)
    click.echo(json.dumps({"output": output, "overall_sparsity": round(report.overall_sparsity, 6), "seconds": round(report.seconds, 3), "fingerprint": report.fingerprint}))


@main.command(name="eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(lm_eval_args: tuple[str, ...]) -> None:
    """Run lm-eval (every lm_eval argument passes on) with pruned-hf/pruned-vllm and this package's tasks available."""
    from .lm_eval_cli import run_lm_eval

    run_lm_eval(list(lm_eval_args))


@main.command(name="tasks-path")
def tasks_path() -> None:
    """Print the folder of this package's task YAMLs (for plain lm_eval --include_path)."""
    from .lm_eval_cli import tasks_dir

    click.echo(str(tasks_dir()))


if __name__ == "__main__":
    main()
