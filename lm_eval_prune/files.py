"""Small-file plumbing for every layer (torch-free, stdlib only): content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, memo: bool = False) -> str:
    """Hex sha256 of a file's bytes.

    ``memo`` keeps the result per (resolved path, size, mtime_ns) in this process: right for identities, which hash the
    same inputs several times per run; wrong for verification, which must read what is on disk now.
    """
    path = Path(path)
    key = None
    if memo:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _MEMO:
            return _MEMO[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 23), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if key is not None:
        _MEMO[key] = value
    return value


def _temporary(path: Path) -> Path:
    """``.NAME.tmp-PID.SUFFIX`` beside ``path``: the owner's pid in the name, the suffix kept (matplotlib reads it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


def pid_alive(pid: int) -> bool:
    """False only when no process has ``pid`` (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` whose writer is gone (SIGKILL, out of memory): nothing lingers."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+){re.escape(path.suffix)}$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and int(match[1]) != os.getpid() and not pid_alive(int(match[1])):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def check_writable_file(path: str | Path, what: str) -> Path:
    """``path`` names a file whose folder exists (created when missing) and is writable: checked before the work that
    produces it, so a long run never ends in "cannot write". ``what`` names the option in the message."""
    from lm_eval_prune.errors import PruneConfigError

    text = str(path)
    target = Path(text).expanduser()
    if not text.strip():
        raise PruneConfigError(f"{what} '' is empty; give a file name")
    if target.is_dir():
        raise PruneConfigError(f"{what} {text!r} is a folder; give a file name inside it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PruneConfigError(f"{what} {text!r}: its folder cannot be created ({exc.strerror or exc})") from None
    if not os.access(target.parent, os.W_OK):
        raise PruneConfigError(f"{what} {text!r}: its folder is not writable")
    return target


def write_atomically(path: str | Path, content: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``content`` (text, bytes, or a function writing to the path it gets) beside ``path``, then rename it into
    place: a reader sees the old file or the new one, never half; a failed write leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_temporaries(path)
    tmp = _temporary(path)
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
