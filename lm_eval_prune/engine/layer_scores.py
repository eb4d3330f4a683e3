"""Layer quality scores: LayerIF influence (identity Hessian, TracIn-like) and ShortGPT's Block Influence."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.engine.sequential import BlockInputs, propagate, run_block
from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.files import write_atomically

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ ShortGPT
def cosine_block_influence(inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[float, int]:
    """(sum over tokens of 1 - cos(x_in, x_out), token count) for one batch, in fp32."""
    cos = nn.functional.cosine_similarity(
        inputs.float().reshape(-1, inputs.shape[-1]), outputs.float().reshape(-1, outputs.shape[-1]), dim=-1
    )
    return float((1 - cos).sum(dtype=torch.float64)), cos.numel()


def block_influence(model: nn.Module, inputs: BlockInputs, device: torch.device, offload: bool) -> list[float]:
    """ShortGPT's BI_i = 1 - mean over tokens of cos(x_i, x_{i+1}), x_i the hidden state entering block i (dense)."""
    scores: list[float] = []

    def visit(_index: int, block: nn.Module, block_inputs: BlockInputs | None) -> list[torch.Tensor]:
        assert block_inputs is not None
        outputs = run_block(block, block_inputs)
        total = count = 0.0
        for x_in, x_out in zip(block_inputs.hidden, outputs, strict=True):
            part, n = cosine_block_influence(x_in, x_out)
            total, count = total + part, count + n
        scores.append(total / count)
        return outputs

    propagate(model, inputs, visit, device, offload, desc="ShortGPT block influence", changes_weights=False)
    return scores


def remove_blocks_(model: Any, remove: list[int]) -> None:
    """Delete decoder blocks; fix the config (num_hidden_layers, layer_types, max_window_layers) and layer indices."""
    blocks = decoder_blocks(model)
    keep = [i for i in range(len(blocks)) if i not in set(remove)]
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = sum(1 for i in keep if i < config.max_window_layers)
    decoder_module = model.model if hasattr(model, "model") else model
    decoder_module.layers = nn.ModuleList(blocks[i] for i in keep)
    config.num_hidden_layers = len(keep)
    for new_index, block in enumerate(decoder_module.layers):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index


# ------------------------------------------------------------------------------------------------ LayerIF
def sequence_losses(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence of ``ids`` [b, seqlen] (fp32).

    ``lengths`` (right-padded records): only targets inside each record count, so pad positions get no gradient
    (and causal attention keeps them out of every real position).
    """
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    targets = ids[:, 1:]
    per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    per_token = per_token.reshape(targets.shape)
    if lengths is None:
        return per_token.mean(dim=1)
    positions = torch.arange(targets.shape[1], device=ids.device)
    valid = (positions[None, :] < (lengths.to(ids.device)[:, None] - 1)).to(per_token.dtype)
    return (per_token * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


@torch.enable_grad()
def layerif_influence(
    model: Any,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    batch_size: int = 8,
    positives: list[int] | None = None,
    train_lengths: torch.Tensor | None = None,
    val_lengths: torch.Tensor | None = None,
) -> list[float]:
    """``S_l = sum_i max(0, -<G_val^l, g_i^l>)`` over the attention and MLP linear weights of each block l.

    Cheap form: one backward of the summed validation loss (G_val kept per weight, in fp32), then one backward per
    training sample with per-block dot products accumulated on the device (one host sync per sample); no per-sample
    gradient is stored. Only block-linear weights get gradients; gradient checkpointing is on during the backwards.
    A non-finite dot product (fp16 overflow) is an error, never a silent 0. ``positives`` (filled when given) counts,
    per block, the training samples that raise the validation loss.
    """
    blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    linears = [list(block_linears(block).values()) for block in blocks]
    weights = [linear.weight for group in linears for linear in group]
    saved = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    had_input_hook = getattr(model, "_require_grads_hook", None) is not None
    disable = _enable_checkpointing(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    model.train()  # checkpointing is active in train mode only; these architectures have no dropout at 0.0 rates
    try:
        for weight in weights:
            weight.grad = None
        val_batches = val_ids.split(batch_size)
        val_lens = val_lengths.split(batch_size) if val_lengths is not None else [None] * len(val_batches)
        for batch, lens in tqdm(
            list(zip(val_batches, val_lens, strict=True)), desc="LayerIF validation gradient", unit="batch", leave=False
        ):
            sequence_losses(model, batch.to(device), lens).sum().backward()
        g_val = [[_grad(linear).float().reshape(-1) for linear in group] for group in linears]
        scores = [0.0] * len(blocks)
        counts = [0] * len(blocks)
        for index_i, sample in enumerate(
            tqdm(train_ids, desc="LayerIF training backwards", unit="sample", leave=False)
        ):
            for weight in weights:
                weight.grad = None
            length = None if train_lengths is None else train_lengths[index_i : index_i + 1]
            if length is not None:
                sample = sample[: int(length)]  # one record alone: its pads are not needed
                length = None
            sequence_losses(model, sample.unsqueeze(0).to(device), length).sum().backward()
            dots = torch.stack(
                [
                    sum(
                        (
                            torch.dot(gv, _grad(linear).reshape(-1).float())
                            for gv, linear in zip(vals, group, strict=True)
                        ),
                        torch.zeros((), device=vals[0].device),
                    )
                    for vals, group in zip(g_val, linears, strict=True)
                ]
            ).tolist()
            for index, dot in enumerate(dots):
                if not math.isfinite(dot):
                    raise PruneConfigError(
                        f"LayerIF: the gradient dot product of block {index} is {dot} (overflow in the model dtype); "
                        "load the model in bfloat16 or float32"
                    )
                scores[index] += max(0.0, -dot)
                counts[index] += int(dot < 0)
    finally:
        for weight in weights:
            weight.grad = None
        for param in model.parameters():
            param.requires_grad_(saved[id(param)])
        if disable is not None:
            disable()
        if not had_input_hook and getattr(model, "_require_grads_hook", None) is not None:
            model.disable_input_require_grads()  # checkpointing added it to the embeddings; it must not outlive us
        model.train(was_training)
    if positives is not None:
        positives[:] = counts
    if not any(scores):
        log.warning(
            "LayerIF scores are all zero: no training sample raises the validation loss (all <G_val, g_i> >= 0); "
            "the allocation will be uniform. Validation text from another domain than the training text "
            "separates blocks."
        )
    return scores


def _grad(linear: nn.Linear) -> torch.Tensor:
    if linear.weight.grad is None:
        raise RuntimeError("a block linear got no gradient: is the model's forward detached from its weights?")
    return linear.weight.grad.detach()


def _enable_checkpointing(model: Any) -> Callable[[], None] | None:
    """Turn activation checkpointing on (transformers >= 5.2x renamed it); return how to undo it (None: nothing)."""
    active = getattr(model, "is_activation_checkpointing", None)
    active = getattr(model, "is_gradient_checkpointing", False) if active is None else active
    if active:
        return None
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model.activation_checkpointing_disable
    if hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.gradient_checkpointing_disable
    return None


def read_score_file(path: str | Path, n_blocks: int) -> list[float]:
    """A JSON list (or ``{"scores": [...]}``) or a .npy vector, one finite value per block."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            import numpy as np

            array = np.load(path, allow_pickle=False)
            if array.ndim != 1:
                raise PruneConfigError(
                    f"layerif_scores file {str(path)!r} holds a {array.ndim}-D array of shape {tuple(array.shape)}; "
                    "it must be 1-D, one value per block"
                )
            if array.dtype.kind not in "iuf":
                raise TypeError(f"dtype {array.dtype}")
            values = [float(v) for v in array]
        else:
            data = json.loads(path.read_text())
            raw = data["scores"] if isinstance(data, dict) else data
            if not isinstance(raw, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw):
                raise TypeError("not a list of numbers")
            values = [float(v) for v in raw]
    except PruneConfigError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        raise PruneConfigError(
            f"layerif_scores file {str(path)!r} is not a list of numbers ({type(exc).__name__})"
        ) from None
    if len(values) != n_blocks:
        raise PruneConfigError(
            f"layerif_scores file {str(path)!r} has {len(values)} values; the model has {n_blocks} blocks"
        )
    if not all(math.isfinite(v) for v in values):
        raise PruneConfigError(f"layerif_scores file {str(path)!r} holds NaN or infinite values")
    return values


@dataclass
class LayerIFData:
    """Training and validation token ids; ``*_lengths`` are set for record sources (one right-padded record a row)."""

    train: torch.Tensor
    val: torch.Tensor
    train_lengths: torch.Tensor | None = None
    val_lengths: torch.Tensor | None = None


def layerif_data(
    config: Any, tokenizer: Any, model: Any = None, cache_dir: Path | None = None, model_key: str | None = None
) -> LayerIFData:
    """LayerIF's samples from its sources (default: the calibration source, seeds s and s+1).

    Record sources (JSONL, ``s1k``, ``traces:``, ``self:``) give one sample per record truncated to
    ``layerif_seqlen``; streams (text, Hub sets, token files) give random windows as calibration does.
    """
    from lm_eval_prune.engine.calibration import is_document_source, load_calibration, load_records

    train_source = config.layerif_train or config.calibration
    val_source = config.layerif_val or config.calibration
    val_seed = config.seed + 1 if val_source == train_source else config.seed
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for source, nsamples, seed in (
        (train_source, config.layerif_nsamples, config.seed),
        (val_source, config.layerif_val_nsamples, val_seed),
    ):
        settings = config.replace(calibration=source, nsamples=nsamples, seqlen=config.layerif_seqlen, seed=seed)
        if is_document_source(source):
            records = load_records(settings, tokenizer, model=model, cache_dir=cache_dir, model_key=model_key)
            out.append((records.ids, records.lengths))
        else:
            out.append((load_calibration(settings, tokenizer), None))
    (train, train_lengths), (val, val_lengths) = out
    return LayerIFData(train, val, train_lengths, val_lengths)


def layerif_device(config_device: str, offload: bool, cuda_available: bool) -> str:
    """Where LayerIF's backwards run: the GPU whenever one is present, whatever ``offload`` says about the prune.

    (``offload`` keeps the model in CPU memory for the prune; LayerIF on the CPU would take hours for an 8B model.)
    """
    if config_device.startswith("cuda"):
        return config_device
    if config_device == "auto" and cuda_available:
        return "cuda"
    return "cpu"


def layerif_scores(model: nn.Module, data: LayerIFData, config: Any, positives: list[int] | None = None) -> list[float]:
    """LayerIF with the configured estimator: the identity over attention+MLP (the seed study's variant, one backward
    per sample, nothing stored) or DataInf / the identity on the chosen tensors from per-sample gradient factors."""
    common: dict[str, Any] = {
        "positives": positives,
        "train_lengths": data.train_lengths,
        "val_lengths": data.val_lengths,
    }
    if config.layerif_hessian == "identity" and config.layerif_modules == "all":
        return layerif_influence(model, data.train, data.val, config.calib_batch_size, **common)
    from lm_eval_prune.engine.datainf import datainf_block_scores

    scores = datainf_block_scores(
        model,
        data.train,
        data.val,
        config.layerif_modules,
        config.calib_batch_size,
        estimator=config.layerif_hessian,
        **common,
    )
    if not any(scores):
        log.warning("LayerIF (%s) scores are all zero: the allocation will be uniform", config.layerif_hessian)
    return scores


def cached_layerif_scores(
    model: nn.Module,
    tokenizer: Any,
    config: Any,
    path: Path | None,
    positives: list[int] | None = None,
    traces_dir: Path | None = None,
    model_key: str | None = None,
) -> list[float]:
    """LayerIF scores from ``config.layerif_scores``, else from ``path`` (a cache file), else computed (cached there).

    Computed on the GPU when one is present (the model is moved there for the backwards and back afterwards).
    """
    n_blocks = len(decoder_blocks(model))
    if config.layerif_scores:
        return read_score_file(config.layerif_scores, n_blocks)
    if path is not None and path.is_file():
        try:
            scores = read_score_file(path, n_blocks)
            log.info("LayerIF scores from the cache: %s", path)
            if positives is not None:
                stored = json.loads(path.read_text()).get("positives")
                positives[:] = stored if isinstance(stored, list) else []
            return scores
        except PruneConfigError as exc:
            log.warning("cached LayerIF scores at %s are damaged (%s); computing them again", path, exc)
    data = layerif_data(config, tokenizer, model, traces_dir, model_key)
    home = next(model.parameters()).device
    dispatched = len(set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))) > 1
    target = torch.device(layerif_device(config.device, config.offload, torch.cuda.is_available()))
    move = not dispatched and target != home
    if move:
        model.to(target)
    try:
        counts: list[int] = []
        scores = layerif_scores(model, data, config, counts)
    finally:
        if move:
            model.to(home)
            if target.type == "cuda":
                torch.cuda.empty_cache()
    if positives is not None:
        positives[:] = counts
    if path is not None:
        write_atomically(path, json.dumps({"scores": scores, "positives": counts}))
    return scores
