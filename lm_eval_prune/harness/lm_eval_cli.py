"""``lm-eval-prune eval``: lm-eval's own command line, with our models registered and our tasks included."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def tasks_dir() -> Path:
    """Where this package's task YAMLs are: the wheel installs ``tasks/`` as ``lm_eval_prune.tasks``; a process that
    imports the package from a source tree (``PYTHONPATH=.``, a subprocess started in the repository) finds them in
    the repository's ``tasks/``."""
    try:
        from lm_eval_prune.tasks import TASKS_DIR
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parents[2] / "tasks"
        if (source / "_tts_template_yaml").is_file():
            return source
        raise
    return TASKS_DIR


def include_our_tasks() -> None:
    """Make every lm-eval TaskManager of this process also index our tasks, beside any ``--include_path``."""
    from lm_eval.tasks import manager

    original = manager.TaskManager.__init__
    if getattr(original, "_lm_eval_prune", False):
        return

    def init(self: Any, verbosity: Any = None, include_path: Any = None, *args: Any, **kwargs: Any) -> None:
        paths = (
            list(include_path) if isinstance(include_path, (list, tuple)) else ([include_path] if include_path else [])
        )
        if str(tasks_dir()) not in map(str, paths):
            paths.append(tasks_dir())
        original(self, verbosity, paths, *args, **kwargs)

    init._lm_eval_prune = True  # type: ignore[attr-defined]
    manager.TaskManager.__init__ = init  # type: ignore[method-assign]


def run_lm_eval(args: Sequence[str]) -> None:
    """Run lm-eval's CLI with ``args`` in this process."""
    from lm_eval.__main__ import cli_evaluate

    from lm_eval_prune.harness.plugin import register
    from lm_eval_prune.harness.precheck import install

    register()
    install()  # pruned-* runs: bad args and task data errors as one line, exit 2, before the model loads
    include_our_tasks()
    saved = sys.argv
    sys.argv = ["lm_eval", *args]
    try:
        cli_evaluate()
    except ValueError as exc:
        if not str(exc).startswith("Tasks not found"):
            raise
        ours = ", ".join(sorted(p.stem for p in tasks_dir().glob("tts_*.yaml")))
        print(
            f"Error: {str(exc).splitlines()[0]} (this package's tasks: {ours}; lm-eval's: lm_eval ls tasks)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    finally:
        sys.argv = saved
