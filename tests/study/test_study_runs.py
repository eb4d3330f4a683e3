"""Tiny grids on the scripted model through pruned-hf: the ladder equals separate runs token for token, one model per
(model, variant), lm-eval's layout, resume skips finished runs, SIGKILL mid-grid then re-run, the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scripted import save_scripted
from study_fixtures import tiny_study, write_data

from lm_eval_prune.publish.results import read_run
from lm_eval_prune.study import engines
from lm_eval_prune.study.cli import run_study
from lm_eval_prune.study.plan import expand
from lm_eval_prune.study.runner import read_manifest
from lm_eval_prune.study.spec import parse_spec

GEN = {"thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait", "max_gen_toks": 6, "do_sample": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"model": save_scripted(root / "model"), "data": write_data(root / "data"), "root": root}


def study_data(world, **changes):
    return tiny_study(
        world["model"],
        world["data"],
        tasks=["tts_aime24"],
        budgets=[4, 8, 16],
        gen_kwargs=GEN,
        prune_cache=str(world["root"] / "cache"),
        **changes,
    )


def content(out: Path) -> dict[str, dict]:
    """What each run computed: scores, generation settings, and every sample's responses and metrics."""
    found = {}
    for results in sorted((out / "runs").rglob("results_*.json")):
        run_id = str(results.parent.parent.relative_to(out / "runs"))
        data = json.loads(results.read_text())
        (task,) = data["results"]
        samples = [json.loads(line) for p in results.parent.glob(f"samples_{task}_*.jsonl") for line in p.open()]
        found[run_id] = {
            "results": data["results"],
            "gen": data["configs"][task]["generation_kwargs"],
            "prune": (data["config"].get("prune") or {}).get("fingerprint"),
            "samples": sorted((s["doc_id"], s["resps"], s["filtered_resps"], s["exact_match"]) for s in samples),
        }
    return found


@pytest.fixture(scope="module")
def ladder_and_separate(world, tmp_path_factory):
    """The same grid with the ladder and without, counting model constructions."""
    made = []
    original = engines.make_lm

    def counting(backend, pretrained, args, ladder):
        made.append((pretrained, args.get("method"), ladder))
        return original(backend, pretrained, args, ladder)

    engines.make_lm = counting
    try:
        outs = {}
        for ladder in (True, False):
            out = tmp_path_factory.mktemp(f"ladder-{ladder}")
            records = run_study(parse_spec(study_data(world, ladder=ladder)), out, echo=lambda text: None)
            outs[ladder] = (out, records)
    finally:
        engines.make_lm = original
    return outs, made


def test_ladder_equals_separate_runs_token_for_token(ladder_and_separate):
    outs, _ = ladder_and_separate
    with_ladder, separate = content(outs[True][0]), content(outs[False][0])
    assert len(with_ladder) == 12 and with_ladder == separate
    # the budgets really differ: the endless problem is cut at each budget and answers after "Final Answer:"
    dense = {k: v for k, v in with_ladder.items() if "/dense/" in k and k.endswith("seed-0")}
    thinking = {k.split("/")[3]: v["results"]["tts_aime24"]["thinking_tokens,all"] for k, v in dense.items()}
    assert thinking["budget-4"] < thinking["budget-8"] < thinking["budget-16"]


def test_the_ladder_generates_fewer_thinking_tokens(ladder_and_separate):
    outs, _ = ladder_and_separate

    def tokens(records, key):
        return sum(r.counts[key] for r in records)

    ladder, separate = outs[True][1], outs[False][1]
    assert tokens(separate, "thinking_served") == 0
    # every thinking token of a smaller budget is served from the largest: generated = largest budget's runs only
    largest = sum(r.counts["thinking_generated"] for r in separate if "budget-16" in r.run_id)
    assert tokens(ladder, "thinking_generated") == largest < tokens(separate, "thinking_generated")
    assert tokens(ladder, "thinking_generated") + tokens(ladder, "thinking_served") >= tokens(
        separate, "thinking_generated"
    )


def test_one_model_per_unit_and_lm_evals_layout(ladder_and_separate, world):
    outs, made = ladder_and_separate
    assert sorted(made) == sorted(
        (str(world["model"]), method, ladder) for method in ("none", "magnitude") for ladder in (True, False)
    )
    out = outs[True][0]
    results = sorted((out / "runs").rglob("results_*.json"))
    assert len(results) == 12 and all(len(list(p.parent.glob("samples_tts_aime24_*.jsonl"))) == 1 for p in results)
    run = read_run(next(p for p in results if "magnitude" in str(p)))
    assert run.variant.label == "magnitude-uniform 0.1" and {s.budget for s in run.scores} <= {"4", "8", "16"}
    manifest = read_manifest(out / "study-manifest.jsonl")
    assert len(manifest) == 12 and all(r["state"] == "done" and Path(r["log"]).is_file() for r in manifest)
    assert (out / "leaderboard.md").read_text().count("| magnitude-uniform 0.1 |") == 3
    assert not list((out / ".partial").iterdir())


def test_rerun_skips_finished_runs(ladder_and_separate, world, monkeypatch):
    outs, _ = ladder_and_separate
    out = outs[True][0]
    before = content(out)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished study loaded a model")

    monkeypatch.setattr(engines, "make_lm", refuse)
    records = run_study(parse_spec(study_data(world)), out, echo=lambda text: None)
    assert len(records) == 12 and all(r.state == "done" for r in records) and content(out) == before


def test_shards_write_the_plan_between_them(ladder_and_separate, world, tmp_path):
    outs, _ = ladder_and_separate
    spec = parse_spec(study_data(world))
    for k in (1, 2):
        run_study(spec, tmp_path, shard_text=f"{k}/2", echo=lambda text: None)
        done = content(tmp_path)
        assert len(done) == 6 * k
    assert content(tmp_path) == content(outs[True][0])
    assert len(read_manifest(tmp_path / "study-manifest.shard-1-of-2.jsonl")) == 6
    assert {u.key for u in expand(spec)} == {
        r["unit"] for r in read_manifest(tmp_path / "study-manifest.shard-2-of-2.jsonl")
    } | {r["unit"] for r in read_manifest(tmp_path / "study-manifest.shard-1-of-2.jsonl")}


STUDY_MAIN = "import sys; from lm_eval_prune.study.cli import study; study(sys.argv[1:])"


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_equals_an_uninterrupted_run(ladder_and_separate, world, tmp_path):
    outs, _ = ladder_and_separate
    path = tmp_path / "STUDY.yaml"
    path.write_text(yaml.safe_dump(study_data(world)))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-c", STUDY_MAIN, str(path), "--output", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "runs").rglob("results_*.json"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(content(out))
    assert 4 <= killed_at < 12
    states = [r["state"] for r in read_manifest(out / "study-manifest.jsonl")]
    assert states.count("done") >= 4 and "pending" in states
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{killed_at} done" in rerun.stdout  # the plan showed what was already finished
    assert content(out) == content(outs[True][0])


@pytest.mark.slow
def test_ray_executor_on_a_local_cluster(ladder_and_separate, world, tmp_path):
    ray = pytest.importorskip("ray")
    outs, _ = ladder_and_separate
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        records = run_study(parse_spec(study_data(world)), tmp_path, executor="ray", echo=lambda text: None)
    finally:
        ray.shutdown()
    assert len(records) == 12 and all(r.state == "done" for r in records)
    assert content(tmp_path) == content(outs[True][0])


def test_comparison_and_plots_at_the_end_of_a_real_study(ladder_and_separate):
    """The comparison agrees with lm-eval's own scores of each run; both plots are written beside the table."""
    from lm_eval_prune.study.compare import compare_study

    out = ladder_and_separate[0][True][0]
    data = json.loads((out / "comparison.json").read_text())
    assert [(r["variant"], r["task"], r["budget"]) for r in data["rows"]] == [
        ("magnitude-uniform-0.1", "tts_aime24", b) for b in (4, 8, 16)
    ]
    assert data["resamples"] == 10_000 and "10,000 resamples" in (out / "comparison.md").read_text()
    scores = content(out)
    for row in data["rows"]:
        assert row["problems"] == 6 and row["seeds"] == [0, 1] and row["low"] <= row["difference"] <= row["high"]
        for variant, key in (("dense", "dense"), (row["variant"], "pruned")):
            runs = [f"model/{variant}/tts_aime24/budget-{row['budget']}/seed-{s}" for s in (0, 1)]
            expected = sum(scores[r]["results"]["tts_aime24"]["exact_match,all"] for r in runs) / 2
            assert row[key] == pytest.approx(expected)
        assert row["difference"] == pytest.approx(row["pruned"] - row["dense"])
    assert [vars(r) for r in compare_study(out)] == [
        {k: v for k, v in r.items() if k != "verdict"} for r in data["rows"]
    ]
    pytest.importorskip("matplotlib")
    for name in ("accuracy_vs_budget.png", "accuracy_vs_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
