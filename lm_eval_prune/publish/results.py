"""Reading lm-eval results files into flat records: which model and prune, which thinking budget, which scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("exact_match", "pass_at_k", "maj_at_k", "acc", "acc_norm")
VARYING_KEYS = frozenset({"max_tokens_thinking", "seed"})  # what may differ between runs put side by side


@dataclass(frozen=True)
class Variant:
    """What a leaderboard row compares: the base model and how it was pruned."""

    base_model: str
    method: str
    alloc: str
    sparsity: float
    pattern: str = "unstructured"
    drop_layers: int = 0

    @property
    def dense(self) -> bool:
        return self.method in ("dense", "none")

    @property
    def label(self) -> str:
        if self.dense:
            return "dense"
        if self.method == "shortgpt":
            return f"shortgpt -{self.drop_layers} blocks"
        pattern = "" if self.pattern == "unstructured" else f" {self.pattern}"
        return f"{self.method}-{self.alloc} {self.sparsity:g}{pattern}"


@dataclass
class Score:
    """One task score of one run."""

    variant: Variant
    budget: str
    task: str
    metric: str
    value: float
    seed: str
    settings: dict[str, Any]
    path: str


@dataclass
class Run:
    path: str
    variant: Variant
    prune: dict[str, Any] | None
    scores: list[Score] = field(default_factory=list)


def find_results(paths: list[str | Path]) -> list[Path]:
    """Every ``results*.json`` under the given files and folders, sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results*.json")))
        else:
            raise ValueError(f"results path {str(path)!r} does not exist")
    if not found:
        raise ValueError(f"no lm-eval results files (results*.json) under {', '.join(map(str, paths))}")
    return found


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    args = config.get("model_args") or {}
    if isinstance(args, str):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(args)
    return dict(args)


def read_run(path: str | Path) -> Run:
    """One lm-eval results file as a Run (dense ``hf``/``vllm`` runs get method ``dense``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        config, results = data["config"], data["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{str(path)!r} is not an lm-eval results file (needs 'config' and 'results')") from None
    args = model_args(config)
    prune = config.get("prune")
    base = str((prune or {}).get("base_model") or args.get("pretrained") or config.get("model_name") or "?")
    if prune and prune.get("config", {}).get("method") not in (None, "none"):
        pc = prune["config"]
        variant = Variant(
            base,
            pc["method"],
            pc.get("alloc", "uniform"),
            float(pc.get("sparsity", 0.0)),
            pc.get("pattern", "unstructured"),
            int(pc.get("drop_layers", 0)),
        )
        prune_seed = str(pc.get("seed", 0))
    else:
        variant, prune_seed = Variant(base, "dense", "-", 0.0), "-"
    run = Run(str(path), variant, prune)
    task_configs = data.get("configs", {})
    for task, values in results.items():
        gen = dict((task_configs.get(task) or {}).get("generation_kwargs") or {})
        budget = str(gen.get("max_tokens_thinking", "none"))
        settings = {k: v for k, v in sorted(gen.items()) if k not in VARYING_KEYS}
        settings["num_fewshot"] = (data.get("n-shot") or {}).get(task)
        settings["limit"] = config.get("limit")
        settings["apply_chat_template"] = (
            config.get("apply_chat_template", False)
            if "apply_chat_template" in config
            else data.get("chat_template") is not None
        )
        seed = f"{prune_seed}/{gen.get('seed', '-')}"
        for key, value in values.items():
            name = key.partition(",")[0]
            if name in METRICS and isinstance(value, (int, float)) and not name.endswith("_stderr"):
                run.scores.append(Score(variant, budget, task, name, float(value), seed, settings, str(path)))
    return run
