"""Content-addressed cache of pruned checkpoints: written atomically, verified on read, one builder at a time."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.config import HUB_CALIBRATION_SETS, PruneConfig
from lm_eval_prune.store.checkpoint import atomic_directory

log = logging.getLogger(__name__)

MANIFEST = "cache_manifest.json"
WAIT_ENV = "LM_EVAL_PRUNE_WAIT_SECONDS"
DISABLED = ("none", "off", "false", "0", "")


def default_cache_root() -> Path:
    """``$LM_EVAL_PRUNE_CACHE``, else ``$XDG_CACHE_HOME/lm_eval_prune``, else ``~/.cache/lm_eval_prune``."""
    if os.environ.get("LM_EVAL_PRUNE_CACHE"):
        return Path(os.environ["LM_EVAL_PRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lm_eval_prune"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 23), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_identity(source: str) -> str | None:
    """What a data source holds: the Hub set's fixed name, or the local file's sha256; None when unset."""
    if not source:
        return None
    if source in HUB_CALIBRATION_SETS:
        return source
    return "sha256:" + file_sha256(Path(source))


def data_identity(config: PruneConfig) -> dict[str, str | None]:
    """Content identities of every data source the settings use (calibration, LayerIF train/val/scores)."""
    out = {
        "calibration": source_identity(config.calibration)
        if config.needs_calibration or config.alloc == "layerif"
        else None
    }
    for name in ("layerif_train", "layerif_val", "layerif_scores"):
        out[name] = source_identity(getattr(config, name))
    return out


def model_identity(pretrained: str, revision: str | None, model_config: Any) -> dict[str, Any]:
    """The base model: Hub id and resolved commit, or a local directory's path and the hashes of its small files."""
    identity: dict[str, Any] = {
        "pretrained": pretrained,
        "revision": revision,
        "commit": getattr(model_config, "_commit_hash", None),
    }
    path = Path(pretrained)
    if path.is_dir():
        identity["pretrained"] = str(path.resolve())
        identity["files"] = {
            f.name: (f.stat().st_size, file_sha256(f) if f.stat().st_size < (1 << 26) else int(f.stat().st_mtime))
            for f in sorted(path.iterdir())
            if f.is_file()
        }
    return identity


def cache_key(config: PruneConfig, identity: dict[str, Any]) -> str:
    """Fingerprint of (base model and revision, every prune setting, calibration content, package version)."""
    from lm_eval_prune import __version__

    return config.fingerprint(model=identity, data=data_identity(config), package=__version__)


class PruneCache:
    """Entries are ``ROOT/<key>/``: a full checkpoint plus ``prune_report.json`` and a manifest of file hashes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_setting(cls, setting: str | None, given: bool = True) -> PruneCache | None:
        """``prune_cache=`` model arg: not given is the default root; ``none``/``off`` (lm-eval turns ``none`` into None)
        disables it; anything else is a directory."""
        if not given:
            return cls(default_cache_root())
        if setting is None or str(setting).strip().lower() in DISABLED:
            return None
        return cls(setting)

    def entry(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> Any:
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f".{key}.lock"))

    def lookup(self, key: str) -> Path | None:
        """The verified entry, or None; a damaged entry is removed with a warning (so it gets rebuilt)."""
        entry = self.entry(key)
        if not entry.exists():
            return None
        problem = verify_entry(entry)
        if problem is None:
            return entry
        log.warning("prune cache entry %s is damaged (%s); rebuilding it", entry, problem)
        shutil.rmtree(entry, ignore_errors=True)
        return None

    def store(self, key: str, write: Callable[[Path], None]) -> Path:
        """Run ``write(tmp_dir)``, add the manifest, then move it into place in one rename."""
        entry = self.entry(key)
        with atomic_directory(entry) as tmp:
            write(tmp)
            files = {
                f.name: {"size": f.stat().st_size, "sha256": file_sha256(f)}
                for f in sorted(tmp.iterdir())
                if f.is_file()
            }
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
                found = self.lookup(key)
                if found is not None:
                    return found, False
                if may_build:
                    return self.store(key, build), True
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {wait_seconds:.0f} s for prune cache entry {self.entry(key)} (built by rank 0); set {WAIT_ENV} to wait longer"
                )
            time.sleep(1.0)


def builder_rank() -> tuple[bool, float]:
    """(may this process build cache entries, how long to wait otherwise): rank 0 of a torchrun/accelerate launch builds."""
    rank = int(os.environ.get("RANK", "0") or 0)
    return rank == 0, float(os.environ.get(WAIT_ENV, str(24 * 3600)))


def verify_entry(entry: Path) -> str | None:
    """None when every file in the manifest is present with its size and sha256, else what is wrong."""
    manifest = entry / MANIFEST
    if not manifest.is_file():
        return "no manifest"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return "unreadable manifest"
    for name, meta in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} has the wrong size"
        if file_sha256(path) != meta["sha256"]:
            return f"{name} has the wrong checksum"
    return None
