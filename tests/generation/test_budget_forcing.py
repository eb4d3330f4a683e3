"""s1 budget forcing: ours against an independent re-implementation of the s1 reference, hand-written id sequences
through the HF driver on the scripted model, the HF driver against the fake engine, and incremental detokenization."""

from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path

import pytest
from scripted import INDEX, make_word_tokenizer, save_scripted

sys.path.insert(0, str(Path(__file__).parent))
from fake_s1 import FakeEngine, s1_generate_until

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.generation.drivers import TextStream, find_stop, hf_run_steps
from lm_eval_prune.generation.protocol import (
    QWEN3,
    S1,
    Sampling,
    Step,
    StepOutput,
    ThinkingResponse,
    check_thinking_markers,
    detect_markers,
    parse_gen_kwargs,
)
from lm_eval_prune.harness.budget import budget_forced_generate_until


class Request:
    def __init__(self, context, gen_kwargs):
        self.args = (context, gen_kwargs)


@pytest.fixture(scope="module")
def tok():
    return make_word_tokenizer()


def fake_steps(engine):
    def run(steps):
        out = []
        for step in steps:
            p = step.params
            params = {"max_tokens": p.max_tokens, "min_tokens": p.min_tokens}
            params.update({"stop": list(p.stop)} if p.stop else {})
            params.update({"stop_token_ids": list(p.stop_token_ids)} if p.stop_token_ids else {})
            c = engine.one(step.prefix, params).outputs[0]
            out.append(StepOutput(c.token_ids, c.text, c.finish_reason))
        return out

    return run


def ours(requests, tok, run_steps, *, max_length=512, max_gen_toks=64, batch_size="auto"):
    return budget_forced_generate_until(
        requests,
        tok,
        add_bos_token=False,
        max_length=max_length,
        default_max_gen_toks=max_gen_toks,
        batch_size=batch_size,
        run_steps=run_steps,
        plain_generate_until=lambda plain: pytest.fail("every request here is budget-forced"),
    )


def random_case(rng):
    modes = ["short", "mid", "long", "endless", "mute", "lines", "question"]
    contexts = [
        " ".join(["x"] * rng.randint(0, 12) + ["question", rng.choice(modes)] + ["x"] * rng.randint(0, 3))
        for _ in range(rng.randint(1, 5))
    ]
    gen = {"until": rng.choice([["."], [], ["is"], "42", ["42", "\n"]]), "do_sample": False}
    gen["max_gen_toks"] = rng.choice([140, 150, 200])
    if rng.random() < 0.8:
        gen["max_tokens_thinking"] = rng.choice([1, 2, 3, 4, 5, 6, 7, 9, 12, 30, "auto"])
    n = rng.choice([None, 0, 1, 2, 3, 5])
    if n is not None:
        gen["thinking_n_ignore"] = n
    if rng.random() < 0.6:
        gen["thinking_n_ignore_str"] = rng.choice(["Wait", "Hmm", "Wait Hmm"])
    if rng.random() < 0.3:
        gen.update(thinking_start="<|im_start|> think", thinking_end="<|im_start|> answer", until_thinking="</think>")
    if rng.random() < 0.15 and n is None:
        gen["min_tokens_thinking"] = rng.choice([0, 1, 2])
    if "max_tokens_thinking" not in gen and n is None and "thinking_n_ignore_str" not in gen:
        gen["max_tokens_thinking"] = "auto"
    if n is not None or "min_tokens_thinking" in gen:  # s1 asserts one-token stops there
        gen["until"] = rng.choice([["."], [], "42", ["42", "\n"]])
    return contexts, gen


def test_ours_equals_the_s1_reference_on_random_settings(tok):
    """Same texts, and the same engine calls in the same order with the same prompts in each (s1 runs a batch's
    thinking rounds, then its answers, batch after batch; an engine's numerics can depend on the batch)."""
    rng = random.Random(0)
    checked = mixed = 0
    for _ in range(300):
        contexts, gen = random_case(rng)
        gens = [gen] * len(contexts)
        if rng.random() < 0.3:  # two gen_kwargs groups, interleaved
            _, other = random_case(rng)
            gens = [rng.choice([gen, other]) for _ in contexts]
        batch_size = rng.choice(["auto", 1, 2])
        max_length = rng.choice([512, 200])
        ref_engine, our_engine = FakeEngine(tok, max_length), FakeEngine(tok, max_length)
        kwargs = {"max_length": max_length, "default_max_gen_toks": 64, "batch_size": batch_size}
        try:
            expected = s1_generate_until(contexts, gens, ref_engine, tok, **kwargs)
        except AssertionError:
            continue  # s1 itself refuses (a prompt over max_model_len)
        our_batches: list[list[tuple[int, ...]]] = []
        run = fake_steps(our_engine)

        def logged(steps, run=run, our_batches=our_batches):
            our_batches.append([tuple(s.prefix) for s in steps])
            return run(steps)

        got = ours([Request(c, g) for c, g in zip(contexts, gens, strict=True)], tok, logged,
                   max_gen_toks=64, max_length=max_length, batch_size=batch_size)  # fmt: skip
        assert got == expected, (contexts, gens, batch_size)
        assert our_batches == [b for b in ref_engine.batches if b], (contexts, gens, batch_size)  # s1 may call with []
        checked += 1
        mixed += len({str(g) for g in gens}) > 1
    assert checked > 250 and mixed > 40


def words(tok, ids):
    return [tok.convert_ids_to_tokens(i) for i in ids]


def answer_prompts(engine, tok):
    """The prompt of every answer-phase call, as words after the prompt's mode word."""
    return [
        words(tok, list(p)) for p, params in engine.calls if '"stop": [' in params and "stop_token_ids" not in params
    ]


@pytest.mark.parametrize(
    ("gen", "expected"),
    [
        # B per round, ids cut to B after the rounds: 3 + Wait + 3 + stop = 8 > 6 -> cut; last round stopped: no Final
        (
            {"max_tokens_thinking": 6, "thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait"},
            "<think> m1 m2 m3Wait m1 m2</think> answer is 42 ",
        ),
        # N=1 without an ignore string: nothing appended between rounds
        ({"max_tokens_thinking": 20, "thinking_n_ignore": 1}, "<think> m1 m2 m3 m1 m2 m3</think> answer is 42 "),
        # N omitted: stop strings, one round; the text keeps the space before the stop string
        ({"max_tokens_thinking": 20}, "<think> m1 m2 m3 </think> answer is 42 "),
        # budget runs out in the first round: newline + end + Final Answer
        ({"max_tokens_thinking": 2, "thinking_n_ignore": 3}, "<think> m1 m2\n</think>\nFinal Answer: 42 "),
    ],
)
def test_hand_written_cases_on_the_fake_engine(tok, gen, expected):
    engine = FakeEngine(tok)
    [got] = ours([Request("question mid", {"until": ["."], "do_sample": False, **gen})], tok, fake_steps(engine))
    assert got == expected


def test_hand_written_id_sequences_through_the_hf_driver(tmp_path, tok):
    """Prompt-dependent thinking lengths in one batch; expected ids written from s1's rules."""
    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    model_dir = save_scripted(tmp_path / "scripted")
    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={model_dir},method=none", {"device": "cpu", "batch_size": 4}
    )
    seen = []
    run = hf_run_steps(lm.model, lm.tokenizer, lm.max_length, 4)

    def recording(steps):
        seen.extend(words(tok, s.prefix) for s in steps if s.params.stop and not s.params.stop_token_ids)
        return run(steps)

    gen = {"until": ["."], "max_gen_toks": 150, "do_sample": False, "thinking_n_ignore": 2}
    gen |= {"thinking_n_ignore_str": "Wait", "max_tokens_thinking": 7}
    requests = [Request(c, gen) for c in ("question short", "question mid", "x question long", "mute", "endless")]
    responses = budget_forced_generate_until(
        requests,
        lm.tokenizer,
        add_bos_token=False,
        max_length=lm.max_length,
        default_max_gen_toks=64,
        batch_size=lm.batch_size,
        run_steps=recording,
        plain_generate_until=lambda plain: [],
    )
    short, mid, long_, mute, endless = (r.split("<think>")[1] for r in responses)
    # short: s1 </think> | Wait s1 </think> | Wait s1 </think> -> 1+1+1+1+1+stop = 6 ids <= 7; strip the stop
    assert short == " s1Wait s1Wait s1</think> answer is 42 "
    # mid: m1 m2 m3 Wait m1 m2 m3 Wait ... cut to 7, last round stopped -> thinking_end only
    assert mid == " m1 m2 m3Wait m1 m2 m3</think> answer is 42 "
    # long: l1..l6 </think> in every round (the 7th token is the stop: vLLM checks stops before length), cut to 7
    assert long_ == " l1 l2 l3 l4 l5 l6Wait</think> answer is 42 "
    # mute: min_tokens=1 masks eos, so the second choice x1 comes, then </think>
    assert mute == " x1Wait x1Wait x1</think> answer is 42 "
    # endless: the first round runs out: newline + Final Answer
    assert endless == " e1 e2 e1 e2 e1 e2 e1\n</think>\nFinal Answer: 42 "
    traces = [r for r in responses if isinstance(r, ThinkingResponse)]
    assert len(traces) == 5 and all(r.budget == 7 for r in traces)
    assert [r.thinking_tokens for r in traces] == [5, 7, 7, 5, 7]
    assert [r.forced_waits for r in traces] == [2, 1, 1, 2, 0]
    assert [r.budget_exhausted for r in traces] == [False, False, False, False, True]
    long_answer = next(p for p in seen if p[:3] == ["x", "question", "long"])
    assert long_answer[3:] == ["<think>", "l1", "l2", "l3", "l4", "l5", "l6", "Wait", "</think>"]
    endless_answer = next(p for p in seen if p[0] == "endless")
    assert endless_answer[1:] == [
        "<think>",
        *["e1", "e2", "e1", "e2", "e1", "e2", "e1"],
        "\n",
        "</think>",
        "\n",
        "Final",
        "Answer",
        ":",
    ]


def test_auto_budget_uses_the_longest_prompt_of_the_batch(tok):
    engine = FakeEngine(tok)
    gen = {"until": ["."], "max_gen_toks": 110, "do_sample": False, "max_tokens_thinking": "auto"}
    short, long_ = Request("question endless", gen), Request(" ".join(["x"] * 4) + " question endless", gen)
    # auto = 110 - 6 (longest prompt) - 1 (<think>) - 5 (</think> \n Final Answer :) - 100 = -2: refused
    with pytest.raises(PruneConfigError, match="max_tokens_thinking=auto gives -2 tokens"):
        ours([short, long_], tok, fake_steps(engine))
    gen["max_gen_toks"] = 115  # 115 - 6 - 1 - 5 - 100 = 3 for both (one batch), 5 for the short one alone
    together = ours([Request(r.args[0], gen) for r in (short, long_)], tok, fake_steps(engine))
    assert [r.budget for r in together] == [3, 3]
    apart = ours([Request(short.args[0], gen), Request(long_.args[0], gen)], tok, fake_steps(engine), batch_size=1)
    assert [r.budget for r in apart] == [7, 3]  # alone, the short prompt (2 ids) gets 115 - 2 - 1 - 5 - 100
    assert together[0] == "<think> e1 e2 e1\n</think>\nFinal Answer: 42 "


def test_n_omitted_and_n_zero_differ(tok):
    """N omitted: stop strings, eos may come first; N=0: token-id stops with min_tokens=1 (eos masked)."""
    base = {"until": ["."], "do_sample": False, "max_tokens_thinking": 10}
    omitted = ours([Request("mute", base)], tok, fake_steps(FakeEngine(tok)))[0]
    zero = ours([Request("mute", {**base, "thinking_n_ignore": 0})], tok, fake_steps(FakeEngine(tok)))[0]
    assert omitted == "<think></think> answer is 42 " and omitted.thinking_tokens == 0
    assert zero == "<think> x1</think> answer is 42 " and zero.thinking_tokens == 1


def test_gen_kwargs_are_parsed_as_s1_parses_them(tok):
    plan = parse_gen_kwargs(
        {"until": ["."], "temperature": 0.6, "temperature_thinking": 1.0, "top_p_thinking": 0.9, "seed": 5,
         "max_tokens_thinking": "auto", "thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait"},
        "</s>", 64, tok, seed_offset=3,
    )  # fmt: skip
    assert plan.until == [".", "</s>"] and plan.markers == QWEN3 and plan.until_thinking == ["</think>", ".", "</s>"]
    assert plan.answer == {"temperature": 0.6, "seed": 8}
    assert plan.thinking == {"temperature": 1.0, "top_p": 0.9, "seed": 8, "max_tokens": "auto"}
    assert parse_gen_kwargs({"do_sample": False}, "</s>", 64, tok).answer == {"temperature": 0.0}
    for bad, message in (
        ({"max_tokens_thinking": 5, "presence_penalty": 1.0}, "unknown gen_kwargs key 'presence_penalty'"),
        ({"thinking_answer": "x"}, "unknown gen_kwargs key 'thinking_answer'"),
        ({"foo_thinking": 1}, "unknown gen_kwargs key 'foo_thinking'"),
        ({"max_tokens_thinking": 5, "rejection_sample": True}, "rejection_sample is not supported"),
        ({"max_tokens_thinking": 0}, "max_tokens_thinking=0 must be >= 1 or auto"),
    ):
        with pytest.raises(PruneConfigError, match=message):
            parse_gen_kwargs(bad, "</s>", 64, tok)
    with pytest.raises(PruneConfigError, match=r"thinking stop strings \['is 42'\] must be one token each"):
        ours([Request("mid", {"until": ["is 42"], "max_tokens_thinking": 5, "thinking_n_ignore": 1})], tok,
             fake_steps(FakeEngine(tok)))  # fmt: skip


def test_markers_detected_or_asked_for(tok):
    assert detect_markers(tok) == QWEN3
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def vocab_tok(words):
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
        )

    assert detect_markers(vocab_tok(["<unk>", "<|im_start|>"])) == S1
    plain = vocab_tok(["<unk>", "a"])
    check_thinking_markers(plain, {"max_gen_toks": 5})  # no budget forcing asked: fine
    check_thinking_markers(plain, {"thinking_start": "a", "thinking_end": "a", "until_thinking": "a"})
    with pytest.raises(PruneConfigError, match="pass thinking_start, thinking_end, until_thinking in --gen_kwargs"):
        check_thinking_markers(plain, {"max_tokens_thinking": "auto"})


def test_response_survives_filters_logging_and_the_cache():
    import json

    from lm_eval.filters.selection import TakeFirstFilter

    response = ThinkingResponse("<think> a</think> b", thinking=" a", answer=" b", thinking_tokens=1,
                                forced_waits=0, budget=5, budget_exhausted=False)  # fmt: skip
    [[first]] = [list(TakeFirstFilter().apply([[response, "other"]], [{}]))]
    assert first is response and first.thinking_tokens == 1
    again = pickle.loads(pickle.dumps(response))
    assert again == response and again.record() == response.record() and isinstance(again, ThinkingResponse)
    assert json.loads(json.dumps({"resps": [[response]]})) == {"resps": [["<think> a</think> b"]]}


def random_steps(rng, tok, n):
    vocab = list(INDEX)
    steps = []
    for _ in range(n):
        prompt = [INDEX[w] for w in ["question", rng.choice(["short", "mid", "long", "endless", "mute", "lines"])]]
        prompt += [INDEX[rng.choice(vocab[13:])] for _ in range(rng.randint(0, 3))] + [INDEX["<think>"]]
        stop_ids = tuple(rng.sample([INDEX["</think>"], INDEX["."], INDEX["\n"], INDEX["e2"]], rng.randint(0, 2)))
        stop = tuple(rng.sample(["is", "42", "\n", "m2 m3", "e1 e2 e1"], rng.randint(0, 2)))
        max_tokens = rng.randint(1, 9)
        min_tokens = min(max_tokens, rng.choice([0, 0, 1, 2]))
        params = Sampling(max_tokens, min_tokens, 0.0, stop=stop, stop_token_ids=stop_ids)
        steps.append(Step(prompt, params))
    return steps


def test_hf_driver_equals_the_fake_engine(tmp_path, tok):
    from scripted import make_scripted_model

    model = make_scripted_model()
    rng = random.Random(1)
    steps = random_steps(rng, tok, 40)
    got = hf_run_steps(model, tok, max_length=16, batch_size=8)(steps)
    expected = fake_steps(FakeEngine(tok, max_model_len=16))(steps)
    assert got == expected
    assert {o.finish_reason for o in got} == {"stop", "length"}


def test_consecutive_added_tokens_join_without_a_space_as_in_vllm(tok):
    stream = TextStream(tok, [INDEX["question"]])
    assert [stream.step(INDEX[w]) for w in ("<think>", "</think>", "m1", "<think>")] == [
        " <think>",
        "</think>",
        " m1",
        " <think>",
    ]


def test_incremental_text_equals_the_full_decode(tokenizer, tok):
    rng = random.Random(2)
    alphabet = "abcdefghij klmnop\nqrstuvwxyz.,!?éü中文🙂 the cat"
    for which in (tokenizer, tok):
        for _ in range(60):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
            ids = which.encode(text, add_special_tokens=False)
            cut = rng.randint(0, len(ids))
            prompt, new = ids[:cut], ids[cut:]
            if "\ufffd" in which.decode(prompt):
                continue  # a prompt ending inside a character: vLLM's stream re-emits it, a text diff cannot
            stream = TextStream(which, prompt, spaces=True)  # vLLM joins consecutive added tokens otherwise
            pieces = [stream.step(t) for t in new]
            full = which.decode(ids, skip_special_tokens=False)
            assert "".join(pieces) == full[len(which.decode(prompt, skip_special_tokens=False)) :]
            for stop in ("a", "the", "é", "\n"):  # the stop check on the increments finds the first full-text hit
                text_so_far, hit = "", None
                for piece in pieces:
                    text_so_far += piece
                    index = find_stop(text_so_far, len(piece), [stop])
                    if index is not None:
                        hit = index
                        break
                tail = full[len(which.decode(prompt, skip_special_tokens=False)) :]
                assert hit == (tail.find(stop) if stop in tail else None)


def test_seeded_sampling_is_reproducible_per_request(tmp_path):
    from lm_eval_fixtures import write_model

    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    lm = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={write_model(tmp_path / 'm')},method=none", {"device": "cpu", "batch_size": 1}
    )
    gen = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": True, "temperature": 1.0}
    first = lm.generate_until([Request("the cat", {**gen, "seed": 3}) for _ in range(3)])
    again = lm.generate_until([Request("the cat", {**gen, "seed": 3}) for _ in range(3)])
    other = lm.generate_until([Request("the cat", {**gen, "seed": 4}) for _ in range(3)])
    assert first == again and first != other
    assert len(set(first)) > 1  # each repeat gets seed + its index, so repeats differ


@pytest.fixture(scope="module")
def stories_tok(stories_path):
    """The shared SentencePiece-style tokenizer (Metaspace BPE with byte fallback) with Qwen3's thinking markers."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(stories_path / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_cut_inside_the_ignore_string_keeps_a_prefix_of_s1s_text(stories_tok):
    """'Wait' encodes as ▁ W a it: its ids decode to ' Wait' after other text, s1 shows 'Wait'. Cutting the thinking
    inside it must keep a prefix of s1's text ('TheWa'), not the decode of the kept ids ('The Wa')."""
    from lm_eval_prune.generation.drivers import engine_text
    from lm_eval_prune.generation.protocol import Encoded, s1_policy

    tok = stories_tok
    wait, the, cat = (tok.encode(w, add_special_tokens=False) for w in ("Wait", "The", "cat sat"))
    assert tok.convert_ids_to_tokens(wait) == ["▁", "W", "a", "it"] and len(the) == 1 and len(cat) == 4
    end = tok.convert_tokens_to_ids("</think>")
    gen = {"max_tokens_thinking": 4, "thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait", "until": []}
    gen.update(thinking_start="<think>", thinking_end="</think>", until_thinking="</think>")
    plan = parse_gen_kwargs(gen, "</s>", 64, tok)
    encoded = Encoded.of(plan, lambda text: tok.encode(text, add_special_tokens=False))
    prompt = tok.encode("Once upon", add_special_tokens=False)
    policy = s1_policy(prompt, plan, encoded, 4, engine_text(tok, Sampling.build(1, {})))
    first = next(policy)
    assert first.prefix == prompt + encoded.start
    second = policy.send(StepOutput([*the, end], "The", "stop"))  # the end of thinking, ignored once
    assert second.prefix == prompt + encoded.start + the + wait
    answer = policy.send(StepOutput(cat, " cat sat", "length"))  # 1 + 4 + 4 ids > 4: cut inside 'Wait'
    cut = the + wait[:3]
    assert answer.final and answer.prefix == prompt + encoded.start + cut + encoded.newline + encoded.end_max
    with pytest.raises(StopIteration) as done:
        policy.send(StepOutput(tok.encode("ok", add_special_tokens=False), "ok", "length"))
    response = done.value.value
    assert str(response) == "<think>TheWa\n</think>\nFinal Answer:ok"
    assert response.thinking == "TheWa" and response.thinking_tokens == 4 and response.forced_waits == 1
    s1_text = "<think>" + "The" + "Wait" + " cat sat" + "\n</think>\nFinal Answer:ok"  # s1 keeps the uncut text
    assert s1_text.startswith("<think>" + response.thinking)
