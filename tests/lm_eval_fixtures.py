"""Tiny on-disk models, calibration text and task YAMLs for the lm-eval tests."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CORPUS, make_model, make_tokenizer

TASK_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""

LOGLIK_YAML = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: ["cat", "dog", "log"]
doc_to_target: 0
metric_list:
  - metric: acc
"""


def write_model(folder: Path, *, hidden: int = 64, arch: str = "llama") -> Path:
    """A tiny random model plus tokenizer saved as a checkpoint directory."""
    folder.mkdir(parents=True, exist_ok=True)
    make_model(arch, hidden=hidden, layers=2).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def write_calibration(folder: Path) -> Path:
    path = folder / "calib.txt"
    path.write_text(" ".join(CORPUS * 4))
    return path


def write_tasks(folder: Path) -> Path:
    tasks = folder / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny.jsonl"
    rows = [
        {"question": "the cat sat on the", "answer": "mat"},
        {"question": "one two three", "answer": "four"},
        {"question": "the answer is", "answer": "42"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tasks / "tiny_gen.yaml").write_text(TASK_YAML.format(data=data))
    (tasks / "tiny_choice.yaml").write_text(LOGLIK_YAML.format(data=data))
    return tasks
