"""Local benchmark files: every unusable one fails with one line naming the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.harness.task_data import DATA_DIR_ENV, TaskDataError, load_rows

GPQA_HEADER = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"


def fails(name: str, folder: Path, monkeypatch=None) -> str:
    with pytest.raises(TaskDataError) as info:
        load_rows(name, {"data_dir": str(folder)})
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, PruneConfigError)
    return message


def test_missing_folder_names_the_setting_it_came_from(tmp_path, monkeypatch):
    absent = tmp_path / "nowhere"
    assert fails("aime24", absent) == (
        f"data folder '{absent}' (--metadata data_dir) does not exist; give a folder holding aime24.jsonl"
    )
    monkeypatch.setenv(DATA_DIR_ENV, str(absent))
    with pytest.raises(TaskDataError, match=rf"\(\${DATA_DIR_ENV}\) does not exist"):
        load_rows("aime24", {})


def test_missing_and_empty_files(tmp_path):
    assert fails("math500", tmp_path) == f"data file '{tmp_path / 'math500.jsonl'}' is missing"
    (tmp_path / "math500.jsonl").write_text("\n  \n")
    assert fails("math500", tmp_path) == f"data file '{tmp_path / 'math500.jsonl'}' is empty"
    (tmp_path / "gpqa_diamond.csv").write_bytes(b"")
    assert fails("gpqa_diamond", tmp_path) == f"data file '{tmp_path / 'gpqa_diamond.csv'}' is empty"


def test_header_only_csv(tmp_path):
    (tmp_path / "gpqa_diamond.csv").write_text(GPQA_HEADER)
    assert fails("gpqa_diamond", tmp_path) == (
        f"data file '{tmp_path / 'gpqa_diamond.csv'}' has a header row but no records"
    )


def test_non_utf8_files(tmp_path):
    (tmp_path / "amc23.jsonl").write_bytes(json.dumps({"problem": "caf", "answer": 1}).encode() + b"\xe9\xff\n")
    assert fails("amc23", tmp_path) == (
        f"data file '{tmp_path / 'amc23.jsonl'}' is not UTF-8 text (byte 31); save it as UTF-8"
    )
    (tmp_path / "gpqa_diamond.csv").write_bytes(GPQA_HEADER.encode("utf-16"))
    assert "is not UTF-8 text (byte 0)" in fails("gpqa_diamond", tmp_path)


def test_broken_jsonl_line_and_missing_fields(tmp_path):
    good = json.dumps({"problem": "1+1", "answer": "2"})
    (tmp_path / "aime24.jsonl").write_text(f"{good}\n{good[:-3]}\n")
    assert fails("aime24", tmp_path) == f"data file '{tmp_path / 'aime24.jsonl'}' line 2 is not valid JSON"
    (tmp_path / "aime24.jsonl").write_text(f"{good}\n[1, 2]\n")
    assert fails("aime24", tmp_path).endswith("line 2 is not a JSON object")
    (tmp_path / "aime24.jsonl").write_text(f"{good}\n" + json.dumps({"question": "x", "solution": "2"}) + "\n")
    assert fails("aime24", tmp_path) == (
        f"data '{tmp_path / 'aime24.jsonl'}' record 2 has no 'answer' field (looked for answer, any case)"
    )
    (tmp_path / "gpqa_diamond.csv").write_text(GPQA_HEADER + "r1,Q?,right,w1,w2\n")  # a short row
    assert fails("gpqa_diamond", tmp_path).endswith(
        "record 1 has no 'Incorrect Answer 3' field (looked for incorrect answer 3, any case)"
    )


def test_valid_files_still_load_with_a_byte_order_mark(tmp_path):
    (tmp_path / "gpqa_diamond.csv").write_text(GPQA_HEADER + "r1,Q?,right,w1,w2,w3\n", encoding="utf-8-sig")
    (row,) = load_rows("gpqa_diamond", {"data_dir": str(tmp_path)})
    assert row["id"] == "r1" and sorted(row["choices"]) == ["right", "w1", "w2", "w3"]
    assert row["choices"][ord(row["answer"]) - ord("A")] == "right"
    (tmp_path / "amc23.jsonl").write_text(json.dumps({"Question": "x", "Answer": 27.0}) + "\n")
    assert load_rows("amc23", {"data_dir": str(tmp_path)}) == [{"problem": "x", "answer": "27", "id": "1"}]
