"""Registering ``pruned-hf`` and ``pruned-vllm`` with lm-eval 0.4.13, which has no model plugin discovery.

A startup hook (``lm_eval_prune.pth``, installed beside the package) calls :func:`register_at_startup` in
processes whose command line mentions lm-eval; the check on the command line itself costs no import. Registration
imports ``lm_eval.models`` first, so lm-eval's own models (``hf``, ``vllm``) are registered before ours, and adds
lazy ``module:Class`` placeholders: torch, transformers and vLLM load only when the model is used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

MODELS = {
    "pruned-hf": "lm_eval_prune.harness.hf:PrunedHFLM",
    "pruned-vllm": "lm_eval_prune.harness.vllm:PrunedVLLM",
}

# The one line of the startup hook: a coarse, import-free test of the command line, then the precise one here.
PTH_LINE = (
    "import sys; exec(\"if any(('lm_eval' in a or 'lm-eval' in a) for a in getattr(sys, 'orig_argv', sys.argv)[:4]):\\n"
    ' try:\\n  import lm_eval_prune.harness.plugin as p; p.register_at_startup()\\n except Exception:\\n  pass")\n'
)


def is_lm_eval_process(argv: Sequence[str]) -> bool:
    """True for ``lm_eval ...``, ``lm-eval ...``, ``python -m lm_eval ...`` and ``lm-eval-prune ...`` command lines."""
    for index, arg in enumerate(argv[:4]):
        name = os.path.basename(arg)
        if name in ("lm_eval", "lm-eval", "lm-eval-prune") or (
            arg == "-m" and index + 1 < len(argv) and argv[index + 1].split(".")[0] == "lm_eval"
        ):
            return True
    return False


def register() -> bool:
    """Register our models after lm-eval's own; idempotent. False when lm-eval is not installed."""
    try:
        import lm_eval.models  # noqa: F401  (registers hf, vllm, ... first)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)
    return True


def register_at_startup() -> None:
    """Called by the startup hook: registers only inside lm-eval processes, never raises."""
    try:
        if is_lm_eval_process(list(getattr(sys, "orig_argv", sys.argv))):
            register()
    except Exception:  # a startup hook must never break the interpreter
        pass
