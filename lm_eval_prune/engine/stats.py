"""Forward-hook accumulators of activation statistics, with hooks always removed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class ColumnSqNorm:
    """Wanda's ``scaler_row``: running mean over sequences of the squared L2 norm of each input column.

    Update per batch of ``b`` sequences: ``scaler *= n/(n+b); n += b; scaler += ||X_j||^2 / n`` with the norm taken
    over all tokens of the batch, in fp32 (locuslab/wanda ``lib/layerwrapper.py``).
    """

    def __init__(self, columns: int, device: torch.device) -> None:
        self.scaler = torch.zeros(columns, dtype=torch.float32, device=device)
        self.nsamples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        batch = inputs.shape[0]
        flat = inputs.reshape(-1, inputs.shape[-1])
        self.scaler *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self.scaler += (
            torch.linalg.vector_norm(flat, ord=2, dim=0, dtype=torch.float32).to(self.scaler.device) ** 2
            / self.nsamples
        )


@contextmanager
def column_stats(linears: dict[str, nn.Linear]) -> Iterator[dict[str, ColumnSqNorm]]:
    """Hook every linear; yield name -> accumulator filled by the forwards run inside the block."""
    stats = {name: ColumnSqNorm(linear.in_features, linear.weight.device) for name, linear in linears.items()}
    handles = []
    for name, linear in linears.items():

        def hook(
            _module: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor, acc: ColumnSqNorm = stats[name]
        ) -> None:
            acc.add_batch(args[0].detach())

        handles.append(linear.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
