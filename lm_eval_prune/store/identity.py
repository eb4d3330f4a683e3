"""The one identity of a prune: a hash of (base model + resolved revision + dtype, every setting that decides the
bytes, the content of every data source, the package version).

It is the prune cache's key, the report's ``fingerprint`` and the model card's fingerprint. Torch-free, and cheap:
local files are hashed once per process (memoised by path, size and mtime).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.config import HUB_CALIBRATION_SETS, SOURCE_FIELDS, SOURCE_PREFIXES, PruneConfig
from lm_eval_prune.files import file_sha256 as _sha

_CALIBRATION_SETTINGS = (
    "calibration",
    "nsamples",
    "seqlen",
    "seed",
    "calib_batch_size",
    "trace_field",
    "calib_gen_tokens",
)


def file_sha256(path: Path) -> str:
    """Memoised per process: an identity hashes the same files several times per run."""
    return _sha(path, memo=True)


@dataclass(frozen=True)
class BaseModel:
    """The model a prune starts from: Hub id or local directory, revision, and the dtype its weights are pruned in."""

    pretrained: str
    revision: str | None = None
    dtype: str = "auto"


def source_identity(source: str) -> str | None:
    """What a data source holds: the Hub set's fixed name, or the local file's sha256; None when unset."""
    if not source:
        return None
    if source in HUB_CALIBRATION_SETS:
        return source
    prefix = next((p for p in SOURCE_PREFIXES if source.startswith(p)), "")
    return prefix + "sha256:" + file_sha256(Path(source[len(prefix) :]))


def model_identity(base: BaseModel, model_config: Any) -> dict[str, Any]:
    """The base model: Hub id and resolved commit, or a local directory's path and hashes of its files.

    Weight files over 64 MiB are identified by size and mtime (hashing 16 GB on every run would cost minutes).
    """
    identity: dict[str, Any] = {
        "pretrained": base.pretrained,
        "revision": base.revision or "main",  # lm-eval passes "main" where the CLI passes nothing
        "commit": getattr(model_config, "_commit_hash", None),
        "dtype": resolved_dtype(base.dtype, model_config),
    }
    path = Path(base.pretrained)
    if path.is_dir():
        identity["pretrained"] = str(path.resolve())
        identity["revision"] = None  # a local folder has no revisions; its files identify it
        identity["files"] = {
            f.name: (f.stat().st_size, file_sha256(f) if f.stat().st_size < (1 << 26) else f.stat().st_mtime_ns)
            for f in sorted(path.iterdir())
            if f.is_file()
        }
    return identity


def resolved_dtype(dtype: str, model_config: Any) -> str:
    """``auto`` is the dtype the checkpoint stores (its config says), else float32 as transformers loads it."""
    if dtype != "auto":
        return str(dtype).replace("torch.", "")
    stored = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    return str(stored).replace("torch.", "") if stored else "float32"


def decisive_settings(config: PruneConfig, device_type: str) -> dict[str, Any]:
    """The settings that decide the bytes, with those the chosen method and allocation do not read left out
    (so ``magnitude`` with another ``nsamples`` is the same prune). The device type and calibration batch size stay
    whenever calibration runs, or an allocation computes on the device (AlphaPruning's SVDs): other kernels round
    differently."""
    settings = config.identity_settings()
    settings.pop("device", None)
    if config.reads_calibration_source or config.alloc_spec.device_dependent:
        settings["device_type"] = device_type
    if not config.reads_calibration_source:
        for name in _CALIBRATION_SETTINGS:
            settings.pop(name, None)
    return settings


def data_identity(config: PruneConfig) -> dict[str, str | None]:
    """Content identities of every data source the settings read."""
    uses_calibration = config.reads_calibration_source
    out: dict[str, str | None] = {}
    for name in SOURCE_FIELDS:
        value = getattr(config, name)
        out[name] = source_identity(value) if (name != "calibration" or uses_calibration) else None
    return out


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prune_identity(config: PruneConfig, model: dict[str, Any], device_type: str) -> str:
    """The identity of a prune (see the module docstring)."""
    from lm_eval_prune._version import __version__

    return digest(
        {
            "settings": decisive_settings(config, device_type),
            "model": model,
            "data": data_identity(config),
            "package": __version__,
        }
    )


def layerif_identity(config: PruneConfig, model: dict[str, Any], device_type: str) -> str:
    """The identity of a set of LayerIF scores (cached apart from the pruned weights: they cost backward passes)."""
    from lm_eval_prune._version import __version__

    settings = {k: v for k, v in config.to_dict().items() if k.startswith("layerif_") and k != "layerif_eps"}
    settings.update(
        calibration=config.calibration,
        seed=config.seed,
        calib_batch_size=config.calib_batch_size,
        trace_field=config.trace_field,  # which trajectory a trace source renders
        calib_gen_tokens=config.calib_gen_tokens,  # how long self: traces are
    )
    data = {k: v for k, v in data_identity(config).items() if k != "layerif_scores"}
    data["calibration"] = source_identity(config.calibration)
    return digest(
        {
            "kind": "layerif-identity-hessian",
            "settings": settings,
            "model": model,
            "data": data,
            "device": device_type,
            "package": __version__,
        }
    )


DTYPES = ("auto", "bfloat16", "float16", "float32")


def check_dtype(name: str) -> str:
    """The dtype a model is loaded and pruned in: ``auto`` (as stored) or a float type's name."""
    if name not in DTYPES:
        from lm_eval_prune.errors import PruneConfigError

        raise PruneConfigError(f"dtype={name!r} is not allowed; use {', '.join(DTYPES)}")
    return name
