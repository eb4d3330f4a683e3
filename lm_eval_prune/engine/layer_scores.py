"""Layer quality scores: LayerIF influence (identity Hessian, TracIn-like) and ShortGPT's Block Influence."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.engine.sequential import BlockInputs, propagate, run_block
from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ ShortGPT
def cosine_block_influence(inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[float, int]:
    """(sum over tokens of 1 - cos(x_in, x_out), token count) for one batch, in fp32."""
    cos = nn.functional.cosine_similarity(
        inputs.float().reshape(-1, inputs.shape[-1]), outputs.float().reshape(-1, outputs.shape[-1]), dim=-1
    )
    return float((1 - cos).sum(dtype=torch.float64)), cos.numel()


def block_influence(model: nn.Module, inputs: BlockInputs, device: torch.device, offload: bool) -> list[float]:
    """ShortGPT's BI_i = 1 - mean over tokens of cos(x_i, x_{i+1}), x_i the hidden state entering block i (dense pass)."""
    scores: list[float] = []

    def visit(_index: int, block: nn.Module, block_inputs: BlockInputs) -> list[torch.Tensor]:
        outputs = run_block(block, block_inputs)
        total = count = 0.0
        for x_in, x_out in zip(block_inputs.hidden, outputs, strict=True):
            part, n = cosine_block_influence(x_in, x_out)
            total, count = total + part, count + n
        scores.append(total / count)
        return outputs

    propagate(model, inputs, visit, device, offload, desc="ShortGPT block influence")
    return scores


def remove_blocks_(model: nn.Module, remove: list[int]) -> None:
    """Delete decoder blocks and fix the config (num_hidden_layers, layer_types, max_window_layers) and layer indices."""
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
def _sample_losses(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence of ``ids`` [b, seqlen] (fp32)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    targets = ids[:, 1:]
    per_token = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return per_token.reshape(targets.shape).mean(dim=1)


@torch.enable_grad()
def layerif_influence(
    model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, batch_size: int = 8
) -> list[float]:
    """``S_l = sum_i max(0, -<G_val^l, g_i^l>)`` over the attention and MLP linear weights of each block l.

    Cheap form: one backward of the summed validation loss (G_val kept per weight), then one backward per training
    sample with per-block dot products; no per-sample gradient is stored. Only block-linear weights get gradients;
    gradient checkpointing is on during the backwards.
    """
    blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    linears = [list(block_linears(block).values()) for block in blocks]
    weights = [linear.weight for group in linears for linear in group]
    saved = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    checkpointing = getattr(model, "is_gradient_checkpointing", False) if checkpointing is None else checkpointing
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        disable = model.activation_checkpointing_disable
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        disable = model.gradient_checkpointing_disable
    else:
        disable = None
    model.train()  # checkpointing is active in train mode only; these architectures have no dropout at 0.0 rates
    try:
        for weight in weights:
            weight.grad = None
        for batch in val_ids.split(batch_size):
            _sample_losses(model, batch.to(device)).sum().backward()
        g_val = [[linear.weight.grad.detach().clone() for linear in group] for group in linears]
        scores = [0.0] * len(blocks)
        for sample in train_ids:
            for weight in weights:
                weight.grad = None
            _sample_losses(model, sample.unsqueeze(0).to(device)).sum().backward()
            for index, group in enumerate(linears):
                dot = sum(
                    float((gv.float() * linear.weight.grad.float()).sum(dtype=torch.float64))
                    for gv, linear in zip(g_val[index], group, strict=True)
                )
                scores[index] += max(0.0, -dot)
    finally:
        for weight in weights:
            weight.grad = None
        for param in model.parameters():
            param.requires_grad_(saved[id(param)])
        if disable is not None and not checkpointing:
            disable()
        model.train(was_training)
    if not any(scores):
        log.warning(
            "LayerIF scores are all zero: no training sample raises the validation loss (all <G_val, g_i> >= 0); "
            "the allocation will be uniform. Validation text from another domain than the training text separates blocks."
        )
    return scores


def read_score_file(path: str | Path, n_blocks: int) -> list[float]:
    """A JSON list (or ``{"scores": [...]}``) or a .npy vector, one finite value per block."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            import numpy as np

            values = [float(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
        else:
            data = json.loads(path.read_text())
            values = [float(v) for v in (data["scores"] if isinstance(data, dict) else data)]
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
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


def layerif_data(config: Any, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(training ids, validation ids) for LayerIF from its sources (default: the calibration source, seeds s and s+1)."""
    from lm_eval_prune.engine.calibration import load_calibration

    train_source = config.layerif_train or config.calibration
    val_source = config.layerif_val or config.calibration
    train = load_calibration(
        config.replace(calibration=train_source, nsamples=config.layerif_nsamples, seqlen=config.layerif_seqlen),
        tokenizer,
    )
    val_seed = config.seed + 1 if val_source == train_source else config.seed
    val = load_calibration(
        config.replace(
            calibration=val_source, nsamples=config.layerif_val_nsamples, seqlen=config.layerif_seqlen, seed=val_seed
        ),
        tokenizer,
    )
    return train, val


def cached_layerif_scores(
    model: nn.Module, tokenizer: Any, config: Any, cache_dir: Path | None, key_extra: dict[str, Any]
) -> list[float]:
    """LayerIF scores from ``config.layerif_scores``, else from the cache, else computed (and cached)."""
    n_blocks = len(decoder_blocks(model))
    if config.layerif_scores:
        return read_score_file(config.layerif_scores, n_blocks)
    settings = {
        k: getattr(config, k)
        for k in (
            "layerif_train",
            "layerif_val",
            "layerif_nsamples",
            "layerif_val_nsamples",
            "layerif_seqlen",
            "seed",
            "calibration",
        )
    }
    key = hashlib.sha256(
        json.dumps({"kind": "layerif-identity-hessian", **settings, **key_extra}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    path = cache_dir / "layerif" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("LayerIF scores from the cache: %s", path)
        return read_score_file(path, n_blocks)
    train, val = layerif_data(config, tokenizer)
    scores = layerif_influence(model, train, val, batch_size=config.calib_batch_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"scores": scores, "settings": settings}))
        tmp.replace(path)
    return scores
