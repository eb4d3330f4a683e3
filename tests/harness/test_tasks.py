"""The tts_* tasks: offline loading from a folder, graders on the real data, thinking/answer split, GPQA, end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, REPO

from lm_eval_prune.generation.protocol import ThinkingResponse
from lm_eval_prune.harness.grading import extract_letter, math_equal
from lm_eval_prune.harness.task_data import TaskDataError, load_rows

GPQA_COLUMNS = json.loads((DATA / "gpqa" / "gpqa_diamond_schema.json").read_text())["columns"]


def load_utils():
    spec = importlib.util.spec_from_file_location("tts_utils", REPO / "tasks" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = load_utils()


def synthetic_gpqa(path: Path, rows: int = 6) -> None:
    """Made-up questions in GPQA-Diamond's real 78-column schema (the real questions must not be published)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=GPQA_COLUMNS)
        writer.writeheader()
        for i in range(rows):
            row = dict.fromkeys(GPQA_COLUMNS, "")
            row.update(
                {
                    "Record ID": f"rec{i}",
                    "Question": f"Synthetic question {i}: which value is right?",
                    "Correct Answer": f" right {i}\n",
                    "Incorrect Answer 1": f"wrong a{i}",
                    "Incorrect Answer 2": f"wrong b{i}",
                    "Incorrect Answer 3": f"wrong c{i}",
                    "High-level domain": "Physics",
                }
            )
            writer.writerow(row)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for ours, shared in (("aime24", "aime24_test"), ("amc23", "amc23_test"), ("math500", "math500_test")):
        shutil.copy(DATA / f"{shared}.jsonl", folder / f"{ours}.jsonl")
    synthetic_gpqa(folder / "gpqa_diamond.csv")
    return folder


def response(thinking: str, answer: str) -> str:
    return ThinkingResponse(
        f"<think>{thinking}</think>{answer}",
        thinking=thinking,
        answer=answer,
        thinking_tokens=10,
        forced_waits=1,
        budget=100,
        budget_exhausted=False,
    )


def test_every_task_loads_offline_from_the_folder(data_dir):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / "tasks"), metadata={"data_dir": str(data_dir)})
    tasks = manager.load(["tts_aime24", "tts_amc23", "tts_math500", "tts_gpqa_diamond"])["tasks"]
    sizes = {name: len(task.test_docs()) for name, task in tasks.items()}
    assert sizes == {"tts_aime24": 30, "tts_amc23": 40, "tts_math500": 500, "tts_gpqa_diamond": 6}
    assert "\\boxed{}" in tasks["tts_math500"].doc_to_text(tasks["tts_math500"].test_docs()[0])
    gpqa_doc = tasks["tts_gpqa_diamond"].test_docs()[0]
    assert "A) " in tasks["tts_gpqa_diamond"].doc_to_text(gpqa_doc) and gpqa_doc["answer"] in "ABCD"


def test_environment_variable_points_at_the_folder(data_dir, monkeypatch):
    monkeypatch.setenv("LM_EVAL_PRUNE_DATA_DIR", str(data_dir))
    assert len(load_rows("amc23", {})) == 40


def test_math500_gold_solutions_grade_correct_and_shifted_ones_do_not(data_dir):
    rows = load_rows("math500", {"data_dir": str(data_dir)})
    solutions = [json.loads(line)["solution"] for line in (data_dir / "math500.jsonl").read_text().splitlines()]
    right = (
        sum(
            utils.process_math500(row, [response("", sol)])["exact_match"]
            for row, sol in zip(rows, solutions, strict=True)
        )
        / 500
    )
    shifted = (
        sum(
            utils.process_math500(row, [response("", solutions[(i + 1) % 500])])["exact_match"]
            for i, row in enumerate(rows)
        )
        / 500
    )
    assert right >= 0.99, right  # measured: 1.000
    assert shifted <= 0.02, shifted  # measured: 0.006


def test_aime_and_amc_gold_answers_grade_correct(data_dir):
    aime = load_rows("aime24", {"data_dir": str(data_dir)})
    amc = load_rows("amc23", {"data_dir": str(data_dir)})
    assert aime[0]["answer"].isdigit() and any(r["answer"].startswith("0") for r in aime)  # zero-padded "025"
    assert all(
        utils.process_aime24(r, [response("", f"So the answer is \\boxed{{{int(r['answer'])}}}.")])["exact_match"] == 1
        for r in aime
    )
    assert all(utils.process_aime24(r, [f"Answer: {r['answer']}"])["exact_match"] == 1 for r in aime)
    assert all(utils.process_amc23(r, [response("", f"\\boxed{{{r['answer']}}}")])["exact_match"] == 1 for r in amc)
    assert all(utils.process_amc23(r, [response("", f"\\boxed{{{r['answer']}.0}}")])["exact_match"] == 1 for r in amc)
    shifted_aime = [
        utils.process_aime24(r, [f"\\boxed{{{aime[(i + 1) % 30]['answer']}}}"])["exact_match"]
        for i, r in enumerate(aime)
    ]
    assert sum(shifted_aime) == 0
    # AMC23 has repeated answers (9, 9 and 7, 7, 7 in a row): the next problem's answer is right 3 times in 40, as it
    # should be
    shifted_amc = [
        utils.process_amc23(r, [f"\\boxed{{{amc[(i + 1) % 40]['answer']}}}"])["exact_match"] for i, r in enumerate(amc)
    ]
    assert sum(shifted_amc) == sum(amc[i]["answer"] == amc[(i + 1) % 40]["answer"] for i in range(40)) == 3
    other = [next(x["answer"] for x in amc[i + 1 :] + amc if x["answer"] != r["answer"]) for i, r in enumerate(amc)]
    assert (
        sum(utils.process_amc23(r, [f"\\boxed{{{o}}}"])["exact_match"] for r, o in zip(amc, other, strict=True)) / 40
        <= 0.02
    )


def test_aime_aops_solutions_as_outputs(data_dir):
    """The AoPS-wiki solution texts: all but one end in a boxed answer (\\textbf{(113) } style is handled)."""
    solutions = [json.loads(line) for line in (data_dir / "aime24.jsonl").read_text().splitlines()]
    rows = load_rows("aime24", {"data_dir": str(data_dir)})
    graded = [utils.process_aime24(r, [s["solution"]])["exact_match"] for r, s in zip(rows, solutions, strict=True)]
    assert sum(graded) == 29  # the one left ends "... $180 + 24 = 204$. -sepehr2010" with no marked answer


def test_only_the_answer_after_the_thinking_is_graded(data_dir):
    row = {"answer": "27"}
    assert utils.process_amc23(row, [response("maybe \\boxed{26}", "\\boxed{27}")])["exact_match"] == 1
    assert utils.process_amc23(row, [response("maybe \\boxed{27}", "\\boxed{26}")])["exact_match"] == 0
    assert utils.process_amc23(row, ["<think>so \\boxed{26}</think>\\boxed{27}"])["exact_match"] == 1
    assert utils.process_amc23(row, ["<think>so \\boxed{27}</think>\\boxed{26}"])["exact_match"] == 0
    assert (
        utils.process_amc23(row, ["<|im_start|>think\n\\boxed{26}<|im_start|>answer\nAnswer: 27"])["exact_match"] == 1
    )


def test_gpqa_letters_and_shuffle(data_dir):
    rows = load_rows("gpqa_diamond", {"data_dir": str(data_dir)})
    again = load_rows("gpqa_diamond", {"data_dir": str(data_dir)})
    other_seed = load_rows("gpqa_diamond", {"data_dir": str(data_dir), "gpqa_shuffle_seed": 1})
    assert rows == again and rows != other_seed
    for i, row in enumerate(rows):
        assert sorted(row["choices"]) == sorted(
            [f"right {i}", f"wrong a{i}", f"wrong b{i}", f"wrong c{i}"]
        )  # whitespace cleaned
        assert row["choices"]["ABCD".index(row["answer"])] == f"right {i}"
    assert len({row["answer"] for row in rows}) > 1  # not always the same position
    assert (
        extract_letter("so \\boxed{C}") == "C"
        and extract_letter("Answer: B") == "B"
        and extract_letter("I pick (D).") == "D"
    )
    assert extract_letter("\\boxed{\\text{A}}") == "A" and extract_letter("no letter here") is None
    row = rows[0]
    assert utils.process_gpqa(row, [response("(A) or (B)?", f"Answer: {row['answer']}")])["exact_match"] == 1


def test_pass_and_majority_at_k():
    row = {"answer": "5"}
    metrics = utils.process_math500(
        row, [[response("", "\\boxed{4}"), response("", "\\boxed{5}"), response("", "\\boxed{4}")]]
    )
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["pass_at_k"] == 1 and metrics["maj_at_k"] == 0
    metrics = utils.process_math500(
        row, [[response("", "\\boxed{5}"), response("", "\\boxed{5.0}"), response("", "\\boxed{4}")]]
    )
    assert metrics["maj_at_k"] == 1  # 5 and 5.0 count apart (1 vote each, like 4): first tied winner decides
    reordered = utils.process_math500(
        row, [[response("", "\\boxed{4}"), response("", "\\boxed{5}"), response("", "\\boxed{5.0}")]]
    )
    assert reordered["maj_at_k"] == 0 and reordered["pass_at_k"] == 1
    assert metrics["thinking_tokens"] == 10 and metrics["forced_waits"] == 1
    assert math_equal("\\frac{1}{2}", "0.5") and math_equal("023", "23") and not math_equal(None, "1")


def test_missing_or_malformed_files_are_named(tmp_path):
    with pytest.raises(TaskDataError, match=r"data file '.*aime24.jsonl' is missing"):
        load_rows("aime24", {"data_dir": str(tmp_path)})
    (tmp_path / "amc23.jsonl").write_text('{"Question": "x", "Answer": 1.0}\n{"question": "y"}\n')
    with pytest.raises(TaskDataError, match=r"record 2 has no 'answer' field \(looked for answer, any case\)"):
        load_rows("amc23", {"data_dir": str(tmp_path)})
    (tmp_path / "math500.jsonl").write_text("not json\n")
    with pytest.raises(TaskDataError, match="line 1 is not valid JSON"):
        load_rows("math500", {"data_dir": str(tmp_path)})


@pytest.mark.slow
def test_group_runs_end_to_end_through_lm_eval(data_dir, tmp_path):
    from scripted import save_scripted

    model = save_scripted(tmp_path / "scripted")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "lm-eval-prune"),
            "eval",
            "--model",
            "pruned-hf",
            "--model_args",
            f"pretrained={model},method=none",
            "--device",
            "cpu",
            "--tasks",
            "tts_reasoning",
            "--limit",
            "2",
            "--metadata",
            json.dumps({"data_dir": str(data_dir)}),
            "--gen_kwargs",
            "max_gen_toks=12,max_tokens_thinking=6,thinking_n_ignore=1",
            "--output_path",
            str(out),
            "--log_samples",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())
    assert {"tts_aime24", "tts_amc23", "tts_math500", "tts_gpqa_diamond", "tts_reasoning"} <= set(results["results"])
    for task in ("tts_aime24", "tts_gpqa_diamond"):
        assert (
            results["results"][task]["thinking_tokens,all"] == 6
        )  # unknown words -> filler: the budget always runs out
    assert results["results"]["tts_aime24"]["budget_exhausted,all"] == 1
    sample = json.loads(sorted(out.rglob("samples_tts_math500_*.jsonl"))[-1].read_text().splitlines()[0])
    response = sample["resps"][0][0]  # s1's single string: thinking_start + thinking + marker + answer
    # the task's Wait after 3 ids, cut to 6 ids; the last round stopped, so no "Final Answer:"
    assert response == "<think> m1 m2 m3Wait m1 m2</think> answer is 42 ."


STOCK_TASK = """task: stock_regex
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 40
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: 'answer is ([0-9]+)'
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def test_a_stock_regex_task_scores_a_budget_forced_response(tmp_path):
    """gsm8k-style: a regex filter and take_first read s1's response string; the trace survives the filters."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from scripted import save_scripted

    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    data = tmp_path / "stock.jsonl"
    data.write_text('{"question": "question mid", "answer": "42"}\n{"question": "question short", "answer": "41"}\n')
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "stock_regex.yaml").write_text(STOCK_TASK.format(data=data))
    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={save_scripted(tmp_path / 'scripted')},method=none", {"device": "cpu", "batch_size": 2}
    )
    results = simple_evaluate(
        model=lm,
        tasks=["stock_regex"],
        task_manager=TaskManager(include_path=str(tasks)),
        gen_kwargs="max_tokens_thinking=5,thinking_n_ignore=1,thinking_n_ignore_str=Wait",
        log_samples=True,
    )
    assert results["results"]["stock_regex"]["exact_match,strict-match"] == 0.5  # 42 right, 41 wrong
    samples = sorted(results["samples"]["stock_regex"], key=lambda s: s["doc"]["question"])
    assert samples[0]["resps"][0][0] == "<think> m1 m2 m3Wait m1</think> answer is 42 "
    assert samples[0]["filtered_resps"][0] == "42"
    with pytest.raises(Exception, match="unknown gen_kwargs key 'best_of'"):
        simple_evaluate(
            model=lm,
            tasks=["stock_regex"],
            task_manager=TaskManager(include_path=str(tasks)),
            gen_kwargs="max_tokens_thinking=5,best_of=2",
        )
