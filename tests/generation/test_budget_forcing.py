"""s1 budget forcing: the pure policy on scripted steps, and the HF driver on a scripted model through pruned-hf."""

from __future__ import annotations

import json

import pytest
from scripted import make_word_tokenizer, save_scripted

from lm_eval_prune.generation.protocol import QWEN3, S1, BudgetSpec, detect_markers, drive, parse_response, policy


class FakeRequest:
    def __init__(self, context, gen_kwargs):
        self.args = (context, gen_kwargs)


@pytest.fixture(scope="module")
def tok():
    return make_word_tokenizer()


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def scripted_steps(tok, segments):
    """A driver that answers the k-th thinking step with segments[k] (words; a trailing '</think>' means it stopped)."""
    calls = []

    def run(order, steps):
        out = []
        for step in steps:
            calls.append(step)
            if step.stop_ids:
                words = segments[min(len([c for c in calls if c.stop_ids]) - 1, len(segments) - 1)].split()
                stopped = words[-1] == "</think>"
                new = ids(tok, " ".join(words[:-1] if stopped else words))[: step.max_new]
                out.append((new, stopped and len(new) < step.max_new + 1))
            else:
                out.append((ids(tok, "answer is 42 . filler"), False))
        return out

    return run, calls


def test_waits_are_forced_exactly_n_times(tok):
    run, calls = scripted_steps(tok, ["step one </think>"])
    spec = BudgetSpec(max_tokens_thinking=100, thinking_n_ignore=3)
    [trace] = drive([policy(ids(tok, "question"), spec, tok, 50, ["."])], run)
    assert trace.forced_waits == 3
    assert trace.thinking == "step one Wait step one Wait step one Wait step one"
    assert trace.thinking_tokens == 8 and not trace.budget_exhausted
    assert trace.answer == "answer is 42 "
    thinking_calls = [c for c in calls if c.stop_ids]
    assert len(thinking_calls) == 4
    assert [c.max_new for c in thinking_calls] == [100, 98, 96, 94]  # the budget counts generated tokens only
    answer_call = next(c for c in calls if not c.stop_ids)
    assert tok.decode(answer_call.prefix[-1:]) == "</think>"  # Qwen3: the end marker opens the answer


def test_budget_cuts_thinking_and_asks_for_the_final_answer(tok):
    run, calls = scripted_steps(tok, ["step one two one two one two one two"])  # never stops by itself
    [trace] = drive([policy(ids(tok, "question"), BudgetSpec(5, 2), tok, 50, ["."])], run)
    assert trace.thinking_tokens == 5 and trace.budget_exhausted and trace.forced_waits == 0
    assert trace.thinking == "step one two one two"
    answer_call = next(c for c in calls if not c.stop_ids)
    assert tok.decode(answer_call.prefix[-4:]) == "</think> Final Answer :"


def test_no_budget_forcing_keys_means_plain_generation():
    kwargs = {"until": ["."], "max_gen_toks": 5}
    assert BudgetSpec.pop_from(kwargs) is None and kwargs == {"until": ["."], "max_gen_toks": 5}
    kwargs = {"max_tokens_thinking": "auto", "thinking_n_ignore": "2"}
    spec = BudgetSpec.pop_from(kwargs)
    assert spec == BudgetSpec("auto", 2, "Wait", None) and kwargs == {}
    assert spec.budget_for(prompt_tokens=50, max_gen_toks=32768) == 32768 - 50 - 100
    with pytest.raises(ValueError, match="max_tokens_thinking=0 must be >= 1"):
        BudgetSpec.pop_from({"max_tokens_thinking": 0})


def test_markers_detected_from_the_tokenizer(tok):
    assert detect_markers(tok) == QWEN3
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    s1 = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1}, unk_token="<unk>"))
    )
    assert detect_markers(s1) == S1


def test_pruned_hf_budget_forcing_on_a_scripted_model(tmp_path):
    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    model_dir = save_scripted(tmp_path / "scripted")
    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={model_dir},method=none", {"device": "cpu", "batch_size": 1}
    )
    gen = {"until": ["."], "max_gen_toks": 20, "do_sample": False}
    requests = [
        FakeRequest("question", {**gen, "max_tokens_thinking": 100, "thinking_n_ignore": 2}),
        FakeRequest("question", {**gen, "max_tokens_thinking": 4, "thinking_n_ignore": 2}),
        FakeRequest("question", {**gen, "max_tokens_thinking": 100, "thinking_n_ignore": 0}),
    ]
    traces = [parse_response(r) for r in lm.generate_until(requests)]
    assert [t["forced_waits"] for t in traces] == [2, 1, 0]
    assert (
        traces[0]["thinking"] == "step one two Wait step one two Wait step one two"
        and traces[0]["thinking_tokens"] == 9
    )
    assert traces[0]["answer"] == "answer is 42 " and not traces[0]["budget_exhausted"]
    assert (
        traces[1]["thinking"] == "step one two Wait step"
        and traces[1]["thinking_tokens"] == 4
        and traces[1]["budget_exhausted"]
    )
    assert traces[1]["answer"] == "42 "  # after "Final Answer:" the script says 42
    assert traces[2]["thinking"] == "step one two"
    plain = lm.generate_until([FakeRequest("question", gen)])
    assert parse_response(plain[0]) is None and "step" in plain[0]
    assert json.loads(lm.generate_until(requests[:1])[0])["budget"] == 100


def test_seeded_sampling_is_reproducible(tmp_path):
    from lm_eval_fixtures import write_model

    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={write_model(tmp_path / 'm')},method=none", {"device": "cpu", "batch_size": 1}
    )
    gen = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": True, "temperature": 1.0}
    first = lm.generate_until([FakeRequest("the cat", {**gen, "seed": 3}) for _ in range(3)])
    again = lm.generate_until([FakeRequest("the cat", {**gen, "seed": 3}) for _ in range(3)])
    other = lm.generate_until([FakeRequest("the cat", {**gen, "seed": 4}) for _ in range(3)])
    assert first == again and first != other
    assert len(set(first)) > 1  # each repeat gets seed + its index, so repeats differ
    assert all(parse_response(text) is None for text in first)  # no budget forcing asked: plain text


def test_hf_batched_greedy_steps_equal_one_at_a_time(tmp_path, tok):
    """Left-padded batches of different prompt lengths give the same greedy tokens as single prompts."""
    import torch
    from conftest import make_model, make_tokenizer

    from lm_eval_prune.generation.drivers import Sampling, hf_run_steps
    from lm_eval_prune.generation.protocol import Step

    model, bpe = make_model(layers=2), make_tokenizer()
    prompts = [
        bpe.encode(text) for text in ("the cat", "one two three four five six", "wait, let me think again about")
    ]
    steps = [Step(p, 12, (bpe.eos_token_id,)) for p in prompts] + [Step(prompts[0], 5, (), (".",))]
    greedy = [Sampling()] * len(steps)
    batched = hf_run_steps(model, bpe, max_length=256, batch_size=8)(steps, greedy)
    single = hf_run_steps(model, bpe, max_length=256, batch_size=1)(steps, greedy)
    assert batched == single
    assert all(len(new) <= step.max_new for (new, _), step in zip(batched, steps, strict=True))
    with torch.no_grad():
        reference = model.generate(
            torch.tensor([prompts[1]]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=[bpe.eos_token_id],
            pad_token_id=3,
        )
    expected = reference[0, len(prompts[1]) :].tolist()
    if bpe.eos_token_id in expected:
        expected = expected[: expected.index(bpe.eos_token_id)]
    assert batched[1][0] == expected
