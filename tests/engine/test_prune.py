"""The engine on tiny models: reference equivalence, invariants, architectures, offload, determinism."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model, random_ids

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.engine.sequential import capture_block_inputs, propagate, run_block
from lm_eval_prune.engine.stats import column_stats

NSAMPLES, SEQLEN = 8, 32


def config(**changes):
    base = dict(
        method="wanda",
        alloc="uniform",
        sparsity=0.5,
        nsamples=NSAMPLES,
        seqlen=SEQLEN,
        calib_batch_size=4,
        device="cpu",
    )
    base.update(changes)
    return PruneConfig(**base)


@torch.no_grad()
def reference_wanda_masks(model, ids, sparsity):
    """locuslab/wanda prune_wanda, written out independently: one sample at a time, per-row stable sort."""
    inner = model.model
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    inps = [inner.embed_tokens(ids[j : j + 1]) for j in range(ids.shape[0])]
    pos = inner.rotary_emb(inps[0], positions)
    masks = {}
    for i, layer in enumerate(inner.layers):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        scaler = {n: torch.zeros(m.in_features) for n, m in subset.items()}
        count = {n: 0 for n in subset}

        def hook(name, scaler=scaler, count=count):
            def fn(_m, inp, _out):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
                scaler[name] *= count[name] / (count[name] + 1)
                count[name] += 1
                scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in subset.items()]
        for x in inps:
            layer(x, attention_mask=None, position_embeddings=pos, position_ids=positions)
        for h in handles:
            h.remove()
        for name, linear in subset.items():
            metric = linear.weight.abs() * torch.sqrt(scaler[name].reshape(1, -1))
            mask = torch.zeros_like(metric, dtype=torch.bool)
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
            mask.scatter_(1, idx, True)
            linear.weight[mask] = 0
            masks[f"model.layers.{i}.{name}"] = mask
        inps = [layer(x, attention_mask=None, position_embeddings=pos, position_ids=positions) for x in inps]
    return masks


def zero_masks(model):
    return {
        f"model.layers.{i}.{n}": lin.weight == 0
        for i, b in enumerate(decoder_blocks(model))
        for n, lin in block_linears(b).items()
    }


def test_wanda_masks_equal_the_reference_loop():
    model = make_model(layers=3)
    ids = random_ids(NSAMPLES, SEQLEN)
    reference = reference_wanda_masks(copy.deepcopy(model), ids, 0.5)
    prune_(model, config(calib_batch_size=1), calibration=ids)
    ours = zero_masks(model)
    for name, mask in reference.items():
        assert torch.equal(ours[name], mask), name


def test_batched_calibration_agrees_with_one_sample_at_a_time():
    ids = random_ids(NSAMPLES, SEQLEN)
    one, batched = make_model(layers=3), make_model(layers=3)
    prune_(one, config(calib_batch_size=1), calibration=ids)
    prune_(batched, config(calib_batch_size=4), calibration=ids)
    a, b = zero_masks(one), zero_masks(batched)
    agree = sum(int((a[n] == b[n]).sum()) for n in a) / sum(a[n].numel() for n in a)
    assert agree > 0.999


def test_magnitude_prunes_exact_counts_per_matrix():
    model = make_model()
    report = prune_(model, config(method="magnitude", sparsity=0.3))
    for layer in report.layers:
        assert layer.sparsity * layer.numel == int(layer.numel * 0.3)
    # one threshold per matrix: rows end up unequally sparse
    q = model.model.layers[0].self_attn.q_proj.weight
    assert len(set((q == 0).sum(dim=1).tolist())) > 1
    assert report.calibration == {}  # magnitude-uniform needs no calibration


def test_wanda_prunes_exact_counts_per_row():
    model = make_model()
    prune_(model, config(sparsity=0.3), calibration=random_ids(NSAMPLES, SEQLEN))
    for block in decoder_blocks(model):
        for linear in block_linears(block).values():
            assert ((linear.weight == 0).sum(dim=1) == int(linear.in_features * 0.3)).all()


def test_layer_by_layer_statistics_equal_one_full_forward_with_hooks():
    model = make_model(layers=3)
    ids = random_ids(NSAMPLES, SEQLEN)
    linears = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in block_linears(b).items()}
    with column_stats(linears) as full:
        for batch in ids.split(4):
            model(input_ids=batch, use_cache=False)
    sequential = {}

    def visit(index, block, inputs):
        with column_stats(block_linears(block)) as stats:
            outputs = run_block(block, inputs)
        sequential.update({f"{index}.{n}": s.scaler for n, s in stats.items()})
        return outputs

    propagate(
        model, capture_block_inputs(model, ids, 4, torch.device("cpu")), visit, torch.device("cpu"), False, "test"
    )
    assert set(sequential) == set(full)
    for name, acc in full.items():
        assert torch.allclose(sequential[name], acc.scaler, rtol=1e-5, atol=1e-7), name


def test_same_config_gives_bitwise_identical_weights():
    ids = random_ids(NSAMPLES, SEQLEN)
    first, second = make_model(), make_model()
    prune_(first, config(alloc="owl", owl_lambda=0.2), calibration=ids)
    prune_(second, config(alloc="owl", owl_lambda=0.2), calibration=ids)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_offload_equals_no_offload(method):
    ids = random_ids(NSAMPLES, SEQLEN)
    plain, offloaded = make_model(), make_model()
    prune_(plain, config(method=method, alloc="owl"), calibration=ids)
    prune_(offloaded, config(method=method, alloc="owl", offload=True), calibration=ids)
    for a, b in zip(plain.state_dict().values(), offloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_owl_allocation_properties():
    model = make_model(layers=4)
    report = prune_(model, config(alloc="owl", sparsity=0.5, owl_lambda=0.1), calibration=random_ids(NSAMPLES, SEQLEN))
    targets = report.block_sparsity
    assert sum(targets) / len(targets) == pytest.approx(0.5)
    assert max(targets) - min(targets) == pytest.approx(0.2)
    for layer in report.layers:  # each row prunes int(d_in * s_block)
        block = int(layer.name.split(".")[2])
        d_in = dict(model.named_modules())[layer.name].in_features
        assert layer.sparsity == pytest.approx(int(d_in * targets[block]) / d_in)


@pytest.mark.parametrize(
    "arch,tied", [("llama", False), ("mistral", False), ("qwen2", False), ("qwen3", True), ("llama", True)]
)
def test_architectures_prune_only_block_linears(arch, tied):
    model = make_model(arch, tied=tied)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_(model, config(alloc="owl"), calibration=random_ids(NSAMPLES, SEQLEN))
    linear_weights = {f"{layer.name}.weight" for layer in report.layers}
    assert len(report.layers) == 7 * 2  # q k v o gate up down in each of 2 blocks
    after = model.state_dict()
    for key, value in before.items():
        if key in linear_weights:
            assert (after[key] == 0).float().mean() > 0.3, key
        else:  # embeddings, lm_head, norms (incl. q_norm/k_norm), biases: untouched
            assert torch.equal(after[key], value), key
    if arch == "qwen2":
        assert any(k.endswith("q_proj.bias") for k in before)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_unsupported_architecture_is_refused():
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=100)
    )
    with pytest.raises(
        PruneConfigError, match="model_type='gpt2' is not supported; supported: llama, mistral, qwen2, qwen3"
    ):
        prune_(gpt2, config())


def test_dense_method_none_changes_nothing():
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    report = prune_(model, config(method="none"))
    assert report.overall_sparsity == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_n_m_pattern_in_the_engine():
    model = make_model()
    prune_(model, config(pattern="2:4"), calibration=random_ids(NSAMPLES, SEQLEN))
    weight = model.model.layers[1].mlp.down_proj.weight
    groups = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
    assert (groups == 2).all()


def test_n_m_divisibility_of_each_linear_is_checked_on_the_loaded_model():
    model = make_model()
    model.model.layers[0].mlp.down_proj = torch.nn.Linear(126, 64, bias=False)  # a shape the config does not describe
    model.config.intermediate_size = 128
    with pytest.raises(PruneConfigError, match=r"input size 126 of layers\.0\.mlp\.down_proj is not a multiple of 4"):
        prune_(model, config(pattern="2:4"), calibration=random_ids(NSAMPLES, SEQLEN))
