"""Leaderboard tables and plots from real lm-eval results fixtures and hand-made files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lm_eval_prune.cli import main
from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.errors import PruneConfigError
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
    with pytest.raises(PruneConfigError, match=r"no lm-eval results files under .*test_bad_paths_and_files0 "):
        leaderboard([tmp_path])  # an empty folder
    (tmp_path / "results_bad.json").write_text("{}")
    skipped: list[str] = []
    with pytest.raises(PruneConfigError, match="1 skipped, see the lines above"):
        leaderboard([tmp_path], on_skip=skipped.append)
    assert skipped == [f"skipped {tmp_path / 'results_bad.json'}: no 'results' object: not lm-eval results"]


def test_shortgpt_rows_are_labelled(hand_made):
    data = json.loads((hand_made / "results_mag-s0.json").read_text())
    shortgpt = copy.deepcopy(data)
    shortgpt["config"]["prune"]["config"].update(method="shortgpt", drop_layers=2, sparsity=0.0)
    (hand_made / "results_sg.json").write_text(json.dumps(shortgpt))
    assert "shortgpt -2 blocks" in leaderboard([hand_made])


def _write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_bad_files_are_skipped_one_line_each_and_nan_is_left_out(hand_made):
    good = json.loads((hand_made / "results_wanda-s0.json").read_text())
    as_list = _write(hand_made / "results_list.json", {**good, "results": [good["results"]]})
    config_str = _write(hand_made / "results_cfgstr.json", {**good, "config": "pretrained=acme/base"})
    not_json = _write(hand_made / "notes.json", "this is not JSON {")
    bare = _write(hand_made / "results_bare.json", {"results": {"tts_aime24": {"exact_match,all": 1.0}}, "config": {}})
    nan_run = copy.deepcopy(good)
    nan_run["config"]["prune"]["config"]["seed"] = 7
    nan_run["results"]["tts_aime24"]["exact_match,all"] = float("nan")
    nan_file = _write(hand_made / "results_nan.json", nan_run)  # json.dumps writes NaN, as lm-eval's json does
    skipped: list[str] = []
    rows = json.loads(leaderboard([hand_made], "json", on_skip=skipped.append))
    assert sorted(skipped) == sorted(
        [
            f"skipped {as_list}: 'results' is a list, not an object as lm-eval writes it",
            f"skipped {config_str}: 'config' is a string, not an object as lm-eval writes it",
            f"skipped {not_json}: not JSON",
            f"skipped {bare}: no 'configs' or 'model_name': not written by lm-eval",
            f"{nan_file}: task tts_aime24: exact_match is nan; left out",
        ]
    )
    cell = {(r["variant"], r["thinking_budget"], r["task"]): r for r in rows}
    aime = cell[("wanda-uniform 0.2", "512", "tts_aime24")]
    assert (aime["mean"], aime["n"]) == (pytest.approx(0.6), 2)  # the NaN run is not averaged in
    math = cell[("wanda-uniform 0.2", "512", "tts_math500")]
    assert math["n"] == 3 and math["mean"] == pytest.approx((0.81 + 0.83 + 0.81) / 3)  # its finite score is
    assert not any(r["base_model"] == "?" for r in rows)  # the bare exact_match file is no dense baseline


def test_cli_reports_skips_on_stderr(hand_made):
    _write(hand_made / "junk.json", "[1, 2]")
    result = CliRunner().invoke(main, ["leaderboard", str(hand_made)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"skipped {hand_made / 'junk.json'}: a JSON a list, not lm-eval results (an object)\n"
    assert "| acme/base | dense | 512 |" in result.stdout
    result = CliRunner().invoke(main, ["leaderboard", str(hand_made / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr and "Traceback" not in result.output


def _save_with_lm_eval(data: dict, output_path: Path) -> None:
    """Write results the way lm-eval 0.4.13 does (its EvaluationTracker), so the file names are lm-eval's own."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(output_path))
    tracker.general_config_tracker.model_name_sanitized = "acme__base"
    tracker.save_results_aggregated(results=copy.deepcopy(data), samples=None)


def test_finds_results_written_by_lm_eval_output_path(tmp_path):
    fixture = json.loads((FIXTURES / "results_dense-b2.json").read_text())
    _save_with_lm_eval(fixture, tmp_path / "runs" / "dense.json")  # --output_path X.json
    pruned = json.loads((FIXTURES / "results_magnitude-s0-b2.json").read_text())
    _save_with_lm_eval(pruned, tmp_path / "runs")  # --output_path DIR
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert len(written) == 2 and written[0].startswith("runs/acme__base/results_") and "runs/dense_" in written[1]
    skipped: list[str] = []
    rows = json.loads(leaderboard([tmp_path / "runs"], "json", on_skip=skipped.append))
    assert skipped == [] and {r["variant"] for r in rows} == {"dense", "magnitude-uniform 0.5"}


def _pruned_folder(folder: Path, base: str = "acme/base") -> Path:
    folder.mkdir(parents=True)
    config = {"method": "wanda", "alloc": "owl", "sparsity": 0.2, "pattern": "unstructured", "seed": 3}
    PruneReport(config=config, fingerprint="fp-local", base_model=base).save(folder)
    return folder


def test_stock_hf_run_of_a_pruned_checkpoint_is_that_variant(hand_made):
    checkpoint = _pruned_folder(hand_made.parent / "ckpt")
    data = json.loads((hand_made / "results_dense.json").read_text())
    data["config"]["model_args"] = f"pretrained={checkpoint},dtype=float32"  # lm_eval --model hf keeps the string
    data["results"]["tts_aime24"]["exact_match,all"] = 0.25
    _write(hand_made / "results_stock.json", data)
    run = read_run(hand_made / "results_stock.json")
    assert run.variant.label == "wanda-owl 0.2" and run.variant.base_model == "acme/base"
    assert run.prune == {"config": run.prune["config"], "fingerprint": "fp-local", "base_model": "acme/base"}
    cells = {
        (v.label, b, t): c
        for (v, b, t), c in build_table([read_run(p) for p in hand_made.glob("*.json")]).cells.items()
    }
    assert cells[("wanda-owl 0.2", "512", "tts_aime24")].delta == pytest.approx(0.25 - 0.55)
    assert cells[("dense", "512", "tts_aime24")].n == 1  # not averaged into the dense row
    data["config"]["model_args"] = f"pretrained={hand_made.parent / 'gone'},dtype=float32"
    _write(hand_made / "results_stock.json", data)
    assert read_run(hand_made / "results_stock.json").variant.dense  # no report there: a dense run of that path


def test_plot_needs_matplotlib_before_any_work(hand_made, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(PruneConfigError, match=r"^--plot needs matplotlib: pip install 'lm-eval-prune\[plot\]'$"):
        leaderboard([hand_made / "missing"], plot_path=hand_made / "x.png")  # checked before the paths are read
    result = CliRunner().invoke(main, ["leaderboard", str(hand_made), "--plot", str(hand_made / "x.png")])
    assert result.exit_code == 2 and "--plot needs matplotlib" in result.stderr and not (hand_made / "x.png").exists()


def _inside(fig) -> bool:
    """Every axes (titles, labels, ticks) and the legend lie within the figure once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    parts = [ax.get_tightbbox(renderer) for ax in fig.axes] + [leg.get_window_extent(renderer) for leg in fig.legends]
    return all(p.x0 >= box.x0 - 1 and p.y0 >= box.y0 - 1 and p.x1 <= box.x1 + 1 and p.y1 <= box.y1 + 1 for p in parts)


def test_plot_has_a_legend_for_every_line_no_clipping_and_an_accuracy_axis(hand_made):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from lm_eval_prune.publish.plots import leaderboard_figure

    # a variant scored on the second task only, and a dense run without a thinking budget
    results_file(hand_made, "mag-only-math", method="magnitude", seed=5, budget=512, scores={"tts_math500": 0.4})
    results_file(hand_made, "mag-1k", method="magnitude", seed=0, budget=1024, scores={"tts_math500": 0.5})
    table = build_table([read_run(p) for p in sorted(hand_made.glob("*.json"))])
    fig = leaderboard_figure(table)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(labels) == ["dense", "magnitude-uniform 0.2", "wanda-uniform 0.2"]
    lines_per_panel = [len(ax.containers) + len(ax.lines) for ax in fig.axes]
    assert lines_per_panel[0] >= 3 and lines_per_panel[1] >= 3
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) and _inside(fig)
    assert all(ax.get_ylim() == (0.0, 1.0) and ax.get_ylabel() == "exact_match" for ax in fig.axes)


def test_any_numeric_metric_lower_is_better(tmp_path):
    from lm_eval_prune.publish.plots import leaderboard_figure

    rows = json.loads(leaderboard([FIXTURES], "json", metric="thinking_tokens", plot_path=tmp_path / "tokens.png"))
    assert rows and all(r["metric"] == "thinking_tokens" for r in rows) and (tmp_path / "tokens.png").stat().st_size
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for group in by_task.values():  # lm-eval marks thinking_tokens higher_is_better: false
        assert {r["mean"] for r in group if r["best"]} == {min(r["mean"] for r in group)}
    table = build_table([read_run(p) for p in sorted(FIXTURES.glob("*.json"))], "thinking_tokens")
    fig = leaderboard_figure(table)
    assert all(ax.get_ylabel() == "thinking_tokens" and ax.get_ylim()[1] > 1.0 for ax in fig.axes)
    with pytest.raises(PruneConfigError, match="no 'tokens' scores in the results given; metrics there: exact_match"):
        leaderboard([FIXTURES], metric="tokens")
