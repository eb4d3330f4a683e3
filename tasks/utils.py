"""Prompts, data loaders and graders of the tts_* tasks (logic in lm_eval_prune.harness.grading / task_data)."""

from __future__ import annotations

from functools import partial
from typing import Any

from lm_eval_prune.harness import grading
from lm_eval_prune.harness.task_data import load_rows

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GPQA_INSTRUCTION = "Answer with the letter of the correct option, as \\boxed{X} where X is A, B, C or D."


def _dataset(name: str, metadata: dict[str, Any]) -> Any:
    from datasets import Dataset, DatasetDict

    rows = load_rows(name, metadata)
    return DatasetDict({"test": Dataset.from_list(rows)})


def load_aime24(**metadata: Any) -> Any:
    return _dataset("aime24", metadata)


def load_amc23(**metadata: Any) -> Any:
    return _dataset("amc23", metadata)


def load_math500(**metadata: Any) -> Any:
    return _dataset("math500", metadata)


def load_gpqa_diamond(**metadata: Any) -> Any:
    return _dataset("gpqa_diamond", metadata)


def math_prompt(doc: dict[str, Any]) -> str:
    return f"{doc['problem']}\n\n{MATH_INSTRUCTION}"


def gpqa_prompt(doc: dict[str, Any]) -> str:
    options = "\n".join(f"{letter}) {choice}" for letter, choice in zip("ABCD", doc["choices"], strict=True))
    return f"{doc['problem']}\n\n{options}\n\n{GPQA_INSTRUCTION}"


def keep_all(resps: Any, docs: Any) -> Any:
    """Filter that keeps every repeat, so process_results sees all k responses (pass@k, maj@k)."""
    return resps


def _math(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return grading.score(
        results, lambda text: grading.math_equal(grading.extract_answer(text), doc["answer"]), grading.extract_answer
    )


def _aime(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return grading.score(
        results, lambda text: grading.integer_equal(grading.extract_answer(text), doc["answer"]), grading.extract_answer
    )


def _amc(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return grading.score(
        results, lambda text: grading.float_equal(grading.extract_answer(text), doc["answer"]), grading.extract_answer
    )


def _gpqa(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return grading.score(results, lambda text: grading.extract_letter(text) == doc["answer"], grading.extract_letter)


def _flatten(grade: Any, doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    responses = results[0] if results and isinstance(results[0], list) else results
    return grade(doc, list(responses))


process_math500 = partial(_flatten, _math)
process_aime24 = partial(_flatten, _aime)
process_amc23 = partial(_flatten, _amc)
process_gpqa = partial(_flatten, _gpqa)
