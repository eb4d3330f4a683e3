"""SparseGPT: the paper's equations in float64, the reference's layer loop, real-model error vs Wanda, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import WAR_AND_PEACE, make_model, random_ids

from lm_eval_prune import PruneConfigError
from lm_eval_prune.engine.calibration import sample_stream
from lm_eval_prune.engine.masks import apply_mask_, build_mask, wanda_scores
from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.engine.sequential import capture_block_inputs, propagate, run_block
from lm_eval_prune.engine.sparsegpt import Hessian, hessians, sparsegpt_prune_
from lm_eval_prune.engine.stats import column_stats


def paper_sparsegpt(weight, hessian, sparsity, nm=None, blocksize=128, percdamp=0.01):
    """Algorithm 1 of arXiv 2301.00774 in float64, written from its equations: no Cholesky, no lazy batches.

    After columns < c are fixed, the inverse Hessian over the remaining columns F = {c, ...} is inv(H[c:, c:]) (the
    paper's eq. 3 applied c times). Saliency w_c^2 / [H_F^-1]_cc picks the mask (p% lowest per block of ``blocksize``
    columns, or n lowest per m columns); the OBS update of eq. 2, dW_F = -(w_c / [H_F^-1]_cc) [H_F^-1]_c,:, is applied
    in full at every column.
    """
    w = weight.double().clone()
    h = hessian.double().clone()
    d = h.shape[0]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.diag(h).mean() * torch.eye(d, dtype=torch.float64)
    inverses = [torch.linalg.inv(h[c:, c:]) for c in range(d)]
    mask = torch.zeros_like(w, dtype=torch.bool)
    for c in range(d):
        if nm is None and c % blocksize == 0:
            end = min(c + blocksize, d)
            scores = torch.stack([w[:, k] ** 2 / inverses[k][0, 0] for k in range(c, end)], dim=1)
            if sparsity > 0:  # the reference's rule: at or below the k-th smallest score (k + 1 weights, ties too)
                mask[:, c:end] = scores <= torch.sort(scores.flatten())[0][int(scores.numel() * sparsity)]
        if nm is not None and c % nm[1] == 0:
            scores = torch.stack([w[:, k] ** 2 / inverses[k][0, 0] for k in range(c, c + nm[1])], dim=1)
            mask[:, c : c + nm[1]].scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, : nm[0]], True)
        inverse = inverses[c]
        step = torch.where(mask[:, c], w[:, c], 0) / inverse[0, 0]
        w[:, c:] -= step.unsqueeze(1) * inverse[0].unsqueeze(0)
    w[mask] = 0
    return w, mask


def random_layer(rows, columns, nsamples=16, seqlen=64, seed=0, dead=()):
    """A weight, calibration inputs with unequal column scales, and their batched fp32 Hessian."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=g)
    inputs = torch.randn(nsamples, seqlen, columns, generator=g) * (0.2 + 3 * torch.rand(columns, generator=g))
    inputs[..., list(dead)] = 0
    acc = Hessian(columns)
    for batch in inputs.split(4):
        acc.add_batch(batch)
    return weight, inputs, acc.matrix


def mean_recon_error(dense, pruned, inputs):
    """||W X - W' X||_F^2 averaged over the sequences, float64."""
    diff = (dense.detach().double() - pruned.detach().double()) @ inputs.double().reshape(-1, inputs.shape[-1]).t()
    return float((diff**2).sum()) / inputs.shape[0]


@pytest.mark.parametrize(
    ("rows", "columns", "sparsity", "nm", "blocksize", "dead"),
    [
        (24, 96, 0.5, None, 32, ()),
        (16, 100, 0.7, None, 32, (3, 50)),  # last block shorter; dead columns
        (32, 64, 0.5, None, 128, ()),  # one block
        (24, 96, 0.0, (2, 4), 32, ()),
        (16, 64, 0.5, (2, 4), 16, (5,)),
        (16, 48, 0.5, (1, 8), 24, ()),
    ],
)
def test_equals_the_papers_equations_in_float64(rows, columns, sparsity, nm, blocksize, dead):
    weight, _inputs, hessian = random_layer(rows, columns, dead=dead, seed=columns + rows)
    expected_w, expected_mask = paper_sparsegpt(weight, hessian, sparsity, nm, blocksize)
    fp32 = weight.clone()
    stats = sparsegpt_prune_(fp32, hessian, sparsity, nm=nm, blocksize=blocksize)
    assert torch.equal(fp32 == 0, expected_w == 0)
    assert torch.allclose(fp32.double(), expected_w, rtol=0, atol=1e-5)
    assert stats.pruned == int(expected_mask.sum())
    assert stats.dead_columns == len(dead)
    fp64 = weight.double()
    sparsegpt_prune_(fp64, hessian.double(), sparsity, nm=nm, blocksize=blocksize)
    assert torch.allclose(fp64, expected_w, rtol=0, atol=1e-10)


def test_exact_counts_per_block_and_n_m_groups():
    weight, _inputs, hessian = random_layer(8, 80, seed=3)
    unstructured = weight.clone()
    stats = sparsegpt_prune_(unstructured, hessian, 0.6, blocksize=32)
    for first, last in ((0, 32), (32, 64), (64, 80)):
        assert int((unstructured[:, first:last] == 0).sum()) == int(8 * (last - first) * 0.6) + 1  # as the reference
    assert stats.pruned == int(8 * 32 * 0.6) * 2 + int(8 * 16 * 0.6) + 3
    nm = weight.clone()
    sparsegpt_prune_(nm, hessian, 0.0, nm=(2, 4), blocksize=16)
    assert torch.equal((nm == 0).reshape(8, 20, 4).sum(-1), torch.full((8, 20), 2))


def test_in_place_keeps_dtype_and_leaves_the_hessian_alone():
    weight, _inputs, hessian = random_layer(8, 64, seed=4)
    bf16 = weight.to(torch.bfloat16)
    pointer, before = bf16.data_ptr(), hessian.clone()
    expected = bf16.float()  # the math runs in fp32 on the bf16 values, then rounds back once
    sparsegpt_prune_(expected, hessian, 0.5)
    sparsegpt_prune_(bf16, hessian, 0.5)
    assert bf16.dtype == torch.bfloat16 and bf16.data_ptr() == pointer
    assert torch.equal(bf16, expected.to(torch.bfloat16))
    assert torch.equal(hessian, before)


def test_zero_sparsity_changes_nothing_and_dead_columns_go_to_zero():
    weight, _inputs, hessian = random_layer(8, 64, seed=5)
    same = weight.clone()
    stats = sparsegpt_prune_(same, hessian, 0.0)
    assert torch.equal(same, weight) and stats.pruned == 0 and stats.recon_error == 0.0
    weight, _inputs, hessian = random_layer(8, 64, seed=5, dead=(7, 9))
    sparsegpt_prune_(weight, hessian, 0.0)
    assert not weight[:, [7, 9]].any() and bool((weight != 0).sum() == 8 * 62)


def test_stats_recon_error_is_the_layer_error_and_obs_loss_adds_the_dampening():
    weight, inputs, hessian = random_layer(16, 64, seed=6)
    pruned = weight.clone()
    stats = sparsegpt_prune_(pruned, hessian, 0.5)
    direct = mean_recon_error(weight, pruned, inputs)
    assert stats.recon_error == pytest.approx(direct, rel=1e-4)
    dense = float(((weight.double() @ inputs.double().reshape(-1, 64).t()) ** 2).sum()) / inputs.shape[0]
    assert stats.relative_error == pytest.approx(direct / dense, rel=1e-4)
    assert stats.pruned == 16 * 64 // 2 + 1 and (stats.rows, stats.columns) == (16, 64)
    # OBS steps are exact for the dampened H, so their losses add up to tr(dW (H + damp I) dW^T) / 2
    damp_term = stats.damp * float(((pruned.double() - weight.double()) ** 2).sum()) / 2
    assert stats.obs_loss == pytest.approx(stats.recon_error + damp_term, rel=1e-4)


def test_batched_hessian_equals_the_one_sequence_at_a_time_running_mean():
    g = torch.Generator().manual_seed(7)
    inputs = torch.randn(12, 32, 48, generator=g)
    single, batched = Hessian(48), Hessian(48)
    for j in range(12):
        single.add_batch(inputs[j])  # [seq, columns]: one sequence, as the reference sees it
    for batch in inputs.split(5):  # batches of 5, 5, 2
        batched.add_batch(batch)
    flat = inputs.double().reshape(-1, 48)
    exact = 2 / 12 * flat.t() @ flat
    assert single.nsamples == batched.nsamples == 12
    for acc in (single, batched):
        assert acc.matrix.dtype == torch.float32
        assert float((acc.matrix.double() - exact).abs().max() / exact.abs().max()) < 1e-6
    assert float((single.matrix - batched.matrix).abs().max() / single.matrix.abs().max()) < 1e-6


def test_hessians_hook_every_linear_and_always_remove_the_hooks():
    model = make_model(layers=1)
    linears = block_linears(decoder_blocks(model)[0])
    ids = random_ids(3, 16)
    with hessians(linears) as accs:
        model(ids)
    assert set(accs) == set(linears)
    assert all(acc.nsamples == 3 and acc.matrix.shape[0] == linears[n].in_features for n, acc in accs.items())
    assert torch.equal(accs["self_attn.q_proj"].matrix, accs["self_attn.k_proj"].matrix)  # same input
    with pytest.raises(RuntimeError), hessians(linears):
        raise RuntimeError("boom")
    assert not any(linear._forward_hooks for linear in linears.values())


@torch.no_grad()
def reference_prune_sparsegpt(model, ids, sparsity, nm):
    """locuslab/wanda prune_sparsegpt's loop written out: one sequence per forward, the block's linears all get their
    Hessian from the same forward, then each is pruned, then the block is re-run for the next block's inputs."""
    inner = model.model
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    inps = [inner.embed_tokens(ids[j : j + 1]) for j in range(ids.shape[0])]
    pos = inner.rotary_emb(inps[0], positions)
    for layer in inner.layers:
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        h = {n: torch.zeros(m.in_features, m.in_features) for n, m in subset.items()}
        count = dict.fromkeys(subset, 0)

        def hook(name, h=h, count=count):
            def fn(_m, inp, _out):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
                h[name] *= count[name] / (count[name] + 1)
                count[name] += 1
                x = math.sqrt(2 / count[name]) * x
                h[name] += x @ x.t()

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in subset.items()]
        for x in inps:
            layer(x, attention_mask=None, position_embeddings=pos, position_ids=positions)
        for handle in handles:
            handle.remove()
        for name, linear in subset.items():
            w, _ = paper_sparsegpt(linear.weight, h[name], sparsity, nm)
            linear.weight.copy_(w.float())
        inps = [layer(x, attention_mask=None, position_embeddings=pos, position_ids=positions) for x in inps]


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_block_loop_driver_equals_the_reference_prune_sparsegpt(nm):
    model = make_model(layers=2, seed=1)
    expected = make_model(layers=2, seed=1)
    ids = random_ids(6, 24, seed=2)
    reference_prune_sparsegpt(expected, ids, 0.5, nm)
    inputs = capture_block_inputs(model, ids, batch_size=4, device=torch.device("cpu"))
    records = []

    def visit(index, block, block_inputs):  # how the lead's layer loop drives the pieces
        linears = block_linears(block)
        with hessians(linears) as accs:
            run_block(block, block_inputs)
        for name, linear in linears.items():
            records.append(sparsegpt_prune_(linear.weight, accs.pop(name).matrix, 0.5, nm=nm, name=f"{index}.{name}"))
        return None  # the block changed: propagate re-runs it for the next block's inputs

    with torch.no_grad():
        propagate(model, inputs, visit, torch.device("cpu"), offload=False, desc="sparsegpt")
    assert len(records) == 14 and all(r.pruned == r.rows * r.columns // 2 + (0 if nm else 1) for r in records)
    for ours, theirs in zip(model.model.layers, expected.model.layers, strict=True):
        for (name, a), b in zip(block_linears(ours).items(), block_linears(theirs).values(), strict=True):
            assert torch.equal(a.weight == 0, b.weight == 0), name
            assert torch.allclose(a.weight, b.weight, rtol=0, atol=1e-5), name


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_lower_layer_error_than_wanda_on_the_trained_model_with_real_text(stories_path, nm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    text = WAR_AND_PEACE.read_text(encoding="utf-8")[:200_000]
    ids = sample_stream(tokenizer(text)["input_ids"], 32, 64, 0, "war and peace")
    linears = block_linears(decoder_blocks(model)[2])
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = [
        linear.register_forward_hook(lambda _m, args, _o, name=name: seen[name].append(args[0].detach()))
        for name, linear in linears.items()
    ]
    with torch.no_grad(), hessians(linears) as accs, column_stats(linears) as norms:
        for batch in ids.split(8):
            model(batch)
    for handle in handles:
        handle.remove()
    for name, linear in linears.items():
        x = torch.cat(seen[name])
        ours = linear.weight.detach().clone()
        stats = sparsegpt_prune_(ours, accs[name].matrix, 0.5, nm=nm, name=name)
        wanda = linear.weight.detach().clone()
        apply_mask_(wanda, build_mask(wanda_scores(wanda, norms[name].scaler), 0.5, "row", nm))
        assert int((wanda == 0).sum()) == linear.weight.numel() // 2
        extra = 0 if nm else -(-linear.weight.shape[1] // 128)  # the reference's rule prunes one more per column block
        assert int((ours == 0).sum()) == linear.weight.numel() // 2 + extra
        sparsegpt_error = mean_recon_error(linear.weight, ours, x)
        wanda_error = mean_recon_error(linear.weight, wanda, x)
        assert sparsegpt_error < 0.9 * wanda_error, (name, sparsegpt_error, wanda_error)
        assert stats.recon_error == pytest.approx(sparsegpt_error, rel=1e-3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(percdamp=0.0), "percdamp=0.0"),
        (dict(percdamp=-0.01), "percdamp=-0.01"),
        (dict(percdamp=float("nan")), "percdamp=nan"),
        (dict(blocksize=0), "blocksize=0"),
        (dict(blocksize=2.5), "blocksize=2.5"),
        (dict(sparsity=1.5), "sparsity=1.5"),
        (dict(sparsity=-0.1), "sparsity=-0.1"),
        (dict(nm=(3, 2)), "nm=(3, 2)"),
        (dict(nm=(2, 5)), "multiples of 5"),
        (dict(nm=(2, 4), blocksize=30), "blocksize=30"),
    ],
)
def test_bad_settings_raise_one_line_naming_the_value(changes, message):
    weight, _inputs, hessian = random_layer(4, 64, nsamples=2, seqlen=8)
    before = weight.clone()
    args = dict(sparsity=0.5) | changes
    with pytest.raises(PruneConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        sparsegpt_prune_(weight, hessian, name="layers.0.mlp.up_proj", **args)
    assert "\n" not in str(info.value)
    assert torch.equal(weight, before)


def test_bad_hessians_raise_naming_the_layer_and_leave_the_weight():
    weight = torch.randn(4, 3)
    before = weight.clone()
    indefinite = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(PruneConfigError, match=r"layers\.3\.self_attn\.o_proj: the dampened Hessian is not positive"):
        sparsegpt_prune_(weight, indefinite, 0.5, name="layers.3.self_attn.o_proj")
    nan = torch.eye(3)
    nan[0, 1] = float("nan")
    with pytest.raises(PruneConfigError, match=r"^q_proj: the Hessian has non-finite"):
        sparsegpt_prune_(weight, nan, 0.5, name="q_proj")
    with pytest.raises(PruneConfigError, match=r"hessian shape \(4, 4\)"):
        sparsegpt_prune_(weight, torch.eye(4), 0.5)
    with pytest.raises(PruneConfigError, match="weight must be 2-D"):
        sparsegpt_prune_(torch.randn(3), torch.eye(3), 0.5)
    assert torch.equal(weight, before)
    with pytest.raises(PruneConfigError, match="inputs have 5 columns; this Hessian has 3"):
        Hessian(3).add_batch(torch.randn(2, 4, 5))
