"""The layer loop: capture block-0 inputs, then run block by block. Knows nothing of pruning."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lm_eval_prune.engine.model_utils import decoder, decoder_blocks


@dataclass
class BlockInputs:
    """The inputs of one decoder block for every calibration batch: hidden states and keyword arguments."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def to(self, device: torch.device) -> BlockInputs:
        """The same inputs on ``device`` (for models whose blocks live on several GPUs)."""
        if self.hidden[0].device == device:
            return self
        return BlockInputs(
            [h.to(device) for h in self.hidden], [{k: _to(v, device) for k, v in kw.items()} for kw in self.kwargs]
        )


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


class _StopForward(Exception):
    """Raised by the capture hook to end the model forward at block 0."""


@contextmanager
def non_block_modules_on(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Move the decoder's modules other than its blocks (embeddings, rotary, final norm) to ``device`` for a while."""
    homes = []
    for name, child in decoder(model).named_children():
        tensors = [*child.parameters(), *child.buffers()]
        if name != "layers" and tensors:
            homes.append((child, tensors[0].device))
            child.to(device)
    try:
        yield
    finally:
        for child, home in homes:
            child.to(home)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, input_ids: torch.Tensor, batch_size: int, device: torch.device
) -> BlockInputs:
    """Run the model's embedding stage on ``input_ids`` in batches and keep what block 0 receives (args and kwargs)."""
    first = decoder_blocks(model)[0]
    seen: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        seen["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        kwargs.pop("past_key_values", None)
        kwargs["use_cache"] = False
        seen["kwargs"] = kwargs
        raise _StopForward

    captured = BlockInputs([], [])
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in input_ids.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
            captured.hidden.append(seen.pop("hidden"))
            captured.kwargs.append(seen.pop("kwargs"))
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """Outputs of ``block`` for every batch (tuple outputs of older transformers are unwrapped)."""
    outputs = []
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
        out = block(hidden, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


BlockVisitor = Callable[[int, nn.Module, "BlockInputs | None"], "list[torch.Tensor] | None"]


def propagate(
    model: nn.Module,
    inputs: BlockInputs | None,
    visit: BlockVisitor,
    device: torch.device,
    offload: bool,
    desc: str,
    changes_weights: bool = True,
) -> None:
    """For each block in order: ``visit(i, block, inputs)``, then feed the block's outputs to the next block.

    ``inputs`` is consumed: pass it without keeping a reference, so only one block's inputs and outputs are alive
    (2x the activations, not 3x). ``visit`` may return the block's outputs when it computed them and left the weights
    unchanged; otherwise the block is run again after the visit, so later blocks see the effect of what the visit did
    (pruning error propagates). With ``inputs=None`` nothing is run, blocks are only visited. With ``offload`` each
    block is moved to ``device`` only while it is processed; a pass that ``changes_weights=False`` puts back the
    block's original tensors instead of copying them back.
    """
    blocks = decoder_blocks(model)
    for index in tqdm(range(len(blocks)), desc=desc, unit="block", leave=False):
        block = blocks[index]
        home = next(block.parameters()).device
        originals = None
        if offload:
            if not changes_weights:
                originals = [(tensor, tensor.data) for tensor in [*block.parameters(), *block.buffers()]]
            block.to(device, non_blocking=True)
        if inputs is not None:  # blocks of a model dispatched over several GPUs take their inputs where they live
            inputs = inputs.to(device if offload else home)
        try:
            outputs = visit(index, block, inputs)
            if inputs is not None and index + 1 < len(blocks):
                inputs = BlockInputs(outputs if outputs is not None else run_block(block, inputs), inputs.kwargs)
            else:
                inputs = None
        finally:
            if originals is not None:
                for tensor, data in originals:
                    tensor.data = data
            elif offload:
                block.to(home)
