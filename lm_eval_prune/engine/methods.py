"""The registries of pruning methods and layer-wise allocations: each entry names its behaviour and its settings.

Torch-free on purpose (settings checks use it): behaviour is named as ``"module:function"`` and imported on first
call. Adding a method or an allocation is one module plus one entry here; nothing else dispatches on their names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lm_eval_prune.engine.registry import Registry

MethodKind = Literal["dense", "unstructured", "structured"]


@dataclass(frozen=True)
class Lazy:
    """A function named ``module:attribute``, imported when first called (keeps torch out of settings checks)."""

    target: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.target.partition(":")
        function: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return function(*args, **kwargs)


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method.

    ``prune`` prunes one linear in place (unstructured methods); ``statistics`` is a context manager over a block's
    linears that hooks them and yields one statistic per linear (Wanda's column norms, SparseGPT's Hessians), filled by
    the block's forward on the calibration inputs; ``settings`` are the config fields only this method uses.
    """

    name: str
    kind: MethodKind
    description: str
    prune: Lazy | None = None
    statistics: Lazy | None = None
    settings: tuple[str, ...] = ()

    @property
    def uses_activations(self) -> bool:
        return self.statistics is not None

    @property
    def structured(self) -> bool:
        return self.kind == "structured"

    @property
    def dense(self) -> bool:
        return self.kind == "dense"


@dataclass(frozen=True)
class AllocSpec:
    """A layer-wise sparsity allocation: ``allocate(AllocationInputs) -> one sparsity per block``."""

    name: str
    description: str
    allocate: Lazy
    needs_activations: bool = False
    settings: tuple[str, ...] = ()
    layer_scores: bool = False  # reads one score per block: from a score file, or computed from text sources
    device_dependent: bool = False  # computes on the prune device without calibration (results round per kernel)


METHODS: Registry[MethodSpec] = Registry("method")
ALLOCATORS: Registry[AllocSpec] = Registry("alloc")

_SCORES = "lm_eval_prune.engine.scoring"
_ALLOC = "lm_eval_prune.engine.allocators"

METHODS.add("none", MethodSpec("none", "dense", "dense baseline: nothing is pruned"))
METHODS.add(
    "magnitude", MethodSpec("magnitude", "unstructured", "|W|, one threshold per matrix", Lazy(f"{_SCORES}:magnitude"))
)
METHODS.add(
    "wanda",
    MethodSpec(
        "wanda",
        "unstructured",
        "|W|*||X_j||_2, per output row",
        Lazy(f"{_SCORES}:wanda"),
        Lazy("lm_eval_prune.engine.stats:column_stats"),
    ),
)
METHODS.add(
    "sparsegpt",
    MethodSpec(
        "sparsegpt",
        "unstructured",
        "OBS masks and weight reconstruction from H = 2XX^T (SparseGPT)",
        Lazy(f"{_SCORES}:sparsegpt"),
        Lazy("lm_eval_prune.engine.sparsegpt:hessians"),
        settings=("percdamp", "blocksize"),
    ),
)
METHODS.add(
    "shortgpt",
    MethodSpec(
        "shortgpt",
        "structured",
        "remove whole decoder blocks of lowest Block Influence (ShortGPT)",
        settings=("drop_layers", "shortgpt_mode"),
    ),
)

ALLOCATORS.add("uniform", AllocSpec("uniform", "every linear at the target sparsity", Lazy(f"{_ALLOC}:uniform")))
ALLOCATORS.add(
    "owl",
    AllocSpec(
        "owl",
        "outlier-weighed layer-wise sparsity (OWL)",
        Lazy(f"{_ALLOC}:owl"),
        needs_activations=True,
        settings=("owl_m", "owl_lambda"),
    ),
)
ALLOCATORS.add(
    "layerif",
    AllocSpec(
        "layerif",
        "layer quality from influence scores (LayerIF)",
        Lazy(f"{_ALLOC}:layerif"),
        layer_scores=True,
        settings=(
            "layerif_eps",
            "layerif_scores",
            "layerif_train",
            "layerif_val",
            "layerif_hessian",
            "layerif_modules",
            "layerif_nsamples",
            "layerif_val_nsamples",
            "layerif_seqlen",
        ),
    ),
)

ALLOCATORS.add(
    "alphapruning",
    AllocSpec(
        "alphapruning",
        "heavy-tail exponent of each block's weight spectra, data-free (AlphaPruning)",
        Lazy(f"{_ALLOC}:alphapruning"),
        settings=("alpha_eps",),
        device_dependent=True,
    ),
)


def owner_of(setting: str) -> str | None:
    """``"method=shortgpt"`` / ``"alloc=owl"`` for a setting that belongs to one entry, else None."""
    for name in METHODS:
        if setting in METHODS.get(name).settings:
            return f"method={name}"
    for name in ALLOCATORS:
        if setting in ALLOCATORS.get(name).settings:
            return f"alloc={name}"
    return None
