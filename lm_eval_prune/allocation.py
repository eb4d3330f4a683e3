"""Pure layer-wise sparsity allocation: one target sparsity per decoder block."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .errors import PruneConfigError

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
        raise PruneConfigError(f"OWL gives a block sparsity of {max(ratios):.4f} >= 1 at sparsity={sparsity}, owl_lambda={lam}; lower owl_lambda")
    clamped = [r if r > 0 else OWL_MIN_SPARSITY for r in ratios]
    if clamped != ratios:
        log.warning("OWL: non-positive block sparsities clamped to %s as in the reference", OWL_MIN_SPARSITY)
    return clamped
