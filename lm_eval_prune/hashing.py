"""Content hashes of files, one implementation for every layer (torch-free, stdlib only)."""

from __future__ import annotations

import hashlib
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
