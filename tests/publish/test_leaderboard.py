"""Leaderboard tables and plots from real lm-eval results fixtures and hand-made files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lm_eval_prune.cli import main
from lm_eval_prune.publish.leaderboard import build_table, leaderboard, render
from lm_eval_prune.publish.results import read_run

FIXTURES = Path(__file__).parents[1] / "fixtures" / "results"
GEN = {"until": [], "max_gen_toks": 64, "do_sample": False, "temperature": 0.0, "thinking_n_ignore": 1}


def results_file(
    folder: Path,
    name: str,
    *,
    method: str | None,
    seed: int,
    budget: int,
    scores: dict[str, float],
    model: str = "pruned-hf",
    **gen,
) -> Path:
    """A hand-made lm-eval results file in the shape lm-eval writes."""
    config = {"model": model, "model_args": {"pretrained": "acme/base"}, "limit": None}
    if method:
        config["prune"] = {
            "config": {"method": method, "alloc": "uniform", "sparsity": 0.2, "pattern": "unstructured", "seed": seed},
            "fingerprint": f"fp-{method}-{seed}",
            "base_model": "acme/base",
        }
    data = {
        "config": config,
        "results": {
            task: {"alias": task, "exact_match,all": value, "exact_match_stderr,all": "N/A"}
            for task, value in scores.items()
        },
        "configs": {task: {"generation_kwargs": {**GEN, **gen, "max_tokens_thinking": budget}} for task in scores},
        "n-shot": dict.fromkeys(scores, 0),
    }
    path = folder / f"results_{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def hand_made(tmp_path) -> Path:
    results_file(
        tmp_path, "dense", method=None, model="hf", seed=0, budget=512, scores={"tts_aime24": 0.55, "tts_math500": 0.80}
    )
    results_file(
        tmp_path, "wanda-s0", method="wanda", seed=0, budget=512, scores={"tts_aime24": 0.5, "tts_math500": 0.81}
    )
    results_file(
        tmp_path, "wanda-s1", method="wanda", seed=1, budget=512, scores={"tts_aime24": 0.7, "tts_math500": 0.83}
    )
    results_file(
        tmp_path, "mag-s0", method="magnitude", seed=0, budget=512, scores={"tts_aime24": 0.1, "tts_math500": 0.6}
    )
    results_file(
        tmp_path, "wanda-1k", method="wanda", seed=0, budget=1024, scores={"tts_aime24": 0.6, "tts_math500": 0.85}
    )
    return tmp_path


def test_mean_std_best_and_change_against_dense(hand_made):
    table = build_table([read_run(p) for p in sorted(hand_made.glob("*.json"))])
    cells = {(v.label, b, t): c for (v, b, t), c in table.cells.items()}
    wanda = cells[("wanda-uniform 0.2", "512", "tts_aime24")]
    assert (wanda.mean, wanda.n) == (pytest.approx(0.6), 2) and wanda.std == pytest.approx(0.1414, abs=1e-4)
    assert wanda.delta == pytest.approx(0.05) and wanda.best
    assert cells[("magnitude-uniform 0.2", "512", "tts_aime24")].delta == pytest.approx(-0.45)
    assert cells[("wanda-uniform 0.2", "1024", "tts_aime24")].delta is None  # no dense row at that budget
    assert cells[("wanda-uniform 0.2", "1024", "tts_math500")].best and not cells[("dense", "512", "tts_math500")].best
    text = render(table, "markdown")
    assert "| acme/base | dense | 512 |" in text.replace("0.550 ± 0.000 (n=1)", "")
    assert "**0.600 ± 0.141 (n=2)** +0.050" in text and "0.100 ± 0.000 (n=1) -0.450" in text


def test_formats(hand_made):
    rows = json.loads(leaderboard([hand_made], "json"))
    assert {r["variant"] for r in rows} == {"dense", "wanda-uniform 0.2", "magnitude-uniform 0.2"}
    csv_text = leaderboard([hand_made], "csv")
    assert (
        csv_text.splitlines()[0].startswith("base_model,variant,method") and len(csv_text.splitlines()) == len(rows) + 1
    )
    html = leaderboard([hand_made], "html")
    assert html.startswith("<table>") and "<b>0.600 ± 0.141 (n=2)</b>" in html


def test_runs_with_other_generation_settings_are_refused(hand_made):
    results_file(hand_made, "other", method="wanda", seed=2, budget=512, scores={"tts_aime24": 0.3}, max_gen_toks=128)
    with pytest.raises(
        ValueError,
        match=r"task tts_aime24: runs differ in generation setting 'max_gen_toks': 64 \(.*results_dense.json\) vs 128",
    ):
        leaderboard([hand_made])
    result = CliRunner().invoke(main, ["leaderboard", str(hand_made)])
    assert result.exit_code == 2 and "differ in generation setting 'max_gen_toks'" in result.output


def test_real_lm_eval_results_and_the_plot(tmp_path):
    text = leaderboard([FIXTURES], "markdown", plot_path=tmp_path / "tts.png")
    assert "| dense | 2 |" in text and "wanda-uniform 0.5 | 8 |" in text and "(n=2)" in text
    from PIL import Image

    with Image.open(tmp_path / "tts.png") as image:
        image.verify()
    with Image.open(tmp_path / "tts.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        leaderboard([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no lm-eval results files"):
        leaderboard([tmp_path])
    (tmp_path / "results_bad.json").write_text("{}")
    with pytest.raises(ValueError, match="is not an lm-eval results file"):
        leaderboard([tmp_path])


def test_shortgpt_rows_are_labelled(hand_made):
    data = json.loads((hand_made / "results_mag-s0.json").read_text())
    shortgpt = copy.deepcopy(data)
    shortgpt["config"]["prune"]["config"].update(method="shortgpt", drop_layers=2, sparsity=0.0)
    (hand_made / "results_sg.json").write_text(json.dumps(shortgpt))
    assert "shortgpt -2 blocks" in leaderboard([hand_made])
