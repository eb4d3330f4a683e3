"""`prune_`: the passes (calibration capture, OWL dense pass, sequential prune) built from the pieces."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from . import allocation
from .calibration import load_calibration, tokens_digest
from .config import PruneConfig
from .errors import PruneConfigError
from .masks import apply_mask_, build_mask, magnitude_scores, outlier_percent, wanda_scores
from .methods import METHODS
from .model_utils import block_linears, check_architecture, decoder_blocks
from .report import LayerRecord, PruneReport, library_versions, peak_memory
from .sequential import BlockInputs, capture_block_inputs, non_block_modules_on, propagate, run_block
from .stats import column_stats

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_seqlen(config: PruneConfig, model_config: Any) -> None:
    """Calibration windows must fit the model's positions (never default seqlen to them either)."""
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if config.needs_calibration and max_positions is not None and config.seqlen > max_positions:
        raise PruneConfigError(f"seqlen={config.seqlen} exceeds the model's max_position_embeddings={max_positions}")


def check_model_fits(model: nn.Module, config: PruneConfig) -> None:
    """Errors that need the model: its architecture, N:M divisibility and seqlen within its positions."""
    check_architecture(model.config)
    check_seqlen(config, model.config)
    if config.nm is not None and config.method != "none":
        m = config.nm[1]
        for index, block in enumerate(decoder_blocks(model)):
            for name, linear in block_linears(block).items():
                if linear.in_features % m:
                    raise PruneConfigError(f"pattern={config.pattern!r}: input size {linear.in_features} of layers.{index}.{name} is not a multiple of {m}")


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


def owl_outlier_percents(model: nn.Module, inputs: BlockInputs, config: PruneConfig, device: torch.device) -> list[float]:
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


Allocator = Callable[[nn.Module, "BlockInputs | None", PruneConfig, torch.device], list[float]]


def _allocate_uniform(model: nn.Module, _inputs: BlockInputs | None, config: PruneConfig, _device: torch.device) -> list[float]:
    return allocation.uniform(len(decoder_blocks(model)), config.effective_sparsity)


def _allocate_owl(model: nn.Module, inputs: BlockInputs | None, config: PruneConfig, device: torch.device) -> list[float]:
    assert inputs is not None
    percents = owl_outlier_percents(model, inputs, config, device)
    log.info("OWL outlier percents per block: %s", [round(p, 4) for p in percents])
    return allocation.owl(percents, config.sparsity, config.owl_lambda)


ALLOCATE: dict[str, Allocator] = {"uniform": _allocate_uniform, "owl": _allocate_owl}


@torch.no_grad()
def prune_(
    model: nn.Module,
    config: PruneConfig,
    tokenizer: Any = None,
    calibration: torch.Tensor | None = None,
) -> PruneReport:
    """Prune ``model`` in place as ``config`` says and return the report.

    ``calibration`` (``LongTensor[nsamples, seqlen]``) overrides ``config.calibration``; otherwise the source is
    read with ``tokenizer``. Statistics and scores are fp32 whatever the model dtype.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    method = METHODS.get(config.method)
    check_model_fits(model, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not config.offload:
        model.to(device)
    report = PruneReport(config=config.to_dict(), fingerprint="", versions=library_versions())

    inputs: BlockInputs | None = None
    digest = None
    with _calibration_mode(model):
        if config.needs_calibration:
            tick = time.perf_counter()
            ids = calibration if calibration is not None else load_calibration(config, tokenizer)
            if tuple(ids.shape) != (config.nsamples, config.seqlen):
                raise PruneConfigError(f"calibration tokens have shape {tuple(ids.shape)}; expected ({config.nsamples}, {config.seqlen})")
            digest = tokens_digest(ids)
            report.calibration = {"source": config.calibration, "nsamples": config.nsamples, "seqlen": config.seqlen, "seed": config.seed, "tokens_sha256_16": digest}
            with non_block_modules_on(model, device) if config.offload else nullcontext():
                inputs = capture_block_inputs(model, ids, config.calib_batch_size, device)
            report.passes["calibration_capture"] = time.perf_counter() - tick

        tick = time.perf_counter()
        targets = ALLOCATE[config.alloc](model, inputs, config, device) if method.score else [0.0] * len(decoder_blocks(model))
        report.passes["allocation"] = time.perf_counter() - tick
        report.block_sparsity = targets

        tick = time.perf_counter()
        prefix = _block_prefix(model)

        def prune_block(index: int, block: nn.Module, stats: dict[str, Any] | None) -> None:
            for name, linear in block_linears(block).items():
                full = f"{prefix}.{index}.{name}"
                report.layers.append(LayerRecord(full, targets[index], 0.0, linear.weight.numel()))
                if method.score and targets[index] > 0:
                    mask = build_mask(_score(method.score, linear, stats, name), targets[index], method.comparison, config.nm)
                    apply_mask_(linear.weight, mask)

        if method.uses_activations and inputs is not None:

            def visit(index: int, block: nn.Module, block_inputs: BlockInputs) -> None:
                linears = block_linears(block)
                with column_stats(linears) as stats:
                    run_block(block, block_inputs)
                prune_block(index, block, stats)

            propagate(model, inputs, visit, device, config.offload, desc=f"{config.method} prune pass")
        else:
            propagate(model, None, lambda index, block, _inputs: prune_block(index, block, None), device, config.offload, desc=f"{config.method} prune pass")
        report.passes["prune"] = time.perf_counter() - tick

    report.fingerprint = config.fingerprint(model=getattr(model.config, "_name_or_path", ""), calibration=digest)
    report.set_measured(count_zeros(model))
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes, report.peak_memory_kind = peak_memory(device)
    log.info("pruned %s: overall sparsity %.4f in %.2f s", config.method, report.overall_sparsity, report.seconds)
    return report


def count_zeros(model: nn.Module) -> dict[str, int]:
    """Zero count of every block linear's weight, by full name."""
    prefix = _block_prefix(model)
    return {
        f"{prefix}.{index}.{name}": int((linear.weight == 0).sum())
        for index, block in enumerate(decoder_blocks(model))
        for name, linear in block_linears(block).items()
    }
