"""`prune_`: the passes (calibration capture, allocation, sequential prune) built from the registries' pieces."""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from lm_eval_prune.engine.allocators import AllocationInputs
from lm_eval_prune.engine.calibration import load_calibration, tokens_digest
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.model_utils import block_linear_params, block_linears, check_architecture, decoder_blocks
from lm_eval_prune.engine.report import LayerRecord, PruneReport, RemovedBlock, library_versions
from lm_eval_prune.engine.sequential import (
    BlockInputs,
    capture_block_inputs,
    non_block_modules_on,
    propagate,
    run_block,
)
from lm_eval_prune.errors import PruneConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without it is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise PruneConfigError(
            f"device={name!r} but this machine has no MPS (Apple GPU) device; use device=cpu or auto"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PruneConfigError(f"device={name!r} but this machine has no CUDA device; use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PruneConfigError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_against_model_config(config: PruneConfig, model_config: Any) -> None:
    """Errors that need only the model's config (so every door raises them before weights load)."""
    check_architecture(model_config)
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if config.needs_calibration and max_positions is not None and config.seqlen > max_positions:
        raise PruneConfigError(f"seqlen={config.seqlen} exceeds the model's max_position_embeddings={max_positions}")
    if config.computes_layer_scores and max_positions is not None and config.layerif_seqlen > max_positions:
        raise PruneConfigError(
            f"layerif_seqlen={config.layerif_seqlen} exceeds the model's max_position_embeddings={max_positions}"
        )
    n_blocks = getattr(model_config, "num_hidden_layers", None)
    if n_blocks is not None and (isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1):
        raise PruneConfigError(f"the model config has num_hidden_layers={n_blocks!r}; it needs at least one block")
    if config.drop_layers and n_blocks is not None and config.drop_layers >= n_blocks:
        raise PruneConfigError(f"drop_layers={config.drop_layers} must be < the model's {n_blocks} blocks")
    if config.nm is not None and not config.is_dense:
        m = config.nm[1]
        hidden, heads = getattr(model_config, "hidden_size", None), getattr(model_config, "num_attention_heads", None)
        head_dim = getattr(model_config, "head_dim", None) or (hidden // heads if hidden and heads else None)
        inputs = {
            "hidden_size": (hidden, "q/k/v/gate/up_proj"),
            "intermediate_size": (getattr(model_config, "intermediate_size", None), "mlp.down_proj"),
            "num_attention_heads*head_dim": (heads * head_dim if heads and head_dim else None, "self_attn.o_proj"),
        }
        for name, (size, linear) in inputs.items():
            if size and size % m:
                raise PruneConfigError(
                    f"pattern={config.pattern!r}: {name}={size} (the input size of {linear}) is not a multiple of {m}"
                )


def check_model_fits(model: nn.Module, config: PruneConfig) -> None:
    """Errors that need the model: architecture, N:M divisibility, and where accelerate put its blocks."""
    check_against_model_config(config, model.config)
    check_placement(model, config)
    check_finite_weights(model, config)
    if config.nm is not None and not config.is_dense:
        m = config.nm[1]
        for index, block in enumerate(decoder_blocks(model)):
            for name, linear in block_linears(block).items():
                if linear.in_features % m:
                    raise PruneConfigError(
                        f"pattern={config.pattern!r}: input size {linear.in_features} of layers.{index}.{name} "
                        f"is not a multiple of {m}"
                    )


def check_finite_weights(model: nn.Module, config: PruneConfig) -> None:
    """Refuse NaN or infinite weights in the linears to prune: every score and mask computed from them is garbage,
    yet the run would finish and write a checkpoint as if nothing were wrong."""
    if config.is_dense:
        return
    with torch.no_grad():
        for index, block in enumerate(decoder_blocks(model)):
            for name, linear in block_linears(block).items():
                weight = linear.weight
                if weight.device.type != "meta" and not bool(torch.isfinite(weight).all()):
                    raise PruneConfigError(
                        f"model weights layers.{index}.{name} hold NaN or infinite values; "
                        "the base model is damaged (re-download it)"
                    )


def check_placement(model: nn.Module, config: PruneConfig) -> None:
    """Refuse blocks that accelerate offloaded (weights on ``meta``, kept on CPU/disk by hooks).

    Pruning such a block would mask placeholders and leave the real weights untouched; ``offload=true`` with a map
    over several devices would fight accelerate's hooks over where inputs go.
    """
    device_map = getattr(model, "hf_device_map", None) or {}
    for index, block in enumerate(decoder_blocks(model)):
        if any(param.device.type == "meta" for param in block.parameters()):
            raise PruneConfigError(
                f"decoder block {index} has its weights offloaded by accelerate (device 'meta', kept on CPU/disk); "
                "pruning needs every block in memory: load on fewer GPUs' worth of layers with offload=true "
                "(the model on CPU, one block at a time on the GPU), or use more GPU memory"
            )
    if config.offload and len(set(map(str, device_map.values()))) > 1:
        raise PruneConfigError(
            "offload=true needs the model in CPU memory, not dispatched over several devices "
            f"(device map uses {sorted(set(map(str, device_map.values())))}); drop parallelize=True or offload=true"
        )


@contextmanager
def _calibration_mode(model: Any) -> Iterator[None]:
    was_training, use_cache = model.training, getattr(model.config, "use_cache", None)
    model.eval()
    model.config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        model.config.use_cache = use_cache


def block_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


class _OneShot:
    """Block-0 calibration inputs, handed over once so the caller keeps no reference (peak 2x activations, not 3x).

    A second consumer (the prune pass after OWL's dense pass) gets them captured anew, which costs one embedding pass.
    """

    def __init__(self, capture: Callable[[], BlockInputs]) -> None:
        self._capture = capture
        self._inputs: BlockInputs | None = capture()

    def take(self) -> BlockInputs:
        inputs, self._inputs = self._inputs, None
        return inputs if inputs is not None else self._capture()


@torch.no_grad()
def prune_(
    model: Any,
    config: PruneConfig,
    tokenizer: Any = None,
    calibration: torch.Tensor | None = None,
    layer_scores: list[float] | None = None,
) -> PruneReport:
    """Prune ``model`` in place as ``config`` says and return the report (its ``fingerprint`` is set by the caller).

    ``calibration`` (``LongTensor[nsamples, seqlen]``) overrides ``config.calibration``; otherwise the source is
    read with ``tokenizer``. ``layer_scores`` (one per block) feed ``alloc=layerif``. Statistics and scores are fp32
    whatever the model dtype.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    method = config.method_spec
    check_model_fits(model, config)
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    dispatched = len(set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))) > 1
    if not config.offload and not dispatched:
        model.to(device)
    report = PruneReport(config=config.to_dict(), fingerprint="", versions=library_versions())
    report.extra["device"] = str(device)

    inputs: _OneShot | None = None
    with _calibration_mode(model):
        if config.needs_calibration:
            tick = time.perf_counter()
            ids = calibration if calibration is not None else load_calibration(config, tokenizer)
            if tuple(ids.shape) != (config.nsamples, config.seqlen):
                raise PruneConfigError(
                    f"calibration tokens have shape {tuple(ids.shape)}; expected ({config.nsamples}, {config.seqlen})"
                )
            report.calibration = {
                "source": config.calibration,
                "nsamples": config.nsamples,
                "seqlen": config.seqlen,
                "seed": config.seed,
                "tokens_sha256_16": tokens_digest(ids),
            }

            def capture() -> BlockInputs:
                with non_block_modules_on(model, device) if config.offload else nullcontext():
                    embed_device = model.get_input_embeddings().weight.device
                    return capture_block_inputs(model, ids, config.calib_batch_size, embed_device)

            inputs = _OneShot(capture)
            report.passes["calibration_capture"] = time.perf_counter() - tick

        def take_inputs() -> BlockInputs:
            if inputs is None:
                raise RuntimeError(f"alloc={config.alloc} needs calibration inputs")
            return inputs.take()

        tick = time.perf_counter()
        n_blocks = len(decoder_blocks(model))
        if method.structured:
            _remove_blocks(model, config, take_inputs if inputs is not None else None, device, report)
            targets = [0.0] * len(decoder_blocks(model))  # the remaining blocks are recorded, not pruned
        elif method.prune is not None:
            allocation_inputs = AllocationInputs(model, config, device, take_inputs, layer_scores, report, tokenizer)
            targets = config.alloc_spec.allocate(allocation_inputs)
            if len(targets) != n_blocks:
                raise RuntimeError(f"alloc={config.alloc} gave {len(targets)} sparsities for {n_blocks} blocks")
        else:
            targets = [0.0] * n_blocks
        report.passes["allocation"] = time.perf_counter() - tick
        if not method.structured:
            report.block_sparsity = targets

        tick = time.perf_counter()
        prefix = block_prefix(model)
        notes: dict[str, dict[str, float]] = {}

        def prune_block(index: int, block: nn.Module, stats: dict[str, Any] | None) -> None:
            for name, linear in block_linears(block).items():
                full = f"{prefix}.{index}.{name}"
                report.layers.append(LayerRecord(full, targets[index], 0.0, linear.weight.numel()))
                if method.prune is not None and targets[index] > 0:
                    statistic = stats.pop(name) if stats is not None else None  # free each Hessian after use
                    note = method.prune(linear, statistic, targets[index], config, full)
                    if note:
                        notes[full] = note

        desc = f"{config.method} prune pass"
        if method.statistics is not None and inputs is not None:
            statistics = method.statistics

            def visit(index: int, block: nn.Module, block_inputs: BlockInputs | None) -> None:
                assert block_inputs is not None
                with statistics(block_linears(block)) as stats:
                    run_block(block, block_inputs)
                prune_block(index, block, stats)

            propagate(model, inputs.take(), visit, device, config.offload, desc=desc)
        else:
            propagate(model, None, lambda i, block, _inputs: prune_block(i, block, None), device, config.offload, desc)
        if notes:
            report.extra["layer_notes"] = notes
        report.passes["prune"] = time.perf_counter() - tick

    report.set_measured(count_zeros(model))
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes, report.peak_memory_kind = peak_memory(device)
    log.info("pruned %s: overall sparsity %.4f in %.2f s", config.method, report.overall_sparsity, report.seconds)
    return report


def _remove_blocks(
    model: nn.Module,
    config: PruneConfig,
    take_inputs: Callable[[], BlockInputs] | None,
    device: torch.device,
    report: PruneReport,
) -> None:
    """ShortGPT: drop the ``drop_layers`` blocks of lowest Block Influence (or the last ones in ``tail`` mode)."""
    from lm_eval_prune.engine.layer_scores import block_influence, remove_blocks_

    blocks = decoder_blocks(model)
    count = len(blocks)  # drop_layers < count was checked by check_model_fits
    if config.shortgpt_mode == "bi":
        assert take_inputs is not None
        influence: list[float | None] = list(block_influence(model, take_inputs(), device, config.offload))
        remove = sorted(sorted(range(count), key=lambda i: (influence[i], i))[: config.drop_layers])
    else:
        influence = [None] * count
        remove = list(range(count - config.drop_layers, count))
    params = [block_linear_params(block) for block in blocks]
    report.removed_params = sum(params[i] for i in remove)
    report.block_sparsity = [1.0 if i in remove else 0.0 for i in range(count)]
    report.block_influence = influence
    report.removed_blocks = [RemovedBlock(i, influence[i]) for i in remove]
    report.removed_param_share = report.removed_params / sum(params)
    remove_blocks_(model, remove)
    log.info("ShortGPT removed blocks %s (%.2f%% of block-linear weights)", remove, 100 * report.removed_param_share)


def count_zeros(model: nn.Module) -> dict[str, int]:
    """Zero count of every block linear's weight, by full name."""
    prefix = block_prefix(model)
    return {
        f"{prefix}.{index}.{name}": int((linear.weight == 0).sum())
        for index, block in enumerate(decoder_blocks(model))
        for name, linear in block_linears(block).items()
    }


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak GPU memory allocated, summed over every CUDA device (dispatched models), else the process's peak RSS."""
    if device.type == "cuda":
        total = sum(torch.cuda.max_memory_allocated(index) for index in range(torch.cuda.device_count()))
        return int(total), "cuda_max_memory_allocated_all_devices"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"
