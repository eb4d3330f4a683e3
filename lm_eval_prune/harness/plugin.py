"""Registering ``pruned-hf`` and ``pruned-vllm`` with lm-eval 0.4.13, which has no model plugin discovery.

A startup hook (``lm_eval_prune.pth``, plus ``lm_eval_prune.start`` for Pythons with PEP 829, both installed beside
the package by ``setup.py``, also by ``pip install -e``) calls :func:`register_at_startup` in lm-eval processes only.
A process is an lm-eval process by its entry point alone: the console scripts ``lm_eval``, ``lm-eval`` or
``lm-eval-prune`` (the first argument after the interpreter and its options), or ``-m lm_eval``. A folder or file
merely named like lm-eval (a clone in ``lm-eval-prune/``) does not count. The test is import-free code
(:data:`ARGV_TEST`) that the hook and :func:`is_lm_eval_process` both run, so they cannot disagree.

Registration imports ``lm_eval.models`` first, so lm-eval's own models (``hf``, ``vllm``) are registered before
ours, and adds lazy ``module:Class`` placeholders: torch, transformers and vLLM load only when the model is used.
In lm-eval processes it also guards ``simple_evaluate`` (:mod:`lm_eval_prune.harness.precheck`): bad model args
and task data errors of a ``pruned-*`` run print one line and exit 2 before the model loads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MODELS = {
    "pruned-hf": "lm_eval_prune.harness.hf:PrunedHFLM",
    "pruned-vllm": "lm_eval_prune.harness.vllm:PrunedVLLM",
}
ENTRY_SCRIPTS = ("lm_eval", "lm-eval", "lm-eval-prune")  # basenames of the console scripts
ENTRY_MODULES = ("lm_eval", "lm_eval.__main__")  # python -m ...
OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")  # interpreter options that take the next argument

# Import-free: ``a`` is the command line after the interpreter (``sys.orig_argv[1:]``); sets ``hit``. Skips the
# interpreter's options, stops at -c/-m/-/a script: ``-m`` must name lm_eval, a script must be a console script.
ARGV_TEST = (
    "while a and a[0][:1] == '-' and a[0] != '-' and a[0][:2] not in ('-c', '-m'):\n"
    f" a = a[2:] if a[0] in {OPTIONS_WITH_VALUE!r} else a[1:]\n"
    "if a and a[0][:2] == '-m':\n"
    f" hit = (a[0][2:] or ''.join(a[1:2])) in {ENTRY_MODULES!r}\n"
    "else:\n"
    " hit = bool(a) and a[0].replace(chr(92), '/').rsplit('/', 1)[-1].removesuffix('.exe')"
    f" in {ENTRY_SCRIPTS!r}\n"
)
# What the startup hook runs: the test, then (lm-eval processes only) the import of this module.
HOOK_CODE = (
    "a = list(sys.orig_argv[1:])\n"
    + ARGV_TEST
    + "if hit:\n try:\n  import lm_eval_prune.harness.plugin as p; p.register_at_startup()\n"
    + " except Exception:\n  pass\n"
)
# Every hit of ARGV_TEST passes this cheaper test first: most processes skip compiling HOOK_CODE (~0.3 ms).
PREFILTER = "'lm_eval' in str(sys.orig_argv[1:]).replace('-', '_')"
# The one line of the .pth file (site.py executes lines that start with "import").
PTH_NAME = "lm_eval_prune.pth"
PTH_LINE = f"import sys; {PREFILTER} and exec({HOOK_CODE!r})\n"
# PEP 829 (Python 3.15+): a .start file names an entry point, which is imported in every process, so it is a
# tiny top-level module that runs the same import-free code; a matching .start also disables the .pth's line.
START_NAME = "lm_eval_prune.start"
START_MODULE = "_lm_eval_prune_start"
START_LINE = f"{START_MODULE}:run\n"
START_MODULE_SOURCE = (
    '"""lm-eval-prune\'s startup entry point (lm_eval_prune.start, PEP 829), written by its setup.py from\n'
    'lm_eval_prune/harness/plugin.py: registers pruned-hf/pruned-vllm in lm-eval processes, imports nothing else."""\n'
    "\nimport sys\n\n\ndef run() -> None:\n"
    f"    {PREFILTER} and exec({HOOK_CODE!r})\n"
)


def is_lm_eval_process(orig_argv: Sequence[str]) -> bool:
    """True for ``lm_eval ...``, ``lm-eval ...``, ``lm-eval-prune ...`` and ``python [opts] -m lm_eval ...``.

    ``orig_argv`` is the full command line, interpreter first (``sys.orig_argv``). Runs :data:`ARGV_TEST`, the
    code of the startup hook itself.
    """
    scope = {"a": [str(arg) for arg in orig_argv[1:]]}
    exec(ARGV_TEST, {}, scope)
    return bool(scope["hit"])


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
    """Called by the startup hook: registers and guards simple_evaluate, only inside lm-eval processes; never raises."""
    try:
        if is_lm_eval_process(sys.orig_argv) and register():
            from lm_eval_prune.harness.precheck import install

            install()
    except Exception:  # a startup hook must never break the interpreter
        pass
