"""The real trained tiny model, the ``lm-eval-prune prune`` command, checkpoints and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import WAR_AND_PEACE, make_model, random_ids

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.cli import main
from lm_eval_prune.engine.calibration import sample_stream
from lm_eval_prune.engine.perplexity import perplexity
from lm_eval_prune.store.checkpoint import save_pruned


@pytest.fixture(scope="module")
def war_and_peace_split(tmp_path_factory):
    """Calibration text (first 200k chars) and held-out text (from 70 % on) of War and Peace."""
    text = WAR_AND_PEACE.read_text(encoding="utf-8")
    folder = tmp_path_factory.mktemp("wp")
    (folder / "calib.txt").write_text(text[:200_000], encoding="utf-8")
    cut = int(len(text) * 0.7)
    return folder / "calib.txt", text[cut : cut + 100_000]


def test_wanda_beats_magnitude_on_the_trained_model(stories_path, war_and_peace_split):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calib_file, held_out = war_and_peace_split
    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    evaluation = sample_stream(tokenizer(held_out)["input_ids"], 32, 128, seed=1, name="held-out")
    results = {}
    for method in ("none", "magnitude", "wanda"):
        model = AutoModelForCausalLM.from_pretrained(stories_path)
        cfg = PruneConfig(
            method=method, sparsity=0.5, calibration=str(calib_file), nsamples=128, seqlen=128, device="cpu"
        )
        report = prune_(model, cfg, tokenizer)
        results[method] = perplexity(model, evaluation)
        if method != "none":
            assert report.overall_sparsity == pytest.approx(0.5, abs=0.01)
    # measured here: dense ~65, magnitude ~195, wanda ~116 (the Wanda paper's central claim)
    assert results["none"] < results["wanda"] < 0.8 * results["magnitude"], results


def run_cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_prune_writes_a_loadable_checkpoint_with_report(stories_path, war_and_peace_split, tmp_path):
    from transformers import AutoModelForCausalLM

    calib_file, _ = war_and_peace_split
    out = tmp_path / "pruned"
    result = run_cli(
        "prune",
        str(stories_path),
        "--method",
        "wanda",
        "--alloc",
        "owl",
        "--sparsity",
        "0.5",
        "--output",
        str(out),
        "--calibration",
        str(calib_file),
        "--nsamples",
        "16",
        "--seqlen",
        "64",
        "--device",
        "cpu",
        "--owl-lambda",
        "0.1",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune_report.json").read_text())
    for key in (
        "config",
        "fingerprint",
        "layers",
        "overall_sparsity",
        "block_sparsity",
        "seconds",
        "peak_memory_bytes",
        "versions",
    ):
        assert key in report
    assert report["config"]["owl_m"] == 5.0 and report["config"]["seed"] == 0  # defaults recorded
    assert len(report["layers"]) == 5 * 7
    assert sum(report["block_sparsity"]) / 5 == pytest.approx(0.5)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    dense = AutoModelForCausalLM.from_pretrained(stories_path)
    for layer in report["layers"]:
        weight = dict(reloaded.named_modules())[layer["name"]].weight
        assert (weight == 0).float().mean().item() == pytest.approx(layer["sparsity"])
        assert not torch.signbit(weight[weight == 0]).any()  # +0.0 only, after save and reload
    assert torch.equal(reloaded.model.embed_tokens.weight, dense.model.embed_tokens.weight)
    assert torch.equal(reloaded.lm_head.weight, dense.lm_head.weight)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.slow
def test_console_script_runs(stories_path, tmp_path):
    out = tmp_path / "mag"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval_prune.cli",
            "prune",
            str(stories_path),
            "--method",
            "magnitude",
            "--sparsity",
            "0.2",
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["overall_sparsity"] == pytest.approx(0.2, abs=0.001)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--sparsity", "1.0"], "sparsity=1.0 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity=-0.1 is outside [0, 1)"),
        (["--method", "obs"], "unknown method 'obs'; allowed: magnitude, none, shortgpt, sparsegpt, wanda"),
        (["--alloc", "owll"], "unknown alloc 'owll'; allowed: alphapruning, layerif, owl, uniform"),
        (["--pattern", "4:2"], "pattern='4:2' is not allowed"),
        (["--pattern", "4:8"], "intermediate_size=172 (the input size of mlp.down_proj) is not a multiple of 8"),
        (["--nsamples", "0"], "nsamples=0 must be an integer >= 1"),
        (["--seqlen", "4096"], "seqlen=4096 exceeds the model's max_position_embeddings=2048"),
        (["--calibration", "/nonexistent/file.txt"], "calibration file '/nonexistent/file.txt' does not exist"),
        (["--calibration", "TOO_SHORT"], "has 5"),
        (["--dtype", "int8"], "dtype='int8' is not allowed"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(stories_path, tmp_path, args, message):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time")
    args = [str(short) if a == "TOO_SHORT" else a for a in args]
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "prune",
            str(stories_path),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--calibration",
            str(WAR_AND_PEACE),
            "--nsamples",
            "4",
            "--seqlen",
            "64",
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["short.txt"]  # no temp dirs left either


def test_unknown_architecture_is_refused_before_weights_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    result = CliRunner().invoke(main, ["prune", str(tmp_path), "--output", str(tmp_path / "o")])
    assert (
        result.exit_code == 2
        and "model_type='gpt2' is not supported; supported: llama, mistral, qwen2, qwen3" in result.output
    )


def test_existing_output_is_kept_unless_overwrite(stories_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["prune", str(stories_path), "--method", "magnitude", "--output", str(out)])
    assert result.exit_code == 2 and "is not empty; pass --overwrite" in result.output
    assert (out / "mine.txt").read_text() == "keep me"
    result = CliRunner().invoke(
        main,
        ["prune", str(stories_path), "--method", "magnitude", "--output", str(out), "--overwrite", "--device", "cpu"],
    )
    assert result.exit_code == 0 and (out / "prune_report.json").is_file() and not (out / "mine.txt").exists()


def test_a_failed_save_leaves_no_output(tokenizer, tmp_path, monkeypatch):
    model = make_model()
    report = prune_(model, PruneConfig(method="magnitude", device="cpu"))
    out = tmp_path / "out"

    def broken_save(directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save_pretrained", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(model, tokenizer, report, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_token_file_calibration_is_used_as_is(tmp_path, suffix):
    import numpy as np

    ids = random_ids(4, 16)
    path = tmp_path / f"ids{suffix}"
    if suffix == ".pt":
        torch.save(ids, path)
    else:
        np.save(path, ids.numpy())
    direct, from_file = make_model(), make_model()
    prune_(direct, PruneConfig(nsamples=4, seqlen=16, device="cpu"), calibration=ids)
    prune_(from_file, PruneConfig(nsamples=4, seqlen=16, device="cpu", calibration=str(path)))
    assert all(
        torch.equal(a, b) for a, b in zip(direct.state_dict().values(), from_file.state_dict().values(), strict=True)
    )
    with pytest.raises(PruneConfigError, match=r"has shape \(4, 16\); nsamples=8, seqlen=16 ask for \(8, 16\)"):
        prune_(make_model(), PruneConfig(nsamples=8, seqlen=16, device="cpu", calibration=str(path)))


def test_text_calibration_is_deterministic_for_a_seed(tokenizer, tmp_path):
    from lm_eval_prune.engine.calibration import load_calibration

    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": " ".join(["the cat sat on the mat"] * (5 + i))}) for i in range(10)) + "\n"
    )
    cfg = PruneConfig(calibration=str(path), nsamples=6, seqlen=12)
    first, again = load_calibration(cfg, tokenizer), load_calibration(cfg, tokenizer)
    other = load_calibration(cfg.replace(seed=1), tokenizer)
    assert first.shape == (6, 12) and torch.equal(first, again) and not torch.equal(first, other)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(PruneConfigError, match=r"has no usable fields \(it has: content\)"):
        load_calibration(cfg.replace(calibration=str(bad)), tokenizer)
