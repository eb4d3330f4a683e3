"""Issue 14 on the CPU: placement refusals, LayerIF hygiene, read-only offload passes that copy nothing back."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model, random_ids

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.engine import layer_scores
from lm_eval_prune.engine.layer_scores import layerif_influence
from lm_eval_prune.engine.model_utils import decoder_blocks
from lm_eval_prune.engine.sequential import capture_block_inputs, propagate, run_block


def test_offload_with_a_model_dispatched_over_several_devices_is_refused():
    model = make_model(layers=2)
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    with pytest.raises(PruneConfigError, match="offload=true needs the model in CPU memory"):
        prune_(model, PruneConfig(method="magnitude", offload=True, device="cpu"))


def test_layerif_leaves_no_input_grad_hook_and_restores_requires_grad():
    model = make_model(layers=2)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    scores = layerif_influence(model, random_ids(2, 16, seed=1), random_ids(2, 16, seed=2), batch_size=2)
    assert len(scores) == 2 and all(math.isfinite(s) and s >= 0 for s in scores)
    assert getattr(model, "_require_grads_hook", None) is None  # checkpointing's embedding hook is gone
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_layerif_non_finite_dot_product_is_an_error_not_a_zero(monkeypatch):
    """fp16 overflow gave NaN, and max(0, NaN) silently counted as 0."""
    model = make_model(layers=2)
    real = torch.dot

    def overflowing(a, b):
        return real(a, b) * float("inf")

    monkeypatch.setattr(layer_scores.torch, "dot", overflowing)
    with pytest.raises(PruneConfigError, match="gradient dot product of block 0 is"):
        layerif_influence(model, random_ids(1, 16, seed=1), random_ids(1, 16, seed=2))


def test_read_only_offload_pass_puts_back_the_original_tensors():
    """OWL's dense pass and Block Influence change no weight: the block's home tensors are put back, not copied back."""
    ids = random_ids(2, 16)
    for changes_weights, moves in ((False, 1), (True, 2)):
        model = make_model(layers=2)
        blocks = decoder_blocks(model)
        homes = [[p.data.data_ptr() for p in block.parameters()] for block in blocks]
        calls: list[str] = []
        for block in blocks:
            real_to = block.to

            def counted(*args, _real=real_to, _calls=calls, **kwargs):
                _calls.append(str(args[0]))
                return _real(*args, **kwargs)

            block.to = counted  # type: ignore[method-assign]
        inputs = capture_block_inputs(model, ids, 2, torch.device("cpu"))
        with torch.no_grad():
            propagate(
                model, inputs, lambda _i, blk, x: run_block(blk, x), torch.device("cpu"), True, "t", changes_weights
            )
        assert len(calls) == moves * len(blocks), (changes_weights, calls)
        assert homes == [[p.data.data_ptr() for p in block.parameters()] for block in blocks]


def test_owl_with_offload_equals_owl_in_memory():
    ids = random_ids(8, 32, seed=5)
    masks = []
    for offload in (False, True):
        model = make_model(layers=3, seed=2)
        config = PruneConfig(
            method="wanda", alloc="owl", owl_lambda=0.1, nsamples=8, seqlen=32, device="cpu", offload=offload
        )
        prune_(model, config, calibration=ids)
        masks.append([p.detach() == 0 for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*masks, strict=True))


def test_a_tokenized_text_is_kept_on_disk_and_reused(stories_path, tmp_path, monkeypatch):
    """War and Peace costs seconds to tokenize: the second run (a new process: memo cleared) reads it from disk."""
    from conftest import WAR_AND_PEACE
    from transformers import AutoTokenizer

    from lm_eval_prune.engine import calibration

    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    config = PruneConfig(calibration=str(WAR_AND_PEACE), nsamples=4, seqlen=64, seed=3)
    first = calibration.calibration_tokens(config, tokenizer, cache_dir=tmp_path / "self-traces").ids
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 1
    calibration._TOKENIZED.clear()
    monkeypatch.setattr(calibration, "read_text", lambda _path: (_ for _ in ()).throw(AssertionError("re-tokenized")))
    second = calibration.calibration_tokens(config, tokenizer, cache_dir=tmp_path / "self-traces").ids
    assert torch.equal(first, second)
    calibration._TOKENIZED.clear()
    (next((tmp_path / "tokens").glob("*.npy"))).write_bytes(b"damaged")
    monkeypatch.undo()
    third = calibration.calibration_tokens(config, tokenizer, cache_dir=tmp_path / "self-traces").ids
    assert torch.equal(first, third)
