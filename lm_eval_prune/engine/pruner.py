"""`prune_`: the passes (calibration capture, OWL dense pass, sequential prune) built from the pieces."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lm_eval_prune.engine import allocation
from lm_eval_prune.engine.calibration import load_calibration, tokens_digest
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.masks import apply_mask_, build_mask, magnitude_scores, outlier_percent, wanda_scores
from lm_eval_prune.engine.methods import METHODS
from lm_eval_prune.engine.model_utils import block_linear_params, block_linears, check_architecture, decoder_blocks
from lm_eval_prune.engine.report import LayerRecord, PruneReport, library_versions, peak_memory
from lm_eval_prune.engine.sequential import (
    BlockInputs,
    capture_block_inputs,
    non_block_modules_on,
    propagate,
    run_block,
)
from lm_eval_prune.engine.stats import column_stats
from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_against_model_config(config: PruneConfig, model_config: Any) -> None:
    """Errors that need only the model's config (so the CLI raises them before weights load)."""
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if config.needs_calibration and max_positions is not None and config.seqlen > max_positions:
        raise PruneConfigError(f"seqlen={config.seqlen} exceeds the model's max_position_embeddings={max_positions}")
    n_blocks = getattr(model_config, "num_hidden_layers", None)
    if config.drop_layers and n_blocks is not None and config.drop_layers >= n_blocks:
        raise PruneConfigError(f"drop_layers={config.drop_layers} must be < the model's {n_blocks} blocks")
    if config.nm is not None and config.method != "none":
        m = config.nm[1]
        hidden, heads = getattr(model_config, "hidden_size", None), getattr(model_config, "num_attention_heads", None)
        head_dim = getattr(model_config, "head_dim", None) or (hidden // heads if hidden and heads else None)
        inputs = {
            "hidden_size": (hidden, "q/k/v/gate/up_proj"),
            "intermediate_size": (getattr(model_config, "intermediate_size", None), "mlp.down_proj"),
            "num_attention_heads*head_dim": (heads * head_dim if heads and head_dim else None, "self_attn.o_proj"),
        }
        for name, (size, linear) in inputs.items():
            if size and size % m:
                raise PruneConfigError(
                    f"pattern={config.pattern!r}: {name}={size} (the input size of {linear}) is not a multiple of {m}"
                )
    if config.layerif_scores and n_blocks is not None:
        from lm_eval_prune.engine.layer_scores import read_score_file

        read_score_file(config.layerif_scores, n_blocks)


def check_model_fits(model: nn.Module, config: PruneConfig) -> None:
    """Errors that need the model: its architecture, N:M divisibility and seqlen within its positions."""
    check_architecture(model.config)
    check_against_model_config(config, model.config)
    if config.nm is not None and config.method != "none":
        m = config.nm[1]
        for index, block in enumerate(decoder_blocks(model)):
            for name, linear in block_linears(block).items():
                if linear.in_features % m:
                    raise PruneConfigError(
                        f"pattern={config.pattern!r}: input size {linear.in_features} of layers.{index}.{name} is not a multiple of {m}"
                    )


@contextmanager
def _calibration_mode(model: nn.Module) -> Iterator[None]:
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        model.config.use_cache = use_cache


def _block_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


def _score(method_score: str, linear: nn.Linear, stats: dict[str, Any] | None, name: str) -> torch.Tensor:
    if method_score == "wanda":
        assert stats is not None
        return wanda_scores(linear.weight, stats[name].scaler)
    return magnitude_scores(linear.weight)


def owl_outlier_percents(
    model: nn.Module, inputs: BlockInputs, config: PruneConfig, device: torch.device
) -> list[float]:
    """OWL's dense pass: Wanda scores of every block on unpruned propagated inputs -> D_l per block."""
    percents: list[float] = []

    def visit(_index: int, block: nn.Module, block_inputs: BlockInputs) -> list[torch.Tensor]:
        linears = block_linears(block)
        with column_stats(linears) as stats:
            outputs = run_block(block, block_inputs)
        scores = [wanda_scores(linear.weight, stats[name].scaler) for name, linear in linears.items()]
        percents.append(outlier_percent(scores, config.owl_m))
        return outputs

    propagate(model, inputs, visit, device, config.offload, desc="OWL dense pass")
    return percents


@dataclass
class AllocationInputs:
    """What an allocator may use; each takes what it needs and records what it found in ``report.extra``."""

    model: nn.Module
    config: PruneConfig
    device: torch.device
    inputs: BlockInputs | None
    tokenizer: Any
    layer_scores: list[float] | None
    report: PruneReport


def _allocate_uniform(a: AllocationInputs) -> list[float]:
    return allocation.uniform(len(decoder_blocks(a.model)), a.config.effective_sparsity)


def _allocate_owl(a: AllocationInputs) -> list[float]:
    assert a.inputs is not None
    percents = owl_outlier_percents(a.model, a.inputs, a.config, a.device)
    log.info("OWL outlier percents per block: %s", [round(p, 4) for p in percents])
    a.report.extra["owl_outlier_percents"] = percents
    return allocation.owl(percents, a.config.sparsity, a.config.owl_lambda)


def _allocate_layerif(a: AllocationInputs) -> list[float]:
    from lm_eval_prune.engine.layer_scores import cached_layerif_scores

    scores = (
        a.layer_scores
        if a.layer_scores is not None
        else cached_layerif_scores(a.model, a.tokenizer, a.config, None, {})
    )
    a.report.extra["layer_scores"] = list(scores)
    params = [block_linear_params(block) for block in decoder_blocks(a.model)]
    return allocation.layerif(scores, a.config.sparsity, a.config.layerif_eps, params)


ALLOCATE: dict[str, Callable[[AllocationInputs], list[float]]] = {
    "uniform": _allocate_uniform,
    "owl": _allocate_owl,
    "layerif": _allocate_layerif,
}


@torch.no_grad()
def prune_(
    model: nn.Module,
    config: PruneConfig,
    tokenizer: Any = None,
    calibration: torch.Tensor | None = None,
    layer_scores: list[float] | None = None,
) -> PruneReport:
    """Prune ``model`` in place as ``config`` says and return the report.

    ``calibration`` (``LongTensor[nsamples, seqlen]``) overrides ``config.calibration``; otherwise the source is
    read with ``tokenizer``. ``layer_scores`` (one per block) feed ``alloc=layerif`` instead of computing them.
    Statistics and scores are fp32 whatever the model dtype.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    method = METHODS.get(config.method)
    check_model_fits(model, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dispatched = len(set(getattr(model, "hf_device_map", {}).values())) > 1  # e.g. HFLM's parallelize=True
    if not config.offload and not dispatched:
        model.to(device)
    report = PruneReport(config=config.to_dict(), fingerprint="", versions=library_versions())

    inputs: BlockInputs | None = None
    digest = None
    with _calibration_mode(model):
        if config.needs_calibration:
            tick = time.perf_counter()
            ids = calibration if calibration is not None else load_calibration(config, tokenizer)
            if tuple(ids.shape) != (config.nsamples, config.seqlen):
                raise PruneConfigError(
                    f"calibration tokens have shape {tuple(ids.shape)}; expected ({config.nsamples}, {config.seqlen})"
                )
            digest = tokens_digest(ids)
            report.calibration = {
                "source": config.calibration,
                "nsamples": config.nsamples,
                "seqlen": config.seqlen,
                "seed": config.seed,
                "tokens_sha256_16": digest,
            }
            with non_block_modules_on(model, device) if config.offload else nullcontext():
                embed_device = model.get_input_embeddings().weight.device
                inputs = capture_block_inputs(model, ids, config.calib_batch_size, embed_device)
            report.passes["calibration_capture"] = time.perf_counter() - tick

        tick = time.perf_counter()
        if method.structured:
            _remove_blocks(model, config, inputs, device, report)
            targets = [0.0] * len(decoder_blocks(model))  # the remaining blocks are recorded, not pruned
        elif method.score:
            targets = ALLOCATE[config.alloc](
                AllocationInputs(model, config, device, inputs, tokenizer, layer_scores, report)
            )
        else:
            targets = [0.0] * len(decoder_blocks(model))
        report.passes["allocation"] = time.perf_counter() - tick
        if not method.structured:
            report.block_sparsity = targets

        tick = time.perf_counter()
        prefix = _block_prefix(model)

        def prune_block(index: int, block: nn.Module, stats: dict[str, Any] | None) -> None:
            for name, linear in block_linears(block).items():
                full = f"{prefix}.{index}.{name}"
                report.layers.append(LayerRecord(full, targets[index], 0.0, linear.weight.numel()))
                if method.score and targets[index] > 0:
                    mask = build_mask(
                        _score(method.score, linear, stats, name), targets[index], method.comparison, config.nm
                    )
                    apply_mask_(linear.weight, mask)

        if method.uses_activations and inputs is not None:

            def visit(index: int, block: nn.Module, block_inputs: BlockInputs) -> None:
                linears = block_linears(block)
                with column_stats(linears) as stats:
                    run_block(block, block_inputs)
                prune_block(index, block, stats)

            propagate(model, inputs, visit, device, config.offload, desc=f"{config.method} prune pass")
        else:
            propagate(
                model,
                None,
                lambda index, block, _inputs: prune_block(index, block, None),
                device,
                config.offload,
                desc=f"{config.method} prune pass",
            )
        report.passes["prune"] = time.perf_counter() - tick

    report.fingerprint = config.fingerprint(model=getattr(model.config, "_name_or_path", ""), calibration=digest)
    report.set_measured(count_zeros(model))
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes, report.peak_memory_kind = peak_memory(device)
    log.info("pruned %s: overall sparsity %.4f in %.2f s", config.method, report.overall_sparsity, report.seconds)
    return report


def _remove_blocks(
    model: nn.Module, config: PruneConfig, inputs: BlockInputs | None, device: torch.device, report: PruneReport
) -> None:
    """ShortGPT: drop the ``drop_layers`` blocks of lowest Block Influence (or the last ones in ``tail`` mode)."""
    from lm_eval_prune.engine.layer_scores import block_influence, remove_blocks_

    blocks = decoder_blocks(model)
    count = len(blocks)  # drop_layers < count was checked by check_model_fits
    if config.shortgpt_mode == "bi":
        assert inputs is not None
        influence: list[float | None] = list(block_influence(model, inputs, device, config.offload))
        remove = sorted(sorted(range(count), key=lambda i: (influence[i], i))[: config.drop_layers])
    else:
        influence = [None] * count
        remove = list(range(count - config.drop_layers, count))
    params = [block_linear_params(block) for block in blocks]
    report.removed_params = sum(params[i] for i in remove)
    report.block_sparsity = [1.0 if i in remove else 0.0 for i in range(count)]
    report.extra["block_influence"] = influence
    report.extra["removed_blocks"] = [{"index": i, "block_influence": influence[i]} for i in remove]
    report.extra["removed_param_share"] = report.removed_params / sum(params)
    remove_blocks_(model, remove)
    log.info(
        "ShortGPT removed blocks %s (%.2f%% of block-linear weights)", remove, 100 * report.extra["removed_param_share"]
    )


def count_zeros(model: nn.Module) -> dict[str, int]:
    """Zero count of every block linear's weight, by full name."""
    prefix = _block_prefix(model)
    return {
        f"{prefix}.{index}.{name}": int((linear.weight == 0).sum())
        for index, block in enumerate(decoder_blocks(model))
        for name, linear in block_linears(block).items()
    }
