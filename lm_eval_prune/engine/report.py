"""`PruneReport`: what a prune did, serialised to ``prune_report.json``.

Torch-free on purpose: ``publish/`` and the leaderboard read reports on machines that never load a model.
Facts that code reads back are typed fields; ``extra`` holds free-form notes that nothing depends on.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError

REPORT_NAME = "prune_report.json"

# typed fields that older reports (0.1.0) kept in ``extra``
_MIGRATED_FROM_EXTRA = (
    "base_model",
    "revision",
    "removed_blocks",
    "block_influence",
    "removed_param_share",
    "layer_scores",
    "owl_outlier_percents",
)


@dataclass
class LayerRecord:
    """One pruned linear: its full name, the sparsity asked for and the one measured."""

    name: str
    target_sparsity: float
    sparsity: float
    numel: int


@dataclass
class RemovedBlock:
    """A decoder block that ShortGPT removed, with its Block Influence (None in ``tail`` mode)."""

    index: int
    block_influence: float | None


@dataclass
class PruneReport:
    """Settings, identity and measured outcome of one prune."""

    config: dict[str, Any]
    fingerprint: str  # the one identity: cache key, report and card fingerprint
    base_model: str = ""
    revision: str | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    block_sparsity: list[float] = field(default_factory=list)
    block_achieved_sparsity: list[float] = field(default_factory=list)
    overall_sparsity: float = 0.0
    removed_params: int = 0
    removed_blocks: list[RemovedBlock] = field(default_factory=list)
    removed_param_share: float = 0.0
    block_influence: list[float | None] = field(default_factory=list)
    layer_scores: list[float] | None = None
    owl_outlier_percents: list[float] | None = None
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
        total = sum(layer.numel for layer in self.layers) + self.removed_params  # removed blocks count as pruned
        zeros = sum(zeros_by_name[layer.name] for layer in self.layers) + self.removed_params
        self.overall_sparsity = zeros / total if total else 0.0
        by_block: dict[int, list[LayerRecord]] = {}
        for layer in self.layers:
            by_block.setdefault(block_index(layer.name), []).append(layer)
        self.block_achieved_sparsity = [
            sum(zeros_by_name[x.name] for x in records) / sum(x.numel for x in records)
            for _, records in sorted(by_block.items())
        ]

    @property
    def removed_indices(self) -> list[int]:
        return [block.index for block in self.removed_blocks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = "report") -> PruneReport:
        """A report from its JSON form (also 0.1.0 reports); one-line error when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise PruneConfigError(f"{where} is not a prune report (a JSON object with a 'config' object)")
        data = dict(data)
        extra = dict(data.get("extra") or {}) if isinstance(data.get("extra") or {}, dict) else {}
        for name in _MIGRATED_FROM_EXTRA:
            if name in extra and name not in data:
                data[name] = extra.pop(name)
        data["extra"] = extra
        known = {f.name for f in fields(cls)}
        try:
            data = {k: v for k, v in data.items() if k in known}
            data["layers"] = [LayerRecord(**layer) for layer in data.get("layers") or []]
            data["removed_blocks"] = [RemovedBlock(**block) for block in data.get("removed_blocks") or []]
            data.setdefault("fingerprint", "")
            report = cls(**data)
        except TypeError as exc:
            raise PruneConfigError(f"{where} has a malformed field ({exc})") from None
        problem = report.number_problem()
        if problem:
            raise PruneConfigError(f"{where} has a malformed field ({problem})")
        return report

    def number_problem(self) -> str | None:
        """What is not a finite number (a sparsity: in [0, 1]) among the measured fields, else None: a card or a
        leaderboard must not show NaN, and code that reads them back must not meet a string."""

        def bad(value: Any, unit: bool) -> bool:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return True
            return unit and not 0.0 <= value <= 1.0

        for name in ("overall_sparsity", "removed_param_share"):
            if bad(getattr(self, name), True):
                return f"{name}={getattr(self, name)!r}"
        if bad(self.seconds, False):
            return f"seconds={self.seconds!r}"
        for name in ("block_sparsity", "block_achieved_sparsity", "layer_scores", "owl_outlier_percents"):
            values = getattr(self, name)
            if values is None:
                continue
            if not isinstance(values, list):
                return f"{name} is not a list"
            unit = name.startswith("block")
            for value in values:
                if bad(value, unit):
                    return f"{name} holds {value!r}"
        for layer in self.layers:
            if not isinstance(layer.name, str) or bad(layer.sparsity, True) or bad(layer.target_sparsity, True):
                return f"layer {layer.name!r} has sparsity {layer.sparsity!r}"
        return None

    @classmethod
    def load(cls, directory: str | Path) -> PruneReport:
        path = Path(directory) / REPORT_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PruneConfigError(
                f"{str(directory)!r} has no {REPORT_NAME}; is it a checkpoint made by lm-eval-prune?"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PruneConfigError(f"{str(path)!r} is not readable JSON ({type(exc).__name__})") from None
        return cls.from_dict(data, repr(str(path)))


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
