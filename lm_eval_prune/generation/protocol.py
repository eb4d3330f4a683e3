"""s1-style budget forcing (arXiv 2501.19393) as a pure policy over token ids, driven by any greedy generator.

The policy (:func:`policy`): append the thinking-start marker; generate thinking up to the budget, stopping at the
thinking-end token; each time the model stops early, drop the end marker, append ``Wait`` and continue, at most N
times; then append the answer marker (plus ``\\nFinal Answer:`` when the budget ran out) and generate the answer.
Drivers for HF and vLLM only run :class:`Step`s; both therefore follow the same steps on the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

GEN_KWARGS = (
    "max_tokens_thinking",
    "thinking_n_ignore",
    "thinking_n_ignore_str",
    "thinking_start",
    "thinking_end",
    "thinking_answer",
)
RESPONSE_TAG = "budget_forcing"
AUTO_MARGIN = 100  # ``max_tokens_thinking=auto`` = max_gen_toks - prompt - 100, as in the s1 evaluation


@dataclass(frozen=True)
class Markers:
    """Thinking markers: ``start`` opens thinking, ``end`` (one token) is where the model stops it, ``answer`` opens the answer."""

    start: str
    end: str
    answer: str


QWEN3 = Markers(start="<think>", end="</think>", answer="</think>")
S1 = Markers(start="<|im_start|>think", end="<|im_start|>", answer="<|im_start|>answer")


def detect_markers(tokenizer: Any) -> Markers:
    """Qwen3's ``<think>``/``</think>`` when the vocabulary has them, else s1.1's ``<|im_start|>think``/``answer``."""
    vocab = tokenizer.get_vocab()
    if "<think>" in vocab and "</think>" in vocab:
        return QWEN3
    if "<|im_start|>" in vocab:
        return S1
    raise ValueError(
        "cannot detect thinking markers from the tokenizer; pass thinking_start, thinking_end and thinking_answer in --gen_kwargs"
    )


@dataclass(frozen=True)
class BudgetSpec:
    """The budget-forcing generation keys of one request."""

    max_tokens_thinking: int | str
    thinking_n_ignore: int = 0
    ignore_str: str = "Wait"
    markers: Markers | None = None

    @classmethod
    def pop_from(cls, gen_kwargs: dict[str, Any]) -> BudgetSpec | None:
        """Take our keys out of ``gen_kwargs`` (mutated); None when budget forcing is not asked for."""
        if "max_tokens_thinking" not in gen_kwargs and "thinking_n_ignore" not in gen_kwargs:
            for key in GEN_KWARGS:
                gen_kwargs.pop(key, None)
            return None
        budget = gen_kwargs.pop("max_tokens_thinking", "auto")
        if str(budget) != "auto":
            budget = int(budget)
            if budget < 1:
                raise ValueError(f"max_tokens_thinking={budget} must be >= 1 or 'auto'")
        n_ignore = int(gen_kwargs.pop("thinking_n_ignore", 0) or 0)
        if n_ignore < 0:
            raise ValueError(f"thinking_n_ignore={n_ignore} must be >= 0")
        ignore_str = str(gen_kwargs.pop("thinking_n_ignore_str", "Wait") or "Wait")
        parts = [gen_kwargs.pop(k, None) for k in ("thinking_start", "thinking_end", "thinking_answer")]
        markers = None
        if any(p is not None for p in parts):
            if not all(p is not None for p in parts):
                raise ValueError("pass all of thinking_start, thinking_end and thinking_answer, or none")
            markers = Markers(*(str(p) for p in parts))
        return cls(budget, n_ignore, ignore_str, markers)

    def budget_for(self, prompt_tokens: int, max_gen_toks: int) -> int:
        if self.max_tokens_thinking == "auto":
            return max(1, max_gen_toks - prompt_tokens - AUTO_MARGIN)
        return int(self.max_tokens_thinking)


@dataclass
class Trace:
    """What one budget-forced generation did (logged per sample)."""

    thinking: str
    answer: str
    thinking_tokens: int
    forced_waits: int
    budget: int
    budget_exhausted: bool
    thinking_ids: list[int]
    answer_ids: list[int]

    def to_response(self) -> str:
        """The string lm-eval stores as the response: JSON, so graders can split thinking from answer."""
        data = asdict(self)
        del data["thinking_ids"], data["answer_ids"]
        return json.dumps({RESPONSE_TAG: 1, **data})


def parse_response(response: str) -> dict[str, Any] | None:
    """The budget-forcing record inside a response, or None for a plain response."""
    if not response.startswith("{") or RESPONSE_TAG not in response[:40]:
        return None
    try:
        data = json.loads(response)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get(RESPONSE_TAG) == 1 else None


@dataclass(frozen=True)
class Step:
    """One generation the policy asks for: continue ``prefix`` greedily by at most ``max_new`` tokens.

    ``stop_ids`` (thinking) end the generation on those tokens, which are not returned; ``stop_strings`` (answer)
    end it once the decoded text holds one (the text is cut there afterwards, so a driver may overshoot).
    """

    prefix: list[int]
    max_new: int
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()


# a driver answers a Step with (new ids without a final stop id, whether a stop id ended it)
StepResult = tuple[list[int], bool]
Policy = Generator[Step, StepResult, Trace]


def single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"thinking end marker {text!r} is {len(ids)} tokens for this tokenizer; it must be exactly one"
        )
    return ids[0]


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string."""
    cut = len(text)
    for stop in until:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    return text[:cut]


def policy(prompt_ids: list[int], spec: BudgetSpec, tokenizer: Any, max_gen_toks: int, until: Sequence[str]) -> Policy:
    """The s1 protocol for one prompt, as a generator of :class:`Step` (drivers may interleave many prompts)."""
    markers = spec.markers or detect_markers(tokenizer)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    stop_ids = [single_token(tokenizer, markers.end)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
        stop_ids.append(tokenizer.eos_token_id)
    budget = spec.budget_for(len(prompt_ids), max_gen_toks)
    prefix = list(prompt_ids) + encode(markers.start)
    thinking: list[int] = []
    generated = forced = 0
    while True:
        new, stopped = yield Step(prefix + thinking, budget - generated, tuple(stop_ids))
        new = new[: budget - generated]
        thinking += new
        generated += len(new)
        if not stopped or generated >= budget or forced >= spec.thinking_n_ignore:
            break
        thinking += encode(spec.ignore_str)
        forced += 1
    exhausted = generated >= budget
    answer_prefix = prefix + thinking + encode(markers.answer + ("\nFinal Answer:" if exhausted else ""))
    answer_ids, _ = yield Step(answer_prefix, max_gen_toks, (), tuple(until))
    return Trace(
        thinking=tokenizer.decode(thinking, skip_special_tokens=False),
        answer=cut_at_stops(tokenizer.decode(answer_ids, skip_special_tokens=False), until),
        thinking_tokens=generated,
        forced_waits=forced,
        budget=budget,
        budget_exhausted=exhausted,
        thinking_ids=thinking,
        answer_ids=answer_ids,
    )


def plain_policy(prompt_ids: list[int], tokenizer: Any, max_gen_toks: int, until: Sequence[str]) -> Policy:
    """No thinking: one answer step (used for sampled requests without budget forcing, so ``seed`` works everywhere)."""
    answer_ids, _ = yield Step(list(prompt_ids), max_gen_toks, (), tuple(until))
    text = cut_at_stops(tokenizer.decode(answer_ids, skip_special_tokens=False), until)
    return Trace("", text, 0, 0, 0, False, [], answer_ids)


def drive(policies: list[Policy], run_steps: Callable[[list[int], list[Step]], list[StepResult]]) -> list[Trace]:
    """Advance all policies in lock-step; each round, ``run_steps(indices, steps)`` runs the pending steps as one batch."""
    traces: list[Trace | None] = [None] * len(policies)
    pending = {i: next(p) for i, p in enumerate(policies)}
    while pending:
        order = sorted(pending)
        results = run_steps(order, [pending[i] for i in order])
        for i, result in zip(order, results, strict=True):
            try:
                pending[i] = policies[i].send(result)
            except StopIteration as done:
                traces[i] = done.value
                del pending[i]
    return [t for t in traces if t is not None]
