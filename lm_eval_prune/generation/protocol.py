"""s1 budget forcing (arXiv 2501.19393), equal to the s1 fork of lm-eval's vLLM model, as a pure policy over token ids.

The reference is ``_model_generate`` + ``generate_until`` of simplescaling/s1's ``vllm_causallms.py``. Per request:
append ``thinking_start``; generate thinking with ``max_tokens = B`` in every round, stopping on ``until_thinking``
(plus the task's ``until`` and the eos text); with ``thinking_n_ignore = N`` run up to N+1 rounds, each stopped round
losing its stop token and gaining ``thinking_n_ignore_str``; cut the accumulated ids to B; then append
``thinking_end`` (or, when the last round ran out of tokens, an optional newline and
``thinking_end + "\\nFinal Answer:"``) and generate the answer with ``max_tokens = max_gen_toks`` and the ``until``
strings. Drivers only run :class:`Step`s with vLLM's semantics, so HF and vLLM follow the same steps on the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lm_eval_prune.errors import PruneConfigError

AUTO_MARGIN = 100  # ``max_tokens_thinking=auto`` leaves 100 tokens for the answer, as in s1
FINAL_ANSWER = "\nFinal Answer:"
MARKER_KEYS = frozenset(
    {
        "thinking_start",
        "thinking_end",
        "thinking_n_ignore",
        "thinking_n_ignore_str",
        "until_thinking",
        "until_thinking_2",
    }
)
# vLLM SamplingParams keys s1 passes on that both drivers honour (any of them may also end in "_thinking")
SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "min_tokens",
        "seed",
        "repetition_penalty",
        "skip_special_tokens",
        "spaces_between_special_tokens",
    }
)
REQUEST_KEYS = frozenset({"until", "max_gen_toks", "do_sample"})


@dataclass(frozen=True)
class Markers:
    """``start`` opens thinking, ``until`` is where the model ends it, ``end`` is appended before the answer."""

    start: str
    end: str
    until: str


QWEN3 = Markers(start="<think>", end="</think>", until="</think>")
S1 = Markers(start="<|im_start|>think", end="<|im_start|>answer", until="<|im_start|>")


def detect_markers(tokenizer: Any) -> Markers | None:
    """Qwen3's ``<think>``/``</think>`` when the vocabulary has them, else s1's markers when it has ``<|im_start|>``."""
    vocab = tokenizer.get_vocab()
    if "<think>" in vocab and "</think>" in vocab:
        return QWEN3
    if "<|im_start|>" in vocab:
        return S1
    return None


def wants_thinking(gen_kwargs: dict[str, Any]) -> bool:
    """s1's switch: any gen_kwargs key containing ``thinking`` asks for budget forcing."""
    return any("thinking" in key for key in gen_kwargs)


def check_thinking_markers(tokenizer: Any, gen_kwargs: dict[str, Any]) -> None:
    """Refuse (before weights load) budget forcing whose markers are neither given nor detectable from the tokenizer."""
    if not wants_thinking(gen_kwargs) or detect_markers(tokenizer) is not None:
        return
    missing = [key for key in ("thinking_start", "thinking_end", "until_thinking") if key not in gen_kwargs]
    if missing:
        raise PruneConfigError(
            "budget forcing needs thinking markers and none can be detected from this tokenizer:"
            f" pass {', '.join(missing)} in --gen_kwargs"
            " (e.g. thinking_start=<think>,thinking_end=</think>,until_thinking=</think>)"
        )


@dataclass(frozen=True)
class Sampling:
    """vLLM ``SamplingParams`` of one generation (the defaults are vLLM's; ``top_k`` 0 means off)."""

    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = False
    spaces_between_special_tokens: bool = False

    @classmethod
    def build(cls, max_tokens: int, keys: dict[str, Any], **extra: Any) -> Sampling:
        """From validated gen_kwargs values (strings from the command line are converted here)."""
        converters: dict[str, Callable[[Any], Any]] = {
            "temperature": float,
            "top_p": float,
            "top_k": lambda v: max(int(v), 0),
            "min_p": float,
            "min_tokens": int,
            "seed": lambda v: None if v is None else int(v),
            "repetition_penalty": float,
            "skip_special_tokens": _as_bool,
            "spaces_between_special_tokens": _as_bool,
        }
        values = {key: _number(key, value, converters[key]) for key, value in keys.items()}
        if values.get("min_tokens", 0) > int(max_tokens):
            raise PruneConfigError(f"gen_kwargs min_tokens={values['min_tokens']} must be <= max_tokens={max_tokens}")
        return cls(max_tokens=int(max_tokens), **values, **extra)


def _number(key: str, value: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(value)``, or a one-line error naming the gen_kwargs key (``temperature=abc``)."""
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError):
        raise PruneConfigError(f"gen_kwargs {key}={value!r} must be a number") from None


def _as_bool(value: Any) -> bool:
    return value.strip().lower() in ("1", "true", "yes") if isinstance(value, str) else bool(value)


@dataclass(frozen=True)
class Step:
    """One generation a policy asks for: continue ``prefix`` under ``params`` (vLLM semantics).

    ``final`` marks the answer generation: s1 runs every thinking round of a batch before the batch's answers.
    """

    prefix: list[int]
    params: Sampling
    final: bool = False


@dataclass(frozen=True)
class StepOutput:
    """vLLM's ``CompletionOutput``: ids keep a final stop/eos token and stop-string tokens; text has neither."""

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True)
class Plan:
    """What one lm-eval request asks for, parsed as s1's ``generate_until`` and ``_model_generate`` parse it."""

    until: list[str]
    max_gen_toks: int
    answer: dict[str, Any]  # sampling keys of the answer phase
    thinking: (
        dict[str, Any] | None
    )  # sampling keys of the thinking rounds (max_tokens: int or "auto"); None: no thinking
    markers: Markers | None = None
    n_ignore: int | None = None
    ignore_str: str | None = None
    until_thinking: list[str] = field(default_factory=list)


def parse_gen_kwargs(
    gen_kwargs: dict[str, Any], eos_text: str, default_max_gen_toks: int, tokenizer: Any, seed_offset: int = 0
) -> Plan:
    """s1's reading of one request's gen_kwargs; unknown or unsupported keys raise a one-line PruneConfigError."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None)
    if isinstance(until, str):
        until = [until]
    elif until is not None and not isinstance(until, list | tuple):
        raise PruneConfigError(f"gen_kwargs until={until!r} must be a string or a list of strings")
    until = [*until, eos_text] if until else [eos_text]
    max_gen_toks = _number("max_gen_toks", kwargs.pop("max_gen_toks", default_max_gen_toks), int)
    if max_gen_toks < 1:
        raise PruneConfigError(f"gen_kwargs max_gen_toks={max_gen_toks} must be >= 1")
    do_sample = kwargs.pop("do_sample", None)
    if _as_bool(do_sample) is False and do_sample is not None and "temperature" not in kwargs:
        kwargs["temperature"] = 0.0
    for key in kwargs:
        base = key.replace("_thinking", "") if "thinking" in key and key not in MARKER_KEYS else key
        if key in MARKER_KEYS or base in SAMPLING_KEYS or (base == "max_tokens" and key != base):
            continue
        if key == "rejection_sample":
            raise PruneConfigError("gen_kwargs rejection_sample is not supported; drop it (s1's budget forcing only)")
        allowed = sorted(REQUEST_KEYS | MARKER_KEYS | SAMPLING_KEYS | {"max_tokens_thinking"})
        raise PruneConfigError(
            f"unknown gen_kwargs key {key!r}: allowed are {', '.join(allowed)} (sampling keys may end in _thinking)"
        )
    for key in ("seed", "seed_thinking"):
        if kwargs.get(key) is not None:
            kwargs[key] = _number(key, kwargs[key], int) + seed_offset
    if not wants_thinking(kwargs):
        return Plan(until, max_gen_toks, kwargs, None)
    detected = detect_markers(tokenizer)
    start = kwargs.pop("thinking_start", detected.start if detected else None)
    end = kwargs.pop("thinking_end", detected.end if detected else None)
    until_thinking_1 = kwargs.pop("until_thinking", detected.until if detected else None)
    if start is None or end is None or until_thinking_1 is None:
        check_thinking_markers(tokenizer, {**gen_kwargs, "max_tokens_thinking": 1})
    n_ignore = kwargs.pop("thinking_n_ignore", None)
    if n_ignore is not None:
        n_ignore = _number("thinking_n_ignore", n_ignore, int)
        if n_ignore < 0:
            raise PruneConfigError(f"gen_kwargs thinking_n_ignore={n_ignore} must be >= 0")
    ignore_str = kwargs.pop("thinking_n_ignore_str", None)
    until_thinking = [str(until_thinking_1)]
    if "until_thinking_2" in kwargs:
        until_thinking.append(str(kwargs.pop("until_thinking_2")))
    until_thinking.extend(until)
    thinking_only = {key.replace("_thinking", ""): kwargs.pop(key) for key in list(kwargs) if "thinking" in key}
    thinking = {**kwargs, **thinking_only}
    budget = thinking.get("max_tokens", max_gen_toks)
    if str(budget) != "auto":
        budget = _number("max_tokens_thinking", budget, int)
        if budget < 1:
            raise PruneConfigError(f"gen_kwargs max_tokens_thinking={budget} must be >= 1 or auto")
    thinking["max_tokens"] = budget if str(budget) != "auto" else "auto"
    markers = Markers(str(start), str(end), str(until_thinking_1))
    return Plan(until, max_gen_toks, kwargs, thinking, markers, n_ignore, ignore_str, until_thinking)


@dataclass(frozen=True)
class Encoded:
    """The ids s1 feeds the model for a plan's strings (``tok_encode``: add_special_tokens = add_bos_token)."""

    start: list[int]
    end: list[int]
    end_max: list[int]
    newline: list[int]
    ignore: list[int] | None
    until_thinking: list[list[int]]

    @classmethod
    def of(cls, plan: Plan, encode: Callable[[str], list[int]]) -> Encoded:
        assert plan.markers is not None
        m = plan.markers
        return cls(
            encode(m.start),
            encode(m.end),
            encode(m.end + FINAL_ANSWER),
            encode("\n"),
            None if plan.ignore_str is None else encode(plan.ignore_str),
            [encode(text) for text in plan.until_thinking],
        )


def thinking_budget(plan: Plan, encoded: Encoded, longest_prompt: int) -> int:
    """B: the given ``max_tokens_thinking``, or ``auto`` = max_gen_toks - the batch's longest prompt - markers - 100."""
    assert plan.thinking is not None
    budget = plan.thinking["max_tokens"]
    if budget != "auto":
        return int(budget)
    value = plan.max_gen_toks - longest_prompt - len(encoded.start) - len(encoded.end_max) - AUTO_MARGIN
    if value < 1:
        raise PruneConfigError(
            f"max_tokens_thinking=auto gives {value} tokens (max_gen_toks={plan.max_gen_toks}, longest prompt"
            f" {longest_prompt}); raise max_gen_toks or pass a number"
        )
    return value


def thinking_sampling(plan: Plan, encoded: Encoded, budget: int) -> Sampling:
    """The thinking rounds' params: token-id stops with min_tokens when N or min_tokens is given, else stop strings."""
    assert plan.thinking is not None
    keys = {k: v for k, v in plan.thinking.items() if k != "max_tokens"}
    if "min_tokens" in keys or plan.n_ignore is not None:
        if plan.n_ignore is not None:
            keys["min_tokens"] = 1
        bad = [text for text, ids in zip(plan.until_thinking, encoded.until_thinking, strict=True) if len(ids) != 1]
        if bad:
            raise PruneConfigError(
                f"thinking stop strings {bad!r} must be one token each with thinking_n_ignore or min_tokens_thinking"
                " (s1 stops on token ids there); change until/until_thinking"
            )
        stop_ids = tuple(ids[0] for ids in encoded.until_thinking)
        return Sampling.build(budget, keys, stop_token_ids=stop_ids)
    return Sampling.build(budget, keys, stop=tuple(plan.until_thinking))


class ThinkingResponse(str):
    """s1's response string (``thinking_start + thinking + marker + answer``) carrying what the generation did.

    A ``str`` so every lm-eval filter and metric reads it; the attributes survive lm-eval's ``take_first`` filter,
    sample logging (as the plain string) and the request cache (pickle). Graders fall back to the markers in the text.
    """

    thinking: str
    answer: str
    thinking_tokens: int
    forced_waits: int
    budget: int
    budget_exhausted: bool

    def __new__(cls, text: str, **trace: Any) -> ThinkingResponse:
        obj = super().__new__(cls, text)
        obj.__dict__.update(trace)
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_response, (str(self), dict(self.__dict__)))

    def record(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rebuild_response(text: str, trace: dict[str, Any]) -> ThinkingResponse:
    return ThinkingResponse(text, **trace)


Policy = Generator[Step, StepOutput, str]
Detok = Callable[[list[int], list[int]], str]  # (context ids, new ids) -> the engine's text of the new ids


def _strip_stops(cont: list[int], until_ids: Sequence[list[int]]) -> list[int]:
    """s1: drop a trailing until_thinking token sequence (each checked in turn against the current tail)."""
    for toks in until_ids:
        if cont[-len(toks) :] == toks:
            cont = cont[: -len(toks)]
    return cont


def s1_policy(prompt_ids: list[int], plan: Plan, encoded: Encoded, budget: int, detok: Detok) -> Policy:
    """One request under s1's protocol (drivers may interleave many); returns the :class:`ThinkingResponse`."""
    assert plan.thinking is not None and plan.markers is not None
    params = thinking_sampling(plan, encoded, budget)
    prefix = list(prompt_ids) + encoded.start
    segments: list[tuple[list[int], str, bool]] = []  # (ids, text, engine text?) in order, as s1 accumulates them
    ignored_at: list[int] = []  # positions in the thinking ids where an end of thinking was ignored
    thinking: list[int] = []
    text = ""
    rounds = 1 if plan.n_ignore is None else plan.n_ignore + 1
    finish = "stop"
    for i in range(rounds):
        out = yield Step(prefix + thinking, params)
        cont = list(out.token_ids)
        if out.finish_reason == "length" or i == rounds - 1:
            thinking += cont
            text += out.text
            segments.append((cont, out.text, True))
            finish = out.finish_reason
            break
        cont = _strip_stops(cont, encoded.until_thinking)
        segments.append((cont, out.text, True))
        ignored_at.append(len(thinking) + len(cont))
        thinking += cont
        text += out.text
        if encoded.ignore is not None and plan.ignore_str is not None:
            segments.append((list(encoded.ignore), plan.ignore_str, False))
            thinking += encoded.ignore
            text += plan.ignore_str
    shown = text
    if plan.n_ignore is not None and len(thinking) > budget:
        thinking = thinking[:budget]
        shown = _cut_text(segments, budget, list(prompt_ids) + encoded.start, detok)  # s1 keeps the uncut text
    thinking = _strip_stops(thinking, encoded.until_thinking)
    exhausted = finish == "length"
    start, end = plan.markers.start, plan.markers.end
    if exhausted:
        newline = not (text.endswith("\n") or start.startswith("\n"))
        marker = ("\n" if newline else "") + end + FINAL_ANSWER
        answer_prefix = prefix + thinking + (encoded.newline if newline else []) + encoded.end_max
    else:
        marker = end
        answer_prefix = prefix + thinking + encoded.end
    answer_params = Sampling.build(plan.max_gen_toks, plan.answer, stop=tuple(plan.until))
    out = yield Step(answer_prefix, answer_params, final=True)
    head = start + shown + marker
    return ThinkingResponse(
        head + out.text,
        thinking=shown,
        answer=(FINAL_ANSWER if exhausted else "") + out.text,
        thinking_tokens=len(thinking),
        forced_waits=sum(1 for p in ignored_at if p < len(thinking)),
        budget=budget,
        budget_exhausted=exhausted,
    )


def _cut_text(segments: list[tuple[list[int], str, bool]], budget: int, context: list[int], detok: Detok) -> str:
    """The text of the first ``budget`` accumulated ids, always a prefix of s1's (uncut) text.

    Whole segments keep their texts; a cut engine segment gets the engine's text of its kept ids (a prefix of the
    round's text); a cut ``thinking_n_ignore_str`` gets a prefix of that literal string, as long as the engine text of
    its kept ids less what the decode adds before the string (the leading space of a SentencePiece ``▁Wait``): the
    decode of those ids would show text s1 never shows.
    """
    text, kept = "", 0
    for ids, piece, engine in segments:
        if kept + len(ids) <= budget:
            text += piece
            kept += len(ids)
            context = context + ids
            continue
        part = detok(context, ids[: budget - kept])
        if engine:
            return text + part
        lead = max(len(detok(context, ids)) - len(piece), 0)
        return text + piece[: max(len(part) - lead, 0)]
    return text


def plain_policy(prompt_ids: list[int], plan: Plan) -> Policy:
    """No thinking: stock lm-eval vLLM's one generation (used for seeded requests, so each gets its own seed)."""
    out = yield Step(list(prompt_ids), Sampling.build(plan.max_gen_toks, plan.answer, stop=tuple(plan.until)), True)
    return out.text


def drive(policies: list[Policy], run_steps: Callable[[list[Step]], list[StepOutput]]) -> list[str]:
    """Advance one batch's policies as s1 does: each round, one ``run_steps`` call with every pending thinking step in
    request order; the answer steps wait until no thinking is left and then run as one call, as s1's do.

    Equal calls matter beyond semantics: an engine's numerics (and unseeded sampling) can depend on the batch.
    """
    results: list[str | None] = [None] * len(policies)
    pending = {i: next(p) for i, p in enumerate(policies)}
    while pending:
        thinking = [i for i in sorted(pending) if not pending[i].final]
        order = thinking or sorted(pending)
        outputs = run_steps([pending[i] for i in order])
        for i, output in zip(order, outputs, strict=True):
            try:
                pending[i] = policies[i].send(output)
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return [r for r in results if r is not None]


def is_driven(gen_kwargs: dict[str, Any] | None) -> bool:
    """Requests the policies run: budget-forced ones, and seeded ones (each request gets its own seed)."""
    kwargs = gen_kwargs or {}
    return wants_thinking(kwargs) or kwargs.get("seed") is not None
