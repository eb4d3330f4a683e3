"""Registries carry behaviour: every method and allocation through prune_, their settings, and a new entry."""

from __future__ import annotations

import pytest
import torch
from conftest import WAR_AND_PEACE, make_model, random_ids

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.engine.config import PruneConfig as Config
from lm_eval_prune.engine.methods import ALLOCATORS, METHODS, Lazy, MethodSpec, owner_of
from lm_eval_prune.engine.model_utils import block_linear_params, block_linears, decoder_blocks

FIELDS = set(Config.keys())


def test_every_owned_setting_is_a_config_field_and_has_one_owner():
    owned = [s for name in METHODS for s in METHODS.get(name).settings]
    owned += [s for name in ALLOCATORS for s in ALLOCATORS.get(name).settings]
    assert set(owned) <= FIELDS and len(owned) == len(set(owned))
    assert owner_of("owl_lambda") == "alloc=owl" and owner_of("percdamp") == "method=sparsegpt"
    assert owner_of("sparsity") is None


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("alloc", ["uniform", "owl", "alphapruning"])
def test_each_unstructured_method_with_each_allocation_hits_the_target(method, alloc):
    model = make_model(layers=3, seed=1)
    extra = {"owl_lambda": 0.1} if alloc == "owl" else {}
    config = PruneConfig(method=method, alloc=alloc, sparsity=0.5, nsamples=8, seqlen=32, device="cpu", **extra)
    report = prune_(model, config, calibration=random_ids(8, 32, seed=2))
    params = [block_linear_params(block) for block in decoder_blocks(model)]
    weighted = sum(p * s for p, s in zip(params, report.block_sparsity, strict=True)) / sum(params)
    assert weighted == pytest.approx(0.5, abs=1e-9)
    # Wanda floors int(columns * s) per row (64 columns here); SparseGPT's reference rule prunes one more per block
    slack = 0.002 if method == "magnitude" else 0.01
    assert report.overall_sparsity == pytest.approx(0.5, abs=slack)
    for index, block in enumerate(decoder_blocks(model)):
        zeros = sum(int((linear.weight == 0).sum()) for linear in block_linears(block).values())
        assert zeros / params[index] == pytest.approx(report.block_sparsity[index], abs=slack + 0.01)
    if alloc == "alphapruning":
        assert report.layer_scores is not None and len(report.layer_scores) == 3
        # a higher alpha (lighter tail) is pruned more
        order = sorted(range(3), key=lambda i: report.layer_scores[i])
        assert [report.block_sparsity[i] for i in order] == sorted(report.block_sparsity)


def test_sparsegpt_reconstructs_what_wanda_only_masks():
    """Same mask budget, but SparseGPT changes the kept weights (OBS updates); Wanda never does."""
    ids = random_ids(8, 32, seed=3)
    dense = make_model(layers=2, seed=4)
    results = {}
    for method in ("wanda", "sparsegpt"):
        model = make_model(layers=2, seed=4)
        prune_(model, PruneConfig(method=method, sparsity=0.5, nsamples=8, seqlen=32, device="cpu"), calibration=ids)
        kept = [
            (linear.weight != 0) & (original.weight != linear.weight)
            for block, dense_block in zip(decoder_blocks(model), decoder_blocks(dense), strict=True)
            for linear, original in zip(block_linears(block).values(), block_linears(dense_block).values(), strict=True)
        ]
        results[method] = sum(int(k.sum()) for k in kept)
    assert results["wanda"] == 0 and results["sparsegpt"] > 0


def test_layerif_estimators_through_prune(stories_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    scores = {}
    for hessian in ("identity", "datainf"):
        model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32)
        config = PruneConfig(
            method="magnitude", alloc="layerif", sparsity=0.3, calibration=str(WAR_AND_PEACE),
            layerif_val=str(WAR_AND_PEACE),
            layerif_hessian=hessian, layerif_modules="attn", layerif_nsamples=4, layerif_val_nsamples=2,
            layerif_seqlen=32, device="cpu",
        )  # fmt: skip
        report = prune_(model, config, tokenizer)
        assert report.layer_scores is not None and len(report.layer_scores) == 5
        assert report.overall_sparsity == pytest.approx(0.3, abs=0.002)
        scores[hessian] = report.layer_scores
    assert all(s >= 0 for s in scores["datainf"]) and all(s >= 0 for s in scores["identity"])


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"alloc": "owl", "layerif_hessian": "datainf"}, "layerif_hessian='datainf' applies to alloc=layerif only"),
        ({"alloc": "layerif", "layerif_hessian": "exact"}, "layerif_hessian='exact' is not allowed"),
        ({"alloc": "layerif", "layerif_modules": "mlp"}, "layerif_modules='mlp' is not allowed"),
        ({"alloc": "layerif", "alpha_eps": 0.2}, "alpha_eps=0.2 applies to alloc=alphapruning only"),
        ({"alloc": "alphapruning", "alpha_eps": 1.0}, "alpha_eps=1.0 must be in [0, 1)"),
        ({"method": "sparsegpt", "percdamp": 0.0}, "percdamp=0.0 must be > 0"),
        ({"method": "sparsegpt", "percdamp": float("nan")}, "percdamp=nan must be a finite number"),
        ({"method": "sparsegpt", "blocksize": 0}, "blocksize=0 must be an integer >= 1"),
        ({"method": "wanda", "blocksize": 64}, "blocksize=64 applies to method=sparsegpt only"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(PruneConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        PruneConfig(**settings)


def test_alpha_eps_that_pushes_a_block_out_of_range_is_an_error():
    model = make_model(layers=3, seed=1)
    with pytest.raises(PruneConfigError, match=r"outside \[0, 1\)"):
        prune_(model, PruneConfig(method="magnitude", alloc="alphapruning", sparsity=0.9, alpha_eps=0.9, device="cpu"))
    assert all(int((p == 0).sum()) < p.numel() // 2 for p in model.parameters())  # nothing pruned


def keep_first_half(linear, _stat, sparsity, _config, _name):
    """A toy method for the registry test: zero the last ``sparsity`` share of each row's columns."""
    cut = linear.weight.shape[1] - int(linear.weight.shape[1] * sparsity)
    with torch.no_grad():
        linear.weight[:, cut:] = 0
    return {}


def test_a_new_method_is_one_registry_entry():
    METHODS.add("keep-first", MethodSpec("keep-first", "unstructured", "toy", Lazy(f"{__name__}:keep_first_half")))
    try:
        model = make_model(layers=2)
        report = prune_(model, PruneConfig(method="keep-first", sparsity=0.25, device="cpu"))
        assert report.overall_sparsity == pytest.approx(0.25, abs=0.01)
        assert all(not linear.weight[:, -1].any() for linear in block_linears(decoder_blocks(model)[0]).values())
    finally:
        METHODS._entries.pop("keep-first")
