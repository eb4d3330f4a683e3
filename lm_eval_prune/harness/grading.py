"""Offline graders: answer extraction after the thinking, math-verify equivalence, integer/float and letter answers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_prune.generation.protocol import ThinkingResponse

log = logging.getLogger(__name__)
ANSWER_MARKERS = ("</think>", "<|im_start|>answer")  # Qwen3's and s1's appended thinking_end
_WARNED: set[str] = set()
_ANSWER_LINE = re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_LETTER_PATTERNS = (
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-D])\)?\s*\}?\s*\}"),
    re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?\$?\\?(?:text\{)?([A-D])\b", re.IGNORECASE),
    re.compile(r"\(([A-D])\)"),
)


def split_response(response: str) -> tuple[str, str, dict[str, Any]]:
    """(thinking, answer, budget-forcing record or {}) of one model response.

    A budget-forced response carries its trace (the answer starts with ``\nFinal Answer:`` when the budget ran out);
    a plain string (a cache from elsewhere, another harness) is split at the last thinking-end marker.
    """
    if isinstance(response, ThinkingResponse):
        return response.thinking, response.answer, response.record()
    for marker in ANSWER_MARKERS:
        if marker in response:
            thinking, _, answer = response.rpartition(marker)
            return thinking, answer, {}
    return "", response, {}


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        tail = text[start + len("\\boxed") :].strip().split()
        return tail[0].rstrip(".$") if tail else None
    depth = 0
    for index in range(brace, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : index].strip()
    return None


def extract_answer(answer_text: str) -> str | None:
    """The last ``\\boxed{}``, else the last ``Answer: ...`` line."""
    boxed = last_boxed(answer_text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_LINE.findall(answer_text)
    if matches:
        return matches[-1].strip().strip("$").rstrip(".").strip()
    return None


def math_equal(prediction: str | None, gold: str) -> bool:
    """math-verify equivalence of two LaTeX/plain answers (27 = 27.0, 1/2 = 0.5, 023 = 23, tuples, intervals)."""
    if prediction is None or not prediction.strip():
        return False
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${prediction}$")))
    except Exception as exc:  # math-verify raises on unparsable input or its own timeout
        case = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if case not in _WARNED:
            _WARNED.add(case)
            log.warning("math-verify failed (%s); comparing the answer strings instead", case)
        log.debug("math-verify failed on %r vs gold %r: %s", prediction, gold, case)
        return prediction.strip() == gold.strip()


def integer_equal(prediction: str | None, gold: str | int | float) -> bool:
    """AIME: integer answers (gold stored zero-padded, ``"025"``); the prediction may be ``25``, ``025`` or ``25.0``."""
    value = _number(prediction)
    return value is not None and value == float(gold) and value.is_integer()


def float_equal(prediction: str | None, gold: str | int | float) -> bool:
    """AMC: float gold answers such as ``27.0``; exact numeric equality, else math-verify (fractions, radicals)."""
    value = _number(prediction)
    if value is not None:
        return abs(value - float(gold)) < 1e-9
    return math_equal(prediction, _plain_number(float(gold)))


def extract_letter(answer_text: str) -> str | None:
    """GPQA: the option letter from ``\\boxed{C}``, ``Answer: C`` or ``(C)`` (last match of the first that matches)."""
    for pattern in _LETTER_PATTERNS:
        matches = pattern.findall(answer_text)
        if matches:
            return matches[-1].upper()
    return None


def _plain_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    cleaned = re.sub(r"\\(?:textbf|text|mathrm|mathbf|boxed)\b", "", text).replace("\\!", "")
    cleaned = re.sub(r"[\s${}(),]", "", cleaned)
    try:
        return float(cleaned)
    except ValueError:
        return None


def score(
    responses: Sequence[str], is_correct: Callable[[str], bool], extract: Callable[[str], str | None]
) -> dict[str, float]:
    """Per-doc metrics over its k responses: exact_match (mean), pass_at_k, maj_at_k, and means of thinking tokens,
    forced Waits and budget exhaustion (0 for plain responses)."""
    parts = [split_response(r) for r in responses]
    answers = [p[1] for p in parts]
    correct = [is_correct(a) for a in answers]
    predictions = [extract(a) for a in answers]
    majority = _majority_index(predictions)
    return {
        "exact_match": sum(correct) / len(correct),
        "pass_at_k": float(any(correct)),
        "maj_at_k": float(majority is not None and correct[majority]),
        "thinking_tokens": sum(float(p[2].get("thinking_tokens", 0)) for p in parts) / len(parts),
        "forced_waits": sum(float(p[2].get("forced_waits", 0)) for p in parts) / len(parts),
        "budget_exhausted": sum(float(p[2].get("budget_exhausted", False)) for p in parts) / len(parts),
    }


def _majority_index(predictions: Sequence[str | None]) -> int | None:
    """Index of a response with the most frequent extracted answer (first seen wins ties); None if none extracted."""
    counts: dict[str, tuple[int, int]] = {}
    for index, prediction in enumerate(predictions):
        if prediction is None:
            continue
        key = prediction.replace(" ", "")
        count, first = counts.get(key, (0, index))
        counts[key] = (count + 1, first)
    if not counts:
        return None
    return max(counts.values(), key=lambda cf: (cf[0], -cf[1]))[1]
