"""How each unstructured method prunes one linear, as the method registry calls it.

``prune(linear, statistic, sparsity, config, name) -> notes`` where ``statistic`` is what the method's statistics
hook collected for that linear over the calibration inputs (None for Magnitude) and ``notes`` go to the report.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.masks import apply_mask_, build_mask, magnitude_scores, wanda_scores
from lm_eval_prune.engine.sparsegpt import Hessian, sparsegpt_prune_
from lm_eval_prune.engine.stats import ColumnSqNorm


def magnitude(linear: nn.Linear, _stat: Any, sparsity: float, config: PruneConfig, _name: str) -> dict[str, float]:
    """|W|, one threshold per matrix: needs no activations."""
    apply_mask_(linear.weight, build_mask(magnitude_scores(linear.weight), sparsity, "matrix", config.nm))
    return {}


def wanda(linear: nn.Linear, stat: ColumnSqNorm, sparsity: float, config: PruneConfig, _name: str) -> dict[str, float]:
    """|W| * sqrt(mean ||X_j||^2), compared per output row."""
    apply_mask_(linear.weight, build_mask(wanda_scores(linear.weight, stat.scaler), sparsity, "row", config.nm))
    return {}


def sparsegpt(linear: nn.Linear, stat: Hessian, sparsity: float, config: PruneConfig, name: str) -> dict[str, float]:
    """OBS mask selection and weight reconstruction from the linear's input Hessian."""
    stats = sparsegpt_prune_(
        linear.weight, stat.matrix, sparsity, config.nm, config.blocksize, config.percdamp, name=name
    )
    return {"relative_error": float(stats.relative_error)}
