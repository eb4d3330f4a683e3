"""Matplotlib figures (imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_layer_scores(
    scores: Sequence[float], sparsities: Sequence[float], kind: str, title: str, path: str | Path
) -> None:
    """Bars of the score per block, and the resulting sparsity per block on a second axis when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(scores)), 3.5))
    blocks = range(len(scores))
    ax.bar(blocks, scores, color="tab:blue", label=f"{kind} score")
    ax.set_xlabel("decoder block")
    ax.set_ylabel(f"{kind} score")
    if sparsities:
        twin = ax.twinx()
        twin.plot(blocks, sparsities, color="tab:red", marker="o", label="sparsity")
        twin.set_ylabel("sparsity")
    ax.set_title(str(title))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
