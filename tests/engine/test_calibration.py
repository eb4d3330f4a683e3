"""Calibration sources: one-line errors for every unusable one, the cheap pre-load check, the tokenization memo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS, DATA

from lm_eval_prune.engine import calibration
from lm_eval_prune.engine.calibration import check_source, load_calibration, sample_stream, tokens_digest
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.errors import PruneConfigError

TEXT = " ".join(CORPUS * 4)


class CountingTokenizer:
    """The real test tokenizer, counting how often text is tokenized."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.calls += 1
        return self.tokenizer(text, **kwargs)

    def __len__(self) -> int:
        return len(self.tokenizer)


def error(call, *args) -> str:
    with pytest.raises(PruneConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_check_source_accepts_good_sources(tmp_path):
    torch.save(torch.zeros(2, 3, dtype=torch.long), tmp_path / "ids.pt")
    np.save(tmp_path / "ids.npy", np.zeros((2, 3), dtype=np.int64))
    (tmp_path / "a.txt").write_text("caf\u00e9 " * 40000)  # multi-byte characters across the 64 KiB head
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    (tmp_path / "s.json").write_text("[1, 2]")
    trace = {"question": "q", "deepseek_thinking_trajectory": "t" * 200_000, "deepseek_attempt": "a"}  # > the head
    (tmp_path / "t.jsonl").write_text(json.dumps(trace) + "\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    for name, value in [
        ("calibration", "s1k"),
        ("calibration", f"traces:{tmp_path / 't.jsonl'}"),
        ("layerif_train", f"traces:{tmp_path / 'm.jsonl'}"),
        ("calibration", f"self:{DATA / 'math500_test.jsonl'}"),
        ("layerif_val", str(DATA / "math500_test.jsonl")),
        ("layerif_val", str(tmp_path / "t.jsonl")),
        ("calibration", ""),
        ("calibration", "c4"),
        ("layerif_train", "wikitext2"),
        ("calibration", str(tmp_path / "ids.pt")),
        ("calibration", str(tmp_path / "ids.npy")),
        ("calibration", str(tmp_path / "a.txt")),
        ("layerif_val", str(tmp_path / "a.jsonl")),
        ("layerif_scores", str(tmp_path / "s.json")),
    ]:
        check_source(name, value)


def test_check_source_refuses_each_bad_file_in_one_line(tmp_path):
    def message(name: str, value: str) -> str:
        return error(check_source, name, value)

    assert (
        message("calibration", str(tmp_path / "no.txt")) == f"calibration file '{tmp_path / 'no.txt'}' does not exist"
    )
    (tmp_path / "d.txt").mkdir()
    assert message("calibration", str(tmp_path / "d.txt")).endswith("is a directory, not a .txt file")
    assert (
        message("calibration", write(tmp_path / "e.jsonl", b""))
        == f"calibration file '{tmp_path / 'e.jsonl'}' is empty"
    )
    assert message("layerif_train", write(tmp_path / "b.txt", b"ab\x00\x01")) == (
        f"layerif_train file '{tmp_path / 'b.txt'}' is not UTF-8 text (binary data at byte 2); give a UTF-8 .txt file"
    )
    assert "is not UTF-8 text (binary data at byte 1)" in message("calibration", write(tmp_path / "b.jsonl", b"{\xff}"))
    assert message("calibration", write(tmp_path / "c.pt", b"not a tensor")).endswith(
        "is not a torch.save file; write it with torch.save(ids, path), ids a 2-D integer tensor"
    )
    assert message("calibration", write(tmp_path / "c.npy", b"\x00\x01")).endswith(
        "is not a NumPy .npy file; write it with numpy.save(path, ids)"
    )
    assert message("calibration", "data.csv") == (
        "calibration='data.csv' is not allowed; "
        "use c4, wikitext2, s1k, traces:PATH, self:PROMPTS or a path ending in .txt, .jsonl, .pt, .npy"
    )
    assert message("layerif_scores", "c4") == "layerif_scores='c4' is not allowed; use a path ending in .json, .npy"


def test_loaders_turn_corrupt_files_into_one_line(tokenizer, tmp_path):
    def load(path: str, **settings) -> str:
        return error(load_calibration, PruneConfig(calibration=path, nsamples=2, seqlen=3, **settings), tokenizer)

    torch.save(torch.zeros(2, 3, dtype=torch.long), tmp_path / "ids.pt")
    whole = (tmp_path / "ids.pt").read_bytes()
    cut = write(tmp_path / "cut.pt", whole[: len(whole) // 2])  # right magic, truncated archive
    assert load(cut).startswith(f"calibration file '{cut}' cannot be loaded (")
    assert load(cut).endswith("write a 2-D integer tensor [nsamples, seqlen] with torch.save(ids, path)")
    torch.save({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, tmp_path / "dict.pt")
    assert load(str(tmp_path / "dict.pt")) == (
        f"calibration file '{tmp_path / 'dict.pt'}' holds a dict, not a tensor; "
        "write a 2-D integer tensor [nsamples, seqlen] with torch.save(ids, path)"
    )
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert load(str(tmp_path / "obj.npy")).endswith("with numpy.save(path, ids)")
    np.save(tmp_path / "ok.npy", np.zeros((2, 3), dtype=np.int64))
    cut_npy = write(tmp_path / "cut.npy", (tmp_path / "ok.npy").read_bytes()[:-5])
    assert load(cut_npy).startswith(f"calibration file '{cut_npy}' cannot be loaded (")
    late = write(tmp_path / "late.txt", TEXT.encode() * 200 + b"\xff\xfe")  # binary past the checked head
    assert (
        load(late)
        == f"calibration file '{late}' is not UTF-8 text (byte {len(TEXT.encode()) * 200}); give a UTF-8 .txt file"
    )
    late_jsonl = write(tmp_path / "late.jsonl", (json.dumps({"text": TEXT}) + "\n").encode() * 200 + b"\xff\n")
    assert "is not UTF-8 text" in load(late_jsonl) and load(late_jsonl).endswith("give a UTF-8 .jsonl file")
    assert load(write(tmp_path / "empty.txt", b"")) == f"calibration file '{tmp_path / 'empty.txt'}' is empty"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["c4", "wikitext2"])
def test_hub_sets_offline_say_what_to_do(tokenizer, name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = error(load_calibration, PruneConfig(calibration=name, nsamples=2, seqlen=8), tokenizer)
    assert message.startswith(f"calibration {name!r} cannot be loaded from the Hub (HF_DATASETS_OFFLINE and HF_HUB")
    assert message.endswith("or pass a local .txt, .jsonl, .pt or .npy file as calibration=PATH")


def test_text_is_tokenized_once_per_tokenizer_and_file_version(tokenizer, tmp_path):
    counting = CountingTokenizer(tokenizer)
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    config = PruneConfig(calibration=str(path), nsamples=3, seqlen=16)
    first = load_calibration(config, counting)
    again = load_calibration(config, counting)
    other_seed = load_calibration(config.replace(seed=1, nsamples=2), counting)  # LayerIF's second draw
    assert counting.calls == 1
    stream = tokenizer(TEXT, verbose=False)["input_ids"]
    assert torch.equal(first, sample_stream(stream, 3, 16, 0, "x")) and torch.equal(first, again)
    assert torch.equal(other_seed, sample_stream(stream, 2, 16, 1, "x"))

    path.write_text(TEXT + " one two three")  # a changed file is tokenized again
    changed = load_calibration(config, counting)
    assert counting.calls == 2
    assert torch.equal(changed, sample_stream(tokenizer(TEXT + " one two three")["input_ids"], 3, 16, 0, "x"))
    fresh = CountingTokenizer(tokenizer)  # another tokenizer object: its own tokenization
    load_calibration(config, fresh)
    assert fresh.calls == 1 and len(calibration._TOKENIZED) <= calibration.MEMO_ENTRIES


def test_jsonl_documents_are_tokenized_once_across_draws(tokenizer, tmp_path):
    counting = CountingTokenizer(tokenizer)
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": " ".join(CORPUS[i : i + 3] * 3)}) for i in range(5)) + "\n")
    config = PruneConfig(calibration=str(path), nsamples=6, seqlen=12)
    first = load_calibration(config, counting)
    calls = counting.calls
    assert 1 <= calls <= 5
    assert torch.equal(load_calibration(config, counting), first) and counting.calls == calls
    load_calibration(config.replace(seed=3), counting)
    assert counting.calls <= 5  # each of the 5 documents at most once


def test_tokens_digest_is_content_only():
    ids = torch.arange(12).reshape(3, 4)
    assert tokens_digest(ids) == tokens_digest(ids.t().contiguous().t()) == tokens_digest(ids.to(torch.int32))
    assert tokens_digest(ids) != tokens_digest(ids.flip(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tokens_digest_of_a_cuda_tensor_equals_the_cpu_one():
    ids = torch.arange(12).reshape(3, 4)
    assert tokens_digest(ids.cuda()) == tokens_digest(ids)
