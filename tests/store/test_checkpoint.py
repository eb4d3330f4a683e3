"""OUT and cache entries: the swap survives SIGKILL at every step, signals clean up, leftovers of the dead go,
OUT is checked before any weights load, and broken models are one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.store import checkpoint
from lm_eval_prune.store.checkpoint import atomic_directory, check_output_dir

OLD = {"a.txt": "old a", "keep.txt": "old only"}
NEW = {"a.txt": "new a", "b.txt": "new b"}
EXCHANGE_STEPS = ["ready", "exchanged", "removed"]
JOURNAL_STEPS = ["ready", "journal", "moved-old", "moved-new", "committed", "removed"]


def tree(path: Path) -> dict[str, str] | None:
    if not path.is_dir():
        return None
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def child(code: str, **env: str) -> subprocess.Popen:
    """A real Python process running ``code`` with this checkout importable."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


WRITER = """
    import os, signal, sys, time
    from pathlib import Path
    from lm_eval_prune.store import checkpoint

    out, mode, step = Path(os.environ["OUT"]), os.environ["MODE"], os.environ["STEP"]
    checkpoint.USE_RENAME_EXCHANGE = mode == "exchange"
    checkpoint._after_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
    with checkpoint.atomic_directory(out) as tmp:
        for name, text in {"a.txt": "new a", "b.txt": "new b"}.items():
            (tmp / name).write_text(text)
        if step == "writing":
            print("ready", flush=True)
            time.sleep(120)
    print("done", flush=True)
"""


def write_tree(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,step", [("exchange", s) for s in EXCHANGE_STEPS] + [("journal", s) for s in JOURNAL_STEPS]
)
def test_overwrite_killed_at_any_step_keeps_old_or_new_out(tmp_path, mode, step):
    out = tmp_path / "parent" / "OUT"
    write_tree(out, OLD)
    proc = child(WRITER, OUT=str(out), MODE=mode, STEP=step)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err  # it really died right after that step

    after_kill = tree(out)
    if mode == "exchange" or step not in ("moved-old",):
        assert after_kill in (OLD, NEW), f"after a kill at {step!r} OUT is {after_kill}"
    else:  # journal fallback: the one instant without OUT; both trees are still on disk under temporary names
        assert after_kill is None and len(leftovers(out.parent)) == 3
    expected = OLD if step == "ready" else NEW

    # the next run that writes beside OUT (or checks it) finishes or rolls back, and removes what the dead left
    check_output_dir(out, overwrite=True)
    assert tree(out) == expected and leftovers(out.parent) == []
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("third")
    assert tree(out) == {"c.txt": "third"} and leftovers(out.parent) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exchange", "journal"])
def test_overwrite_without_a_kill_replaces_out(tmp_path, mode):
    out = tmp_path / "OUT"
    write_tree(out, OLD)
    proc = child(WRITER, OUT=str(out), MODE=mode, STEP="none")
    assert proc.communicate(timeout=120)[0].strip() == "done"
    assert tree(out) == NEW and leftovers(tmp_path) == []


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()


@pytest.mark.slow
def test_sigterm_during_a_write_cleans_up_like_sigint(tmp_path):
    out = tmp_path / "OUT"
    proc = child(WRITER, OUT=str(out), MODE="exchange", STEP="writing")
    wait_ready(proc)
    assert len(leftovers(tmp_path)) == 1  # the temporary directory being written
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not out.exists() and leftovers(tmp_path) == []


def test_sigterm_handler_is_restored_and_a_foreign_one_kept(tmp_path):
    with atomic_directory(tmp_path / "OUT") as tmp:
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        (tmp / "x").write_text("x")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with atomic_directory(tmp_path / "OUT2") as tmp:
            assert signal.getsignal(signal.SIGTERM) is mine
            (tmp / "x").write_text("x")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigkill_leftovers_go_with_the_next_run_live_ones_stay(tmp_path):
    live = child(WRITER, OUT=str(tmp_path / "LIVE"), MODE="exchange", STEP="writing")
    dead = child(WRITER, OUT=str(tmp_path / "DEAD"), MODE="exchange", STEP="writing")
    try:
        wait_ready(live)
        wait_ready(dead)
        dead.send_signal(signal.SIGKILL)
        dead.communicate(timeout=60)
        names = leftovers(tmp_path)
        assert len(names) == 2 and any(n.startswith(".DEAD.tmp-") for n in names)

        with atomic_directory(tmp_path / "OTHER") as tmp:  # another run writing to the same parent
            (tmp / "x").write_text("x")
        remaining = leftovers(tmp_path)
        assert len(remaining) == 1 and remaining[0].startswith(".LIVE.tmp-")
        assert (tmp_path / remaining[0] / "a.txt").read_text() == "new a"  # untouched while its owner lives
    finally:
        live.kill()
        live.communicate(timeout=60)
    assert checkpoint.clean_stale(tmp_path) == remaining and leftovers(tmp_path) == []


def test_temporaries_of_another_host_or_of_unknown_names_are_left_alone(tmp_path):
    tag = checkpoint.owner_tag().split("-")
    foreign = tmp_path / f".OUT.tmp-{'0' * 8}-{tag[1]}-1-1-abcd1234"  # other boot or machine: cannot tell
    legacy = tmp_path / ".OUT.tmp-abc123xy"  # mkdtemp name of an older version: owner unknown
    mine_dead = tmp_path / f".OUT.tmp-{tag[0]}-{tag[1]}-{2**22 + 7}-5-abcd1234"  # no such pid here
    for path in (foreign, legacy, mine_dead):
        path.mkdir()
    assert checkpoint.clean_stale(tmp_path) == [mine_dead.name]
    assert sorted(leftovers(tmp_path)) == sorted([foreign.name, legacy.name])


def test_an_interrupted_write_leaves_no_out_and_no_temporary(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "OUT") as tmp:
        (tmp / "x").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_same_input_gives_byte_identical_output(tmp_path):
    from conftest import make_model

    outs = []
    for name in ("one", "two"):
        with atomic_directory(tmp_path / name) as tmp:
            make_model(seed=3).save_pretrained(tmp)
        outs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    assert outs[0] == outs[1] and "model.safetensors" in outs[0]


def one_line_error(call, *needles: str) -> str:
    with pytest.raises(PruneConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def test_output_checks_before_any_weights_load(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(lambda: check_output_dir("", overwrite=True), "output ''")
    one_line_error(lambda: check_output_dir("  ", overwrite=False), "output '  '")
    one_line_error(lambda: check_output_dir(a_file, overwrite=True), str(a_file), "not a directory")
    one_line_error(lambda: check_output_dir(a_file / "out", overwrite=True), str(a_file / "out"), "cannot be written")
    one_line_error(lambda: check_output_dir(a_file / "sub" / "out", overwrite=False), "cannot be written")
    one_line_error(lambda: check_output_dir("/proc/lm_eval_prune_out", overwrite=False), "cannot be written")
    full = tmp_path / "full"
    write_tree(full, OLD)
    one_line_error(lambda: check_output_dir(full, overwrite=False), "not empty; pass --overwrite")
    assert check_output_dir(full, overwrite=True) == full
    assert check_output_dir(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "new") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode 0555 directory; the /proc case covers root")
def test_a_read_only_parent_is_refused(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        one_line_error(lambda: check_output_dir(parent / "out", overwrite=False), "cannot be written")
    finally:
        parent.chmod(0o755)


def test_output_through_a_symlink_replaces_the_target(tmp_path):
    target = tmp_path / "real"
    write_tree(target, OLD)
    (tmp_path / "link").symlink_to(target)
    with atomic_directory(tmp_path / "link") as tmp:
        (tmp / "a.txt").write_text("new a")
    assert (tmp_path / "link").is_symlink() and tree(target) == {"a.txt": "new a"}


# ----- broken models: one line naming the path, before weights load -----


@pytest.fixture
def model_copy(tmp_path, stories_path):
    path = tmp_path / "model"
    shutil.copytree(stories_path, path)
    path.chmod(0o755)
    for file in path.iterdir():
        file.chmod(0o644)
    return path


def break_model(path: Path, how: str) -> tuple[Path, str]:
    """Damage the copy; returns (what to pass as the model, the text the error must hold)."""
    config = path / "config.json"
    weights = path / "model.safetensors"
    if how == "no model_type":
        data = json.loads(config.read_text())
        data.pop("model_type")
        config.write_text(json.dumps(data))
        return path, f"{config}' has no model_type"
    if how == "corrupt config":
        config.write_text('{"model_type": "llama",')
        return path, f"{config}' is not valid JSON"
    if how == "no config":
        config.unlink()
        return path, "not a model directory: it has no config.json"
    if how == "no weights":
        weights.unlink()
        return path, "has no weights"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
        return path, f"{weights}' is truncated"
    if how == "garbage weights":
        weights.write_bytes(b"\x00" * 64)
        return path, f"{weights}' is"
    if how == "missing shard":
        index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
        return path, "model-00002-of-00002.safetensors' is missing"
    if how == "no tokenizer":
        (path / "tokenizer.json").unlink()
        (path / "tokenizer_config.json").unlink()
        return path, "no usable tokenizer"
    if how == "empty dir":
        shutil.rmtree(path)
        path.mkdir()
        return path, "not a model directory"
    if how == "a file":
        return weights, "is a file"
    raise AssertionError(how)


HOWS = [
    "no model_type",
    "corrupt config",
    "no config",
    "no weights",
    "truncated weights",
    "garbage weights",
    "missing shard",
    "no tokenizer",
    "empty dir",
    "a file",
]


@pytest.mark.parametrize("how", HOWS)
def test_a_broken_model_is_one_line_before_weights_load(model_copy, monkeypatch, how):
    from transformers import AutoModelForCausalLM

    from lm_eval_prune.store.checkpoint import load_config_and_tokenizer

    model, needle = break_model(model_copy, how)

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_load)
    message = one_line_error(lambda: load_config_and_tokenizer(str(model)), needle)
    assert str(model_copy) in message


@pytest.mark.parametrize("how", ["truncated weights", "no weights", "garbage weights", "no config"])
def test_load_model_on_broken_weights_is_one_line(model_copy, how):
    from lm_eval_prune.store.checkpoint import load_model

    model, needle = break_model(model_copy, how)
    one_line_error(lambda: load_model(str(model), "float32", None), needle)


def test_the_intact_model_still_loads(stories_path):
    from lm_eval_prune.store.checkpoint import load_config_and_tokenizer, load_model

    config, tokenizer = load_config_and_tokenizer(str(stories_path))
    model = load_model(str(stories_path), "float32", None)
    assert config.model_type == "llama" and tokenizer("hi")["input_ids"] and model.config.model_type == "llama"


@pytest.mark.slow
def test_a_killed_store_into_the_cache_is_cleaned_by_the_next_build(tmp_path):
    """SIGKILL in the middle of a cache build leaves .KEY.tmp-*; the next build (same root) removes it."""
    root = tmp_path / "cache"
    proc = child(
        """
        import sys, time
        from lm_eval_prune.store.cache import PruneCache

        def build(directory):
            (directory / "w.bin").write_bytes(b"0" * 1000)
            print("ready", flush=True)
            time.sleep(120)

        PruneCache(sys.argv[1]).get_or_build("k1", build)
        """.replace("sys.argv[1]", repr(str(root)))
    )
    wait_ready(proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert any(n.startswith(".k1.tmp-") for n in leftovers(root))
    from lm_eval_prune.store.cache import PruneCache

    entry, built = PruneCache(root).get_or_build("k1", lambda d: (d / "w.bin").write_bytes(b"1"))
    assert built and (entry / "w.bin").read_bytes() == b"1"
    assert [n for n in leftovers(root) if ".tmp-" in n] == []


@pytest.mark.parametrize("mode", ["exchange", "journal"])
def test_sigterm_between_the_renames_is_held_until_the_swap_is_done(tmp_path, monkeypatch, mode):
    out = tmp_path / "OUT"
    write_tree(out, OLD)
    step = "exchanged" if mode == "exchange" else "moved-old"
    monkeypatch.setattr(checkpoint, "USE_RENAME_EXCHANGE", mode == "exchange")
    monkeypatch.setattr(
        checkpoint, "_after_step", lambda name: os.kill(os.getpid(), signal.SIGTERM) if name == step else None
    )
    with pytest.raises(SystemExit) as info, atomic_directory(out) as tmp:
        for name, text in NEW.items():
            (tmp / name).write_text(text)
    assert info.value.code == 128 + signal.SIGTERM
    assert tree(out) == NEW and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
