"""The one pipeline: one identity through every door, sources checked before loading, memory returned, bad input."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from click.testing import CliRunner
from conftest import WAR_AND_PEACE, make_model, random_ids
from lm_eval_fixtures import write_calibration, write_model

from lm_eval_prune import PruneConfig, PruneConfigError, prune_
from lm_eval_prune.cli import main
from lm_eval_prune.engine.layer_scores import layerif_device
from lm_eval_prune.engine.pruner import _OneShot
from lm_eval_prune.store import pipeline
from lm_eval_prune.store.cache import PruneCache
from lm_eval_prune.store.identity import BaseModel, model_identity, prune_identity
from lm_eval_prune.store.pipeline import PruneRequest, check_sources, pruned_checkpoint, split_model_args

SETTINGS = dict(method="wanda", alloc="owl", sparsity=0.5, nsamples=4, seqlen=32, owl_lambda=0.1, device="cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return {"model": write_model(root / "model"), "calib": write_calibration(root), "root": root}


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_one_identity_through_the_cli_the_cache_and_pruned_hf(tiny, tmp_path):
    """The CLI's report fingerprint, pruned-hf's cache key and the cache entry's report fingerprint are one hash."""
    from lm_eval.api.registry import get_model

    from lm_eval_prune.harness.plugin import register

    out = tmp_path / "out"
    flags = ["--method", "wanda", "--alloc", "owl", "--sparsity", "0.5", "--nsamples", "4", "--seqlen", "32"]
    flags += ["--owl-lambda", "0.1", "--calibration", str(tiny["calib"]), "--device", "cpu"]
    result = cli("prune", str(tiny["model"]), "--output", str(out), *flags)
    assert result.exit_code == 0, result.output
    fingerprint = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))["fingerprint"]
    assert json.loads((out / "prune_report.json").read_text())["fingerprint"] == fingerprint

    register()
    args = ",".join(f"{k}={v}" for k, v in SETTINGS.items() if k != "device")
    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={tiny['model']},{args},calibration={tiny['calib']},prune_cache={tmp_path / 'cache'}",
        {"device": "cpu", "batch_size": 1},
    )
    assert lm.prune_cache_status == "built"
    assert lm.prune_cache_key == fingerprint == lm.prune_report.fingerprint
    entry = json.loads((tmp_path / "cache" / fingerprint / "prune_report.json").read_text())
    assert entry["fingerprint"] == fingerprint
    assert lm.get_model_info()["prune"]["fingerprint"] == fingerprint


def test_identity_covers_exactly_what_changes_the_bytes(tiny):
    """Batch size 1 and 8 share an identity only when they give the same bytes (Magnitude reads no activations)."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(tiny["model"])
    model_id = model_identity(BaseModel(str(tiny["model"])), model_config)

    def weights(config: PruneConfig) -> list[torch.Tensor]:
        model = make_model(layers=2, seed=3)
        prune_(model, config, calibration=random_ids(config.nsamples, config.seqlen, seed=1))
        return [p.detach().clone() for p in model.parameters()]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    for method, alloc in (("wanda", "uniform"), ("wanda", "owl"), ("magnitude", "uniform")):
        extra = {"owl_lambda": 0.1} if alloc == "owl" else {}
        one = PruneConfig(method=method, alloc=alloc, nsamples=8, seqlen=32, calib_batch_size=1, device="cpu", **extra)
        eight = one.replace(calib_batch_size=8)
        same_identity = prune_identity(one, model_id, "cpu") == prune_identity(eight, model_id, "cpu")
        if same_identity:
            assert same(weights(one), weights(eight)), (method, alloc)
        else:
            assert method != "magnitude"  # calibration never runs for magnitude+uniform: same bytes, same identity
    magnitude = PruneConfig(method="magnitude", nsamples=8, seqlen=32, device="cpu")
    assert prune_identity(magnitude, model_id, "cpu") == prune_identity(magnitude.replace(nsamples=64), model_id, "cpu")
    wanda = PruneConfig(method="wanda", nsamples=8, seqlen=32, device="cpu")
    assert prune_identity(wanda, model_id, "cpu") != prune_identity(wanda.replace(calib_batch_size=1), model_id, "cpu")
    assert prune_identity(wanda, model_id, "cpu") != prune_identity(wanda, model_id, "cuda")
    assert prune_identity(wanda, model_id, "cpu") == prune_identity(wanda.replace(offload=True), model_id, "cpu")


def test_settings_of_another_method_or_allocation_are_refused_the_same_way_everywhere(tiny):
    message = "owl_lambda=0.2 applies to alloc=owl only; this run has method=wanda, alloc=uniform"
    with pytest.raises(PruneConfigError, match=message):
        PruneConfig(alloc="uniform", owl_lambda=0.2)
    with pytest.raises(PruneConfigError, match=message):
        split_model_args({"method": "wanda", "owl_lambda": "0.2"})
    result = cli("prune", str(tiny["model"]), "--output", "unused", "--owl-lambda", "0.2")
    assert result.exit_code == 2 and message in result.output
    for settings, owner in (
        ({"layerif_eps": 0.2}, "alloc=layerif"),
        ({"drop_layers": 1}, "method=shortgpt"),
        ({"percdamp": 0.05}, "method=sparsegpt"),
        ({"method": "sparsegpt", "owl_m": 3.0}, "alloc=owl"),
    ):
        with pytest.raises(PruneConfigError, match=f"applies to {owner} only"):
            PruneConfig(**settings)


@pytest.mark.parametrize(
    "scores",
    [[1e308, 1e-308, 1, 2, 3], ["Infinity", 1, 2, 3, 4], [float("nan"), 1, 2, 3, 4], [True, 1, 2, 3, 4]],
)
def test_overflowing_or_bad_layer_scores_are_one_line_and_write_nothing(stories_path, tmp_path, scores):
    """Finding 2: scores that overflow gave a NaN block sparsity that passed the range check and pruned nothing."""
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores).replace('"Infinity"', "Infinity"))
    out = tmp_path / "out"
    result = cli(
        "prune", str(stories_path), "--method", "magnitude", "--alloc", "layerif", "--layerif-eps", "0.99",
        "--layerif-scores", str(path), "--output", str(out), "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and len(result.output.strip().splitlines()[-1]) < 300
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_sources_are_checked_before_anything_loads(tiny, tmp_path, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights loaded before the sources were checked")

    monkeypatch.setattr("lm_eval_prune.store.checkpoint.load_model", must_not_load)
    for flags, message in (
        (["--calibration", str(tmp_path / "gone.txt")], "gone.txt"),
        (["--alloc", "layerif", "--layerif-scores", str(tmp_path / "gone.json")], "gone.json"),
        (["--alloc", "layerif", "--layerif-val", str(tmp_path / "gone.jsonl")], "gone.jsonl"),
        (["--seqlen", "100000"], "exceeds the model's max_position_embeddings"),
    ):
        result = cli("prune", str(tiny["model"]), "--output", str(tmp_path / "o"), "--device", "cpu", *flags)
        assert result.exit_code == 2 and message in result.output, (flags, result.output)
    check_sources(PruneConfig(method="magnitude", calibration=str(tmp_path / "gone.txt")))  # unused: no error


def test_a_report_config_can_be_rebuilt_without_its_files(tmp_path):
    """The config validates values only, so a report read on another machine rebuilds its settings."""
    config = PruneConfig(calibration=str(tmp_path / "elsewhere.txt"), alloc="layerif", layerif_scores="/x/s.json")
    assert PruneConfig.from_mapping(config.to_dict()) == config
    with pytest.raises(PruneConfigError):
        check_sources(config)


def test_pruned_checkpoint_returns_the_models_memory_before_an_engine_starts(tiny, tmp_path, monkeypatch):
    """The prune's model is gone (no reference left) when memory is released, which is before this returns."""
    from lm_eval_prune.store import checkpoint

    seen: dict[str, object] = {}
    real_load = checkpoint.load_model

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        seen["model"] = weakref.ref(model)
        return model

    def release() -> None:
        gc.collect()
        seen["alive_at_release"] = seen["model"]() is not None  # type: ignore[operator]
        return None

    monkeypatch.setattr(checkpoint, "load_model", load)
    monkeypatch.setattr(pipeline, "release_accelerator_memory", release)
    request, _ = split_model_args({**SETTINGS, "calibration": str(tiny["calib"]), "prune_cache": str(tmp_path / "c")})
    result = pruned_checkpoint(BaseModel(str(tiny["model"])), request)
    assert result.status == "built" and result.directory is not None
    assert seen["alive_at_release"] is False


def test_layerif_runs_on_the_gpu_whatever_offload_says():
    assert layerif_device("auto", offload=True, cuda_available=True) == "cuda"
    assert layerif_device("auto", offload=False, cuda_available=True) == "cuda"
    assert layerif_device("cuda:1", offload=True, cuda_available=True) == "cuda:1"
    assert layerif_device("auto", offload=True, cuda_available=False) == "cpu"
    assert layerif_device("cpu", offload=False, cuda_available=True) == "cpu"


def test_block_zero_inputs_are_handed_over_once():
    captures = []

    def capture() -> list[int]:
        captures.append(1)
        return [len(captures)]

    holder = _OneShot(capture)  # type: ignore[arg-type]
    first = holder.take()
    assert first == [1] and holder._inputs is None  # no reference kept while the pass runs
    assert holder.take() == [2] and len(captures) == 2  # a second pass captures anew


def test_blocks_offloaded_by_accelerate_are_refused(tmp_path):
    """Finding (issue 14): blocks on `meta` (accelerate offload to CPU/disk) were masked as placeholders."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "m"
    make_model(layers=2).save_pretrained(folder)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=str(tmp_path / "off"))
    assert any(p.device.type == "meta" for p in model.model.layers[1].parameters())
    with pytest.raises(PruneConfigError, match="decoder block 1 has its weights offloaded by accelerate"):
        prune_(model, PruneConfig(method="magnitude", device="cpu"))


def test_cuda_asked_without_cuda_is_one_line(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli(
        "prune", str(tiny["model"]), "--output", str(tmp_path / "o"), "--method", "magnitude", "--device", "cuda"
    )
    assert result.exit_code == 2 and "device='cuda' but this machine has no CUDA device" in result.output


def test_layer_scores_save_into_a_missing_folder_and_plot_checked_first(stories_path, tmp_path):
    target = tmp_path / "new" / "deeper" / "scores.json"
    result = cli(
        "layer-scores", str(stories_path), "--kind", "block-influence", "--calibration", str(WAR_AND_PEACE),
        "--nsamples", "2", "--seqlen", "32", "--device", "cpu", "--save", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(json.loads(target.read_text())["scores"]) == 5


def test_prune_cache_none_keeps_nothing(tiny, tmp_path):
    request, rest = split_model_args({**SETTINGS, "calibration": str(tiny["calib"]), "prune_cache": "none"})
    assert request.cache is None and rest == {}
    assert isinstance(PruneRequest(request.config, PruneCache(tmp_path)).cache, PruneCache)


@pytest.mark.slow
def test_uncached_vllm_checkpoints_leave_nothing_behind(tmp_path):
    """prune_cache=none keeps pruned-vllm's checkpoint in a folder removed at exit, or by the next run after a kill."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = "from lm_eval_prune.store.pipeline import _scratch_root; import os; print(_scratch_root(), flush=True); "
    killed = subprocess.run([sys.executable, "-c", code + "os._exit(0)"], env=env, capture_output=True, text=True)
    left = (tmp_path / "lm_eval_prune").iterdir()
    assert [p.name for p in left] == [os.path.basename(killed.stdout.strip())]
    clean = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert clean.stdout.strip() and list((tmp_path / "lm_eval_prune").iterdir()) == []


def test_a_model_object_is_never_served_from_the_cache(tiny, tmp_path):
    """Its weights may differ from what its name says: pruned-hf on a model object prunes it, cache or not."""
    from lm_eval.api.registry import get_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_prune.harness.plugin import register

    register()
    args = {k: v for k, v in SETTINGS.items() if k != "device"}
    cache = tmp_path / "cache"
    first = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={tiny['model']},calibration={tiny['calib']},prune_cache={cache},"
        + ",".join(f"{k}={v}" for k, v in args.items()),
        {"device": "cpu", "batch_size": 1},
    )
    assert first.prune_cache_status == "built"
    edited = AutoModelForCausalLM.from_pretrained(tiny["model"])
    with torch.no_grad():
        edited.model.layers[0].mlp.up_proj.weight.mul_(2)  # same name, other weights
    lm = get_model("pruned-hf")(
        pretrained=edited, tokenizer=AutoTokenizer.from_pretrained(tiny["model"]), device="cpu", batch_size=1,
        calibration=str(tiny["calib"]), prune_cache=str(cache), **args,
    )  # fmt: skip
    assert lm.prune_cache_status == "disabled"
    ours = lm._model.model.layers[0].mlp.up_proj.weight
    cached = first._model.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(ours, cached)


def test_layerif_score_cache_names_every_setting_its_data_reads(tiny, tmp_path):
    from transformers import AutoConfig

    from lm_eval_prune.store.identity import layerif_identity

    for name in ("t.jsonl", "p.jsonl"):
        (tmp_path / name).write_text('{"question": "q", "a": "x", "b": "y"}\n')
    model_id = model_identity(BaseModel(str(tiny["model"])), AutoConfig.from_pretrained(tiny["model"]))
    base = PruneConfig(alloc="layerif", calibration=f"traces:{tmp_path / 't.jsonl'}", trace_field="a", device="cpu")
    assert layerif_identity(base, model_id, "cpu") != layerif_identity(base.replace(trace_field="b"), model_id, "cpu")
    self_source = PruneConfig(alloc="layerif", layerif_train=f"self:{tmp_path / 'p.jsonl'}", device="cpu")
    assert layerif_identity(self_source, model_id, "cpu") != layerif_identity(
        self_source.replace(calib_gen_tokens=64), model_id, "cpu"
    )
    alpha = PruneConfig(method="magnitude", alloc="alphapruning", device="cpu")
    assert prune_identity(alpha, model_id, "cpu") != prune_identity(alpha, model_id, "cuda")  # SVD kernels differ
