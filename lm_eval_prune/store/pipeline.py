"""The one prune pipeline: settings -> sources checked -> identity -> cache -> prune -> write -> reload.

Every door calls it: ``lm-eval-prune prune`` and ``layer-scores``, ``pruned-hf`` (prunes the model lm-eval loaded, or
loads its pruned weights from the cache) and ``pruned-vllm`` (needs a checkpoint directory). Failures the user can
cause are raised as one-line :class:`PruneConfigError` before weights load wherever the cause is known by then.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.store.cache import PruneCache, builder_rank
from lm_eval_prune.store.identity import (
    BaseModel,
    digest,
    file_sha256,
    layerif_identity,
    model_identity,
    prune_identity,
)

log = logging.getLogger("lm_eval_prune")

Status = Literal["built", "hit", "disabled", "dense", "written"]
ScoreKind = Literal["layerif", "block-influence", "alphapruning"]
SCORE_KINDS: tuple[ScoreKind, ...] = ("layerif", "block-influence", "alphapruning")


@dataclass
class PruneRequest:
    """The prune part of one ``--model_args`` (or of a CLI call): settings and where pruned weights are cached."""

    config: PruneConfig
    cache: PruneCache | None

    @property
    def dense(self) -> bool:
        return self.config.is_dense


@dataclass
class PipelineResult:
    """What the pipeline did: the report, how the weights were had, their identity and where they are on disk."""

    report: PruneReport
    status: Status
    identity: str | None
    directory: Path | None = None


# ----------------------------------------------------------------------------------------------- settings and sources
def split_model_args(
    kwargs: dict[str, Any], passthrough: frozenset[str] = frozenset()
) -> tuple[PruneRequest, dict[str, Any]]:
    """(our request, the rest for lm-eval's class); one-line error for a bad or near-miss key, before any load.

    Keys in ``passthrough`` that are also ours (``device``) stay lm-eval's.
    """
    kwargs = dict(kwargs)
    cache_given = "prune_cache" in kwargs
    cache_setting = kwargs.pop("prune_cache", None)
    config, rest = PruneConfig.from_model_args(kwargs, passthrough=frozenset(k for k in kwargs if k in passthrough))
    return PruneRequest(config, PruneCache.from_setting(cache_setting, cache_given)), rest


def check_cache(request: PruneRequest) -> None:
    """The prune cache a non-dense request will write to is a writable folder (checked before anything loads)."""
    if request.cache is not None and not request.dense:
        request.cache.check_usable()


def check_cli_cache(config: PruneConfig, cache: PruneCache | None) -> None:
    """The CLI doors keep only LayerIF scores and self: traces in the cache: it is checked when it will be written,
    so a damaged ``$LM_EVAL_PRUNE_CACHE`` fails in one line before the work, and never stops a run that skips it."""
    sources = (config.calibration, config.layerif_train, config.layerif_val)
    if (
        cache is not None
        and not config.is_dense
        and (config.computes_layer_scores or any(s.startswith("self:") for s in sources))
    ):
        cache.check_usable()


def check_sources(config: PruneConfig) -> None:
    """Every file the settings name exists, is of its kind and is readable: checked before anything loads."""
    from lm_eval_prune.engine.calibration import check_source

    uses_calibration = config.reads_calibration_source
    for name in ("calibration", "layerif_train", "layerif_val"):
        value = getattr(config, name)
        if value and (name != "calibration" or uses_calibration):
            check_source(name, value, config.trace_field)
    if config.layerif_scores:
        path = Path(config.layerif_scores)
        if not path.is_file():
            raise PruneConfigError(f"layerif_scores file {config.layerif_scores!r} does not exist")


def check_before_load(config: PruneConfig, model_config: Any) -> None:
    """Everything that can be known from the settings, the sources and the model's config, before weights load."""
    from lm_eval_prune.engine.pruner import check_against_model_config, resolve_device

    check_sources(config)
    check_against_model_config(config, model_config)
    resolve_device(config.device)
    if config.layerif_scores:
        from lm_eval_prune.engine.layer_scores import read_score_file

        read_score_file(config.layerif_scores, int(model_config.num_hidden_layers))


def summary(result: PipelineResult) -> dict[str, Any]:
    """What lm-eval's results JSON carries about the prune (``config.prune``)."""
    report = result.report
    return {
        "prune": {
            "config": report.config,
            "fingerprint": report.fingerprint,
            "cache_key": result.identity,
            "cache": result.status,
            "base_model": report.base_model,
            "revision": report.revision,
            "overall_sparsity": report.overall_sparsity,
            "block_sparsity": report.block_sparsity,
            "block_achieved_sparsity": report.block_achieved_sparsity,
            "removed_blocks": [block.index for block in report.removed_blocks],
            "layer_scores": report.layer_scores,
            "seconds": report.seconds,
            "calibration": report.calibration,
        }
    }


# ----------------------------------------------------------------------------------------------- the steps
def _device_type(config: PruneConfig) -> str:
    from lm_eval_prune.engine.pruner import resolve_device

    return resolve_device(config.device).type


def _stamp(report: PruneReport, config: PruneConfig, base: BaseModel, identity: str) -> None:
    """Identity, base model and source hashes onto a fresh report."""
    report.fingerprint = identity
    report.base_model, report.revision = base.pretrained, base.revision
    source = report.calibration.get("source")
    if source and Path(source).is_file():
        report.calibration["source_sha256"] = file_sha256(Path(source))


def layer_scores_for(
    model: Any,
    tokenizer: Any,
    config: PruneConfig,
    cache_root: Path | None,
    model_id: dict[str, Any],
    positives: list[int] | None = None,
) -> list[float] | None:
    """LayerIF scores (a file, the cache, or computed and cached); None for other allocations."""
    if not config.alloc_spec.layer_scores:
        return None
    from lm_eval_prune.engine.layer_scores import cached_layerif_scores

    path = None
    if cache_root is not None and not config.layerif_scores:
        path = cache_root / "layerif" / f"{layerif_identity(config, model_id, _device_type(config))}.json"
    traces = cache_root / "self-traces" if cache_root is not None else None
    return cached_layerif_scores(model, tokenizer, config, path, positives, traces, digest(model_id))


def calibration_for(
    config: PruneConfig, tokenizer: Any, model: Any, cache_root: Path | None, model_id: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Calibration ids and their provenance; ``self:`` sources need the loaded dense model (its traces are cached)."""
    from lm_eval_prune.engine.calibration import calibration_tokens

    if not config.needs_calibration:
        return None, {}
    traces = cache_root / "self-traces" if cache_root is not None else None
    tokens = calibration_tokens(config, tokenizer, model=model, cache_dir=traces, model_key=digest(model_id))
    return tokens.ids, tokens.info


def _prune(
    model: Any,
    tokenizer: Any,
    config: PruneConfig,
    base: BaseModel,
    identity: str,
    cache_root: Path | None,
    model_id: dict[str, Any],
    calibration: Any = None,
) -> PruneReport:
    from lm_eval_prune.engine.pruner import prune_

    info: dict[str, Any] = {}
    if calibration is None:
        calibration, info = calibration_for(config, tokenizer, model, cache_root, model_id)
    elif isinstance(calibration, tuple):
        calibration, info = calibration
    scores = layer_scores_for(model, tokenizer, config, cache_root, model_id)
    report = prune_(model, config, tokenizer, calibration=calibration, layer_scores=scores)
    report.calibration.update({k: v for k, v in info.items() if k != "source"})
    _stamp(report, config, base, identity)
    return report


def release_accelerator_memory() -> int | None:
    """Return freed GPU memory to the driver (vLLM checks free memory at start-up); the free bytes it now sees."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    return int(free)


# ----------------------------------------------------------------------------------------------- the doors
def prune_in_place(model: Any, tokenizer: Any, base: BaseModel, request: PruneRequest) -> PipelineResult:
    """``pruned-hf``: prune the model lm-eval loaded, in place, or load its pruned weights from the cache."""
    from lm_eval_prune.engine.pruner import check_model_fits, prune_
    from lm_eval_prune.store.checkpoint import load_linear_weights_, write_checkpoint

    check_cache(request)
    device = next(model.parameters()).device
    config = request.config.replace(device=str(device)) if request.config.device == "auto" else request.config
    check_model_fits(model, config)
    model_id = model_identity(base, model.config)
    identity = prune_identity(config, model_id, device.type)
    if request.dense:
        report = prune_(model, config)
        _stamp(report, config, base, identity)
        return PipelineResult(report, "dense", identity)
    if request.cache is None:
        return PipelineResult(_prune(model, tokenizer, config, base, identity, None, model_id), "disabled", identity)
    built: dict[str, PruneReport] = {}
    cache_root = request.cache.root

    def build(directory: Path) -> None:
        report = _prune(model, tokenizer, config, base, identity, cache_root, model_id)
        write_checkpoint(model, tokenizer, report, directory)
        built["report"] = report

    may_build, wait = builder_rank()
    entry, built_here = request.cache.get_or_build(identity, build, may_build, wait)
    if built_here:
        log.info("pruned %s and stored it in the prune cache at %s", base.pretrained, entry)
        return PipelineResult(built["report"], "built", identity, entry)
    report = PruneReport.load(entry)
    if report.removed_blocks:  # ShortGPT: take the same blocks out before loading the rest
        from lm_eval_prune.engine.layer_scores import remove_blocks_

        remove_blocks_(model, report.removed_indices)
    load_linear_weights_(model, entry, [layer.name for layer in report.layers])
    log.warning("prune cache hit: loaded the pruned weights from %s, skipping pruning", entry)
    return PipelineResult(report, "hit", identity, entry)


def dense_result(base: BaseModel, request: PruneRequest) -> PipelineResult:
    """The dense baseline served as is (``pruned-vllm method=none``): a report of the settings, nothing loaded."""
    from transformers import AutoConfig

    from lm_eval_prune.engine.report import library_versions

    try:
        model_config = AutoConfig.from_pretrained(base.pretrained, revision=base.revision)
    except (OSError, ValueError) as exc:
        raise PruneConfigError(f"model {base.pretrained!r} cannot be read: {str(exc).splitlines()[0]}") from None
    identity = prune_identity(request.config, model_identity(base, model_config), "cpu")
    report = PruneReport(config=request.config.to_dict(), fingerprint=identity, versions=library_versions())
    report.base_model, report.revision = base.pretrained, base.revision
    return PipelineResult(report, "dense", identity)


def _scratch_root() -> Path:
    """Where ``prune_cache=none`` keeps the one checkpoint vLLM must load from disk: a folder of this process that is
    removed at exit, and by the next run if this process is killed (its name carries the owner, as every temporary)."""
    import atexit
    import secrets
    import shutil
    import tempfile

    from lm_eval_prune.store.checkpoint import clean_stale, owner_tag, temp_path

    parent = Path(tempfile.gettempdir()) / "lm_eval_prune"
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent)
    root = temp_path(parent / "uncached", "tmp", f"{owner_tag()}-{secrets.token_hex(4)}")
    root.mkdir(exist_ok=True)
    atexit.register(shutil.rmtree, root, True)
    return root


def pruned_checkpoint(base: BaseModel, request: PruneRequest) -> PipelineResult:
    """``pruned-vllm``: a directory holding the pruned checkpoint (a cache entry; a temporary one without the cache).

    The prune's model is deleted and its GPU memory returned before this returns, so an engine started next sees it.
    """
    from lm_eval_prune.store.checkpoint import load_config_and_tokenizer, load_model, write_checkpoint

    check_cache(request)
    model_config, tokenizer = load_config_and_tokenizer(base.pretrained, base.revision)
    check_before_load(request.config, model_config)
    device_type = _device_type(request.config)
    model_id = model_identity(base, model_config)
    identity = prune_identity(request.config, model_id, device_type)
    cache = request.cache or PruneCache(_scratch_root())

    def build(directory: Path) -> None:
        from lm_eval_prune.engine.pruner import resolve_device

        device = resolve_device(request.config.device)
        placement = None if request.config.offload or device.type == "cpu" else str(device)
        model = load_model(base.pretrained, base.dtype, placement, base.revision)
        try:
            cache_root = request.cache.root if request.cache else None
            report = _prune(model, tokenizer, request.config, base, identity, cache_root, model_id)
            write_checkpoint(model, tokenizer, report, directory)
        finally:
            del model
            free = release_accelerator_memory()
            if free is not None:
                log.warning("prune done; the GPU now has %.1f GiB free for the inference engine", free / 2**30)

    may_build, wait = builder_rank()
    entry, built_here = cache.get_or_build(identity, build, may_build or request.cache is None, wait)
    if not built_here:
        log.warning("prune cache hit: using the pruned checkpoint at %s, skipping pruning", entry)
    status: Status = ("built" if built_here else "hit") if request.cache is not None else "disabled"
    return PipelineResult(PruneReport.load(entry), status, identity, entry)


def prune_to_directory(
    base: BaseModel, config: PruneConfig, out: str | Path, overwrite: bool, cache: PruneCache | None = None
) -> PipelineResult:
    """``lm-eval-prune prune``: write the pruned checkpoint and its report to ``out`` (atomically).

    ``cache`` is used for LayerIF scores only (the checkpoint goes to ``out``).
    """
    from lm_eval_prune.engine.pruner import resolve_device
    from lm_eval_prune.store.checkpoint import (
        check_not_source,
        check_output_dir,
        load_config_and_tokenizer,
        load_model,
        save_pruned,
    )

    check_not_source(out, base.pretrained)
    out = check_output_dir(out, overwrite)
    check_cli_cache(config, cache)
    model_config, tokenizer = load_config_and_tokenizer(base.pretrained, base.revision)
    check_before_load(config, model_config)
    device = resolve_device(config.device)
    model_id = model_identity(base, model_config)
    identity = prune_identity(config, model_id, device.type)
    early = config.needs_calibration and not config.calibration.startswith("self:")  # data errors before weights
    calibration = calibration_for(config, tokenizer, None, cache.root if cache else None, model_id) if early else None
    log.info("loading %s", base.pretrained)
    model = load_model(
        base.pretrained, base.dtype, None if config.offload or device.type == "cpu" else str(device), base.revision
    )
    report = _prune(model, tokenizer, config, base, identity, cache.root if cache else None, model_id, calibration)
    log.info("writing %s", out)
    save_pruned(model, tokenizer, report, out)
    return PipelineResult(report, "written", identity, Path(out))


@dataclass
class LayerScores:
    """One quality score per decoder block, and the sparsity each block would get (LayerIF only)."""

    kind: ScoreKind
    scores: list[float]
    sparsities: list[float]
    positives: list[int] = field(default_factory=list)  # LayerIF: training samples with positive influence


def compute_layer_scores(
    base: BaseModel, config: PruneConfig, kind: ScoreKind, cache: PruneCache | None = None
) -> LayerScores:
    """``lm-eval-prune layer-scores``: LayerIF influence (cached), ShortGPT's Block Influence or AlphaPruning alpha."""
    from lm_eval_prune.engine import allocation
    from lm_eval_prune.engine.pruner import resolve_device
    from lm_eval_prune.store.checkpoint import load_config_and_tokenizer, load_model

    check_cli_cache(config, cache)
    model_config, tokenizer = load_config_and_tokenizer(base.pretrained, base.revision)
    check_before_load(config, model_config)
    device = resolve_device(config.device)
    model_id = model_identity(base, model_config)
    cache_root = cache.root if cache else None
    early = kind == "block-influence" and not config.calibration.startswith("self:")
    ids, _ = calibration_for(config, tokenizer, None, cache_root, model_id) if early else (None, {})
    model = load_model(base.pretrained, base.dtype, None if device.type == "cpu" else str(device), base.revision)
    from lm_eval_prune.engine.model_utils import block_linear_params, decoder_blocks

    params = [block_linear_params(block) for block in decoder_blocks(model)]
    if kind == "alphapruning":
        from lm_eval_prune.engine.alphapruning import (
            alpha_per_linear,
            alphapruning_block_sparsities,
            block_mean_metrics,
        )

        metrics = block_mean_metrics(alpha_per_linear(model), len(params))
        return LayerScores(
            kind, metrics, alphapruning_block_sparsities(metrics, config.sparsity, config.alpha_eps, params)
        )
    if kind == "layerif":
        positives: list[int] = []
        cache_root = cache.root if cache else None
        scores = layer_scores_for(model, tokenizer, config, cache_root, model_id, positives)
        sparsities = allocation.layerif(scores or [], config.sparsity, config.layerif_eps, params)
        return LayerScores(kind, scores or [], sparsities, positives)
    import torch

    from lm_eval_prune.engine.layer_scores import block_influence
    from lm_eval_prune.engine.sequential import capture_block_inputs

    if ids is None:  # self: traces need the loaded model
        ids, _ = calibration_for(config, tokenizer, model, cache_root, model_id)
    model.eval()
    with torch.no_grad():
        inputs = capture_block_inputs(model, ids, config.calib_batch_size, device)
        scores = block_influence(model, inputs, device, False)
    return LayerScores(kind, scores, [])
