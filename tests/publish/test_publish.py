"""Publishing through the real huggingface_hub client against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_model, make_tokenizer
from fake_hub import GOOD_TOKEN, FakeHub

from lm_eval_prune import PruneConfig, prune_
from lm_eval_prune.publish.hub import PublishError, publish
from lm_eval_prune.store.checkpoint import save_pruned

FIXTURES = Path(__file__).parents[1] / "fixtures" / "results"


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The tests run offline; the fake Hub is local, so let huggingface_hub talk to it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "no-hf-home-for-tests"))


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


def api(hub, token=GOOD_TOKEN):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=token)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model = make_model(layers=2)
    report = prune_(model, PruneConfig(method="magnitude", sparsity=0.5, device="cpu"))
    report.extra["base_model"] = "acme/tiny-base"
    return save_pruned(model, make_tokenizer(), report, tmp_path / "ckpt")


def results_for(checkpoint: Path, tmp_path: Path) -> list[Path]:
    """Real results files (from lm-eval runs) relabelled to this checkpoint: pruned ones get its fingerprint."""
    report = json.loads((checkpoint / "prune_report.json").read_text())
    out = []
    for name in ("results_magnitude-s0-b2.json", "results_magnitude-s0-b8.json", "results_dense-b2.json"):
        data = json.loads((FIXTURES / name).read_text())
        data["config"]["prune"]["base_model"] = "acme/tiny-base"
        data["config"]["model_args"]["pretrained"] = "acme/tiny-base"
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
    assert {"model.safetensors", "config.json", "prune_report.json", "tokenizer.json", "README.md"} <= set(names)
    assert (
        "base_model: acme/tiny-base" in plan.card
        and "thinking-budget-8" in plan.card
        and "thinking-budget-2" in plan.card
    )


def test_upload_card_and_rerun_without_duplicates(hub, checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    results = results_for(checkpoint, tmp_path)
    publish(checkpoint, "alice/tiny-pruned", results, private=True, api=api(hub))
    repo = hub.repos["alice/tiny-pruned"]
    assert repo.private
    files = repo.branches["main"]
    for name in ("model.safetensors", "config.json", "prune_report.json"):
        assert files[name] == (checkpoint / name).read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert (
        card.data.base_model == "acme/tiny-base"
        and card.data.library_name == "transformers"
        and card.data.pipeline_tag == "text-generation"
    )
    assert set(card.data.tags) == {"pruned", "sparsity", "magnitude", "uniform", "lm-eval-prune"}
    configs = {r.dataset_config for r in card.data.eval_results}
    assert configs == {"thinking-budget-2", "thinking-budget-8"}  # budgets kept apart
    assert "base_model_relation" not in files["README.md"].decode()
    text = card.text
    assert (
        "dense baseline" in text and "does not" not in text.split("## Note")[0] and "as large as the base model" in text
    )
    assert "lm-eval-prune prune acme/tiny-base --method magnitude --alloc uniform --sparsity 0.5" in text
    commits = hub.commit_count()
    publish(checkpoint, "alice/tiny-pruned", results, private=True, api=api(hub))
    assert hub.commit_count() == commits  # nothing changed: nothing committed again


def test_rerun_after_interruption_finishes_without_duplicating(hub, checkpoint, monkeypatch):
    from lm_eval_prune.publish import hub as hub_module

    monkeypatch.setattr(hub_module, "SINGLE_COMMIT_BYTES", 10_000)  # weights get a commit of their own
    hub.fail_commits_after = 1
    with pytest.raises(Exception, match=r"503|simulated interruption|Server Error"):
        publish(checkpoint, "alice/resume", api=api(hub))
    repo = hub.repos["alice/resume"]
    assert len(repo.commits) == 1 and "README.md" not in repo.branches["main"]
    hub.fail_commits_after = None
    publish(checkpoint, "alice/resume", api=api(hub))
    uploaded = [name for commit in repo.commits for name in commit["files"]]
    assert sorted(uploaded) == sorted(set(uploaded))  # every file exactly once
    assert {p.name for p in checkpoint.iterdir()} | {"README.md"} == set(repo.branches["main"])


def test_pull_request_and_branch(hub, checkpoint):
    plan = publish(checkpoint, "alice/pr", create_pr=True, api=api(hub))
    repo = hub.repos["alice/pr"]
    assert repo.branches["main"] == {} and len(repo.prs) == 1 and "README.md" in repo.prs[0]
    assert "discussions/1" in plan.commits[0]
    publish(checkpoint, "alice/br", revision="pruned-v1", api=api(hub))
    assert "README.md" in hub.repos["alice/br"].branches["pruned-v1"] and hub.repos["alice/br"].branches["main"] == {}


@pytest.mark.parametrize(
    "case,message",
    [
        ("no token", "no Hugging Face token"),
        ("bad token", "the Hub refused the token"),
        ("bad repo id", "repo id 'not a repo' is invalid"),
        ("not a checkpoint", "is not a pruned checkpoint: it has no prune_report.json"),
        ("other model", "belongs to another model"),
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
    elif case == "not a checkpoint":
        kwargs["directory"] = tmp_path
    else:
        kwargs["results"] = [FIXTURES / "results_wanda-s0-b2.json"]
    with pytest.raises(PublishError, match=message):
        publish(**kwargs)
    assert hub.repos == {} and not any(method == "POST" for method, _ in hub.requests)


def test_cli_dry_run_never_prints_the_token(hub, checkpoint):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": GOOD_TOKEN, "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_prune.cli", "publish", str(checkpoint), "--repo-id", "alice/cli", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert GOOD_TOKEN not in proc.stdout + proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") :])
    assert summary["dry_run"] and any(f["name"] == "model.safetensors" for f in summary["files"])
    assert hub.repos == {}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval_prune.cli", "publish", str(checkpoint), "--repo-id", "alice/cli"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # no terminal: no prompt
    assert "README.md" in hub.repos["alice/cli"].branches["main"]


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
    assert (
        ModelCard(publish(checkpoint, "alice/lic", dry_run=True, api=api(hub)).card).data.license is None
    )  # unknown: left out
