"""Bad inputs and faults a new user meets, through every door: each is one line naming the value (click: ``Error:``
and exit code 2), raised before the work it would spoil, and nothing the user had is lost. Each case failed before."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lm_eval_prune import PruneConfig
from lm_eval_prune.cli import main
from lm_eval_prune.errors import PruneConfigError

FIXTURE_RESULTS = Path(__file__).parent / "fixtures" / "results"


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 2, exactly one ``Error:`` line, and it names every needle."""
    assert result.exit_code == 2, result.output[-2000:]
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(text * 4)
    return path


def copy_model(stories_path: Path, where: Path) -> Path:
    target = where / "model"
    shutil.copytree(stories_path, target)
    for path in target.rglob("*"):
        path.chmod(0o644)
    target.chmod(0o755)
    return target


# ------------------------------------------------------------------ settings that do not apply, refused everywhere
@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"trace_field": "text", "calibration": "c.txt"}, "trace_field='text' applies to record sources only"),
        ({"trace_field": "text"}, "trace_field='text' applies to record sources only"),
        ({"calib_gen_tokens": 10, "calibration": "c.jsonl"}, "calib_gen_tokens=10 applies to self:PROMPTS"),
        ({"method": "none", "sparsity": 0.3}, "sparsity=0.3 does not apply to method=none"),
        ({"method": "shortgpt", "drop_layers": 1, "sparsity": 0.3}, "sparsity=0.3 does not apply to method=shortgpt"),
        ({"seed": -1}, "seed=-1 must be an integer in [0, 4294967295]"),
        ({"seed": 2**70}, "seed=1180591620717411303424 must be an integer in [0,"),
    ],
)
def test_setting_that_does_not_apply_is_refused_in_api_and_model_args(settings, needle):
    with pytest.raises(PruneConfigError) as direct:
        PruneConfig(**settings)
    assert needle in str(direct.value) and "\n" not in str(direct.value)
    as_strings = {key: str(value) for key, value in settings.items()}  # lm-eval model args arrive as strings
    with pytest.raises(PruneConfigError) as via_args:
        PruneConfig.from_model_args(as_strings)
    assert str(via_args.value) == str(direct.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"trace_field": "q", "calibration": "traces:t.jsonl"},
        {"trace_field": "q", "calibration": "c.txt", "alloc": "layerif", "layerif_train": "t.jsonl"},
        {"calib_gen_tokens": 10, "calibration": "self:p.jsonl"},
        {"method": "none", "sparsity": 0.0},
        {"seed": 2**32 - 1},
    ],
)
def test_settings_that_apply_are_accepted(settings):
    PruneConfig(**settings)


def test_mps_without_mps_is_one_line():
    import torch

    from lm_eval_prune.engine.pruner import resolve_device

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(PruneConfigError, match=r"device='mps' but this machine has no MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("layers", [0, -1, "2"])
def test_model_config_without_blocks_is_refused(layers):
    from lm_eval_prune.engine.pruner import check_against_model_config

    model_config = SimpleNamespace(model_type="llama", num_hidden_layers=layers, max_position_embeddings=64)
    with pytest.raises(PruneConfigError, match=r"num_hidden_layers=.* needs at least one block"):
        check_against_model_config(PruneConfig(method="magnitude"), model_config)


# ------------------------------------------------------------------ broken model directories
def _rewrite_weights(model_dir: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (lambda t: t.pop(Q0), ("lack " + Q0, "re-download")),  # transformers would fill it at random
        (lambda t: t.__setitem__(Q0, t[Q0][:, :3].contiguous()), (Q0, "has shape (64, 3)", "(64, 64)")),
        (lambda t: t.__setitem__(Q0, t[Q0] * math.nan), ("layers.0.self_attn.q_proj hold NaN",)),
    ],
    ids=["missing-tensor", "wrong-shape", "nan-weights"],
)
def test_damaged_weights_are_one_line_and_write_nothing(stories_path, calib, tmp_path, change, needles):
    model = copy_model(stories_path, tmp_path)
    _rewrite_weights(model, change)
    out = tmp_path / "out"
    result = cli("prune", str(model), "-o", str(out), "--calibration", str(calib), "--nsamples", "2", "--seqlen", "16")
    assert_one_line_error(result, *needles)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# ------------------------------------------------------------------ output paths
@pytest.mark.parametrize("where", ["same", "parent", "symlink"])
def test_output_that_is_or_holds_the_model_is_refused_and_the_model_kept(stories_path, tmp_path, where):
    model = copy_model(stories_path, tmp_path)
    before = sorted(p.name for p in model.iterdir())
    out = {"same": model, "parent": tmp_path, "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        (tmp_path / "link").symlink_to(model)
    result = cli("prune", str(model), "-o", str(out), "--overwrite", "--method", "magnitude")
    assert_one_line_error(result, "the model directory", "write the checkpoint elsewhere")
    assert sorted(p.name for p in model.iterdir()) == before


def test_output_name_too_long_for_its_temporaries(stories_path, tmp_path):
    result = cli("prune", str(stories_path), "-o", str(tmp_path / ("x" * 230)), "--method", "magnitude")
    assert_one_line_error(result, "230 bytes long", "at most 180")


# ------------------------------------------------------------------ layer-scores and leaderboard files
def test_layer_scores_refuses_an_empty_save_path_and_a_plot_it_cannot_write(stories_path, tmp_path):
    pytest.importorskip("matplotlib")
    base = ["layer-scores", str(stories_path), "--kind", "alphapruning"]
    assert_one_line_error(cli(*base, "--save", ""), "--save '' is empty")
    assert_one_line_error(cli(*base, "--plot", str(tmp_path / "p.txt")), "must end in one of .png")
    assert_one_line_error(cli(*base, "--plot", str(tmp_path)), "is a folder")
    assert_one_line_error(cli(*base, "--alloc", "owl"), "--alloc 'owl' does not apply to --kind alphapruning")


@pytest.mark.parametrize(
    ("plot", "needle"),
    [("p.txt", "must end in one of .png"), ("", "--plot '' is empty"), (".", "is a folder")],
)
def test_leaderboard_plot_path_is_checked_before_the_work(tmp_path, plot, needle):
    pytest.importorskip("matplotlib")
    target = str(tmp_path / plot) if plot not in ("",) else ""
    assert_one_line_error(cli("leaderboard", str(FIXTURE_RESULTS), "--plot", target), needle)


def test_leaderboard_plot_into_a_missing_folder_creates_it(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "new" / "dir" / "lb.png"
    result = cli("leaderboard", str(FIXTURE_RESULTS), "--plot", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in target.parent.iterdir()] == ["lb.png"]  # no temporary left beside it


def test_score_file_of_two_dimensions_is_named_as_such(tmp_path):
    import numpy as np

    from lm_eval_prune.engine.layer_scores import read_score_file

    np.save(tmp_path / "s.npy", np.ones((5, 2)))
    with pytest.raises(PruneConfigError, match=r"holds a 2-D array of shape \(5, 2\); it must be 1-D"):
        read_score_file(tmp_path / "s.npy", 5)


# ------------------------------------------------------------------ publish
@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from lm_eval_prune.engine.report import PruneReport

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    report = PruneReport(config=PruneConfig().to_dict(), fingerprint="0123456789abcdef", base_model="org/base")
    report.overall_sparsity = 0.5
    report.save(folder)
    return folder


@pytest.mark.parametrize(
    ("field", "value"),
    [("overall_sparsity", math.nan), ("overall_sparsity", "x"), ("block_sparsity", [0.5, math.inf]), ("seconds", None)],
)
def test_publish_refuses_a_report_with_non_numbers(checkpoint, field, value, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = json.loads((checkpoint / "prune_report.json").read_text())
    data[field] = value
    (checkpoint / "prune_report.json").write_text(json.dumps(data))
    result = cli("publish", str(checkpoint), "--repo-id", "user/name", "--dry-run")
    assert_one_line_error(result, "has a malformed field", field)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--revision", "bad..name~"], "--revision 'bad..name~' is not a valid branch name"),
        (["--revision", ""], "--revision '' is not a valid branch name"),
        (["--license", "mit\n---"], "is not a license id"),
        (["--base-model", "../../etc"], "--base-model '../../etc' is not a Hub model id"),
        (["--base-model", "a/b/c"], "is not a Hub model id"),
    ],
)
def test_publish_options_are_checked_in_a_dry_run(checkpoint, args, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("publish", str(checkpoint), "--repo-id", "user/name", "--dry-run", *args)
    assert_one_line_error(result, needle)


def test_publish_long_repo_id_message_stays_short(checkpoint):
    line = assert_one_line_error(cli("publish", str(checkpoint), "--repo-id", "user/" + "x" * 300, "--dry-run"))
    assert len(line) < 300


# ------------------------------------------------------------------ lm-eval doors (checked before the model loads)
@pytest.mark.parametrize(
    ("model_args", "needle"),
    [
        ("method=wanda", "pruned-hf needs pretrained=MODEL"),
        ("", "pruned-hf needs pretrained=MODEL"),
        ("pretrained=x,dtype=int8", "dtype='int8' is not allowed"),
    ],
)
def test_model_args_checked_before_load(model_args, needle):
    from lm_eval_prune.harness.precheck import check_model_args

    with pytest.raises(PruneConfigError, match=needle):
        check_model_args("pruned-hf", model_args)


@pytest.mark.parametrize("key", ["device", "batch_size"])
def test_a_key_given_twice_to_lm_eval_is_one_line(key):
    from lm_eval_prune.harness.precheck import check_twice

    with pytest.raises(PruneConfigError, match=rf"{key} is given twice: --{key} 1 and {key}=2"):
        check_twice({key: "2"}, {key: "1"})
    check_twice({key: "2"}, {key: None})  # given once: fine


@pytest.mark.parametrize("where", ["file", "env-file"])
def test_prune_cache_that_is_a_file_is_one_line(stories_path, tmp_path, monkeypatch, where):
    from lm_eval_prune.harness.precheck import check_model_args

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = f"pretrained={stories_path},method=magnitude"
    if where == "file":
        args += f",prune_cache={blocker}"
    else:
        monkeypatch.setenv("LM_EVAL_PRUNE_CACHE", str(blocker))
    with pytest.raises(PruneConfigError, match=r"exists and is not a directory"):
        check_model_args("pruned-hf", args)


def test_bad_world_size_is_one_line(stories_path, monkeypatch):
    from lm_eval_prune.harness.precheck import check_model_args

    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(PruneConfigError, match=r"WORLD_SIZE='abc' is not a valid int"):
        check_model_args("pruned-hf", f"pretrained={stories_path},method=magnitude,prune_cache=none")


@pytest.mark.parametrize(
    ("gen_kwargs", "needle"),
    [
        ({"max_gen_toks": "abc"}, "gen_kwargs max_gen_toks='abc' must be a number"),
        ({"temperature": "hot"}, "gen_kwargs temperature='hot' must be a number"),
        ({"seed": "x1"}, "gen_kwargs seed='x1' must be a number"),
        (
            {"max_tokens_thinking": "lots", "thinking_start": "<s>", "thinking_end": "</s>", "until_thinking": "</s>"},
            "gen_kwargs max_tokens_thinking='lots' must be a number",
        ),
    ],
)
def test_gen_kwargs_values_checked_before_load(stories_path, gen_kwargs, needle):
    from transformers import AutoTokenizer

    from lm_eval_prune.harness.precheck import check_gen_kwargs

    tokenizer = AutoTokenizer.from_pretrained(str(stories_path))
    with pytest.raises(PruneConfigError, match=needle):
        check_gen_kwargs(tokenizer, {"until": [], "do_sample": False, **gen_kwargs})


def test_unknown_task_through_eval_is_one_line(capsys):
    from lm_eval_prune.harness.lm_eval_cli import run_lm_eval

    with pytest.raises(SystemExit) as exit_info:
        run_lm_eval(["--model", "pruned-hf", "--model_args", "pretrained=x", "--tasks", "tts_nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: Tasks not found") and "tts_aime24" in err[-1]


# ------------------------------------------------------------------ the prune cache
def test_cache_lock_that_is_a_folder_is_one_line(tmp_path):
    from lm_eval_prune.store.cache import PruneCache

    cache = PruneCache(tmp_path)
    (tmp_path / ".key.lock").mkdir()
    with pytest.raises(PruneConfigError, match=r"lock .* is not a file; remove it"):
        cache.get_or_build("key", lambda d: (d / "f").write_text("x"))


def test_cache_root_that_cannot_be_created_is_one_line(tmp_path):
    from lm_eval_prune.store.cache import PruneCache

    (tmp_path / "afile").write_text("x")
    with pytest.raises(PruneConfigError, match=r"cannot be written"):
        PruneCache(tmp_path / "afile" / "below").check_usable()
    PruneCache(tmp_path / "fine" / "new").check_usable()
    assert (tmp_path / "fine" / "new").is_dir() and not os.listdir(tmp_path / "fine" / "new")
