"""Publishing through the real huggingface_hub client against a fake Hub on 127.0.0.1.

The checkpoints here are folders as ``lm-eval-prune prune`` writes them (safetensors, config, tokenizer, report),
made without torch: publishing reads files only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_hub import GOOD_TOKEN, FakeHub

from lm_eval_prune.cli import main
from lm_eval_prune.engine.config import PruneConfig
from lm_eval_prune.engine.report import LayerRecord, PruneReport, RemovedBlock
from lm_eval_prune.publish.hub import PublishError, publish

FIXTURES = Path(__file__).parents[1] / "fixtures" / "results"
REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The tests run offline; the fake Hub is local, so let huggingface_hub talk to it (offline tests turn it back)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "no-hf-home-for-tests"))


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


def api(hub, token=GOOD_TOKEN, endpoint=None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or hub.url, token=token)


def make_checkpoint(
    out: Path,
    *,
    base_model: str = "acme/tiny-base",
    calibration: str = "c4",
    method: str = "magnitude",
    calibration_info: dict | None = None,
    settings: dict | None = None,
    **report_kw,
) -> Path:
    """A pruned checkpoint folder with real safetensors, config, tokenizer and report files (no torch needed)."""
    import numpy as np
    from safetensors.numpy import save_file

    out.mkdir(parents=True)
    weights = {f"model.layers.{i}.mlp.up_proj.weight": np.eye(8, dtype=np.float32) for i in range(2)}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(
        json.dumps({"model_type": "llama", "num_hidden_layers": 2, "_name_or_path": base_model}, indent=2)
    )
    (out / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"/usr": 0, "a": 1}}}))
    config = dataclasses.asdict(PruneConfig(**{"method": method, "sparsity": 0.5, **(settings or {})}))
    config["calibration"] = calibration  # a file path, never checked again after the prune
    layers = [LayerRecord(f"model.layers.{i}.mlp.up_proj", 0.5, 0.875, 64) for i in range(2)]
    report = PruneReport(
        config=config,
        fingerprint="fp-" + hashlib.sha256(repr(config).encode()).hexdigest()[:12],
        base_model=base_model,
        layers=layers,
        block_sparsity=[0.5, 0.5],
        block_achieved_sparsity=[0.875, 0.875],
        overall_sparsity=0.875,
        calibration=calibration_info or {},
        **report_kw,
    )
    report.save(out)
    return out


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "ckpt")


def results_for(checkpoint: Path, tmp_path: Path) -> list[Path]:
    """Real results files (from lm-eval runs) relabelled to this checkpoint: pruned ones get its fingerprint."""
    report = json.loads((checkpoint / "prune_report.json").read_text())
    out = []
    for name in ("results_magnitude-s0-b2.json", "results_magnitude-s0-b8.json", "results_dense-b2.json"):
        data = json.loads((FIXTURES / name).read_text())
        data["config"]["prune"]["base_model"] = report["base_model"]
        data["config"]["model_args"]["pretrained"] = report["base_model"]
        if "dense" not in name:
            data["config"]["prune"]["fingerprint"] = report["fingerprint"]
        path = tmp_path / name
        path.write_text(json.dumps(data))
        out.append(path)
    return out


def test_dry_run_writes_nothing(hub, checkpoint, tmp_path):
    plan = publish(checkpoint, "alice/tiny-pruned", results_for(checkpoint, tmp_path), dry_run=True, api=api(hub))
    assert hub.repos == {} and all(method == "GET" for method, _ in hub.requests)
    names = [name for name, _ in plan.files]
    assert names[-1] == "README.md"
    assert {"model.safetensors", "config.json", "prune_report.json", "tokenizer.json"} <= set(names)
    assert "base_model: acme/tiny-base" in plan.card
    assert "thinking-budget-8" in plan.card and "thinking-budget-2" in plan.card


def test_upload_card_and_rerun_without_duplicates(hub, checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    results = results_for(checkpoint, tmp_path)
    publish(checkpoint, "alice/tiny-pruned", results, private=True, api=api(hub))
    repo = hub.repos["alice/tiny-pruned"]
    assert repo.private
    files = repo.branches["main"]
    for name in ("model.safetensors", "config.json", "prune_report.json", "tokenizer.json"):
        assert files[name] == (checkpoint / name).read_bytes()
    assert repo.commits[-1]["files"] == ["README.md"]  # the card comes last
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "acme/tiny-base" and card.data.library_name == "transformers"
    assert set(card.data.tags) == {"pruned", "sparsity", "magnitude", "uniform", "lm-eval-prune"}
    assert {r.dataset_config for r in card.data.eval_results} == {"thinking-budget-2", "thinking-budget-8"}
    assert "dense baseline" in card.text and "as large as the base model" in card.text
    assert "lm-eval-prune prune acme/tiny-base --method magnitude --alloc uniform --sparsity 0.5" in card.text
    commits = hub.commit_count()
    notes: list[str] = []
    plan = publish(checkpoint, "alice/tiny-pruned", results, private=True, api=api(hub), on_note=notes.append)
    assert hub.commit_count() == commits and plan.commits == []  # nothing changed: nothing committed again
    assert notes == [
        "the license of acme/tiny-base is unknown (HTTP 404); pass --license to set one",  # the fake Hub lacks it
        "nothing changed: alice/tiny-pruned already holds these files and this card; no commit made",
    ]


def test_publish_where_the_calibration_file_is_gone(hub, tmp_path):
    """Finding 1: the report is read as data; a calibration path that no longer exists does not matter."""
    calib = tmp_path / "data" / "calib.txt"
    checkpoint = make_checkpoint(tmp_path / "ckpt", method="wanda", calibration=str(calib))
    plan = publish(checkpoint, "alice/wanda", dry_run=True, api=api(hub))
    assert "| calibration | calib.txt, - x - tokens |" in plan.card
    assert "--method wanda --alloc uniform --sparsity 0.5 --calibration calib.txt" in plan.card
    assert str(tmp_path) not in plan.card


def test_calibration_hash_recorded_or_computed(hub, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("some calibration text\n")
    digest = hashlib.sha256(calib.read_bytes()).hexdigest()
    info = {"source": str(calib), "nsamples": 4, "seqlen": 16}
    recorded = make_checkpoint(
        tmp_path / "a", method="wanda", calibration=str(calib), calibration_info={**info, "source_sha256": "ab" * 32}
    )
    assert (
        f"| calibration | calib.txt (sha256 {'ab' * 8}), 4 x 16 tokens |"
        in publish(recorded, "alice/a", dry_run=True, api=api(hub)).card
    )
    present = make_checkpoint(tmp_path / "b", method="wanda", calibration=str(calib), calibration_info=info)
    assert f"calib.txt (sha256 {digest[:16]})" in publish(present, "alice/b", dry_run=True, api=api(hub)).card


def test_no_local_path_in_the_card_or_any_uploaded_file(hub, tmp_path):
    """Finding 4: a local base model becomes its folder name, paths in JSON files become names; local files stay."""
    base = tmp_path / "models" / "my-base"
    base.mkdir(parents=True)
    calib = tmp_path / "calib.txt"
    calib.write_text("calibration\n")
    checkpoint = make_checkpoint(
        tmp_path / "ckpt",
        base_model=str(base),
        method="wanda",
        calibration=str(calib),
        calibration_info={"source": str(calib), "nsamples": 4, "seqlen": 16},
    )
    local_report = (checkpoint / "prune_report.json").read_bytes()
    notes: list[str] = []
    publish(checkpoint, "alice/local", api=api(hub), on_note=notes.append)
    files = hub.repos["alice/local"].branches["main"]
    for name, data in files.items():
        assert str(tmp_path).encode() not in data, name
    assert (checkpoint / "prune_report.json").read_bytes() == local_report  # the local file untouched
    uploaded = json.loads(files["prune_report.json"])
    assert uploaded["base_model"] == "my-base" and uploaded["config"]["calibration"] == "calib.txt"
    assert uploaded["calibration"]["source_sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert json.loads(files["config.json"])["_name_or_path"] == "my-base"
    assert files["tokenizer.json"] == (checkpoint / "tokenizer.json").read_bytes()  # token strings are not paths
    card = files["README.md"].decode()
    assert "This is my-base with" in card and "base_model:" not in card.split("---")[1]
    assert "lm-eval-prune prune my-base " in card
    assert any("local folder 'my-base'; pass --base-model ORG/NAME" in n for n in notes)
    plan = publish(checkpoint, "alice/local2", base_model="acme/base", dry_run=True, api=api(hub))
    assert "base_model: acme/base" in plan.card and str(tmp_path) not in plan.card


def test_rerun_after_interruption_finishes_without_duplicating(hub, checkpoint):
    hub.fail_commits_after = 1  # the weights commit goes through, the card commit fails
    with pytest.raises(PublishError) as error:
        publish(checkpoint, "alice/resume", api=api(hub))
    message = str(error.value)
    assert "\n" not in message and f"{hub.url} answered HTTP 503" in message and "re-run the same command" in message
    repo = hub.repos["alice/resume"]
    assert len(repo.commits) == 1 and "README.md" not in repo.branches["main"]
    hub.fail_commits_after = None
    publish(checkpoint, "alice/resume", api=api(hub))
    uploaded = [name for commit in repo.commits for name in commit["files"]]
    assert sorted(uploaded) == sorted(set(uploaded))  # every file exactly once
    assert {p.name for p in checkpoint.iterdir()} | {"README.md"} == set(repo.branches["main"])


def test_hub_down_or_unreachable_is_one_line(hub, checkpoint):
    hub.fail_all_with = 503
    with pytest.raises(PublishError, match=rf"^checking the token: {hub.url} answered HTTP 503; nothing was uploaded$"):
        publish(checkpoint, "alice/down", api=api(hub))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: connection refused
        with pytest.raises(PublishError, match=rf"^checking the token: cannot reach {closed} \(ConnectError"):
            publish(checkpoint, "alice/down", api=api(hub, endpoint=closed))
        notes: list[str] = []
        plan = publish(checkpoint, "alice/down", dry_run=True, api=api(hub, endpoint=closed), on_note=notes.append)
    assert (
        plan.card.startswith("---") and notes[0] == f"could not check the token: cannot reach {closed} (ConnectError)"
    )


def test_publish_works_with_offline_variables_set(hub, checkpoint, monkeypatch):
    """Finding 3: HF_HUB_OFFLINE=1 is common on clusters; publishing is the point, so its Hub calls go through."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    notes: list[str] = []
    publish(checkpoint, "alice/offline", api=api(hub), on_note=notes.append)
    assert "README.md" in hub.repos["alice/offline"].branches["main"]
    assert notes[0] == f"HF_HUB_OFFLINE is set; publishing contacts {hub.url} anyway"
    assert constants.HF_HUB_OFFLINE is True  # lifted for this command's calls only


def test_dry_run_offline_without_token_renders_the_card(hub, checkpoint, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.base_models["acme/tiny-base"] = {"license": "apache-2.0"}
    notes: list[str] = []
    plan = publish(checkpoint, "alice/dry", dry_run=True, api=api(hub, token=None), on_note=notes.append)
    assert hub.requests == [] and "license:" not in plan.card
    assert notes == [
        "no token: the upload would fail (set HF_TOKEN or run `hf auth login`)",
        "offline: the license of acme/tiny-base was not looked up; pass --license to set one",
    ]


def test_cli_dry_run_offline_and_show_card(hub, checkpoint, monkeypatch):
    """The CLI in process (HF_HUB_OFFLINE as tests/conftest.py sets it at import): a note, not a traceback."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result = CliRunner().invoke(main, ["publish", str(checkpoint), "--repo-id", "alice/cli", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "note: no token: the upload would fail" in result.stderr and "Traceback" not in result.output
    assert "# cli" in result.stdout and hub.requests == []


def test_pull_request_and_branch(hub, checkpoint):
    plan = publish(checkpoint, "alice/pr", create_pr=True, api=api(hub))
    repo = hub.repos["alice/pr"]
    assert repo.branches["main"] == {} and len(repo.prs) == 1 and "README.md" in repo.prs[0]
    assert "model.safetensors" in repo.prs[0] and plan.commits == [f"{hub.url}/alice/pr/discussions/1"]
    publish(checkpoint, "alice/br", revision="pruned-v1", api=api(hub))
    assert "README.md" in hub.repos["alice/br"].branches["pruned-v1"] and hub.repos["alice/br"].branches["main"] == {}
    with pytest.raises(PublishError, match="--create-pr opens a pull request against the default branch"):
        publish(checkpoint, "alice/br", revision="pruned-v1", create_pr=True, api=api(hub))


def test_pull_request_with_nothing_changed_says_so(hub, checkpoint):
    publish(checkpoint, "alice/same", api=api(hub))
    notes: list[str] = []
    plan = publish(checkpoint, "alice/same", create_pr=True, api=api(hub), on_note=notes.append)
    assert plan.commits == [] and hub.repos["alice/same"].prs == []
    assert notes[-1] == "nothing changed: alice/same already holds these files and this card; no commit made"
    result = CliRunner().invoke(
        main, ["publish", str(checkpoint), "--repo-id", "alice/same", "--create-pr"], env={"HF_TOKEN": GOOD_TOKEN}
    )
    assert "0" * 40 not in result.output


@pytest.mark.parametrize(
    "case,message",
    [
        ("no token", "no Hugging Face token"),
        ("bad token", r"the Hub refused the token \(401\)"),
        ("bad repo id", "repo id 'not a repo' is invalid"),
        ("double dash", r"repo id 'alice/x--y' is invalid \(Cannot have -- or \.\. in repo_id"),
        ("not a checkpoint", "is not a pruned checkpoint: it has no prune_report.json"),
        ("other model", "belongs to another model"),
        ("not results", "is not lm-eval results: no 'results' object"),
    ],
)
def test_bad_input_uploads_nothing(hub, checkpoint, tmp_path, case, message):
    kwargs = {"api": api(hub), "repo_id": "alice/x", "directory": checkpoint, "results": []}
    if case == "no token":
        kwargs["api"] = api(hub, token=None)
    elif case == "bad token":
        kwargs["api"] = api(hub, token="hf_wrong")
    elif case == "bad repo id":
        kwargs["repo_id"] = "not a repo"
    elif case == "double dash":
        kwargs["repo_id"] = "alice/x--y"
    elif case == "not a checkpoint":
        kwargs["directory"] = tmp_path
    elif case == "not results":
        kwargs["results"] = [checkpoint / "config.json"]
    else:
        kwargs["results"] = [FIXTURES / "results_wanda-s0-b2.json"]
    with pytest.raises(PublishError, match=message) as error:
        publish(**kwargs)
    assert "\n" not in str(error.value)
    assert hub.repos == {} and not any(method == "POST" for method, _ in hub.requests)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lm_eval_prune.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.slow
def test_cli_never_prints_the_token_and_publishes_with_offline_variables(hub, checkpoint):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": GOOD_TOKEN, "HF_HUB_OFFLINE": "0"}
    proc = _cli(["publish", str(checkpoint), "--repo-id", "alice/cli", "--dry-run"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert GOOD_TOKEN not in proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") :])
    assert summary["dry_run"] and any(f["name"] == "model.safetensors" for f in summary["files"])
    assert hub.repos == {}
    offline = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = _cli(["publish", str(checkpoint), "--repo-id", "alice/cli"], offline)
    assert proc.returncode == 0, proc.stderr[-2000:]  # no terminal: no prompt; offline variables: still published
    assert "README.md" in hub.repos["alice/cli"].branches["main"] and GOOD_TOKEN not in proc.stdout + proc.stderr
    assert f"note: HF_HUB_OFFLINE is set; publishing contacts {hub.url} anyway" in proc.stderr


def test_card_update_commits_only_the_card(hub, checkpoint, tmp_path):
    publish(checkpoint, "alice/card", api=api(hub))
    before = hub.commit_count()
    assert "thinking-budget" not in hub.repos["alice/card"].branches["main"]["README.md"].decode()
    publish(checkpoint, "alice/card", results_for(checkpoint, tmp_path), api=api(hub))
    repo = hub.repos["alice/card"]
    assert hub.commit_count() == before + 1 and repo.commits[-1]["files"] == ["README.md"]
    assert "thinking-budget-8" in repo.branches["main"]["README.md"].decode()


def test_license_is_carried_from_the_base_model(hub, checkpoint):
    from huggingface_hub import ModelCard

    hub.base_models["acme/tiny-base"] = {"license": "apache-2.0"}
    plan = publish(checkpoint, "alice/lic", dry_run=True, api=api(hub))
    assert ModelCard(plan.card).data.license == "apache-2.0"
    hub.base_models.clear()
    assert ModelCard(publish(checkpoint, "alice/lic", dry_run=True, api=api(hub)).card).data.license is None


def test_shortgpt_card_lists_the_removed_blocks(hub, tmp_path):
    removed = [RemovedBlock(1, 0.0123), RemovedBlock(3, None)]
    checkpoint = make_checkpoint(
        tmp_path / "sg",
        method="shortgpt",
        settings={"drop_layers": 2, "sparsity": 0.0},
        removed_blocks=removed,
        removed_param_share=0.25,
    )
    card = publish(checkpoint, "alice/sg", dry_run=True, api=api(hub)).card
    assert "2 decoder blocks removed (ShortGPT, bi)" in card and "| removed blocks | 1 (BI 0.0123), 3 |" in card


@pytest.mark.slow
def test_publish_and_leaderboard_never_import_torch(hub, checkpoint, tmp_path):
    """Finding 6: a dry-run publish and a leaderboard, in a fresh interpreter, leave torch unimported."""
    code = (
        "import sys, json\n"
        "import lm_eval_prune.publish.hub, lm_eval_prune.publish.leaderboard\n"
        "import lm_eval_prune.publish.results, lm_eval_prune.publish.plots\n"
        "from huggingface_hub import HfApi\n"
        f"lm_eval_prune.publish.hub.publish({str(checkpoint)!r}, 'alice/t', dry_run=True,"
        f" api=HfApi(endpoint={hub.url!r}, token={GOOD_TOKEN!r}))\n"
        f"lm_eval_prune.publish.leaderboard.leaderboard([{str(FIXTURES)!r}])\n"
        "from lm_eval_prune.cli import main\n"
        f"main(['publish', {str(checkpoint)!r}, '--repo-id', 'alice/t', '--dry-run'], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
