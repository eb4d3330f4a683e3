"""Load a model to prune and write pruned checkpoints atomically (temp dir, then rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.errors import PruneConfigError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty OUT unless ``overwrite``; the parent must be creatable. Called before any weights load."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise PruneConfigError(f"output {str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PruneConfigError(f"output {str(path)!r} is not empty; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on any failure it is removed."""
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_zero_counts(directory: str | Path, linear_names: list[str]) -> dict[str, int]:
    """Zero count of each ``<name>.weight`` as written in the directory's safetensors files."""
    from safetensors import safe_open

    wanted = {f"{name}.weight": name for name in linear_names}
    counts: dict[str, int] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    counts[wanted[key]] = int((handle.get_tensor(key) == 0).sum())
    missing = set(linear_names) - set(counts)
    if missing:
        raise RuntimeError(f"written checkpoint lacks {sorted(missing)[0]}.weight")
    return counts


def write_checkpoint(model: Any, tokenizer: Any, report: PruneReport, directory: str | Path) -> None:
    """Write model, tokenizer and ``prune_report.json`` (sparsity measured on the written files) into ``directory``."""
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    report.set_measured(checkpoint_zero_counts(directory, [layer.name for layer in report.layers]))
    report.save(directory)
    if "layer_scores" in report.extra:  # LayerIF scores, beside the report (reusable as layerif_scores=PATH)
        import json

        Path(directory, "layer_scores.json").write_text(
            json.dumps({"scores": report.extra["layer_scores"]}, indent=1) + "\n"
        )


def save_pruned(model: Any, tokenizer: Any, report: PruneReport, out: str | Path) -> Path:
    """:func:`write_checkpoint` into ``out`` atomically: a failure leaves no ``out`` and no temporary files."""
    with atomic_directory(out) as tmp:
        write_checkpoint(model, tokenizer, report, tmp)
    return Path(out)


def load_linear_weights_(model: Any, directory: str | Path, linear_names: list[str]) -> None:
    """Copy the named linears' weights from a checkpoint directory into ``model`` in place (wherever they live)."""
    import torch
    from safetensors import safe_open

    modules = dict(model.named_modules())
    wanted = {f"{name}.weight": name for name in linear_names}
    done = set()
    with torch.no_grad():
        for file in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key in wanted:
                        weight = modules[wanted[key]].weight
                        weight.copy_(handle.get_tensor(key).to(device=weight.device, dtype=weight.dtype))
                        done.add(wanted[key])
    missing = set(linear_names) - done
    if missing:
        raise RuntimeError(f"checkpoint {directory} lacks {sorted(missing)[0]}.weight")


def torch_dtype(name: str) -> Any:
    """``auto`` or a torch dtype from its name."""
    if name not in DTYPES:
        raise PruneConfigError(f"dtype={name!r} is not allowed; use {', '.join(DTYPES)}")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def load_config_and_tokenizer(model_id: str, revision: str | None = None) -> tuple[Any, Any]:
    """(model config, tokenizer) from a Hub id or local directory, with the architecture checked: no weights yet."""
    from transformers import AutoConfig, AutoTokenizer

    from lm_eval_prune.engine.model_utils import check_architecture

    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision)
    except OSError as exc:
        raise PruneConfigError(f"model {model_id!r} cannot be found: {str(exc).splitlines()[0]}") from None
    check_architecture(config)
    return config, AutoTokenizer.from_pretrained(model_id, revision=revision)


def load_model(model_id: str, dtype: str, device: str | None, revision: str | None = None) -> Any:
    """The causal LM's weights in ``dtype`` (``auto``: as stored), placed on ``device`` (None: CPU)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_id, revision=revision, dtype=torch_dtype(dtype), device_map=device
    )
