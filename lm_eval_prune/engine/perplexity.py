"""Perplexity of a causal LM on fixed token windows (for sanity checks and benchmarks)."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over ``ids`` [n, seqlen]."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in ids.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)
