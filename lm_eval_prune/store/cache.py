"""Content-addressed cache of pruned checkpoints: written atomically, verified on read, one builder at a time."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import file_sha256
from lm_eval_prune.store.checkpoint import atomic_directory, clean_stale

log = logging.getLogger(__name__)

MANIFEST = "cache_manifest.json"
WAIT_ENV = "LM_EVAL_PRUNE_WAIT_SECONDS"
DISABLED = ("none", "off", "false", "0", "")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# verify_entry's memo: entry path -> the (name, size, mtime_ns, ctime_ns, inode) of every file when it last passed
_VERIFIED: dict[str, tuple[tuple[str, int, int, int, int], ...]] = {}
# files changed this recently are not memoised: a write within the filesystem's timestamp granularity could keep them
RACY_NS = 2_000_000_000


def default_cache_root() -> Path:
    """``$LM_EVAL_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/lm_eval_prune``, else ``~/.cache/lm_eval_prune``."""
    if os.environ.get("LM_EVAL_PRUNE_CACHE"):
        return Path(os.environ["LM_EVAL_PRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lm_eval_prune"


class PruneCache:
    """Entries are ``ROOT/<key>/``: a full checkpoint plus ``prune_report.json`` and a manifest of file hashes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_setting(cls, setting: str | None, given: bool = True) -> PruneCache | None:
        """``prune_cache=`` model arg: not given is the default root; ``none``/``off`` (lm-eval turns ``none`` into
        None) disables it; anything else is a directory."""
        if not given:
            return cls(default_cache_root())
        if setting is None or str(setting).strip().lower() in DISABLED:
            return None
        return cls(setting)

    def check_usable(self) -> None:
        """The root is a directory this process can write in (created if missing): one line naming the setting
        otherwise, before any weights load (a file there, or a read-only folder, would fail only after the prune)."""
        import secrets

        where = self.root
        origin = "LM_EVAL_PRUNE_CACHE" if os.environ.get("LM_EVAL_PRUNE_CACHE") == str(self.root) else "prune cache"
        hint = "; point prune_cache= (or $LM_EVAL_PRUNE_CACHE) at a writable folder, or prune_cache=none"
        if os.path.lexists(where) and not where.is_dir():
            raise PruneConfigError(f"{origin} {str(where)!r} exists and is not a directory{hint}")
        try:
            where.mkdir(parents=True, exist_ok=True)
            probe = where / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            raise PruneConfigError(
                f"{origin} {str(where)!r} cannot be written ({exc.strerror or type(exc).__name__}){hint}"
            ) from None

    def entry(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> Any:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{key}.lock"
        if os.path.lexists(path) and not path.is_file():
            raise PruneConfigError(f"prune cache lock {str(path)!r} is not a file; remove it (no run is using it)")
        return FileLock(str(path))

    def lookup(self, key: str) -> Path | None:
        """The verified entry, or None; a damaged entry is removed with a warning (so it gets rebuilt)."""
        entry = self.entry(key)
        if not os.path.lexists(entry):
            return None
        problem = verify_entry(entry, key)
        if problem is None:
            return entry
        log.warning("prune cache entry %s is damaged (%s); rebuilding it", entry, problem)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        return None

    def store(self, key: str, write: Callable[[Path], None]) -> Path:
        """Run ``write(tmp_dir)``, add the manifest of every file it wrote, then move it into place in one rename."""
        entry = self.entry(key)
        with atomic_directory(entry) as tmp:
            write(tmp)
            files = {}
            for path in sorted(tmp.rglob("*")):
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    raise RuntimeError(f"prune cache build wrote {path.name}, which is not a plain file")
                if path.is_file():
                    files[path.relative_to(tmp).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
            if not files:
                raise RuntimeError(f"prune cache build for {key} wrote no files")
            (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))
        return entry

    def get_or_build(
        self, key: str, build: Callable[[Path], None], may_build: bool = True, wait_seconds: float = 0.0
    ) -> tuple[Path, bool]:
        """(entry, built_here): under a file lock, so among concurrent processes exactly one builds.

        A process that may not build (a non-zero rank of a distributed launch, where transformers writes checkpoints
        on rank 0 only) waits up to ``wait_seconds`` for the entry instead.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            with self.lock(key):
                clean_stale(self.root)  # a half swap of a killed builder is finished before the entry is looked up
                found = self.lookup(key)
                if found is not None:
                    return found, False
                if may_build:
                    return self.store(key, build), True
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {wait_seconds:.0f} s for prune cache entry {self.entry(key)} (built by rank 0); "
                    f"set {WAIT_ENV} to wait longer"
                )
            time.sleep(1.0)


def _env_number(name: str, default: str, kind: type) -> Any:
    text = os.environ.get(name, "").strip() or default
    try:
        return kind(text)
    except ValueError:
        raise PruneConfigError(f"{name}={text!r} is not a valid {kind.__name__}") from None


def builder_rank() -> tuple[bool, float]:
    """(may this process build cache entries, how long to wait otherwise).

    A process is a non-zero rank only inside a distributed launch: torchrun and accelerate set both ``RANK`` and
    ``WORLD_SIZE``; a ``RANK`` left in the environment of a single process (WORLD_SIZE unset or 1) must not make it
    wait a day for a rank 0 that does not exist.
    """
    world = _env_number("WORLD_SIZE", "1", int)
    rank = _env_number("RANK", "0", int) if world > 1 else 0
    return rank == 0, _env_number(WAIT_ENV, str(24 * 3600), float)


def _manifest_files(manifest: Path, key: str | None) -> dict[str, dict[str, Any]] | str:
    """The manifest's file table when it has the expected shape, else what is wrong with it."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return "unreadable manifest"
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return "manifest has no file table"
    if key is not None and data.get("key") != key:
        return f"manifest is for key {str(data.get('key'))[:16]!r}, not this entry"
    files = data["files"]
    if not files:
        return "manifest lists no files"
    for name, meta in files.items():
        parts = name.split("/")
        if not name or name == MANIFEST or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return f"manifest lists a bad file name {name[:60]!r}"
        if not isinstance(meta, dict):
            return f"manifest entry of {name} is not an object"
        size, digest = meta.get("size"), meta.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"manifest size of {name} is not a byte count"
        if not isinstance(digest, str) or not _SHA256.match(digest):
            return f"manifest sha256 of {name} is not a sha256"
    return files


def _entry_files(entry: Path) -> dict[str, os.stat_result] | str:
    """Every file under the entry (relative posix name -> lstat), or what is there that no cache build writes."""
    found: dict[str, os.stat_result] = {}
    for current, dirs, files in os.walk(entry):
        for name in dirs + files:
            path = Path(current, name)
            rel = path.relative_to(entry).as_posix()
            info = path.lstat()
            if path.is_symlink():
                return f"{rel} is a symlink"
            if name in files:
                if not stat.S_ISREG(info.st_mode):
                    return f"{rel} is not a plain file"
                found[rel] = info
    return found


def verify_entry(entry: Path, key: str | None = None, memo: bool = True) -> str | None:
    """None when the entry holds exactly the files of its manifest, each with its size and sha256, else what is wrong.

    Exactly: a file the manifest does not list (a stray shard) would be loaded too, so it damages the entry; an empty
    manifest or one of the wrong shape is damage, not a crash. ``key``, when given, must be the manifest's key. With
    ``memo``, an entry that passed in this process is not hashed again while every file keeps its size, mtime, ctime
    and inode (issue 14: a 16 GB entry is hashed once per process, not on every hit).
    """
    entry = Path(entry)
    if entry.is_symlink() or not entry.is_dir():
        return "not a directory"
    manifest = entry / MANIFEST
    if not manifest.is_file():
        return "no manifest"
    try:
        present = _entry_files(entry)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if isinstance(present, str):
        return present
    stamp = tuple(
        (name, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino) for name, info in sorted(present.items())
    )
    memo_key = f"{entry.resolve()}\0{key}"
    if memo and _VERIFIED.get(memo_key) == stamp:
        return None
    files = _manifest_files(manifest, key)
    if isinstance(files, str):
        return files
    strays = sorted(set(present) - set(files) - {MANIFEST})
    if strays:
        return f"{strays[0]} is not in the manifest"
    for name, meta in files.items():
        if name not in present:
            return f"{name} is missing"
        if present[name].st_size != meta["size"]:
            return f"{name} has the wrong size"
        if file_sha256(entry / name) != meta["sha256"]:
            return f"{name} has the wrong checksum"
    if memo:
        fresh = time.time_ns() - RACY_NS
        if all(max(s[2], s[3]) < fresh for s in stamp):
            _VERIFIED[memo_key] = stamp
    return None
