"""Reading lm-eval results files into flat records: which model and prune, which thinking budget, which scores.

A file counts as lm-eval results only in lm-eval's own layout (a ``results`` object, a ``config`` object and the
``configs``/``model_name`` lm-eval always writes); anything else is skipped with a one-line reason, never guessed at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.methods import METHODS
from lm_eval_prune.engine.report import REPORT_NAME, PruneReport
from lm_eval_prune.errors import PruneConfigError

ACCURACY_METRICS = frozenset({"exact_match", "pass_at_k", "maj_at_k", "acc", "acc_norm"})
VARYING_KEYS = frozenset({"max_tokens_thinking", "seed"})  # what may differ between runs put side by side
_NOT_SCORES = frozenset({"alias", "name", "sample_len", "samples"})


class NotResults(ValueError):
    """A file that is not an lm-eval results file; the message says why, in a few words."""


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
        if self.method in METHODS and METHODS.get(self.method).structured:
            return f"{self.method} -{self.drop_layers} blocks"
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
    higher_is_better: bool = True


@dataclass
class Run:
    path: str
    variant: Variant
    prune: dict[str, Any] | None
    scores: list[Score] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # scores left out (NaN, ...), one line each


def find_results(paths: list[str | Path]) -> list[Path]:
    """Files named on the command line, and every ``*.json`` under named folders (lm-eval writes
    ``DIR/<model>/results_<time>.json`` for ``--output_path DIR`` and ``X_<time>.json`` for ``--output_path X.json``).
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        else:
            raise PruneConfigError(f"results path {str(path)!r} does not exist; give lm-eval results files or folders")
    return found


def model_args(config: dict[str, Any]) -> dict[str, Any]:
    """``config.model_args`` as a dict (lm-eval keeps the command-line string or a dict)."""
    args = config.get("model_args") or {}
    if isinstance(args, str):
        args = parse_args_string(args)
    return dict(args) if isinstance(args, dict) else {}


def parse_args_string(text: str) -> dict[str, str]:
    """lm-eval's ``key=value,key=value`` model-args string as a dict of strings (values kept as written)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _obj(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (lm-eval files written by other versions vary)."""
    return value if isinstance(value, dict) else {}


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _load_layout(path: Path) -> dict[str, Any]:
    """The parsed file when it has lm-eval's results layout, else NotResults with the reason."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NotResults(f"not readable ({type(exc).__name__})") from None
    except json.JSONDecodeError:
        raise NotResults("not JSON") from None
    if not isinstance(data, dict):
        raise NotResults(f"a JSON {_kind(data)}, not lm-eval results (an object)")
    if "results" not in data:
        raise NotResults("no 'results' object: not lm-eval results")
    for key in ("results", "config"):
        if not isinstance(data.get(key), dict):
            raise NotResults(f"'{key}' is {_kind(data.get(key))}, not an object as lm-eval writes it")
    if not isinstance(data.get("configs"), dict) and not isinstance(data.get("model_name"), str):
        raise NotResults("no 'configs' or 'model_name': not written by lm-eval")
    prune = data["config"].get("prune")
    if prune is not None and not (isinstance(prune, dict) and isinstance(prune.get("config", {}), dict)):
        raise NotResults("'config.prune' is not an object with a 'config' object")
    return data


def _prune_base(prune: dict[str, Any]) -> str:
    extra = _obj(prune.get("extra"))
    return str(prune.get("base_model") or extra.get("base_model") or "")


def checkpoint_report(pretrained: object) -> PruneReport | None:
    """The prune report beside a local checkpoint evaluated with stock ``hf``/``vllm`` (None when there is none)."""
    if not isinstance(pretrained, str) or not pretrained:
        return None
    try:
        if not (Path(pretrained) / REPORT_NAME).is_file():
            return None
    except OSError:
        return None
    try:
        return PruneReport.load(pretrained)
    except PruneConfigError as exc:
        raise NotResults(f"pretrained={pretrained} has a {REPORT_NAME} that cannot be read ({exc})") from None


def _variant(config: dict[str, Any], args: dict[str, Any], model_name: object) -> tuple[Variant, dict | None, str]:
    """(variant, prune record, prune seed) from the results' config or the report beside the evaluated weights."""
    prune = config.get("prune")
    pretrained = args.get("pretrained")
    if not (prune and prune.get("config", {}).get("method") not in (None, "none", "dense")):
        report = checkpoint_report(pretrained)
        if report is not None:
            prune = {"config": report.config, "fingerprint": report.fingerprint, "base_model": report.base_model}
    if prune and prune.get("config", {}).get("method") not in (None, "none", "dense"):
        pc = prune["config"]
        base = _prune_base(prune) or str(pretrained or model_name or "?")
        try:
            variant = Variant(
                base,
                str(pc["method"]),
                str(pc.get("alloc", "uniform")),
                float(pc.get("sparsity", 0.0)),
                str(pc.get("pattern", "unstructured")),
                int(pc.get("drop_layers", 0)),
            )
        except (TypeError, ValueError):
            raise NotResults("'config.prune.config' has a malformed sparsity or drop_layers") from None
        return variant, prune, str(pc.get("seed", 0))
    base = (_prune_base(prune) if prune else "") or str(pretrained or model_name or "?")
    return Variant(base, "dense", "-", 0.0), None, "-"


def read_run(path: str | Path) -> Run:
    """One lm-eval results file as a Run (dense ``hf``/``vllm`` runs get method ``dense``); NotResults otherwise."""
    path = Path(path)
    data = _load_layout(path)
    config = data["config"]
    args = model_args(config)
    variant, prune, prune_seed = _variant(config, args, data.get("model_name"))
    run = Run(str(path), variant, prune)
    task_configs, n_shot, better = (
        _obj(data.get("configs")),
        _obj(data.get("n-shot")),
        _obj(data.get("higher_is_better")),
    )
    for task, values in data["results"].items():
        if not isinstance(values, dict):
            run.notes.append(f"task {task}: results entry is {_kind(values)}, not an object; left out")
            continue
        gen = dict(_obj(_obj(task_configs.get(task)).get("generation_kwargs")))
        budget = str(gen.get("max_tokens_thinking", "none"))
        settings = {k: v for k, v in sorted(gen.items()) if k not in VARYING_KEYS}
        settings["num_fewshot"] = n_shot.get(task)
        settings["limit"] = config.get("limit")
        settings["apply_chat_template"] = (
            config.get("apply_chat_template", False)
            if "apply_chat_template" in config
            else data.get("chat_template") is not None
        )
        seed = f"{prune_seed}/{gen.get('seed', '-')}"
        task_better = _obj(better.get(task))
        for key, value in values.items():
            name = key.partition(",")[0]
            if name in _NOT_SCORES or name.endswith("_stderr") or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue  # "N/A" and other non-numbers are not scores
            if not math.isfinite(value):
                run.notes.append(f"task {task}: {name} is {value}; left out")
                continue
            hib = task_better.get(name)
            score = Score(variant, budget, task, name, float(value), seed, settings, str(path))
            score.higher_is_better = hib if isinstance(hib, bool) else True
            run.scores.append(score)
    return run


def read_runs(paths: list[str | Path], on_skip: Callable[[str], None]) -> list[Run]:
    """Every results file under ``paths`` as a Run; each file skipped, and each score left out, told in one line."""
    runs = []
    for path in find_results(paths):
        try:
            run = read_run(path)
        except NotResults as exc:
            on_skip(f"skipped {path}: {exc}")
            continue
        for note in run.notes:
            on_skip(f"{path}: {note}")
        runs.append(run)
    return runs
