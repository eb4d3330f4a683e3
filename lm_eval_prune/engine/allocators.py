"""The allocation registry's behaviour: each function takes :class:`AllocationInputs`, returns one sparsity per block.

The pure maths is in :mod:`allocation`; here each allocation gathers what it needs (a dense pass, scores) and records
what it found in the report's typed fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lm_eval_prune.engine import allocation
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.masks import outlier_percent, wanda_scores
from lm_eval_prune.engine.model_utils import block_linear_params, block_linears, decoder_blocks
from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.engine.sequential import BlockInputs, propagate, run_block
from lm_eval_prune.engine.stats import column_stats

log = logging.getLogger(__name__)


@dataclass
class AllocationInputs:
    """What an allocation may use. ``take_inputs()`` hands over the block-0 calibration inputs (once: memory)."""

    model: nn.Module
    config: PruneConfig
    device: torch.device
    take_inputs: Callable[[], BlockInputs]
    layer_scores: list[float] | None
    report: PruneReport
    tokenizer: Any = None


def uniform(a: AllocationInputs) -> list[float]:
    return allocation.uniform(len(decoder_blocks(a.model)), a.config.effective_sparsity)


def owl_outlier_percents(
    model: nn.Module, inputs: BlockInputs, config: PruneConfig, device: torch.device
) -> list[float]:
    """OWL's dense pass: Wanda scores of every block on unpruned propagated inputs -> D_l per block."""
    percents: list[float] = []

    def visit(_index: int, block: nn.Module, block_inputs: BlockInputs | None) -> list[torch.Tensor]:
        assert block_inputs is not None
        linears = block_linears(block)
        with column_stats(linears) as stats:
            outputs = run_block(block, block_inputs)
        scores = [wanda_scores(linear.weight, stats[name].scaler) for name, linear in linears.items()]
        percents.append(outlier_percent(scores, config.owl_m))
        return outputs

    propagate(model, inputs, visit, device, config.offload, desc="OWL dense pass", changes_weights=False)
    return percents


def owl(a: AllocationInputs) -> list[float]:
    percents = owl_outlier_percents(a.model, a.take_inputs(), a.config, a.device)
    log.info("OWL outlier percents per block: %s", [round(p, 4) for p in percents])
    a.report.owl_outlier_percents = percents
    return allocation.owl(percents, a.config.sparsity, a.config.owl_lambda)


def layerif(a: AllocationInputs) -> list[float]:
    scores = a.layer_scores
    if scores is None:  # called from Python without the pipeline: a score file, else computed here (not cached)
        from lm_eval_prune.engine.layer_scores import cached_layerif_scores

        scores = cached_layerif_scores(a.model, a.tokenizer, a.config, None)
    a.report.layer_scores = list(scores)
    params = [block_linear_params(block) for block in decoder_blocks(a.model)]
    return allocation.layerif(scores, a.config.sparsity, a.config.layerif_eps, params)


def alphapruning(a: AllocationInputs) -> list[float]:
    """AlphaPruning: per-block mean of the linears' ESD alpha, mapped to [1-eps, 1+eps] (no calibration needed)."""
    from lm_eval_prune.engine.alphapruning import alpha_per_linear, alphapruning_block_sparsities, block_mean_metrics

    blocks = decoder_blocks(a.model)
    metrics = block_mean_metrics(alpha_per_linear(a.model, device=a.device), len(blocks))
    a.report.layer_scores = metrics
    a.report.extra["layer_score_kind"] = "alphapruning_alpha"
    params = [block_linear_params(block) for block in blocks]
    return allocation.check_block_sparsities(
        alphapruning_block_sparsities(metrics, a.config.sparsity, a.config.alpha_eps, params),
        f"AlphaPruning (sparsity={a.config.sparsity}, alpha_eps={a.config.alpha_eps})",
    )
