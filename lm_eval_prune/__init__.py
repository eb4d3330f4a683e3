"""lm-eval-prune: prune reasoning LLMs (Magnitude, Wanda, SparseGPT; Uniform, OWL, LayerIF), evaluate them with lm-eval.

Importing the package is cheap: torch and transformers load only when an engine function is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lm_eval_prune._version import __version__
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.errors import PruneConfigError

__all__ = ["PruneConfig", "PruneConfigError", "PruneReport", "__version__", "prune_"]

if TYPE_CHECKING:
    from lm_eval_prune.engine.pruner import prune_
    from lm_eval_prune.engine.report import PruneReport


def __getattr__(name: str) -> Any:
    if name == "prune_":
        from lm_eval_prune.engine.pruner import prune_

        return prune_
    if name == "PruneReport":
        from lm_eval_prune.engine.report import PruneReport

        return PruneReport
    raise AttributeError(name)
