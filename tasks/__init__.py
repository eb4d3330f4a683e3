"""lm-eval task YAMLs of lm-eval-prune (installed as ``lm_eval_prune.tasks``); pass this folder as --include_path."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
