"""STUDY.yaml checks (one line naming the key), plan expansion and counts, shards, presets, the dry run."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from scripted import save_scripted
from study_fixtures import tiny_study, write_data

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.generation.protocol import Sampling, Step, StepOutput
from lm_eval_prune.study.cli import build_spec, study
from lm_eval_prune.study.ladder import StepCache, truncate
from lm_eval_prune.study.plan import describe, expand, parse_shard, shard, thinking_bound
from lm_eval_prune.study.spec import check_environment, parse_spec


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return {"model": save_scripted(root / "model"), "data": write_data(root / "data"), "root": root}


def grid(**changes):
    base = {
        "models": ["m/a", "m/b"],
        "variants": [
            {"method": "none"},
            {"method": ["magnitude", "wanda"], "alloc": ["uniform", "owl", "layerif"], "sparsity": [0.1, 0.2]},
            {"method": "shortgpt", "drop_layers": [1, 2]},
        ],
        "tasks": ["tts_aime24", "tts_amc23", "tts_math500", "tts_gpqa_diamond"],
        "budgets": [512, 1024, 2048, 4096, 8192],
        "seeds": [0, 1, 2],
    }
    return parse_spec(base | changes)


def test_the_papers_grid_expands_to_15_variants_and_900_runs_per_model():
    units = expand(grid())
    assert len(units) == 30 and sum(len(u.runs) for u in units) == 1800
    names = [u.variant.name for u in units[:15]]
    assert names[0] == "dense" and "wanda-layerif-0.2" in names and names[-2:] == ["shortgpt-drop1", "shortgpt-drop2"]
    runs = [r.run_id for u in units for r in u.runs]
    assert len(set(runs)) == len(runs)
    # with the ladder the budgets of each (task, seed) run largest first
    assert [r.budget for r in units[0].runs[:5]] == [8192, 4096, 2048, 1024, 512]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 30, 31])
def test_shards_are_disjoint_and_together_the_plan(n):
    units = expand(grid())
    parts = [shard(units, (k, n)) for k in range(1, n + 1)]
    keys = [u.key for part in parts for u in part]
    assert sorted(keys) == sorted(u.key for u in units) and len(keys) == len(set(keys))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [u.key for u in shard(units, (1, n))] == [u.key for u in parts[0]]  # deterministic


def test_thinking_bound_of_the_ladder_for_budgets_doubling_b_to_16b():
    spec = grid(budgets=[512, 1024, 2048, 4096, 8192])
    units = expand(spec)
    ratio = thinking_bound(spec, units, True) / thinking_bound(spec, units, False)
    assert ratio == pytest.approx(16 / 31) and ratio <= 0.55


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budget": [1]}, "unknown key 'budget' (did you mean 'budgets'?)"),
        ({"backend": ["hf", "vllm"]}, "backend must be a single value, not a list"),
        ({"gen_kwargs": {"temperature": [0.6, 1.0]}}, "gen_kwargs.temperature must be a single value, not a list"),
        (
            {"variants": [{"method": "shortgpt", "drop_layers": 1, "alloc": "owl"}]},
            "variants[0].alloc: method shortgpt",
        ),
        ({"variants": [{"method": "wanda", "sparsty": 0.1}]}, "variants[0]: unknown key 'sparsty'"),
        ({"variants": [{"method": "wanda", "sparsity": 1.5}]}, "variants[0]: sparsity=1.5 is outside [0, 1)"),
        ({"budgets": [512, "x"]}, "budgets holds 'x'; each entry must be a integer"),
        ({"seeds": 1.5}, "seeds holds 1.5"),
        ({"calibration": {"sorce": "c4"}}, "calibration: unknown key 'sorce'"),
        ({"gen_kwargs": {"max_tokens_thinking": 5}}, "gen_kwargs.max_tokens_thinking is set by budgets"),
        ({"ladder": "yes"}, "ladder 'yes' must be true or false"),
        ({"backend": "tgi"}, "backend 'tgi' is not allowed"),
    ],
)
def test_bad_study_files_fail_in_one_line_naming_the_key(change, message):
    with pytest.raises(PruneConfigError) as err:
        grid(**change)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("STUDY.yaml")


def test_missing_key_and_non_mapping():
    with pytest.raises(PruneConfigError, match=r"STUDY\.yaml: budgets is missing"):
        parse_spec({"models": ["m"], "variants": [{"method": "none"}], "tasks": ["tts_aime24"]})
    with pytest.raises(PruneConfigError, match="must be a mapping"):
        parse_spec([1, 2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budgets": [8, 512]}, "budgets: 512 is not below the context of"),
        ({"tasks": ["tts_aime42"]}, "tasks: unknown task 'tts_aime42' (did you mean 'tts_aime24'?)"),
        ({"data_dir": "/nonexistent/data"}, "data_dir '/nonexistent/data' is not a folder"),
        ({"tasks": ["tts_math500"]}, "has no math500.jsonl (task tts_math500 reads it)"),
        (
            {"variants": [{"method": "wanda", "sparsity": 0.1}], "calibration": {"source": "/no/such.txt"}},
            "variant wanda-uniform-0.1: calibration file",
        ),
    ],
)
def test_the_world_is_checked_before_any_work(world, change, message):
    spec = parse_spec(tiny_study(world["model"], world["data"], **change))
    with pytest.raises(PruneConfigError) as err:
        check_environment(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_good_study_reports_the_context(world):
    spec = parse_spec(tiny_study(world["model"], world["data"]))
    assert check_environment(spec) == {str(world["model"]): 512}


def test_preset_narrowed_by_models_and_limit(world):
    spec = build_spec(None, "tts-pruning", f"{world['model']},other/model", 3)
    assert spec.models == [str(world["model"]), "other/model"] and spec.limit == 3
    assert len(spec.variants) == 15 and spec.budgets == [512, 1024, 2048, 4096, 8192] and spec.backend == "vllm"
    text = describe(spec, expand(spec), world["root"] / "out")
    assert "tts_math500: 15 runs = 5 budgets x 3 seeds, 3 problems, 0 done" in text
    assert "30 units (one model load each), 28 prune jobs, 1800 runs, 0 done" in text
    # 2 models x 15 variants x 4 tasks x 3 problems x 3 seeds x 2 rounds x (8192 | 15872)
    assert f"{2 * 15 * 4 * 3 * 3 * 2 * 8192:,} with the ladder, {2 * 15 * 4 * 3 * 3 * 2 * 15872:,} without" in text
    with pytest.raises(PruneConfigError, match="--preset 'tts' is not known"):
        build_spec(None, "tts", None, None)


def test_dry_run_prints_the_plan_and_runs_nothing(world, tmp_path):
    import yaml

    path = tmp_path / "STUDY.yaml"
    path.write_text(yaml.safe_dump(tiny_study(world["model"], world["data"])))
    result = CliRunner().invoke(study, [str(path), "--output", str(tmp_path / "out"), "--dry-run", "--shard", "2/2"])
    assert result.exit_code == 0, result.output
    assert "model/magnitude-uniform-0.1: 12 runs (0 done), prune job" in result.output
    assert "model/dense" not in result.output  # shard 1/2 has it
    assert "1 units" in result.output and not (tmp_path / "out").exists()
    bad = CliRunner().invoke(study, [str(path), "--output", str(tmp_path / "o"), "--shard", "3/2"])
    assert bad.exit_code == 2 and "--shard '3/2' must be K/N with 1 <= K <= N" in bad.output
    assert parse_shard(" 1/4 ") == (1, 4)


# ----------------------------------------------------------------------------------------------- the ladder's rule
def _step(max_tokens: int) -> Step:
    return Step([5, 6], Sampling(max_tokens=max_tokens, stop_token_ids=(9,)))


def test_truncation_rule_by_hand():
    text_of = lambda step, ids: " ".join(map(str, ids))  # noqa: E731
    stopped = StepOutput([1, 2, 9], "1 2", "stop")
    assert truncate(stopped, 3, _step(3), text_of) == stopped  # the stop token is the 3rd: same output
    assert truncate(stopped, 2, _step(2), text_of) == StepOutput([1, 2], "1 2", "length")
    capped = StepOutput([1, 2], "1 2", "length")  # the context cut it before 8: it cuts any budget the same
    assert truncate(capped, 5, _step(5), text_of) == capped


def test_step_cache_serves_smaller_budgets_and_counts():
    calls = []

    def engine(steps):
        calls.append([s.params.max_tokens for s in steps])
        return [StepOutput(list(range(10, 10 + s.params.max_tokens)), "t", "length") for s in steps]

    cache = StepCache(lambda step, ids: "cut", enabled=True)
    run = cache.wrap(engine)
    assert run([_step(8)])[0].token_ids == list(range(10, 18))
    out = run([_step(4), Step([7], Sampling(max_tokens=4))])
    assert out[0] == StepOutput([10, 11, 12, 13], "cut", "length") and calls == [[8], [4]]
    assert cache.counts.thinking_generated == 12 and cache.counts.thinking_served == 4
    # an answer step whose max_gen_toks equals the budget (4) is an answer: counted by kind, not by token limit
    run([Step([8], Sampling(max_tokens=4), final=True)])
    assert cache.counts.thinking_generated == 12 and cache.counts.generated == 16
    off = StepCache(lambda step, ids: "", enabled=False)
    run_off = off.wrap(engine)
    run_off([_step(8)])
    run_off([_step(4)])
    assert off.counts.served == 0 and off.counts.generated == 12
