"""AlphaPruning (arXiv 2410.10912): per-block sparsity from the heavy-tail exponent of each linear's weight spectrum.

Per linear, ``alpha`` is the power-law exponent fitted to the eigenvalues of ``W^T W`` (squared singular values) by
the reference's own estimator (``net_esd_estimator``, its default metric ``alpha_peak``): for each candidate ``xmin``
the maximum-likelihood ``alpha = 1 + n / sum(log(e / xmin))`` over the ``n`` eigenvalues ``>= xmin``, keeping the one
whose fit has the smallest Kolmogorov-Smirnov distance. ``xmin_peak`` restricts the candidates to those near the peak
of a 100-bin histogram of ``log10`` eigenvalues. Higher ``alpha`` (a lighter tail, a less well trained layer) means a
higher sparsity: the block mean of its linears' alphas is mapped min-max to ``[1-eps, 1+eps]`` and scaled so the
parameter-weighted mean equals the target (the reference's ``ww_sparsity``, ``mapping_type='block_wise'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.errors import PruneConfigError

FixFingers = Literal["xmin_peak", "xmin_mid"]
BINS = 100


def esd_eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues of ``W^T W`` (its nonzero part: ``min(d_out, d_in)`` values), from fp32 singular values."""
    return torch.linalg.svdvals(weight.detach().to(torch.float32)).square().sort().values


def _ks_distances(log_eigs: torch.Tensor, candidates: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """KS distance of each candidate fit: ``max_k |1 - (e_k/xmin)^(1-alpha) - k/n|`` over the ``n`` values >= xmin."""
    n_all = log_eigs.numel()
    positions = torch.arange(n_all, dtype=log_eigs.dtype, device=log_eigs.device)
    out = torch.empty(len(candidates), dtype=log_eigs.dtype, device=log_eigs.device)
    for lo in range(0, len(candidates), 256):  # [chunk, N] at a time
        i = candidates[lo : lo + 256, None]
        alpha = alphas[lo : lo + 256, None]
        n = (n_all - i).to(log_eigs.dtype)
        rank = positions[None, :] - i  # k - i
        model_cdf = 1 - torch.exp((1 - alpha) * (log_eigs[None, :] - log_eigs[i]))
        gap = torch.where(rank >= 0, (model_cdf - rank / n).abs(), torch.zeros((), dtype=log_eigs.dtype))
        out[lo : lo + 256] = gap.amax(dim=1)
    return out


def esd_alpha(eigs: torch.Tensor, fix_fingers: FixFingers = "xmin_peak", bins: int = BINS, xmin_pos: int = 2) -> float:
    """The reference's power-law ``alpha`` of ascending eigenvalues ``eigs`` (no zero filtering, as its default).

    Reproduces its quirks on purpose: the ``xmin_peak`` lower bound is ``log10(0.95 * peak)`` compared with a linear
    eigenvalue (so for peaks below ~1.05 there is no lower bound), candidates outside the window keep ``alpha = 0`` and
    ``D = 1``, a fit with ``alpha <= 1`` keeps ``D = 1``, and ties go to the first candidate (``argmin``).
    """
    e = eigs.to(torch.float32)
    n_all = e.numel()
    log_e = e.double().log()
    if fix_fingers == "xmin_mid":
        i = n_all // xmin_pos
        n = n_all - i
        alpha = 1 + n / float(log_e[i:].sum() - n * log_e[i])
        return alpha
    if fix_fingers != "xmin_peak":
        raise PruneConfigError(f"fix_fingers={fix_fingers!r} is not one of 'xmin_peak' or 'xmin_mid'")
    log10_e = torch.log10(e)
    lo_edge, hi_edge = log10_e.min(), log10_e.max()
    counts = torch.histc(log10_e, bins, min=float(lo_edge), max=float(hi_edge))
    edges = torch.linspace(float(lo_edge), float(hi_edge), bins + 1)
    peak = 10 ** edges[int(torch.argmax(counts))]
    lower, upper = float(torch.log10(0.95 * peak)), float(1.5 * peak)  # the reference's bounds, log10 slip included
    idx = torch.arange(n_all - 1)
    inside = (e[:-1] >= lower) & (e[:-1] <= upper)
    candidates = idx[inside]
    alphas = torch.zeros(n_all - 1, dtype=torch.float64)
    distances = torch.ones(n_all - 1, dtype=torch.float64)
    if len(candidates):
        suffix = log_e.flip(0).cumsum(0).flip(0)  # sum_{k >= i} log e_k
        tail = (n_all - candidates).double()
        fitted = 1 + tail / (suffix[candidates] - tail * log_e[candidates])
        alphas[candidates] = fitted
        good = fitted > 1
        distances[candidates[good]] = _ks_distances(log_e, candidates[good], fitted[good])
    return float(alphas[int(torch.argmin(distances))])


def alpha_per_linear(
    model: nn.Module,
    fix_fingers: FixFingers = "xmin_peak",
    bins: int = BINS,
    as_float16: bool = True,
    device: torch.device | None = None,
) -> dict[str, float]:
    """``alpha`` of every linear in the decoder blocks, keyed ``"<block>.<name>"`` (``"3.self_attn.q_proj"``).

    ``as_float16``: the weights are rounded to float16 first, because the reference loads the model in float16
    before its ESD (on fp32 weights the block targets move by up to 0.01). ``device``: where the SVDs run (the prune
    device, whatever ``offload`` says: the identity names the device type, and another kernel rounds differently).
    """
    out: dict[str, float] = {}
    for index, block in enumerate(decoder_blocks(model)):
        for name, linear in block_linears(block).items():
            weight = linear.weight.detach().to(torch.float16) if as_float16 else linear.weight.detach()
            if device is not None:
                weight = weight.to(device)
            out[f"{index}.{name}"] = esd_alpha(esd_eigenvalues(weight), fix_fingers, bins)
    return out


def block_mean_metrics(per_linear: Mapping[str, float], n_blocks: int) -> list[float]:
    """Mean of each block's linear metrics (keys ``"<block>.<name>"``), the reference's ``block_wise`` mapping."""
    sums, counts = [0.0] * n_blocks, [0] * n_blocks
    for key, value in per_linear.items():
        block = int(key.split(".", 1)[0])
        if not 0 <= block < n_blocks:
            raise PruneConfigError(f"AlphaPruning metric {key!r} names block {block}; the model has {n_blocks} blocks")
        sums[block] += float(value)
        counts[block] += 1
    if min(counts) == 0:
        raise PruneConfigError(f"AlphaPruning has no metric for block {counts.index(0)}")
    return [s / c for s, c in zip(sums, counts, strict=True)]


def alphapruning_block_sparsities(
    block_metrics: Sequence[float], sparsity: float, eps: float, params: Sequence[int]
) -> list[float]:
    """``s_l = r_l * s * sum(P) / sum(P * r)``, ``r`` the block metrics min-max mapped to ``[1-eps, 1+eps]``.

    Higher alpha gets a higher sparsity; the parameter-weighted mean is exactly ``sparsity``. Equal metrics give
    uniform sparsity (the reference divides by zero). A block outside [0, 1) is an error, not a clip.
    """
    if len(block_metrics) != len(params):
        raise PruneConfigError(
            f"AlphaPruning needs one metric per block: got {len(block_metrics)} for {len(params)} blocks"
        )
    values = [float(x) for x in block_metrics]
    if not all(math.isfinite(v) for v in values):
        raise PruneConfigError(f"AlphaPruning metrics must be finite numbers; got {values}")
    if not 0 <= eps < 1:
        raise PruneConfigError(f"AlphaPruning eps={eps} must be in [0, 1)")
    lo, hi = min(values), max(values)
    ratios = [1.0] * len(values) if hi == lo else [1 - eps + 2 * eps * (v - lo) / (hi - lo) for v in values]
    scale = sparsity * sum(params) / sum(p * r for p, r in zip(params, ratios, strict=True))
    result = [r * scale for r in ratios]
    if min(result) < 0 or max(result) >= 1:
        worst = max(result) if max(result) >= 1 else min(result)
        raise PruneConfigError(
            f"AlphaPruning gives a block sparsity of {worst:.4f}, outside [0, 1), at sparsity={sparsity}, eps={eps}; "
            "lower eps"
        )
    return result
