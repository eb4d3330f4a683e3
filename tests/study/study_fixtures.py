"""A tiny study on the scripted model: its data folder (problems whose thinking length the prompt decides)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# mode words decide the thinking: short 1 token, mid 3, long 6 (then </think>), endless never ends
PROBLEMS = ["question long", "endless", "question short", "question mid", "x question long", "endless question"]


def write_data(folder: Path, problems: list[str] = PROBLEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("aime24.jsonl", "amc23.jsonl"):
        rows = [
            {"id": i, "problem": p, "answer": "42" if name == "aime24.jsonl" else 42.0} for i, p in enumerate(problems)
        ]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def tiny_study(model: Path, data: Path, **changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "models": [str(model)],
        "backend": "hf",
        "model_args": {"device": "cpu", "batch_size": 4},
        "variants": [{"method": "none"}, {"method": "magnitude", "sparsity": 0.1}],
        "tasks": ["tts_aime24", "tts_amc23"],
        "budgets": [4, 8, 16],
        "gen_kwargs": {"thinking_n_ignore": 1, "max_gen_toks": 8, "do_sample": False},
        "seeds": [0, 1],
        "data_dir": str(data),
    }
    study.update(changes)
    return study
