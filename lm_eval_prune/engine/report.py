"""`PruneReport`: what a prune did, serialised to ``prune_report.json``."""

from __future__ import annotations

import json
import platform
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPORT_NAME = "prune_report.json"


@dataclass
class LayerRecord:
    """One pruned linear: its full name, the sparsity asked for and the one measured."""

    name: str
    target_sparsity: float
    sparsity: float
    numel: int


@dataclass
class PruneReport:
    config: dict[str, Any]
    fingerprint: str
    layers: list[LayerRecord] = field(default_factory=list)
    block_sparsity: list[float] = field(default_factory=list)
    block_achieved_sparsity: list[float] = field(default_factory=list)
    overall_sparsity: float = 0.0
    removed_params: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    passes: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def set_measured(self, zeros_by_name: dict[str, int]) -> None:
        """Fill the measured sparsities from zero counts of each linear's weight."""
        for layer in self.layers:
            layer.sparsity = zeros_by_name[layer.name] / layer.numel
        total = (
            sum(layer.numel for layer in self.layers) + self.removed_params
        )  # removed blocks count as pruned weights
        zeros = sum(zeros_by_name[layer.name] for layer in self.layers) + self.removed_params
        self.overall_sparsity = zeros / total if total else 0.0
        by_block: dict[int, list[LayerRecord]] = {}
        for layer in self.layers:
            by_block.setdefault(block_index(layer.name), []).append(layer)
        self.block_achieved_sparsity = [
            sum(zeros_by_name[x.name] for x in records) / sum(x.numel for x in records)
            for _, records in sorted(by_block.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PruneReport:
        data = json.loads((Path(directory) / REPORT_NAME).read_text())
        data["layers"] = [LayerRecord(**layer) for layer in data.get("layers", [])]
        return cls(**data)


def block_index(linear_name: str) -> int:
    """``model.layers.3.mlp.up_proj`` -> 3."""
    parts = linear_name.split(".")
    return int(parts[parts.index("layers") + 1])


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("lm-eval-prune", "torch", "transformers", "lm_eval", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"
