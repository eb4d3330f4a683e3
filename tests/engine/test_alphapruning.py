"""AlphaPruning: the ESD power-law fit on known spectra, against a plain loop, and the block allocation by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

from lm_eval_prune import PruneConfigError
from lm_eval_prune.engine.alphapruning import (
    alpha_per_linear,
    alphapruning_block_sparsities,
    block_mean_metrics,
    esd_alpha,
    esd_eigenvalues,
)
from lm_eval_prune.engine.model_utils import block_linear_params, block_linears, decoder_blocks


def pareto_matrix(a: float, rank: int, d_out: int, d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W = U diag(sqrt(lam)) V^T with lam ~ density x^-a on [1, inf): the eigenvalues of W^T W are exactly lam."""
    g = torch.Generator().manual_seed(seed)
    lam = (1 - torch.rand(rank, generator=g, dtype=torch.float64)) ** (-1 / (a - 1))
    u, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=g, dtype=torch.float64))
    return ((u * lam.sqrt()) @ v.T).float(), lam


@pytest.mark.parametrize("a", [2.0, 3.0, 4.0])
def test_alpha_of_a_known_pareto_spectrum(a):
    weight, lam = pareto_matrix(a, 600, 800, 600, seed=int(a))
    eigs = esd_eigenvalues(weight)
    assert eigs.shape == (600,) and torch.allclose(eigs.double(), lam.sort().values, rtol=1e-3)
    fitted = esd_alpha(eigs)
    assert fitted == pytest.approx(a, abs=3 * (a - 1) / math.sqrt(600))  # 3 standard errors of the MLE
    assert esd_alpha(eigs, "xmin_mid") == pytest.approx(a, abs=4 * (a - 1) / math.sqrt(300))


def loop_alpha_peak(eigs: torch.Tensor, bins: int = 100) -> float:
    """The estimator as the paper's code describes it, one candidate xmin at a time, in float64."""
    e = eigs.double()
    log10 = torch.log10(eigs.float())
    counts = torch.histc(log10, bins, min=float(log10.min()), max=float(log10.max()))
    edges = torch.linspace(float(log10.min()), float(log10.max()), bins + 1)
    peak = 10 ** edges[int(torch.argmax(counts))]
    lower, upper = float(torch.log10(0.95 * peak)), float(1.5 * peak)
    best_d, best_alpha = 1.0, 0.0  # no candidate: the reference returns alphas[0] = 0
    for i in range(len(e) - 1):
        if float(eigs[i]) < lower:
            continue
        if float(eigs[i]) > upper:
            break
        tail = e[i:]
        n = len(tail)
        alpha = 1 + n / float(torch.log(tail / e[i]).sum())
        d = 1.0
        if alpha > 1:
            d = float((1 - (tail / e[i]) ** (1 - alpha) - torch.arange(n, dtype=torch.float64) / n).abs().max())
        if d < best_d or i == 0:  # ties go to the first index, and index 0 is the default
            best_d, best_alpha = d, alpha
    return best_alpha


def test_vectorised_fit_equals_a_plain_loop():
    model = make_model(layers=2, hidden=64)
    alphas = alpha_per_linear(model)
    blocks = decoder_blocks(model)
    assert list(alphas) == [f"{b}.{name}" for b, block in enumerate(blocks) for name in block_linears(block)]
    for key, value in alphas.items():
        block, name = key.split(".", 1)
        weight = decoder_blocks(model)[int(block)].get_submodule(name).weight
        assert value == pytest.approx(loop_alpha_peak(esd_eigenvalues(weight.to(torch.float16))), rel=1e-9)
    weight, _ = pareto_matrix(3.0, 300, 400, 350, seed=5)
    assert esd_alpha(esd_eigenvalues(weight)) == pytest.approx(loop_alpha_peak(esd_eigenvalues(weight)), rel=1e-9)


def test_block_mean_and_allocation_by_hand():
    metrics = {"0.q": 2.0, "0.k": 4.0, "1.q": 5.0, "1.k": 5.0, "2.q": 6.0, "2.k": 8.0}
    block = block_mean_metrics(metrics, 3)
    assert block == [3.0, 5.0, 7.0]
    params = [100, 100, 200]
    got = alphapruning_block_sparsities(block, sparsity=0.5, eps=0.3, params=params)
    scale = 0.5 * 400 / (0.7 * 100 + 1.0 * 100 + 1.3 * 200)  # ratios 0.7, 1.0, 1.3
    assert got == pytest.approx([0.7 * scale, 1.0 * scale, 1.3 * scale], rel=1e-12)
    assert sum(p * s for p, s in zip(params, got, strict=True)) / 400 == pytest.approx(0.5, abs=1e-12)
    assert alphapruning_block_sparsities([4.0, 4.0, 4.0], 0.4, 0.3, params) == pytest.approx([0.4] * 3)
    assert alphapruning_block_sparsities(block, 0.4, 0.0, params) == pytest.approx([0.4] * 3)


def test_allocation_errors_are_one_line():
    with pytest.raises(PruneConfigError, match=r"sparsity of 1\.0\d+, outside \[0, 1\), at sparsity=0.8, eps=0.3"):
        alphapruning_block_sparsities([1.0, 2.0], 0.8, 0.3, [1, 1])
    with pytest.raises(PruneConfigError, match=r"eps=1.5 must be in \[0, 1\)"):
        alphapruning_block_sparsities([1.0, 2.0], 0.5, 1.5, [1, 1])
    with pytest.raises(PruneConfigError, match="one metric per block"):
        alphapruning_block_sparsities([1.0], 0.5, 0.3, [1, 1])
    with pytest.raises(PruneConfigError, match="finite"):
        alphapruning_block_sparsities([1.0, math.nan], 0.5, 0.3, [1, 1])
    with pytest.raises(PruneConfigError, match="no metric for block 1"):
        block_mean_metrics({"0.q": 1.0}, 2)


def test_model_allocation_hits_the_budget_and_prunes_heavy_tails_less():
    model = make_model(layers=3, hidden=64)
    for block, a in zip(decoder_blocks(model), (2.0, 4.0, 3.0), strict=True):  # block 0 heaviest tail
        for k, linear in enumerate(block.modules()):
            if isinstance(linear, torch.nn.Linear):
                d_out, d_in = linear.weight.shape
                linear.weight.data, _ = pareto_matrix(a, min(d_out, d_in), d_out, d_in, seed=k)
    per_block = block_mean_metrics(alpha_per_linear(model), 3)
    params = [block_linear_params(b) for b in decoder_blocks(model)]
    sparsities = alphapruning_block_sparsities(per_block, 0.5, 0.2, params)
    assert sparsities[0] < sparsities[2] < sparsities[1]
    assert sum(p * s for p, s in zip(params, sparsities, strict=True)) / sum(params) == pytest.approx(0.5, abs=1e-12)
