"""The paired comparison against dense on hand-computable cases, and the accuracy plots' legend, axes and layout."""

from __future__ import annotations

import json

import pytest

from lm_eval_prune.study.compare import compare_runs, paired_bootstrap, write_comparison
from lm_eval_prune.study.outputs import RunSamples, load_study


def run(variant, correct, seed=0, task="t", budget=8, model="m", thinking=None):
    """A run whose problem ``i`` scored ``correct[i]`` (a list) or the given {doc_id: score}."""
    scores = dict(enumerate(correct)) if isinstance(correct, list) else dict(correct)
    tokens = thinking if thinking is not None else {d: float(budget) for d in scores}
    return RunSamples(model, variant, task, budget, seed, {d: float(v) for d, v in scores.items()}, tokens)


def test_identical_variants_give_a_zero_interval():
    dense = [run("dense", [1, 0, 1, 1, 0], seed) for seed in (0, 1)]
    pruned = [run("wanda", [1, 0, 1, 1, 0], seed) for seed in (0, 1)]
    (row,) = compare_runs(dense + pruned)
    assert (row.difference, row.low, row.high) == (0.0, 0.0, 0.0)
    assert row.problems == 5 and row.seeds == [0, 1] and row.verdict == "no clear difference"
    assert (row.dense, row.pruned, row.better, row.worse) == (0.6, 0.6, 0, 0)


def test_a_variant_right_exactly_where_dense_is_wrong():
    dense = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    pruned = [1 - v for v in dense]
    (row,) = compare_runs([run("dense", dense), run("magnitude", pruned)])
    # differences: -1 on 3 problems, +1 on 7: mean (7 - 3) / 10
    assert row.difference == pytest.approx(0.4) and (row.dense, row.pruned) == (0.3, 0.7)
    assert (row.better, row.worse) == (7, 3)
    # a resample's mean is (2K - 10) / 10 with K ~ Binomial(10, 0.7) problems drawn from the +1 ones:
    # P(K <= 3) = 0.011 < 2.5 % < P(K <= 4) = 0.047 -> low -0.2; P(K = 10) = 0.028 > 2.5 % -> high 1.0
    assert (row.low, row.high) == pytest.approx((-0.2, 1.0))


def test_seeds_are_averaged_per_problem():
    """Dense never right; the variant right on seed 0 only: every problem differs by 0.5, so the interval is 0.5."""
    dense = [run("dense", [0, 0, 0, 0], seed) for seed in (0, 1)]
    pruned = [run("wanda", [1, 1, 1, 1], 0), run("wanda", [0, 0, 0, 0], 1)]
    (row,) = compare_runs(dense + pruned)
    assert (row.difference, row.low, row.high) == (0.5, 0.5, 0.5) and row.verdict == "better"
    (worse,) = compare_runs([run("dense", [1, 1], s) for s in (0, 1)] + [run("w", [0, 0], s) for s in (0, 1)])
    assert (worse.difference, worse.high, worse.verdict) == (-1.0, -1.0, "worse")


def test_pairs_on_doc_id_and_on_the_seeds_both_ran():
    dense = [run("dense", {0: 1, 1: 0, 2: 1, 3: 0}, 0), run("dense", {0: 1, 1: 0, 2: 1, 3: 0}, 1)]
    # seed 2 has no dense partner; doc 3 is missing from seed 1 of the variant; doc 9 has no dense partner
    pruned = [run("w", {0: 0, 1: 0, 2: 1, 3: 1, 9: 1}, 1), run("w", {0: 1, 1: 1, 2: 1, 3: 1}, 2)]
    (row,) = compare_runs(dense + pruned)
    assert row.seeds == [1] and row.problems == 4
    assert row.difference == pytest.approx((-1 + 0 + 0 + 1) / 4)
    pruned_short = [run("w", {0: 0, 1: 0, 2: 1}, 0), run("w", {0: 0, 1: 0, 2: 1, 3: 1}, 1)]
    (short,) = compare_runs(dense + pruned_short)
    assert short.problems == 3 and short.seeds == [0, 1]  # doc 3 missing on seed 0 drops it for every seed
    assert short.difference == pytest.approx(-1 / 3)


def test_groups_by_model_task_budget_and_needs_dense():
    runs = [
        run("dense", [1, 0], budget=4),
        run("w", [1, 1], budget=4),
        run("w", [1, 1], budget=8),  # no dense at 8
        run("w", [0, 0], model="other", budget=4),  # no dense for this model
        run("dense", [0, 0], task="u", budget=4),
        run("w", [1, 0], task="u", budget=4),
    ]
    rows = compare_runs(runs)
    assert [(r.model, r.task, r.budget, r.difference) for r in rows] == [("m", "t", 4, 0.5), ("m", "u", 4, 0.5)]


def test_bootstrap_percentiles_by_hand_and_seeded():
    # two problems differing by 0 and 1: resampled means are 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    assert paired_bootstrap([0.0, 1.0]) == (0.5, 0.0, 1.0)
    values = [0.1 * i for i in range(20)]
    assert paired_bootstrap(values, seed=3) == paired_bootstrap(values, seed=3)
    mean, low, high = paired_bootstrap(values)
    assert low < mean < high and mean == pytest.approx(0.95)
    with pytest.raises(ValueError):
        paired_bootstrap([])


def test_comparison_files_from_a_samples_layout(tmp_path):
    """The reader finds lm-eval's samples files in the study layout and the report says how it was computed."""
    for variant, scores in (("dense", [1, 0, 0]), ("wanda-uniform-0.2", [1, 1, 0])):
        folder = tmp_path / "runs" / "m" / variant / "tts_aime24" / "budget-16" / "seed-0" / "m"
        folder.mkdir(parents=True)
        rows = [{"doc_id": i, "exact_match": float(v), "thinking_tokens": 5.0 + i} for i, v in enumerate(scores)]
        name = "samples_tts_aime24_2025-01-01T00-00-00.jsonl"
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (loaded,) = [r for r in load_study(tmp_path) if r.variant == "dense"]
    assert loaded.budget == 16 and loaded.seed == 0 and loaded.mean_thinking == 6.0
    (row,) = write_comparison(tmp_path, resamples=500)
    assert row.variant == "wanda-uniform-0.2" and row.difference == pytest.approx(1 / 3)
    text = (tmp_path / "comparison.md").read_text()
    assert "500 resamples (seed 0), 95 % percentile interval" in text
    assert "| wanda-uniform-0.2 | tts_aime24 | 16 |" in text
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["resamples"] == 500 and data["rows"][0]["difference"] == pytest.approx(1 / 3)


def test_plots_label_every_line_and_keep_accuracy_in_0_1():
    pytest.importorskip("matplotlib")
    from lm_eval_prune.study.plots import accuracy_figure

    runs = [
        run(variant, scores, seed, task, budget, thinking={0: budget / 2, 1: budget / 4})
        for variant, scores in (("dense", [1, 0]), ("wanda", [0, 0]), ("shortgpt-drop1", [1, 1]))
        for task in ("a", "b")
        for budget in (4, 8, 16)
        for seed in (0, 1)
    ]
    for x in ("budget", "tokens"):
        fig = accuracy_figure(runs, x)
        assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
        (legend,) = fig.legends
        assert [t.get_text() for t in legend.get_texts()] == ["dense", "shortgpt-drop1", "wanda"]
        for ax in fig.axes:
            assert ax.get_ylim() == (0.0, 1.0)
            labels = [c.get_label() for c in ax.containers]
            assert labels == ["dense", "shortgpt-drop1", "wanda"]
            xs = sorted(ax.containers[0].lines[0].get_xdata())
            # tokens: the mean of the samples' thinking tokens (budget / 2 and budget / 4 -> 3/8 of the budget)
            assert xs == ([4, 8, 16] if x == "budget" else [1.5, 3.0, 6.0])
