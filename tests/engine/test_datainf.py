"""DataInf (LayerIF's original estimator) from gradient factors against materialised per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids

from lm_eval_prune import PruneConfigError
from lm_eval_prune.engine.datainf import datainf_block_scores, datainf_influence, positive_block_scores
from lm_eval_prune.engine.layer_scores import layerif_influence
from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks


def selected_params(model, modules):
    """(block, tensor) for every parameter the original's ``'self_attn' in name`` filter takes (plus the MLP's)."""
    out = []
    for index, block in enumerate(decoder_blocks(model)):
        for name, param in block.named_parameters():
            if name.startswith("self_attn.") or (modules == "all" and name.startswith("mlp.")):
                out.append((index, param))
    return out


def brute_force_datainf(model, train, val, modules, lambda_const=10.0):
    """The original's loops in float64: one gradient per sample from HF's own loss, hvp per validation sample."""
    params = selected_params(model, modules)
    for _, p in params:
        p.requires_grad_(True)

    def grads(ids):
        loss = model(input_ids=ids[None], labels=ids[None]).loss
        return [g.detach().double() for g in torch.autograd.grad(loss, [p for _, p in params])]

    with torch.enable_grad():
        g_train = [grads(s) for s in train]
        g_val = [grads(s) for s in val]
    n = len(train)
    influence = torch.zeros(len(params), n, dtype=torch.float64)  # summed over validation samples
    for w in range(len(params)):
        lam = torch.stack([(g[w] ** 2).mean() for g in g_train]).mean() / lambda_const
        for gv in g_val:
            hvp = torch.zeros_like(gv[w])
            for g in g_train:
                c = (gv[w] * g[w]).sum() / (lam + (g[w] ** 2).sum())
                hvp += (gv[w] - c * g[w]) / (n * lam)
            for i, g in enumerate(g_train):
                influence[w, i] -= (hvp * g[w]).sum()
    n_blocks = len(decoder_blocks(model))
    per_block = torch.zeros(n_blocks, n, dtype=torch.float64)
    for w, (block, _) in enumerate(params):
        per_block[block] += influence[w]
    return [float(v) for v in per_block.clamp(min=0).sum(1)]


@pytest.mark.parametrize(
    ("arch", "modules"), [("llama", "attn"), ("llama", "all"), ("qwen2", "attn"), ("qwen3", "attn"), ("qwen3", "all")]
)
def test_datainf_equals_materialised_per_sample_gradients(arch, modules, caplog):
    model = make_model(arch, layers=3, hidden=32).double()
    train, val = random_ids(7, 10, seed=1), random_ids(3, 10, seed=2)
    expected = brute_force_datainf(model, train, val, modules)
    for p in model.parameters():
        p.requires_grad_(True)
    ours = datainf_block_scores(model, train, val, modules, batch_size=3)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert sum(s > 0 for s in ours) >= 2  # the case separates blocks
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # flags restored, nothing left behind
    # chunked (a bank of a few samples, later samples re-run against each chunk): the same result
    linears = block_linears(model.model.layers[0]).values()
    upper_bytes = 3 * 10 * 8 * sum(lin.in_features + lin.out_features for lin in linears)  # >= one sample's factors
    with caplog.at_level("INFO", logger="lm_eval_prune.engine.datainf"):
        chunked = datainf_block_scores(model, train, val, modules, batch_size=2, bank_gib=2 * upper_bytes / 1024**3)
    assert "in chunks of" in caplog.text
    assert chunked == pytest.approx(ours, rel=1e-9)


def test_identity_estimator_equals_the_existing_layerif_influence():
    model = make_model(layers=3)
    train, val = random_ids(6, 12, seed=1), random_ids(4, 12, seed=2)
    expected = layerif_influence(model, train, val, batch_size=3)
    ours = datainf_block_scores(model, train, val, "all", batch_size=4, estimator="identity")
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert any(s > 0 for s in ours)


def test_datainf_influence_by_hand():
    # one tensor of 2 elements, two training gradients, summed validation gradient G
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    big_g = torch.tensor([2.0, -1.0], dtype=torch.float64)
    lam = ((g**2).mean(1)).mean() / 10  # (0.5 + 1) / 2 / 10 = 0.075
    hvp = sum((big_g - (big_g @ gi) / (lam + gi @ gi) * gi) for gi in g) / (2 * lam)
    expected = -(g @ hvp)
    got = datainf_influence((g @ g.T)[None], (g @ big_g)[None], [2])
    assert got[0].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    assert positive_block_scores(torch.tensor([[1.0, -2.0], [0.5, 3.0]]), [0, 0], 1) == [pytest.approx(1.5 + 1.0)]
    assert positive_block_scores(torch.tensor([[1.0, -2.0], [0.5, 3.0]]), [0, 1], 2) == [1.0, 3.5]
    zero = datainf_influence(torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), [2])
    assert zero.abs().sum() == 0  # all-zero gradients: no NaN


def test_one_text_for_both_sets_gives_zero_scores():
    """Training on the validation text itself: every training sample lowers the validation loss, so S_l = 0."""
    model = make_model(layers=2, hidden=32)
    ids = random_ids(1, 12, seed=3)
    for estimator in ("identity", "datainf"):
        assert datainf_block_scores(model, ids, ids, "attn", estimator=estimator) == [0.0, 0.0]


def test_bad_arguments_are_one_line_errors():
    model = make_model(layers=2, hidden=32)
    ids = random_ids(2, 8)
    with pytest.raises(PruneConfigError, match=r"modules='mlp' is not one of"):
        datainf_block_scores(model, ids, ids, "mlp")
    with pytest.raises(PruneConfigError, match=r"estimator='lissa'"):
        datainf_block_scores(model, ids, ids, estimator="lissa")
    with pytest.raises(PruneConfigError, match=r"\[n, seqlen\]"):
        datainf_block_scores(model, ids[0], ids)
