"""What each pruning method and allocation is, without importing torch (config validation uses it)."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_prune.engine.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method: how weights are scored and compared."""

    name: str
    score: str  # "magnitude" (|W|), "wanda" (|W| * ||X_j||), "" (nothing pruned or structured)
    comparison: str  # "matrix" (one threshold per weight matrix) or "row" (per output row)
    structured: bool = False
    description: str = ""

    @property
    def uses_activations(self) -> bool:
        return self.score == "wanda"


@dataclass(frozen=True)
class AllocSpec:
    """A layer-wise sparsity allocation."""

    name: str
    needs_activations: bool
    description: str = ""


METHODS: Registry[MethodSpec] = Registry("method")
ALLOCATORS: Registry[AllocSpec] = Registry("alloc")

METHODS.add("none", MethodSpec("none", "", "", description="dense baseline: nothing is pruned"))
METHODS.add("magnitude", MethodSpec("magnitude", "magnitude", "matrix", description="|W|, one threshold per matrix"))
METHODS.add("wanda", MethodSpec("wanda", "wanda", "row", description="|W|*||X_j||_2, per output row"))

METHODS.add(
    "shortgpt", MethodSpec("shortgpt", "", "", structured=True, description="remove whole decoder blocks (ShortGPT)")
)

ALLOCATORS.add("uniform", AllocSpec("uniform", False, "every linear at the target sparsity"))
ALLOCATORS.add("owl", AllocSpec("owl", True, "outlier-weighed layer-wise sparsity (OWL)"))
ALLOCATORS.add("layerif", AllocSpec("layerif", False, "layer quality from influence scores (LayerIF)"))
