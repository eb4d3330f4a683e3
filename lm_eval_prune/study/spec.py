"""``STUDY.yaml``: the study's grid, read and checked before any work; every error is one line naming the key.

List-valued keys of one ``variants`` entry expand as a product within that entry. Checks in two stages: the values
(:func:`parse_spec`: keys, kinds, prune settings) and the world (:func:`check_environment`: models' contexts against
the budgets, task names, the data folder and calibration files), both before any model loads.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.methods import METHODS
from lm_eval_prune.errors import PruneConfigError

BACKENDS = ("hf", "vllm")
CALIBRATION_KEYS = {"source": "calibration", "nsamples": "nsamples", "seqlen": "seqlen", "seed": "seed"}
LIST_KEYS = ("models", "variants", "tasks", "budgets", "seeds")
SCALAR_KEYS = ("backend", "data_dir", "limit", "ladder", "prune_cache", "output")
MAPPING_KEYS = ("model_args", "calibration", "gen_kwargs")
TOP_KEYS = (*LIST_KEYS, *SCALAR_KEYS, *MAPPING_KEYS)
OUR_TASK_FILES = {  # our task -> the data file it reads from data_dir (harness/task_data.py SOURCES)
    "tts_aime24": "aime24.jsonl",
    "tts_amc23": "amc23.jsonl",
    "tts_math500": "math500.jsonl",
    "tts_gpqa_diamond": "gpqa_diamond.csv",
}
KNOWN_SIZES = {"tts_aime24": 30, "tts_amc23": 40, "tts_math500": 500, "tts_gpqa_diamond": 198}


@dataclass(frozen=True)
class VariantSpec:
    """One pruned (or dense) variant: its settings as given and the validated config."""

    name: str
    settings: tuple[tuple[str, Any], ...]
    config: PruneConfig

    @property
    def model_args(self) -> dict[str, Any]:
        return dict(self.settings)


@dataclass
class StudySpec:
    models: list[str]
    variants: list[VariantSpec]
    tasks: list[str]
    budgets: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    backend: str = "hf"
    model_args: dict[str, Any] = field(default_factory=dict)
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    limit: int | float | None = None
    ladder: bool = True
    prune_cache: str | None = None
    output: str | None = None
    source: str = "STUDY.yaml"


def _fail(where: str, message: str) -> PruneConfigError:
    return PruneConfigError(f"{where}: {message}")


def _unknown(where: str, key: str, allowed: tuple[str, ...] | list[str]) -> PruneConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return _fail(where, f"unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _scalar(where: str, key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        kind = "a list" if isinstance(value, (list, tuple)) else "a mapping"
        raise _fail(where, f"{key} must be a single value, not {kind} ({value!r})")
    return value


def _list(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kind):
            raise _fail(where, f"{key} holds {item!r}; each entry must be a {_kind_name(kind)}")
    if not items:
        raise _fail(where, f"{key} is empty; give at least one")
    if len(set(map(repr, items))) != len(items):
        raise _fail(where, f"{key} lists a value twice: {items!r}")
    return items


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {"str": "string", "int": "integer", "float": "number", "dict": "mapping"}[k.__name__] for k in kinds
    )


def _variant_name(settings: dict[str, Any], config: PruneConfig) -> str:
    """A folder-safe name: ``dense``, ``shortgpt-drop2``, ``wanda-owl-0.2`` (+ any other given setting)."""
    if config.is_dense and config.method in ("none", "dense"):
        name = "dense"
        shown: set[str] = {"method"}
    elif config.method_spec.structured:
        name, shown = f"{config.method}-drop{config.drop_layers}", {"method", "drop_layers"}
    else:
        name, shown = f"{config.method}-{config.alloc}-{config.sparsity:g}", {"method", "alloc", "sparsity"}
    for key in sorted(set(settings) - shown):
        name += f"-{key}{settings[key]}"
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).replace(":", "_")


def expand_variants(entries: Any, calibration: dict[str, Any], where: str) -> list[VariantSpec]:
    """Each entry's list-valued keys as a product; each result checked as a PruneConfig."""
    if not isinstance(entries, list) or not entries:
        raise _fail(where, "variants must be a non-empty list of mappings such as {method: wanda, sparsity: 0.2}")
    allowed = tuple(k for k in PruneConfig.keys() if k not in ("device", "offload"))
    out: list[VariantSpec] = []
    for number, entry in enumerate(entries):
        here = f"{where}: variants[{number}]"
        if not isinstance(entry, dict):
            raise PruneConfigError(f"{here} is {entry!r}; each variant must be a mapping such as {{method: wanda}}")
        for key, value in entry.items():
            if key not in allowed:
                raise _unknown(here, str(key), allowed)
            for item in value if isinstance(value, list) else [value]:
                _scalar(here, f"{key} entry", item)
        given = entry.get("method")
        methods: list[Any] = given if isinstance(given, list) else [given]
        structured = [str(m) for m in methods if str(m) in METHODS and METHODS.get(str(m)).structured]
        if structured and "alloc" in entry:
            raise PruneConfigError(
                f"{here}.alloc: method {structured[0]} removes whole blocks and takes no alloc; drop the key"
            )
        keys = list(entry)
        choices = [entry[k] if isinstance(entry[k], list) else [entry[k]] for k in keys]
        for combo in itertools.product(*choices):
            settings = dict(zip(keys, combo, strict=True))
            try:
                config = PruneConfig.from_mapping({**calibration, **settings})
            except PruneConfigError as exc:
                raise PruneConfigError(f"{here}: {exc}") from None
            out.append(VariantSpec(_variant_name(settings, config), tuple(settings.items()), config))
    names = [v.name for v in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(where, f"variants give {twice[0]!r} more than once")
    return out


def parse_spec(data: Any, source: str = "STUDY.yaml") -> StudySpec:
    """The study from a parsed YAML mapping; one-line PruneConfigError naming the key for anything wrong."""
    if not isinstance(data, dict):
        raise PruneConfigError(f"{source}: must be a mapping of keys ({', '.join(TOP_KEYS)}), got {data!r}")
    for key in data:
        if key not in TOP_KEYS:
            raise _unknown(source, str(key), TOP_KEYS)
    for key in ("models", "variants", "tasks", "budgets"):
        if key not in data:
            raise _fail(source, f"{key} is missing")
    for key in SCALAR_KEYS:
        if key in data:
            _scalar(source, key, data[key])
    for key in MAPPING_KEYS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _fail(source, f"{key} must be a mapping (key: value), not {data[key]!r}")
        for sub, value in (data.get(key) or {}).items():
            if not (key == "gen_kwargs" and sub == "until"):
                _scalar(source, f"{key}.{sub}", value)
    backend = str(data.get("backend", "hf"))
    if backend not in BACKENDS:
        raise _fail(source, f"backend {backend!r} is not allowed; use {' or '.join(BACKENDS)}")
    calibration_given = dict(data.get("calibration") or {})
    for key in calibration_given:
        if key not in CALIBRATION_KEYS:
            raise _unknown(f"{source}: calibration", str(key), tuple(CALIBRATION_KEYS))
    calibration = {CALIBRATION_KEYS[k]: v for k, v in calibration_given.items()}
    budgets = _list(source, "budgets", data["budgets"], int)
    for budget in budgets:
        if budget < 1:
            raise _fail(source, f"budgets holds {budget}; each budget must be >= 1 token")
    gen_kwargs = dict(data.get("gen_kwargs") or {})
    if "max_tokens_thinking" in gen_kwargs:
        raise _fail(source, "gen_kwargs.max_tokens_thinking is set by budgets; drop it")
    if "seed" in gen_kwargs:
        raise _fail(source, "gen_kwargs.seed is set by seeds; drop it")
    limit = data.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise _fail(source, f"limit {limit!r} must be a positive number of problems (or a fraction below 1)")
    ladder = data.get("ladder", True)
    if not isinstance(ladder, bool):
        raise _fail(source, f"ladder {ladder!r} must be true or false")
    return StudySpec(
        models=_list(source, "models", data["models"], str),
        variants=expand_variants(data["variants"], calibration, source),
        tasks=_list(source, "tasks", data["tasks"], str),
        budgets=budgets,
        seeds=_list(source, "seeds", data.get("seeds", [0]), int),
        backend=backend,
        model_args=dict(data.get("model_args") or {}),
        gen_kwargs=gen_kwargs,
        data_dir=None if data.get("data_dir") is None else str(data["data_dir"]),
        limit=limit,
        ladder=ladder,
        prune_cache=None if data.get("prune_cache") is None else str(data["prune_cache"]),
        output=None if data.get("output") is None else str(data["output"]),
        source=source,
    )


def load_spec(path: str | Path) -> StudySpec:
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PruneConfigError(f"study file {str(path)!r} cannot be read ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PruneConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(data, path.name)


# ----------------------------------------------------------------------------------------------- the world
def model_context(model: str, model_args: dict[str, Any]) -> int:
    """Tokens the engine can hold: ``max_model_len``/``max_length`` when given, else the config's positions."""
    for key in ("max_model_len", "max_length"):
        if model_args.get(key):
            return int(model_args[key])
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, revision=model_args.get("revision"))
    except (OSError, ValueError) as exc:
        raise PruneConfigError(f"models: {model!r} cannot be read ({str(exc).splitlines()[0]})") from None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise PruneConfigError(f"models: {model!r} states no context length; give model_args.max_model_len")


def our_tasks() -> set[str]:
    from lm_eval_prune.harness.lm_eval_cli import tasks_dir

    return {p.stem for p in tasks_dir().glob("*.yaml")}


def check_tasks(tasks: list[str], source: str) -> None:
    """Our tasks by their YAML names; others against lm-eval's index (built only when needed: it takes seconds)."""
    unknown = [t for t in tasks if t not in our_tasks()]
    if not unknown:
        return
    from lm_eval_prune.harness.evaluate import known_tasks

    known = known_tasks()
    for task in unknown:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, f"tasks: unknown task {task!r}{hint}; see `lm-eval-prune eval ls tasks`")


def check_data_dir(spec: StudySpec) -> None:
    if spec.data_dir is None:
        return
    folder = Path(spec.data_dir)
    if not folder.is_dir():
        raise _fail(spec.source, f"data_dir {spec.data_dir!r} is not a folder")
    for task in spec.tasks:
        name = OUR_TASK_FILES.get(task)
        if name and not (folder / name).is_file():
            raise _fail(spec.source, f"data_dir {spec.data_dir!r} has no {name} (task {task} reads it)")


def check_environment(spec: StudySpec) -> dict[str, int]:
    """Everything outside the file, before any work: the models' contexts (returned), tasks, data, calibration."""
    from lm_eval_prune.store.pipeline import check_sources

    check_data_dir(spec)
    check_tasks(spec.tasks, spec.source)
    for variant in spec.variants:
        try:
            check_sources(variant.config)
        except PruneConfigError as exc:
            raise _fail(spec.source, f"variant {variant.name}: {exc}") from None
    contexts = {}
    for model in spec.models:
        contexts[model] = model_context(model, spec.model_args)
        largest = max(spec.budgets)
        if largest >= contexts[model]:
            raise _fail(
                spec.source,
                f"budgets: {largest} is not below the context of {model} ({contexts[model]} tokens);"
                " lower it or raise model_args.max_model_len",
            )
    return contexts
