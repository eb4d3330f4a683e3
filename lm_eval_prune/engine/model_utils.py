"""Model plumbing: which architectures, where the decoder blocks and their prunable linears are."""

from __future__ import annotations

from typing import Any

from torch import nn

from lm_eval_prune.errors import PruneConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def check_architecture(config: Any) -> None:
    """Refuse a model whose ``config.model_type`` the engine has not been checked on."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PruneConfigError(
            f"model_type={model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for a ``*ForCausalLM``) holding ``layers``."""
    check_architecture(model.config)
    inner = getattr(model, "model", model)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise PruneConfigError(f"{type(model).__name__} has no decoder layer list at model.layers")
    return inner


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order."""
    layers = decoder(model).layers
    assert isinstance(layers, nn.ModuleList)  # decoder() checked it
    return layers


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside one decoder block, by name relative to the block (q/k/v/o/gate/up/down)."""
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def block_linear_params(block: nn.Module) -> int:
    """Number of weights in the block's linears (biases and norms excluded)."""
    return sum(linear.weight.numel() for linear in block_linears(block).values())
