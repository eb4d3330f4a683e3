"""The prune cache serves exactly what it verified: stray files, bad manifests, memoised hashing, who builds."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import torch
from conftest import make_model

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.store import cache as cache_module
from lm_eval_prune.store.cache import MANIFEST, PruneCache, builder_rank, verify_entry
from lm_eval_prune.store.checkpoint import load_linear_weights_

KEY = "k" * 64
LINEARS = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def save_model(seed: int):
    """A build that writes a tiny Llama's checkpoint; returns (build, model)."""
    model = make_model(seed=seed)

    def build(directory):
        model.save_pretrained(directory)

    return build, model


def weights(model, name):
    return dict(model.named_modules())[name].weight.detach().clone()


def test_a_stray_shard_of_zeros_is_not_served(tmp_path, caplog):
    """The bug: only listed files were verified, but loading read every *.safetensors; the stray one won."""
    from safetensors.torch import save_file

    build, model = save_model(seed=1)
    cache = PruneCache(tmp_path / "cache")
    entry, built = cache.get_or_build(KEY, build)
    assert built
    zeros = {f"{name}.weight": torch.zeros_like(weights(model, name)) for name in LINEARS}
    save_file(zeros, str(entry / "zz-stray.safetensors"))  # sorts last: the old loader let it win

    with caplog.at_level(logging.WARNING, logger="lm_eval_prune"):
        entry, built = cache.get_or_build(KEY, build)
    assert built, "an entry with a file outside its manifest was served as a hit"
    assert "zz-stray.safetensors is not in the manifest" in caplog.text and "rebuilding it" in caplog.text
    assert not (entry / "zz-stray.safetensors").exists()
    fresh = make_model(seed=2)
    load_linear_weights_(fresh, entry, LINEARS)
    for name in LINEARS:
        assert torch.equal(weights(fresh, name), weights(model, name))
        assert int((weights(fresh, name) == 0).sum()) == 0


def manifest_of(entry):
    return json.loads((entry / MANIFEST).read_text())


def sha_of(entry):
    return next(iter(manifest_of(entry)["files"].values()))["sha256"]


BAD_MANIFESTS = {
    "null": lambda entry: None,
    "list": lambda entry: [],
    "files null": lambda entry: {"key": KEY, "files": None},
    "files list": lambda entry: {"key": KEY, "files": ["model.safetensors"]},
    "empty files": lambda entry: {"key": KEY, "files": {}},
    "no sha256": lambda entry: {
        "key": KEY,
        "files": {n: {"size": m["size"]} for n, m in manifest_of(entry)["files"].items()},
    },
    "size string": lambda entry: {
        "key": KEY,
        "files": {n: {**m, "size": str(m["size"])} for n, m in manifest_of(entry)["files"].items()},
    },
    "size bool": lambda entry: {
        "key": KEY,
        "files": {n: {**m, "size": True} for n, m in manifest_of(entry)["files"].items()},
    },
    "meta null": lambda entry: {"key": KEY, "files": {n: None for n in manifest_of(entry)["files"]}},
    "escaping name": lambda entry: {"key": KEY, "files": {"../x": {"size": 1, "sha256": sha_of(entry)}}},
    "other key": lambda entry: {**manifest_of(entry), "key": "0" * 64},
}


@pytest.mark.parametrize("shape", sorted(BAD_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_damage_not_a_crash(tmp_path, caplog, shape):
    build, model = save_model(seed=3)
    cache = PruneCache(tmp_path / "cache")
    entry, _ = cache.get_or_build(KEY, build)
    (entry / MANIFEST).write_text(json.dumps(BAD_MANIFESTS[shape](entry)))

    problem = verify_entry(entry, KEY, memo=False)
    assert isinstance(problem, str) and problem
    with caplog.at_level(logging.WARNING, logger="lm_eval_prune"):
        entry, built = cache.get_or_build(KEY, build)
    assert built and "is damaged" in caplog.text
    assert verify_entry(entry, KEY, memo=False) is None
    fresh = make_model(seed=4)
    load_linear_weights_(fresh, entry, LINEARS)
    assert all(torch.equal(weights(fresh, n), weights(model, n)) for n in LINEARS)


@pytest.mark.parametrize("damage", ["missing file", "flipped byte", "extra dir", "symlink"])
def test_other_damage_is_found(tmp_path, damage):
    build, _ = save_model(seed=5)
    entry, _ = PruneCache(tmp_path / "cache").get_or_build(KEY, build)
    target = entry / "model.safetensors"
    if damage == "missing file":
        target.unlink()
    elif damage == "flipped byte":
        data = bytearray(target.read_bytes())
        data[-3] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "extra dir":
        (entry / "sub").mkdir()
        (entry / "sub" / "x.safetensors").write_bytes(b"0")
    else:
        (entry / "link.safetensors").symlink_to(target)
    assert verify_entry(entry, KEY, memo=False) is not None


def test_an_entry_is_hashed_once_per_process(tmp_path, monkeypatch):
    """Issue 14: hits re-hashed every file; now a passed entry is hashed again only when a file changed."""
    hashed = []
    real = cache_module.file_sha256

    def counting(path):
        hashed.append(path.name)
        return real(path)

    build, _ = save_model(seed=6)
    entry, _ = PruneCache(tmp_path / "cache").get_or_build(KEY, build)
    monkeypatch.setattr(cache_module, "file_sha256", counting)
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    time.sleep(0.05)
    assert verify_entry(entry, KEY) is None
    first = len(hashed)
    assert first == len(manifest_of(entry)["files"]) >= 2
    assert verify_entry(entry, KEY) is None and verify_entry(entry, KEY) is None
    assert len(hashed) == first, "a verified, unchanged entry was hashed again"

    time.sleep(0.05)
    target = entry / "model.safetensors"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-3] ^= 1
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: ctime still moves
    assert verify_entry(entry, KEY) == "model.safetensors has the wrong checksum"


def test_fresh_files_are_not_memoised(tmp_path, monkeypatch):
    """Within the timestamp granularity a rewrite could keep the stamp: such files are hashed every time."""
    hashed = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(cache_module, "RACY_NS", 3_600 * 10**9)
    build, _ = save_model(seed=7)
    entry, _ = PruneCache(tmp_path / "cache").get_or_build(KEY, build)
    hashed.clear()
    assert verify_entry(entry, KEY) is None and verify_entry(entry, KEY) is None
    assert len(hashed) == 2 * len(manifest_of(entry)["files"])


def test_a_build_that_writes_nothing_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="wrote no files"):
        PruneCache(tmp_path / "cache").get_or_build(KEY, lambda directory: None)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{KEY}.lock"]


@pytest.mark.parametrize(
    "env,may_build",
    [
        ({"RANK": "1"}, True),  # a stray RANK in a single process: it builds, nobody else would
        ({"RANK": "1", "WORLD_SIZE": "1"}, True),
        ({"RANK": "3", "WORLD_SIZE": ""}, True),
        ({"RANK": "0", "WORLD_SIZE": "2"}, True),
        ({"RANK": "1", "WORLD_SIZE": "2"}, False),
        ({}, True),
    ],
)
def test_only_a_non_zero_rank_of_a_real_launch_waits(monkeypatch, env, may_build):
    for name in ("RANK", "WORLD_SIZE", cache_module.WAIT_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert builder_rank() == (may_build, 24 * 3600.0)


def test_a_single_process_with_a_stray_rank_builds_instead_of_waiting(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LM_EVAL_PRUNE_WAIT_SECONDS", "3")  # a waiting process fails after 3 s instead of a day
    build, _ = save_model(seed=8)
    may_build, wait = builder_rank()
    start = time.monotonic()
    _, built = PruneCache(tmp_path / "cache").get_or_build(KEY, build, may_build, wait)
    assert built and time.monotonic() - start < 60


@pytest.mark.parametrize("name,value", [("WORLD_SIZE", "two"), ("RANK", "x"), ("LM_EVAL_PRUNE_WAIT_SECONDS", "1h")])
def test_bad_launch_variables_are_one_line(monkeypatch, name, value):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(name, value)
    with pytest.raises(PruneConfigError) as info:
        builder_rank()
    assert f"{name}={value!r}" in str(info.value) and "\n" not in str(info.value)
