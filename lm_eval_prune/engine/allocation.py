"""Pure layer-wise sparsity allocation: one target sparsity per decoder block."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)

OWL_MIN_SPARSITY = 0.01  # the OWL reference replaces a non-positive block sparsity by this


def uniform(n_blocks: int, sparsity: float) -> list[float]:
    """Every block at ``sparsity``."""
    return [sparsity] * n_blocks


def owl(outlier_percents: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """OWL ratios: ``s - (D~_l - mean(D~))`` with ``D~`` the outlier percents min-max scaled to [0, 2*lam].

    More outliers give a lower sparsity; the unweighted mean equals ``sparsity``. Equal outlier percents give
    uniform sparsity (the reference divides by zero there). Non-positive results are clamped to 0.01 as in the
    reference, with a warning; results >= 1 are an error.
    """
    d = [float(x) for x in outlier_percents]
    lo, hi = min(d), max(d)
    if hi == lo:
        return uniform(len(d), sparsity)
    scaled = [(x - lo) / (hi - lo) * 2 * lam for x in d]
    mean = sum(scaled) / len(scaled)
    ratios = [sparsity - (x - mean) for x in scaled]
    if max(ratios) >= 1.0:
        raise PruneConfigError(
            f"OWL gives a block sparsity of {max(ratios):.4f} >= 1 at sparsity={sparsity}, owl_lambda={lam}; lower owl_lambda"
        )
    clamped = [r if r > 0 else OWL_MIN_SPARSITY for r in ratios]
    if clamped != ratios:
        log.warning("OWL: non-positive block sparsities clamped to %s as in the reference", OWL_MIN_SPARSITY)
    return clamped


def layerif(scores: Sequence[float], sparsity: float, eps: float, block_params: Sequence[int]) -> list[float]:
    """LayerIF ratios: scores min-max mapped to r in [1-eps, 1+eps], ``s_l = r_l * s * sum(P) / sum(P * r)``.

    Higher score (lower-quality block) gets a higher sparsity; the parameter-weighted mean is exactly ``sparsity``.
    A result outside [0, 1) is an error (the reference clips at 0.99, which silently breaks the budget).
    """
    if len(scores) != len(block_params):
        raise PruneConfigError(
            f"LayerIF needs one score per block: got {len(scores)} scores for {len(block_params)} blocks"
        )
    values = [float(x) for x in scores]
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise PruneConfigError(f"LayerIF scores must be finite numbers; got {values}")
    lo, hi = min(values), max(values)
    ratios = [1.0] * len(values) if hi == lo else [1 - eps + 2 * eps * (v - lo) / (hi - lo) for v in values]
    scale = sparsity * sum(block_params) / sum(p * r for p, r in zip(block_params, ratios, strict=True))
    result = [r * scale for r in ratios]
    if min(result) < 0 or max(result) >= 1:
        worst = max(result) if max(result) >= 1 else min(result)
        raise PruneConfigError(
            f"LayerIF gives a block sparsity of {worst:.4f}, outside [0, 1), at sparsity={sparsity}, layerif_eps={eps}; lower layerif_eps"
        )
    return result
