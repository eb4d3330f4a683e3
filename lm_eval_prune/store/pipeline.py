"""What both lm-eval adapters share: splitting model args, pruning on load through the cache, the results summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.store.cache import PruneCache, builder_rank, cache_key, model_identity

log = logging.getLogger("lm_eval_prune")

# model args of ours that are not engine settings
ADAPTER_KEYS = ("prune_cache",)
# engine settings whose names lm-eval's own model classes use for something else: theirs win
FOREIGN_KEYS = frozenset({"device", "offload"})


@dataclass
class PruneRequest:
    """The prune part of one ``--model_args``."""

    config: PruneConfig
    cache: PruneCache | None

    @property
    def dense(self) -> bool:
        return self.config.is_dense


def split_model_args(
    kwargs: dict[str, Any], foreign: frozenset[str] = FOREIGN_KEYS
) -> tuple[PruneRequest, dict[str, Any]]:
    """(our request, the rest for lm-eval's class); one-line error for a bad or near-miss key, before any load."""
    kwargs = dict(kwargs)
    cache_given = "prune_cache" in kwargs
    cache_setting = kwargs.pop("prune_cache", None)
    passthrough = frozenset(k for k in kwargs if k in foreign)
    config, rest = PruneConfig.from_model_args(kwargs, passthrough=passthrough)
    return PruneRequest(config, PruneCache.from_setting(cache_setting, cache_given)), rest


def summary(report: PruneReport, status: str, key: str | None) -> dict[str, Any]:
    """What the results JSON carries about the prune (``config`` of lm-eval's results)."""
    return {
        "prune": {
            "config": report.config,
            "fingerprint": report.fingerprint,
            "cache_key": key,
            "cache": status,
            "overall_sparsity": report.overall_sparsity,
            "block_sparsity": report.block_sparsity,
            "block_achieved_sparsity": report.block_achieved_sparsity,
            "seconds": report.seconds,
            "calibration": report.calibration,
            "extra": report.extra,
        }
    }


def layer_scores_for(
    model: Any, tokenizer: Any, config: PruneConfig, cache: PruneCache | None, identity: dict[str, Any]
) -> list[float] | None:
    """LayerIF scores through the cache (they cost backward passes); None for other allocations."""
    if config.alloc != "layerif":
        return None
    from lm_eval_prune.engine.layer_scores import cached_layerif_scores
    from lm_eval_prune.store.cache import data_identity

    return cached_layerif_scores(
        model, tokenizer, config, cache.root if cache else None, {"model": identity, "data": data_identity(config)}
    )


def prune_and_write(
    model: Any,
    tokenizer: Any,
    config: PruneConfig,
    cache: PruneCache | None,
    identity: dict[str, Any],
    base: tuple[str, str | None],
    directory: Any,
) -> PruneReport:
    """Prune ``model`` (LayerIF scores through the cache) and write the checkpoint with its report into ``directory``."""
    from lm_eval_prune.engine.pruner import prune_
    from lm_eval_prune.store.checkpoint import write_checkpoint

    report = prune_(model, config, tokenizer, layer_scores=layer_scores_for(model, tokenizer, config, cache, identity))
    report.extra.update(base_model=base[0], revision=base[1])
    write_checkpoint(model, tokenizer, report, directory)
    return report


def prune_loaded_model_(
    model: Any, tokenizer: Any, pretrained: str, revision: str | None, request: PruneRequest
) -> tuple[PruneReport, str, str | None]:
    """Prune an already loaded model in place, or load its pruned weights from the cache. -> (report, status, key)."""
    from lm_eval_prune.engine.pruner import prune_
    from lm_eval_prune.store.checkpoint import load_linear_weights_

    device = next(model.parameters()).device
    config = request.config.replace(device=str(device)) if request.config.device == "auto" else request.config
    if request.dense:
        return prune_(model, config), "dense", None
    if request.cache is None:
        return prune_(model, config, tokenizer), "disabled", None  # LayerIF scores are computed, not cached
    identity = model_identity(pretrained, revision, model.config)
    key = cache_key(config, identity)
    built: dict[str, PruneReport] = {}

    def build(directory: Any) -> None:
        built["report"] = prune_and_write(
            model, tokenizer, config, request.cache, identity, (pretrained, revision), directory
        )

    may_build, wait = builder_rank()
    entry, built_here = request.cache.get_or_build(key, build, may_build, wait)
    if built_here:
        log.info("pruned %s and stored it in the prune cache at %s", pretrained, entry)
        return built["report"], "built", key
    report = PruneReport.load(entry)
    if report.extra.get("removed_blocks"):  # ShortGPT: take the same blocks out before loading the rest
        from lm_eval_prune.engine.layer_scores import remove_blocks_

        remove_blocks_(model, [block["index"] for block in report.extra["removed_blocks"]])
    load_linear_weights_(model, entry, [layer.name for layer in report.layers])
    log.warning("prune cache hit: loaded the pruned weights from %s, skipping pruning", entry)
    return report, "hit", key


def pruned_checkpoint(
    pretrained: str, revision: str | None, dtype: str, request: PruneRequest
) -> tuple[str, PruneReport, str, str]:
    """A directory holding the pruned checkpoint (for engines that load from disk, such as vLLM). -> (dir, report, status, key)."""
    import tempfile

    from lm_eval_prune.engine.pruner import resolve_device
    from lm_eval_prune.store.checkpoint import load_config_and_tokenizer, load_model

    model_config, tokenizer = load_config_and_tokenizer(pretrained, revision)
    cache = request.cache or PruneCache(tempfile.mkdtemp(prefix="lm_eval_prune_"))
    identity = model_identity(pretrained, revision, model_config)
    key = cache_key(request.config, identity)

    def build(directory: Any) -> None:
        device = resolve_device(request.config.device)
        model = load_model(
            pretrained, dtype, None if request.config.offload or device.type == "cpu" else str(device), revision
        )
        prune_and_write(model, tokenizer, request.config, request.cache, identity, (pretrained, revision), directory)
        del model

    may_build, wait = builder_rank()
    entry, built_here = cache.get_or_build(key, build, may_build or request.cache is None, wait)
    if not built_here:
        log.warning("prune cache hit: using the pruned checkpoint at %s, skipping pruning", entry)
    status = ("built" if built_here else "hit") if request.cache is not None else "disabled"
    return str(entry), PruneReport.load(entry), status, key
