"""LayerIF allocation and influence scores, ShortGPT block influence and block removal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import DATA, WAR_AND_PEACE, make_model, make_tokenizer, random_ids

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.engine import allocation
from lm_eval_prune.engine.layer_scores import block_influence, layerif_influence, read_score_file
from lm_eval_prune.engine.model_utils import block_linears, decoder_blocks
from lm_eval_prune.engine.sequential import capture_block_inputs


def test_layerif_allocation_by_hand():
    sparsities = allocation.layerif([0.0, 1.0, 2.0], sparsity=0.5, eps=0.3, block_params=[100, 100, 200])
    scale = 0.5 * 400 / (0.7 * 100 + 1.0 * 100 + 1.3 * 200)
    assert sparsities == pytest.approx([0.7 * scale, 1.0 * scale, 1.3 * scale])
    assert sum(p * s for p, s in zip([100, 100, 200], sparsities, strict=True)) / 400 == pytest.approx(0.5, abs=1e-12)
    assert sparsities[0] < sparsities[1] < sparsities[2]  # higher score -> pruned more
    assert allocation.layerif([3.0, 1.0, 2.0], 0.4, eps=0.0, block_params=[1, 2, 3]) == pytest.approx([0.4] * 3)
    assert allocation.layerif([5.0, 5.0], 0.4, eps=0.3, block_params=[1, 1]) == pytest.approx([0.4, 0.4])
    with pytest.raises(PruneConfigError, match=r"gives block 1 a sparsity of 1\.04, outside \[0, 1\)"):
        allocation.layerif([0.0, 1.0], 0.8, eps=0.3, block_params=[1, 1])
    with pytest.raises(PruneConfigError, match="must be finite"):
        allocation.layerif([0.0, float("nan")], 0.5, 0.3, [1, 1])


def brute_force_influence(model, train, val):
    """Per-sample gradients of every block-linear weight, one sample at a time, then the dot products."""
    blocks = decoder_blocks(model)
    weights = [[lin.weight for lin in block_linears(b).values()] for b in blocks]
    flat = [w for group in weights for w in group]

    def grads(ids):
        logits = model(input_ids=ids.unsqueeze(0)).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, ids[1:])
        return torch.autograd.grad(loss, flat)

    with torch.enable_grad():
        g_val = [sum(parts) for parts in zip(*[grads(v) for v in val], strict=True)]
        scores = [0.0] * len(blocks)
        for sample in train:
            g = grads(sample)
            offset = 0
            for index, group in enumerate(weights):
                dot = sum(float((g_val[offset + j].double() * g[offset + j].double()).sum()) for j in range(len(group)))
                scores[index] += max(0.0, -dot)
                offset += len(group)
    return scores


def test_influence_equals_brute_force_with_per_sample_gradients():
    model = make_model(layers=3)
    for p in model.parameters():
        p.requires_grad_(True)
    train, val = random_ids(6, 12, seed=1), random_ids(4, 12, seed=2)
    expected = brute_force_influence(model, train, val)
    model.zero_grad()
    ours = layerif_influence(model, train, val, batch_size=3)
    assert ours == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert any(s > 0 for s in ours)
    assert layerif_influence(model, train, val, batch_size=2) == pytest.approx(
        ours, rel=1e-5
    )  # deterministic, batch-free
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


def test_block_influence_equals_direct_cosine():
    model = make_model(layers=3)
    ids = random_ids(4, 16)
    with torch.no_grad():
        ours = block_influence(
            model, capture_block_inputs(model, ids, 2, torch.device("cpu")), torch.device("cpu"), False
        )
        outputs = {}
        handle = model.model.layers[-1].register_forward_hook(
            lambda m, a, o: outputs.setdefault("last", o[0] if isinstance(o, tuple) else o)
        )
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        handle.remove()
    states = [*hidden[:-1], outputs["last"]]  # hidden_states[-1] is after the final norm: use the raw block output
    for i in range(3):
        cos = torch.nn.functional.cosine_similarity(states[i].reshape(-1, 64), states[i + 1].reshape(-1, 64), dim=-1)
        assert ours[i] == pytest.approx(float((1 - cos).mean()), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_shortgpt_checkpoint_reloads_and_generates_the_same(arch, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from lm_eval_prune.store.checkpoint import save_pruned

    model = make_model(arch, layers=4)
    if arch == "qwen2":
        model.config.max_window_layers = 3
    report = prune_(
        model,
        PruneConfig(method="shortgpt", drop_layers=2, nsamples=4, seqlen=16, device="cpu"),
        calibration=random_ids(4, 16),
    )
    removed = report.removed_indices
    influence = report.block_influence
    assert sorted(range(4), key=lambda i: influence[i])[:2] == sorted(removed, key=lambda i: influence[i])
    assert report.overall_sparsity == pytest.approx(0.5) and report.removed_param_share == pytest.approx(0.5)
    save_pruned(model, tokenizer, report, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.model.layers) == 2
    if arch != "llama":  # Qwen2/Qwen3 configs carry per-layer lists
        assert len(reloaded.config.layer_types) == 2
    if arch == "qwen2":
        assert reloaded.config.max_window_layers == sum(1 for i in range(4) if i not in removed and i < 3)
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == [0, 1]
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=3)
        got = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=3)
    assert torch.equal(expected, got)
    assert json.loads((tmp_path / "out" / "prune_report.json").read_text())["removed_params"] == report.removed_params


def test_shortgpt_tail_drops_the_last_blocks():
    model = make_model(layers=4)
    first = model.model.layers[0].self_attn.q_proj.weight.clone()
    report = prune_(model, PruneConfig(method="shortgpt", drop_layers=1, shortgpt_mode="tail", device="cpu"))
    assert report.removed_indices == [3] and report.calibration == {}
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, first)


def test_layerif_on_the_trained_model_hits_the_budget(stories_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    model = AutoModelForCausalLM.from_pretrained(stories_path)
    text = tmp_path / "wp.txt"
    text.write_text(WAR_AND_PEACE.read_text(encoding="utf-8")[:300_000])
    # validation text from another domain: with War and Peace on both sides every training gradient helps the
    # validation loss, so sum(max(0, -<G_val, g_i>)) is 0 for every block (measured) and the allocation is uniform
    problems = tmp_path / "math.txt"
    problems.write_text(
        " ".join(json.loads(line)["problem"] for line in (DATA / "math500_test.jsonl").read_text().splitlines())
    )
    config = PruneConfig(
        method="magnitude",
        alloc="layerif",
        sparsity=0.5,
        calibration=str(text),
        layerif_val=str(problems),
        layerif_nsamples=32,
        layerif_val_nsamples=16,
        layerif_seqlen=64,
        device="cpu",
    )
    report = prune_(model, config, tokenizer)
    assert max(report.layer_scores) > 0
    assert max(report.block_sparsity) - min(report.block_sparsity) > 0.05  # non-uniform
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.001)
    assert len(report.layer_scores) == 5


def test_score_files_and_their_errors(tmp_path):
    good = tmp_path / "s.json"
    good.write_text("[1, 2, 3]")
    assert read_score_file(good, 3) == [1.0, 2.0, 3.0]
    np.save(tmp_path / "s.npy", np.array([3.0, 2.0, 1.0]))
    assert read_score_file(tmp_path / "s.npy", 3) == [3.0, 2.0, 1.0]
    with pytest.raises(PruneConfigError, match="has 3 values; the model has 2 blocks"):
        read_score_file(good, 2)
    bad = tmp_path / "nan.json"
    bad.write_text("[1, NaN]")
    with pytest.raises(PruneConfigError, match="holds NaN or infinite values"):
        read_score_file(bad, 2)
    model = make_model(layers=3)
    report = prune_(
        model, PruneConfig(method="magnitude", alloc="layerif", sparsity=0.4, layerif_scores=str(good), device="cpu")
    )
    assert report.block_sparsity[0] < report.block_sparsity[1] < report.block_sparsity[2]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"method": "shortgpt", "drop_layers": 0}, "drop_layers=0 must be >= 1 for method='shortgpt'"),
        (
            {"method": "wanda", "drop_layers": 2},
            "drop_layers=2 applies to method=shortgpt only; this run has method=wanda, alloc=uniform",
        ),
        (
            {"alloc": "owl", "layerif_eps": 0.2},
            "layerif_eps=0.2 applies to alloc=layerif only; this run has method=wanda, alloc=owl",
        ),
        (
            {"method": "shortgpt", "drop_layers": 1, "alloc": "owl"},
            "removes whole blocks; it takes no alloc or pattern",
        ),
    ],
)
def test_bad_layer_settings(settings, message):
    with pytest.raises(PruneConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        PruneConfig(**settings)


def test_cli_errors_before_weights_load(stories_path, tmp_path):
    from lm_eval_prune.cli import main

    short = tmp_path / "s.json"
    short.write_text("[1, 2]")
    for args, message in (
        (
            ["--method", "shortgpt", "--drop-layers", "5", "--shortgpt-mode", "tail"],
            "drop_layers=5 must be < the model's 5 blocks",
        ),
        (
            ["--method", "magnitude", "--alloc", "layerif", "--layerif-scores", str(short)],
            "has 2 values; the model has 5 blocks",
        ),
    ):
        result = CliRunner().invoke(main, ["prune", str(stories_path), "--output", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_cli_layerif_caches_scores_and_writes_them_beside_the_report(stories_path, tmp_path, monkeypatch):
    from lm_eval_prune.cli import main
    from lm_eval_prune.engine import layer_scores

    monkeypatch.setenv("LM_EVAL_PRUNE_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "wp.txt"
    text.write_text(WAR_AND_PEACE.read_text(encoding="utf-8")[:100_000])
    args = [
        "--method",
        "magnitude",
        "--alloc",
        "layerif",
        "--calibration",
        str(text),
        "--layerif-nsamples",
        "4",
        "--layerif-val-nsamples",
        "2",
        "--layerif-seqlen",
        "32",
        "--device",
        "cpu",
    ]
    first = CliRunner().invoke(main, ["prune", str(stories_path), "--output", str(tmp_path / "a"), *args])
    assert first.exit_code == 0, first.output
    scores = json.loads((tmp_path / "a" / "layer_scores.json").read_text())["scores"]
    assert len(list((tmp_path / "cache" / "layerif").glob("*.json"))) == 1

    def must_not_run(*a, **k):
        raise AssertionError("scores were recomputed")

    monkeypatch.setattr(layer_scores, "layerif_influence", must_not_run)
    second = CliRunner().invoke(main, ["prune", str(stories_path), "--output", str(tmp_path / "b"), *args])
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "b" / "layer_scores.json").read_text())["scores"] == scores
    plot = tmp_path / "scores.png"
    shown = CliRunner().invoke(main, ["layer-scores", str(stories_path), *args[2:], "--plot", str(plot)])
    assert shown.exit_code == 0, shown.output
    assert [row["score"] for row in json.loads(shown.stdout)["blocks"]] == scores
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruned_hf_shortgpt_cache_hit(tmp_path):
    from lm_eval_fixtures import write_calibration, write_model

    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    model_dir, calib = write_model(tmp_path / "m"), write_calibration(tmp_path)
    args = (
        f"pretrained={model_dir},method=shortgpt,drop_layers=1,calibration={calib},nsamples=4,seqlen=16,"
        f"prune_cache={tmp_path / 'cache'}"
    )
    built = get_model("pruned-hf").create_from_arg_string(args, {"device": "cpu", "batch_size": 1})
    hit = get_model("pruned-hf").create_from_arg_string(args, {"device": "cpu", "batch_size": 1})
    assert (built.prune_cache_status, hit.prune_cache_status) == ("built", "hit")
    assert len(hit._model.model.layers) == 1 and hit._model.config.num_hidden_layers == 1
    for a, b in zip(built._model.state_dict().values(), hit._model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_make_tokenizer_is_usable():
    assert make_tokenizer()("the cat")["input_ids"]
