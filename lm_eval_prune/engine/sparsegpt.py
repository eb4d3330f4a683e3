"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774): Hessian accumulation and OBS pruning of one linear, pure pieces.

Follows the SparseGPT code shipped by locuslab/wanda (``lib/sparsegpt.py``): fp32 running-mean Hessian
``H = 2/n sum_s X_s X_s^T``, dead columns, dampening ``percdamp * mean(diag H)``, upper Cholesky factor of ``H^-1``,
column blocks with lazy batch updates, the mask chosen per block (unstructured) or every ``m`` columns (N:M) from
``w^2 / [U]_cc^2``. The unstructured mask is the reference's own rule, ``score <= the k-th smallest score`` with
``k = int(rows * block_cols * sparsity)``: it prunes one weight more per block than k (and every tie), so measured
sparsity sits slightly above the target; we keep it because users compare against the published SparseGPT numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lm_eval_prune.errors import PruneConfigError


class Hessian:
    """SparseGPT's ``H = 2/n * sum over calibration sequences of X X^T`` as a running mean, fp32.

    Update per batch of ``b`` sequences: ``H *= n/(n+b); n += b; H += (sqrt(2/n) X)^T (sqrt(2/n) X)`` over all tokens
    of the batch. The reference adds one sequence at a time; the batched update is the same sum, equal up to fp32
    rounding (relative difference ~1e-7, see tests).
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.matrix = torch.zeros(columns, columns, dtype=dtype, device=device)
        self.nsamples = 0

    @torch.no_grad()
    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add ``[batch, seq, columns]`` inputs (``[seq, columns]`` is one sequence)."""
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        if inputs.shape[-1] != self.matrix.shape[0]:
            raise PruneConfigError(f"inputs have {inputs.shape[-1]} columns; this Hessian has {self.matrix.shape[0]}")
        batch = inputs.shape[0]
        flat = inputs.reshape(-1, inputs.shape[-1]).to(self.matrix.device, self.matrix.dtype)
        self.matrix *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        scaled = math.sqrt(2 / self.nsamples) * flat
        self.matrix.addmm_(scaled.t(), scaled)


@contextmanager
def hessians(linears: dict[str, nn.Linear]) -> Iterator[dict[str, Hessian]]:
    """Hook every linear; yield name -> Hessian filled by the forwards run inside the block (hooks always removed)."""
    accs = {name: Hessian(linear.in_features, linear.weight.device) for name, linear in linears.items()}
    handles = []
    for name, linear in linears.items():

        def hook(
            _module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor, acc: Hessian = accs[name]
        ) -> None:
            acc.add_batch(args[0].detach())

        handles.append(linear.register_forward_hook(hook))
    try:
        yield accs
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class SparseGPTStats:
    """What one ``sparsegpt_prune_`` did.

    ``recon_error`` is the layer-wise error ``||W X - W' X||_F^2`` averaged over the calibration sequences, computed
    exactly from ``H`` as ``tr(dW H dW^T) / 2``; ``relative_error`` divides it by the same quantity for ``W`` itself.
    ``obs_loss`` is the reference's ``Losses`` sum (OBS estimate ``sum w^2 / (2 [U]_cc^2)`` over pruned weights).
    """

    name: str
    rows: int
    columns: int
    pruned: int
    dead_columns: int
    damp: float
    obs_loss: float
    recon_error: float
    relative_error: float
    seconds: float

    @property
    def sparsity(self) -> float:
        return self.pruned / (self.rows * self.columns)


def _check_args(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
    percdamp: float,
    name: str,
) -> None:
    if weight.dim() != 2:
        raise PruneConfigError(f"{name}: weight must be 2-D [out, in]; got shape {tuple(weight.shape)}")
    columns = weight.shape[1]
    if tuple(hessian.shape) != (columns, columns):
        raise PruneConfigError(f"{name}: hessian shape {tuple(hessian.shape)}; the weight needs ({columns}, {columns})")
    if not 0.0 <= sparsity <= 1.0:
        raise PruneConfigError(f"sparsity={sparsity} is outside [0, 1]")
    if not percdamp > 0 or not math.isfinite(percdamp):
        raise PruneConfigError(f"percdamp={percdamp} must be a finite number > 0 (the reference uses 0.01)")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise PruneConfigError(f"blocksize={blocksize!r} must be an integer >= 1 (the reference uses 128)")
    if nm is not None:
        n, m = nm
        if not 0 < n <= m:
            raise PruneConfigError(f"nm={nm}: N:M needs 0 < n <= m")
        if columns % m or blocksize % m:
            raise PruneConfigError(
                f"{name}: nm={nm} needs the input size {columns} and blocksize={blocksize} to be multiples of {m}"
            )


def _upper_cholesky_of_inverse(hessian: torch.Tensor, name: str) -> torch.Tensor:
    """``U`` with ``U^T U = H^-1``; a matrix that is not positive definite raises, naming the layer."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    if int(info) == 0:
        factor, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
    if int(info) != 0 or not bool(torch.isfinite(factor).all()):
        raise PruneConfigError(
            f"{name}: the dampened Hessian is not positive definite (Cholesky failed at column {int(info) - 1}); "
            "raise percdamp or use more calibration samples"
        )
    return factor


def _block_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference's block mask: every score at or below the ``int(numel * sparsity)``-th smallest (0-based).

    At sparsity 0 nothing is pruned (the reference would still prune the smallest weight of each block).
    """
    if sparsity <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    k = min(int(scores.numel() * sparsity), scores.numel() - 1)
    return scores <= torch.sort(scores.flatten())[0][k]


@torch.no_grad()
def sparsegpt_prune_(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "linear",
) -> SparseGPTStats:
    """Prune ``weight [out, in]`` in place with SparseGPT and return what it did; ``hessian`` is left unchanged.

    ``nm=(n, m)`` prunes ``n`` of every ``m`` input columns per row (``sparsity`` is then unused). The math runs in
    fp32 (fp64 when ``hessian`` is fp64) on the weight's device; the result is written back in the weight's dtype.
    """
    start = time.perf_counter()
    _check_args(weight, hessian, sparsity, nm, blocksize, percdamp, name)
    if not bool(torch.isfinite(hessian).all()):
        raise PruneConfigError(f"{name}: the Hessian has non-finite entries (NaN or inf in the calibration inputs)")
    dtype = torch.float64 if hessian.dtype == torch.float64 else torch.float32
    rows, columns = weight.shape
    device = weight.device
    h_orig = hessian.to(device, dtype)
    w = weight.detach().to(dtype).clone()

    h = h_orig.clone()
    diagonal = torch.arange(columns, device=device)
    dead = h[diagonal, diagonal] == 0
    h[diagonal[dead], diagonal[dead]] = 1  # a column never active: keep H invertible, its weight goes to zero
    w[:, dead] = 0
    damp = percdamp * torch.mean(h[diagonal, diagonal])
    h[diagonal, diagonal] += damp
    u = _upper_cholesky_of_inverse(h, name)
    del h

    pruned_total = 0
    obs_loss = torch.zeros((), dtype=dtype, device=device)
    for first in range(0, columns, blocksize):
        last = min(first + blocksize, columns)
        block = w[:, first:last].clone()
        u_block = u[first:last, first:last]
        u_diag = torch.diagonal(u_block)
        errors = torch.zeros_like(block)
        if nm is None:
            mask = _block_mask(block**2 / u_diag.reshape(1, -1) ** 2, sparsity)
        else:
            mask = torch.zeros_like(block, dtype=torch.bool)
        for col in range(last - first):
            if nm is not None and col % nm[1] == 0:
                group = block[:, col : col + nm[1]] ** 2 / u_diag[col : col + nm[1]].reshape(1, -1) ** 2
                chosen = torch.sort(group, dim=1, stable=True).indices[:, : nm[0]]
                mask[:, col : col + nm[1]].scatter_(1, chosen, True)
            pivot = u_block[col, col]
            removed = torch.where(mask[:, col], block[:, col], 0)  # w - q: the part of the column that is pruned
            obs_loss += (removed**2).sum() / pivot**2 / 2
            error = removed / pivot
            block[:, col:] -= error.unsqueeze(1) * u_block[col, col:].unsqueeze(0)
            errors[:, col] = error
        block[mask] = 0  # the OBS update leaves pruned entries at rounding-level values; they are exactly zero
        pruned_total += int(mask.sum())
        w[:, first:last] = block
        w[:, last:] -= errors @ u[first:last, last:]

    delta = w - weight.detach().to(dtype)
    recon = float((delta @ h_orig * delta).sum()) / 2
    dense = float((weight.detach().to(dtype) @ h_orig * weight.detach().to(dtype)).sum()) / 2
    weight.copy_(w.to(weight.dtype))
    return SparseGPTStats(
        name=name,
        rows=rows,
        columns=columns,
        pruned=pruned_total,
        dead_columns=int(dead.sum()),
        damp=float(damp),
        obs_loss=float(obs_loss),
        recon_error=recon,
        relative_error=recon / dense if dense > 0 else 0.0,
        seconds=time.perf_counter() - start,
    )
