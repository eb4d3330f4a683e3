"""Record-style text sources: reasoning traces, chat ``messages``, problems and plain ``text`` records -> documents.

A trace record (s1K's ``question`` + a thinking trajectory + its answer) is rendered the way the model itself would
see the exchange: the model's chat template around the question as the user turn, the trajectory inside the model's
thinking markers (read from its vocabulary: Qwen3's ``<think>``/``</think>``, or s1.1's ``<|im_start|>think`` and
``<|im_start|>answer`` on ChatML models), then the answer and the template's end of turn. Calibration draws windows
from these documents; LayerIF takes one sample per record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)

# Trajectory fields, in the order they are detected: s1K-1.1 (DeepSeek-R1 traces, what s1.1 was trained on),
# s1K (Gemini, a list of steps), s1K-1.1's Gemini traces, then common names of other trace sets.
TRACE_FIELDS = (
    "deepseek_thinking_trajectory",
    "thinking_trajectories",
    "gemini_thinking_trajectory",
    "thinking_trajectory",
    "reasoning_content",
    "thinking",
    "reasoning",
)
QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("attempt", "response", "answer")  # for a trajectory field without its own ``<prefix>_attempt``
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # of an assistant message
SENTINEL = "\u2063LMEP-SENTINEL\u2063"  # a string no template produces, to cut the end of an assistant turn


@dataclass(frozen=True)
class ThinkingFormat:
    """How a model wraps its thinking: ``open`` + thinking + ``close`` + (``answer_prefix``) + answer."""

    name: str
    open: str
    close: str
    answer_prefix: str = ""


QWEN3_FORMAT = ThinkingFormat("qwen3", "<think>\n", "\n</think>\n\n")
S1_FORMAT = ThinkingFormat("s1", "<|im_start|>think\n", "\n<|im_start|>answer\n", answer_prefix="Answer: ")
PLAIN_FORMAT = ThinkingFormat("plain", "<think>\n", "\n</think>\n\n")  # no markers known: the common tags as text


@dataclass
class Documents:
    """Rendered records of one source: ``texts``; ``templated`` texts carry the template's special tokens already
    (tokenized without adding any); ``ids`` holds token ids known in advance or tokenized so far (index -> ids)."""

    texts: list[str]
    templated: bool
    info: dict[str, Any] = field(default_factory=dict)
    ids: dict[int, list[int]] = field(default_factory=dict)


def thinking_format(tokenizer: Any) -> ThinkingFormat:
    """The model's thinking markers: ``<think>``/``</think>`` in the vocabulary or the chat template (Qwen3,
    DeepSeek-R1 distills, QwQ), else s1.1's ``<|im_start|>think``/``answer`` on a ChatML vocabulary, else plain tags."""
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    template = _template_text(tokenizer)
    if ("<think>" in vocab and "</think>" in vocab) or "</think>" in template:
        return QWEN3_FORMAT
    if "<|im_start|>" in vocab:
        return S1_FORMAT
    return PLAIN_FORMAT


def has_chat_template(tokenizer: Any) -> bool:
    return bool(_template_text(tokenizer))


def _template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) else ""


def render_exchange(tokenizer: Any, question: str, thinking: str, answer: str) -> tuple[str, bool]:
    """(text, templated) of one question, thinking and answer as the model's own turn would read."""
    fmt = thinking_format(tokenizer)
    if answer and fmt.answer_prefix and fmt.answer_prefix.strip() not in answer:
        answer = fmt.answer_prefix + answer.strip()
    body = (fmt.open + thinking.strip("\n") + fmt.close if thinking else "") + answer.strip("\n")
    return render_turn(tokenizer, [{"role": "user", "content": question}], body, fmt)


def render_turn(
    tokenizer: Any, history: list[dict[str, Any]], body: str, fmt: ThinkingFormat | None = None
) -> tuple[str, bool]:
    """(text, templated): ``history`` through the chat template with the assistant's generation prompt, then
    ``body`` as the assistant turn and the template's end of turn. A generation prompt that already opens the
    thinking (DeepSeek-R1's ``<think>\\n``) is not opened twice. Without a template: the turns as plain lines."""
    fmt = fmt or thinking_format(tokenizer)
    if has_chat_template(tokenizer):
        try:
            prefix = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
            closing = _turn_end(tokenizer, history)
        except Exception as exc:  # jinja raises TemplateError and anything the template's own checks raise
            log.warning("the chat template cannot render this exchange (%s); using plain text", exc)
        else:
            return _join(str(prefix), body, fmt) + closing, True
    lines = [str(turn.get("content", "")) for turn in history]
    return "\n\n".join([*lines, body]), False


def _turn_end(tokenizer: Any, history: list[dict[str, Any]]) -> str:
    """What the template writes after an assistant message's content (``<|im_end|>\\n``, an eos...)."""
    full = tokenizer.apply_chat_template(
        [*history, {"role": "assistant", "content": SENTINEL}], tokenize=False, add_generation_prompt=False
    )
    full = str(full)
    return full.split(SENTINEL, 1)[1] if SENTINEL in full else ""


def _join(prefix: str, body: str, fmt: ThinkingFormat) -> str:
    marker = fmt.open.strip()
    if marker and prefix.rstrip().endswith(marker) and body.lstrip().startswith(marker):
        body = body.lstrip()[len(marker) :]
        if prefix.endswith("\n") and body.startswith("\n"):
            body = body[1:]
    return prefix + body


# ----------------------------------------------------------------------------------------------- reading records
def read_records(path: Path, what: str) -> list[dict[str, Any]]:
    """The records of a JSONL or (with pyarrow) parquet file; one line starting with ``what`` (the setting and the
    file) for anything unreadable."""
    if path.suffix == ".parquet":
        return _read_parquet(path, what)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PruneConfigError(f"{what} is not UTF-8 text (byte {exc.start}); give a UTF-8 .jsonl file") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise PruneConfigError(f"{what} line {number} is not a JSON object")
        records.append(record)
    if not records:
        raise PruneConfigError(f"{what} holds no records")
    return records


def _read_parquet(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PruneConfigError(
            f"{what} is parquet and pyarrow is not installed; pip install pyarrow, or give a JSONL file"
        ) from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # ArrowInvalid, OSError...: a damaged or non-parquet file
        raise PruneConfigError(f"{what} cannot be read as parquet ({type(exc).__name__})") from None
    if not records:
        raise PruneConfigError(f"{what} holds no records")
    return records


def parquet_fields(path: Path, what: str) -> list[str]:
    """Column names of a parquet file, from its footer (cheap)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PruneConfigError(
            f"{what} is parquet and pyarrow is not installed; pip install pyarrow, or give a JSONL file"
        ) from None
    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:  # ArrowInvalid, OSError...
        raise PruneConfigError(f"{what} cannot be read as parquet ({type(exc).__name__})") from None


# ----------------------------------------------------------------------------------------------- record kinds
@dataclass(frozen=True)
class RecordKind:
    """How the records of one source are read: ``kind`` is trace, messages, text or problem."""

    kind: str
    question: str = ""
    trajectory: str = ""
    answer: str = ""


def record_kind(fields: Sequence[str], trace_field: str, what: str, traces_only: bool = False) -> RecordKind:
    """The kind of records with these ``fields``; one line naming ``what`` and its fields when none fits."""
    keys = set(fields)
    question = next((f for f in QUESTION_FIELDS if f in keys), "")
    if trace_field:
        if trace_field not in keys:
            raise PruneConfigError(
                f"trace_field={trace_field!r} is not a field of {what}; it has: {field_listing(keys)}"
            )
        trajectory = trace_field
    else:
        trajectory = next((f for f in TRACE_FIELDS if f in keys), "")
    if trajectory and question:
        return RecordKind("trace", question, trajectory, _answer_field(trajectory, keys))
    if "messages" in keys:
        return RecordKind("messages")
    if not traces_only:
        if "text" in keys:
            return RecordKind("text")
        if question:
            return RecordKind("problem", question, answer="solution" if "solution" in keys else "")
    trace = f"a trace set's 'question' plus a trajectory ({', '.join(TRACE_FIELDS[:3])}, ...; trace_field picks one)"
    wanted = (
        f"{trace} or chat 'messages'" if traces_only else f"'text', 'problem', 'question', chat 'messages' or {trace}"
    )
    raise PruneConfigError(f"{what} has no usable fields (it has: {field_listing(keys)}); give {wanted}")


def _answer_field(trajectory: str, keys: set[str]) -> str:
    """The answer paired with a trajectory: ``<prefix>_attempt`` for ``<prefix>_thinking_trajectory``, else generic."""
    prefix = trajectory.split("thinking_trajector")[0] if "thinking_trajector" in trajectory else ""
    paired = f"{prefix}attempt"
    if prefix and paired in keys:
        return paired
    return next((f for f in ANSWER_FIELDS if f in keys), "")


def field_listing(keys: set[str] | Sequence[str], limit: int = 12) -> str:
    names = sorted(keys)
    shown = ", ".join(names[:limit]) or "nothing"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def as_text(value: Any) -> str:
    """A field's text: a list of steps (s1K's ``thinking_trajectories``) joined by newlines; None -> ''."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value).strip()
    return str(value).strip() if not isinstance(value, str) else value.strip()


def render_records(
    records: Sequence[dict[str, Any]], tokenizer: Any, kind: RecordKind, what: str
) -> tuple[list[str], bool, int]:
    """(texts, templated, skipped): each usable record rendered; records lacking the kind's text are skipped."""
    texts: list[str] = []
    templated = False
    for record in records:
        text, used_template = _render_record(record, tokenizer, kind)
        if text:
            texts.append(text)
            templated = templated or used_template
    skipped = len(records) - len(texts)
    if not texts:
        raise PruneConfigError(f"{what}: none of its {len(records)} records has the text its {kind.kind} kind needs")
    if skipped:
        log.warning("%s: %d of %d records lack the %s fields and are skipped", what, skipped, len(records), kind.kind)
    return texts, templated, skipped


def _render_record(record: dict[str, Any], tokenizer: Any, kind: RecordKind) -> tuple[str, bool]:
    if kind.kind == "trace":
        question, thinking = as_text(record.get(kind.question)), as_text(record.get(kind.trajectory))
        if not question or not thinking:
            return "", False
        return render_exchange(tokenizer, question, thinking, as_text(record.get(kind.answer)) if kind.answer else "")
    if kind.kind == "messages":
        return render_messages(record.get("messages"), tokenizer)
    if kind.kind == "text":
        return as_text(record.get("text")), False
    problem = as_text(record.get(kind.question))
    solution = as_text(record.get(kind.answer)) if kind.answer and problem else ""
    return (problem + "\n\n" + solution if solution else problem), False


def render_messages(messages: Any, tokenizer: Any) -> tuple[str, bool]:
    """A chat record: the template over the turns; a final assistant turn's thinking (a ``reasoning_content``/
    ``thinking`` key, or inline ``<think>...</think>``) goes inside the model's own markers."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "", False
    turns = [dict(m) for m in messages]
    last = turns[-1]
    if last.get("role") != "assistant":
        if not has_chat_template(tokenizer):
            return "\n\n".join(as_text(t.get("content")) for t in turns), False
        try:
            return str(tokenizer.apply_chat_template(turns, tokenize=False)), True
        except Exception as exc:  # template errors
            log.warning("the chat template cannot render a record (%s); using plain text", exc)
            return "\n\n".join(as_text(t.get("content")) for t in turns), False
    content = as_text(last.get("content"))
    thinking = next((as_text(last[k]) for k in REASONING_KEYS if last.get(k)), "")
    if not thinking and "</think>" in content:
        head, content = content.split("</think>", 1)
        thinking = head.split("<think>", 1)[-1].strip()
        content = content.strip()
    fmt = thinking_format(tokenizer)
    if content and thinking and fmt.answer_prefix and fmt.answer_prefix.strip() not in content:
        content = fmt.answer_prefix + content
    body = (fmt.open + thinking + fmt.close if thinking else "") + content
    history = [{k: v for k, v in t.items() if k not in REASONING_KEYS} for t in turns[:-1]]
    return render_turn(tokenizer, history, body, fmt)


def documents_from_records(
    records: Sequence[dict[str, Any]],
    tokenizer: Any,
    trace_field: str,
    what: str,
    traces_only: bool = False,
) -> Documents:
    """Detect the records' kind (from every field any record has), render them; ``info`` says what was read."""
    keys: set[str] = set()
    for record in records:
        keys.update(record)
    kind = record_kind(sorted(keys), trace_field, what, traces_only)
    texts, templated, skipped = render_records(records, tokenizer, kind, what)
    info: dict[str, Any] = {"kind": kind.kind, "records": len(texts), "skipped_records": skipped}
    if kind.kind == "trace":
        info.update(question_field=kind.question, trace_field=kind.trajectory, answer_field=kind.answer or None)
    if kind.kind in ("trace", "messages"):
        info.update(thinking_format=thinking_format(tokenizer).name, chat_template=templated)
    return Documents(texts, templated, info)
