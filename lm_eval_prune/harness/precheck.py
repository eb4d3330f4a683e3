"""Checks a ``pruned-*`` lm-eval run makes before its model loads, so user errors cost one line, not a traceback.

In lm-eval processes (the startup hook, ``lm-eval-prune eval``) :func:`install` guards ``simple_evaluate``, which
lm-eval's CLI looks up on the ``lm_eval`` package at call time (console script and ``python -m lm_eval`` alike).
For ``pruned-hf``/``pruned-vllm`` the guard (a) validates the model args, (b) builds the tasks before the model
loads, so task data errors come first, and passes the built tasks on, (c) checks the thinking markers of every
generate_until task against the tokenizer, and (d) turns any :class:`PruneConfigError` into ``Error: ...`` on
stderr and exit code 2. Other models, and Python callers of ``simple_evaluate``, are untouched.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

from lm_eval_prune.errors import PruneConfigError

PRUNED_MODELS = ("pruned-hf", "pruned-vllm")
EXIT_CODE = 2


def parse_model_args(model_args: str | dict[str, Any] | None) -> dict[str, Any]:
    """``--model_args`` as the model class receives it (lm-eval's own parser for strings)."""
    if isinstance(model_args, dict):
        return dict(model_args)
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(model_args or "")


def check_model_args(model_name: str, model_args: str | dict[str, Any] | None) -> Any:
    """The :class:`~lm_eval_prune.store.pipeline.PruneRequest` of a ``pruned-*`` run; PruneConfigError when invalid.

    Also checks the files the settings name (exist, right kind, not empty), all without loading the model.
    """
    from lm_eval_prune.store.pipeline import check_cache, check_sources, split_model_args

    kwargs = parse_model_args(model_args)
    pretrained = kwargs.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise PruneConfigError(
            f"{model_name} needs pretrained=MODEL in --model_args (a Hub id or a model directory); "
            f"got {'nothing' if pretrained is None else repr(pretrained)}"
        )
    check_dtype(model_name, kwargs.get("dtype"))
    if model_name == "pruned-vllm":
        kwargs.pop("vllm_seed", None)
        try:
            from lm_eval_prune.harness.vllm import VLLM_KEYS as passthrough
        except ImportError as exc:  # its message says what to install
            raise PruneConfigError(str(exc).splitlines()[0]) from None
    else:
        from lm_eval_prune.harness.hf import HFLM_KEYS as passthrough
    request, _ = split_model_args(kwargs, passthrough)
    if not request.dense:
        from lm_eval_prune.store.cache import builder_rank

        check_sources(request.config)
        check_cache(request)
        builder_rank()  # RANK / WORLD_SIZE / the wait, as numbers (lm-eval's own int() of them is a traceback)
    return request


HF_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")


def check_dtype(model_name: str, dtype: Any) -> None:
    """``dtype=`` of the model args: a floating type the model class can load (int8 or a typo fails deep inside)."""
    if dtype is None:
        return
    allowed = VLLM_DTYPES if model_name == "pruned-vllm" else HF_DTYPES
    if str(dtype) not in allowed:
        raise PruneConfigError(f"dtype={dtype!r} is not allowed; use {', '.join(allowed)}")


def check_twice(model_args: dict[str, Any], arguments: dict[str, Any]) -> None:
    """lm-eval passes ``--device``, ``--batch_size`` and ``--max_batch_size`` to the model as keywords: the same key
    in --model_args too is a TypeError inside lm-eval ("got multiple values")."""
    for key in ("device", "batch_size", "max_batch_size"):
        if arguments.get(key) is not None and key in model_args:
            raise PruneConfigError(
                f"{key} is given twice: --{key} {arguments[key]} and {key}={model_args[key]} in --model_args; "
                f"give it once, as --{key}"
            )


def top_level(loaded: dict[str, Any]) -> list[Any]:
    """The built groups and loose tasks of a ``TaskManager.load`` result: loading them again gives the same dict."""
    groups, tasks = loaded.get("groups", {}), loaded.get("tasks", {})
    in_groups = {task.task_name for group in groups.values() for task in group.get_all_tasks()}
    subgroups = {sub.name for group in groups.values() for sub in group.get_all_groups()}
    return [g for name, g in groups.items() if name not in subgroups] + [
        t for name, t in tasks.items() if name not in in_groups
    ]


def check_generation(model_args: dict[str, Any], tasks: dict[str, Any], gen_kwargs: Any) -> None:
    """Thinking markers of each generate_until task (its generation_kwargs plus ``--gen_kwargs``) vs the tokenizer."""
    try:
        from lm_eval_prune.generation.protocol import check_thinking_markers  # type: ignore[attr-defined]
    except ImportError:  # not there yet: the model reports marker problems when it generates
        return
    generating = [t for t in tasks.values() if t.get_config("output_type") == "generate_until"]
    source = model_args.get("tokenizer") or model_args.get("pretrained")
    if not generating or not isinstance(source, str):
        return
    user = parse_model_args(gen_kwargs) if isinstance(gen_kwargs, str) else dict(gen_kwargs or {})
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            source,
            revision=model_args.get("revision") or None,
            trust_remote_code=bool(model_args.get("trust_remote_code", False)),
        )
    except Exception:  # the model's own load names a missing or broken tokenizer better
        return
    for task in generating:
        merged = {**(task.get_config("generation_kwargs") or {}), **user}
        check_thinking_markers(tokenizer, merged)
        check_gen_kwargs(tokenizer, merged)


def check_gen_kwargs(tokenizer: Any, gen_kwargs: dict[str, Any]) -> None:
    """Parse a task's gen_kwargs as the model will for each request (unknown keys, budgets, numbers), so a typo in
    --gen_kwargs is one line before the model loads and prunes, not a traceback at the first request."""
    try:
        from lm_eval_prune.generation import protocol
    except ImportError:
        return
    parse, build = getattr(protocol, "parse_gen_kwargs", None), getattr(protocol, "Sampling", None)
    if parse is None or list(inspect.signature(parse).parameters)[:4] != [
        "gen_kwargs",
        "eos_text",
        "default_max_gen_toks",
        "tokenizer",
    ]:
        return  # another protocol version: the model checks at generation time
    try:
        plan = parse(gen_kwargs, str(getattr(tokenizer, "eos_token", "") or ""), 256, tokenizer)
        if build is not None and hasattr(build, "build"):
            build.build(max(int(plan.max_gen_toks), 1), dict(getattr(plan, "answer", {}) or {}))
            thinking = dict(getattr(plan, "thinking", None) or {})
            budget = thinking.pop("max_tokens", 1)
            if thinking or budget != 1:
                build.build(1 if str(budget) == "auto" else max(int(budget), 1), thinking)
    except PruneConfigError:
        raise
    except (ValueError, TypeError) as exc:
        culprits = [f"{k}={v}" for k, v in gen_kwargs.items() if k != "until" and repr(str(v)) in str(exc)]
        shown = culprits[0] if culprits else ",".join(f"{k}={v}" for k, v in gen_kwargs.items() if k != "until")
        raise PruneConfigError(
            f"gen_kwargs {shown[:200]} is not allowed: a number is expected ({str(exc)[:120]})"
        ) from None


def prepare(arguments: dict[str, Any]) -> None:
    """(a)-(c) on ``simple_evaluate``'s bound arguments, which get the built tasks and the task manager."""
    check_model_args(arguments["model"], arguments.get("model_args"))
    check_twice(parse_model_args(arguments.get("model_args")), arguments)
    tasks = arguments.get("tasks")
    if not tasks:
        return  # simple_evaluate's own error
    manager = arguments.get("task_manager")
    if manager is None:  # the manager simple_evaluate would make
        from lm_eval.tasks import TaskManager

        metadata = parse_model_args(arguments.get("model_args")) | (arguments.get("metadata") or {})
        manager = TaskManager(metadata=metadata)
        arguments["task_manager"] = manager
    loaded = manager.load(tasks if isinstance(tasks, list) else [tasks])
    check_generation(parse_model_args(arguments.get("model_args")), loaded["tasks"], arguments.get("gen_kwargs"))
    if not arguments.get("check_integrity"):  # run_task_tests needs names
        arguments["tasks"] = top_level(loaded)


def guarded(simple_evaluate: Callable[..., Any]) -> Callable[..., Any]:
    """``simple_evaluate`` with the checks above for pruned-* models; idempotent."""
    if getattr(simple_evaluate, "_lm_eval_prune", False):
        return simple_evaluate
    signature = inspect.signature(simple_evaluate)

    @functools.wraps(simple_evaluate)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("model") not in PRUNED_MODELS:
            return simple_evaluate(*args, **kwargs)
        try:
            prepare(bound.arguments)
            return simple_evaluate(*bound.args, **bound.kwargs)
        except PruneConfigError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CODE) from None

    run._lm_eval_prune = True  # type: ignore[attr-defined]
    return run


def install() -> None:
    """Guard the ``simple_evaluate`` that ``from lm_eval import simple_evaluate`` returns; idempotent, cheap.

    lm-eval 0.4.13 loads ``lm_eval.evaluator`` (about 0.8 s) lazily through the package's ``__getattr__``; wrapping
    that lookup keeps the hook from paying it in ``lm_eval --help`` or ``ls``.
    """
    import lm_eval

    lookup = lm_eval.__dict__.get("__getattr__")
    if getattr(lookup, "_lm_eval_prune", False):
        return
    if lookup is None or "simple_evaluate" in lm_eval.__dict__:  # an lm-eval that imports it eagerly
        import lm_eval.evaluator as evaluator

        evaluator.simple_evaluate = guarded(evaluator.simple_evaluate)
        lm_eval.simple_evaluate = evaluator.simple_evaluate  # type: ignore[attr-defined]
        return

    def package_getattr(name: str) -> Any:
        value = lookup(name)
        if name != "simple_evaluate":
            return value
        import lm_eval.evaluator as evaluator

        evaluator.simple_evaluate = guarded(value)
        return evaluator.simple_evaluate

    package_getattr._lm_eval_prune = True  # type: ignore[attr-defined]
    lm_eval.__getattr__ = package_getattr  # type: ignore[attr-defined]
