"""Loading the reasoning benchmarks: the Hub sets users know, or a local folder in the same schemas (offline)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError

DATA_DIR_ENV = "LM_EVAL_PRUNE_DATA_DIR"
LETTERS = "ABCD"

# task -> (local file name, Hub path, Hub config, Hub split)
SOURCES = {
    "aime24": ("aime24.jsonl", "HuggingFaceH4/aime_2024", None, "train"),
    "amc23": ("amc23.jsonl", "math-ai/amc23", None, "test"),
    "math500": ("math500.jsonl", "HuggingFaceH4/MATH-500", None, "test"),
    "gpqa_diamond": ("gpqa_diamond.csv", "Idavidrein/gpqa", "gpqa_diamond", "train"),
}
FIELDS = {  # our field -> accepted source names, matched case-insensitively, first found wins
    "problem": ("problem", "question"),
    "answer": ("answer",),
    "id": ("unique_id", "id", "record id"),
    "Question": ("question",),
    "Correct Answer": ("correct answer",),
    "Incorrect Answer 1": ("incorrect answer 1",),
    "Incorrect Answer 2": ("incorrect answer 2",),
    "Incorrect Answer 3": ("incorrect answer 3",),
}
MATH_FIELDS = ("problem", "answer")
GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


class TaskDataError(PruneConfigError):
    """A missing or malformed benchmark file; the one-line message names the file and what is wrong.

    A PruneConfigError (so a ValueError): in lm-eval processes it is printed as one line before the model loads.
    """


def data_dir(metadata: dict[str, Any]) -> Path | None:
    """``--metadata '{"data_dir": DIR}'`` wins over ``$LM_EVAL_PRUNE_DATA_DIR``; None means the Hub."""
    value = metadata.get("data_dir") or os.environ.get(DATA_DIR_ENV)
    return Path(value) if value else None


def load_rows(name: str, metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of benchmark ``name`` with our field names (math: problem, answer, id; GPQA: shuffled choices, letter)."""
    file_name, hub_path, hub_config, split = SOURCES[name]
    folder = data_dir(metadata)
    if folder is not None:
        if not folder.is_dir():
            given = "--metadata data_dir" if metadata.get("data_dir") else f"${DATA_DIR_ENV}"
            raise TaskDataError(
                f"data folder {str(folder)!r} ({given}) does not exist; give a folder holding {file_name}"
            )
        raw, where = _read_local(folder / file_name), str(folder / file_name)
    else:
        raw, where = _read_hub(name, hub_path, hub_config, split), f"{hub_path} ({split})"
    if not raw:
        raise TaskDataError(f"data {where!r} holds no records")
    wanted = GPQA_FIELDS if name == "gpqa_diamond" else MATH_FIELDS
    rows = [_normalise(record, wanted, where, number) for number, record in enumerate(raw, 1)]
    if name == "gpqa_diamond":
        seed = int(metadata.get("gpqa_shuffle_seed", 0))
        rows = [_shuffle_options(row, seed) for row in rows]
    return rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    """Records of a local .csv (header row) or .jsonl file; one-line TaskDataError for any unreadable content."""
    if not path.is_file():
        raise TaskDataError(f"data file {str(path)!r} is missing")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"data file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise TaskDataError(f"data file {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not text.strip():
        raise TaskDataError(f"data file {str(path)!r} is empty")
    if path.suffix == ".csv":
        try:
            records = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise TaskDataError(f"data file {str(path)!r} is not a valid CSV file ({exc})") from None
        if not records:
            raise TaskDataError(f"data file {str(path)!r} has a header row but no records")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise TaskDataError(f"data file {str(path)!r} line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise TaskDataError(f"data file {str(path)!r} line {number} is not a JSON object")
        records.append(record)
    return records


def _read_hub(name: str, path: str, config: str | None, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return list(load_dataset(path, config, split=split))
    except Exception as exc:
        gated = (
            f"; {path} is gated: accept its terms on the Hub and log in (HF_TOKEN)" if name == "gpqa_diamond" else ""
        )
        raise TaskDataError(
            f"cannot load {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}){gated}; "
            f"or give a local copy with --metadata '{{\"data_dir\": DIR}}' or ${DATA_DIR_ENV} "
            f"holding {SOURCES[name][0]}"
        ) from None


def _normalise(record: dict[str, Any], wanted: tuple[str, ...], where: str, number: int) -> dict[str, Any]:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    row: dict[str, Any] = {}
    for field in (*wanted, "id"):
        value = next((lowered[n] for n in FIELDS[field] if n in lowered and lowered[n] not in (None, "")), None)
        if value is None and field != "id":
            raise TaskDataError(
                f"data {where!r} record {number} has no {field!r} field "
                f"(looked for {', '.join(FIELDS[field])}, any case)"
            )
        if field == "id" and value is None:
            value = number  # records without an id are numbered from 1
        row[field] = str(value).strip() if field != "answer" else value
    if "answer" in row:
        row["answer"] = _answer_text(row["answer"])
    return row


def _answer_text(value: Any) -> str:
    """Gold answers as text: AMC's floats 27.0 -> '27'; strings kept (AIME's '025' is graded as an integer)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _shuffle_options(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """The four options in an order fixed by (seed, question), and the letter of the correct one."""
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    options = [" ".join(str(o).split()) for o in options]  # the source has stray whitespace and newlines
    key = hashlib.sha256(f"{seed}\0{row['Question']}".encode()).hexdigest()
    order = list(range(4))
    random.Random(int(key[:16], 16)).shuffle(order)
    return {
        "id": row["id"],
        "problem": row["Question"],
        "choices": [options[i] for i in order],
        "answer": LETTERS[order.index(0)],
    }
