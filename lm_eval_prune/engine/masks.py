"""Pure tensor math: importance scores and pruning masks with exact counts (True = prune)."""

from __future__ import annotations

import torch


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in fp32."""
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, column_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| * sqrt(scaler_j), in fp32 (``column_sq_norm`` is Wanda's ``scaler_row``)."""
    return weight.detach().abs().float() * torch.sqrt(column_sq_norm.float().to(weight.device)).reshape(1, -1)


def _mask_from_indices(shape: torch.Size, flat_indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(shape.numel(), dtype=torch.bool, device=device)
    mask[flat_indices] = True
    return mask.reshape(shape)


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Within each output row, the ``int(d_in * sparsity)`` lowest scores (stable ascending order)."""
    k = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    return mask


def per_matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Over the whole matrix, exactly the ``int(numel * sparsity)`` lowest scores (stable ascending order)."""
    k = int(scores.numel() * sparsity)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    order = torch.sort(scores.flatten(), stable=True).indices[:k]
    return _mask_from_indices(scores.shape, order, scores.device)


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive input columns of each row, the ``n`` lowest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern {n}:{m} needs the input size {cols} to be a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.reshape(rows, cols)


def build_mask(scores: torch.Tensor, sparsity: float, comparison: str, nm: tuple[int, int] | None) -> torch.Tensor:
    """Dispatch to the N:M, per-row or per-matrix mask."""
    if nm is not None:
        return n_m_mask(scores, *nm)
    if comparison == "row":
        return per_row_mask(scores, sparsity)
    if comparison == "matrix":
        return per_matrix_mask(scores, sparsity)
    raise ValueError(f"comparison={comparison!r}; allowed: row, matrix")


@torch.no_grad()
def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the masked weights in place with ``masked_fill_`` (never ``W * mask``, which leaves -0.0)."""
    weight.masked_fill_(mask.to(weight.device), 0)


def outlier_percent(score_matrices: list[torch.Tensor], m: float) -> float:
    """OWL's D_l: 100 * share of the block's scores (all matrices together) above ``m`` times their mean."""
    total = sum(float(s.sum(dtype=torch.float64)) for s in score_matrices)
    count = sum(s.numel() for s in score_matrices)
    threshold = m * total / count
    outliers = sum(int((s > threshold).sum()) for s in score_matrices)
    return 100.0 * outliers / count
