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
    d = finite_values(outlier_percents, "OWL outlier percents")
    lo, hi = min(d), max(d)
    if hi == lo:
        return uniform(len(d), sparsity)
    scaled = [unit_interval(x, lo, hi) * 2 * lam for x in d]
    mean = sum(scaled) / len(scaled)
    ratios = [sparsity - (x - mean) for x in scaled]
    if max(ratios) >= 1.0:
        raise PruneConfigError(
            f"OWL gives a block sparsity of {max(ratios):.4f} >= 1 at sparsity={sparsity}, owl_lambda={lam}; "
            "lower owl_lambda"
        )
    clamped = [r if r > 0 else OWL_MIN_SPARSITY for r in ratios]
    if clamped != ratios:
        log.warning("OWL: non-positive block sparsities clamped to %s as in the reference", OWL_MIN_SPARSITY)
    return check_block_sparsities(clamped, f"OWL (sparsity={sparsity}, owl_lambda={lam})")


def layerif(scores: Sequence[float], sparsity: float, eps: float, block_params: Sequence[int]) -> list[float]:
    """LayerIF ratios: scores min-max mapped to r in [1-eps, 1+eps], ``s_l = r_l * s * sum(P) / sum(P * r)``.

    Higher score (lower-quality block) gets a higher sparsity; the parameter-weighted mean is exactly ``sparsity``.
    A result outside [0, 1) is an error (the reference clips at 0.99, which silently breaks the budget).
    """
    if len(scores) != len(block_params):
        raise PruneConfigError(
            f"LayerIF needs one score per block: got {len(scores)} scores for {len(block_params)} blocks"
        )
    values = finite_values(scores, "LayerIF scores")
    lo, hi = min(values), max(values)
    ratios = [1.0] * len(values) if hi == lo else [1 - eps + 2 * eps * unit_interval(v, lo, hi) for v in values]
    scale = sparsity * sum(block_params) / sum(p * r for p, r in zip(block_params, ratios, strict=True))
    what = f"LayerIF (sparsity={sparsity}, layerif_eps={eps}; lower layerif_eps)"
    return check_block_sparsities([r * scale for r in ratios], what)


def finite_values(values: Sequence[float], what: str) -> list[float]:
    """``values`` as floats; NaN, infinities and non-numbers (booleans included) are an error."""
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise PruneConfigError(f"{what} must be finite numbers; got {value!r}")
        out.append(float(value))
    if not out:
        raise PruneConfigError(f"{what} are empty")
    return out


def unit_interval(value: float, lo: float, hi: float) -> float:
    """(value - lo) / (hi - lo) without overflow for values near the float range (1e308 and -1e308)."""
    return (value / 2 - lo / 2) / (hi / 2 - lo / 2)


def check_block_sparsities(values: Sequence[float], what: str) -> list[float]:
    """Every block sparsity a finite number in [0, 1): an allocation that breaks this is an error, never a NaN prune."""
    out = [float(v) for v in values]
    for index, value in enumerate(out):
        if not math.isfinite(value) or not 0.0 <= value < 1.0:
            raise PruneConfigError(f"{what} gives block {index} a sparsity of {value!r}, outside [0, 1)")
    return out
