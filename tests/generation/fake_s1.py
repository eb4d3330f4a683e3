"""Test helpers: a fake vLLM engine over the scripted model's rule, and s1's budget forcing re-implemented from the
reference's rules (simplescaling/s1 ``vllm_causallms.py``: ``generate_until`` + ``_model_generate``), independently of
lm_eval_prune.generation."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from scripted import next_token


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str


@dataclass
class Output:
    outputs: list[Completion]


@dataclass
class FakeEngine:
    """Greedy vLLM over :func:`scripted.next_token`: eos/stop ids end it (kept in ids, not in text), stop strings cut
    the text (checked once more than min_tokens tokens exist), min_tokens masks eos and stop ids, max_model_len caps."""

    tokenizer: Any
    max_model_len: int = 512
    calls: list[tuple[tuple[int, ...], str]] = field(default_factory=list)
    batches: list[list[tuple[int, ...]]] = field(default_factory=list)  # the prompts of each generate call

    def generate(self, prompts: list[list[int]], params: dict[str, Any]) -> list[Output]:
        self.batches.append([tuple(p) for p in prompts])
        return [self.one(list(p), params) for p in prompts]

    def one(self, prompt: list[int], params: dict[str, Any]) -> Output:
        assert len(prompt) < self.max_model_len
        self.calls.append((tuple(prompt), json.dumps(params, sort_keys=True)))
        eos = self.tokenizer.eos_token_id
        stops = set(params.get("stop_token_ids") or []) | {eos}
        stop_strings = params.get("stop") or []
        min_tokens = params.get("min_tokens", 0)
        decode = self.tokenizer.decode
        ids: list[int] = []
        text = ""
        while True:
            masked = frozenset(stops) if len(ids) < min_tokens else frozenset()
            token = next_token((prompt + ids)[-1], prompt + ids, masked)
            ids.append(token)
            if token in stops:
                return Output([Completion(ids, text, "stop")])
            full = decode(prompt + ids, skip_special_tokens=False)
            new_text = full[len(decode(prompt, skip_special_tokens=False)) :]
            added = len(new_text) - len(text)
            text = new_text
            if stop_strings and len(ids) > min_tokens and added:
                hits = [(text.find(s, max(0, len(text) - added - len(s) + 1)), s) for s in stop_strings]
                hits = [(i + len(s), i) for i, s in hits if i >= 0]
                if hits:
                    return Output([Completion(ids, text[: min(hits)[1]], "stop")])
            if len(ids) >= params["max_tokens"] or len(prompt) + len(ids) >= self.max_model_len:
                return Output([Completion(ids, text, "length")])


def s1_generate_until(
    contexts: list[str],
    all_gen_kwargs: list[dict[str, Any]],
    engine: FakeEngine,
    tok: Any,
    *,
    max_length: int,
    default_max_gen_toks: int,
    batch_size: int | str,
) -> list[str]:
    """s1's generate_until: group by gen_kwargs, longest first, chunk, truncate, run _model_generate per chunk."""

    def tok_encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    encoded = [tok_encode(c) for c in contexts]
    groups: dict[str, list[int]] = {}
    for i, kw in enumerate(all_gen_kwargs):
        groups.setdefault(json.dumps(kw, sort_keys=True), []).append(i)
    result: dict[int, str] = {}
    for members in groups.values():
        members = sorted(members, key=lambda i: (-len(encoded[i]), contexts[i]))
        size = len(members) if batch_size == "auto" else int(batch_size)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            kwargs = copy.deepcopy(all_gen_kwargs[chunk[0]])
            until = kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else until
            eos = tok.decode(tok.eos_token_id)
            until = [*until, eos] if until else [eos]
            max_gen_toks = kwargs.pop("max_gen_toks", default_max_gen_toks)
            requests = [encoded[i][-(max_length - max_gen_toks) :] for i in chunk]
            texts = s1_model_generate(requests, max_gen_toks, until, kwargs, engine, tok_encode, tok)
            result.update(zip(chunk, texts, strict=True))
    return [result[i] for i in range(len(contexts))]


def s1_model_generate(requests, max_tokens, stop, kwargs, engine, tok_encode, tok):
    kwargs = dict(kwargs)
    if kwargs.pop("do_sample", None) is False and "temperature" not in kwargs:
        kwargs["temperature"] = 0.0
    if not any("thinking" in k for k in kwargs):
        return [o.outputs[0].text for o in engine.generate(requests, {"max_tokens": max_tokens, "stop": stop})]
    start = kwargs.pop("thinking_start", "<think>")
    end = kwargs.pop("thinking_end", "</think>")
    n_ignore = kwargs.pop("thinking_n_ignore", None)
    ignore_str = kwargs.pop("thinking_n_ignore_str", None)
    ignore_tok = tok_encode(ignore_str) if ignore_str is not None else None
    until_thinking = [kwargs.pop("until_thinking", "</think>")]
    if "until_thinking_2" in kwargs:
        until_thinking.append(kwargs.pop("until_thinking_2"))
    until_thinking.extend(stop)
    start_tok, end_tok = tok_encode(start), tok_encode(end)
    end_max = end + "\nFinal Answer:"
    end_max_tok, newline_tok = tok_encode(end_max), tok_encode("\n")
    thinking_params = {k.replace("_thinking", ""): kwargs.pop(k) for k in list(kwargs) if "thinking" in k}
    thinking_params = {**kwargs, **thinking_params}
    if "max_tokens" in thinking_params:
        if thinking_params["max_tokens"] == "auto":
            longest = max(len(r) for r in requests)
            thinking_params["max_tokens"] = max_tokens - longest - len(start_tok) - len(end_max_tok) - 100
        thinking_params["max_tokens"] = int(thinking_params["max_tokens"])
    else:
        thinking_params["max_tokens"] = max_tokens
    until_tok = [tok_encode(u) for u in until_thinking]
    params = {"max_tokens": thinking_params["max_tokens"]}
    if "min_tokens" in thinking_params or n_ignore is not None:
        params["min_tokens"] = 1 if n_ignore is not None else int(thinking_params["min_tokens"])
        assert all(len(x) == 1 for x in until_tok)
        params["stop_token_ids"] = [x[0] for x in until_tok]
    else:
        params["stop"] = until_thinking
    requests = [r + start_tok for r in requests]
    context = [list(r) for r in requests]
    if n_ignore is not None:
        rounds = int(n_ignore) + 1
        acc: list[Completion | None] = [None] * len(requests)
        pieces: list[list[tuple[list[int], str]]] = [[] for _ in requests]  # (ids, s1 text) per request, in order
        pending, idx = copy.deepcopy(requests), list(range(len(requests)))
        for i in range(rounds):
            outs = engine.generate(pending, params)
            new_pending, new_idx = [], []
            for j, o in enumerate(outs):
                c = o.outputs[0]
                cont = list(c.token_ids)
                if c.finish_reason == "length" or i == rounds - 1:
                    pieces[idx[j]].append((cont, c.text, False))
                    if acc[idx[j]] is None:
                        acc[idx[j]] = Completion(cont, c.text, c.finish_reason)
                    else:
                        acc[idx[j]].token_ids += cont
                        acc[idx[j]].text += c.text
                        acc[idx[j]].finish_reason = c.finish_reason
                    continue
                for t in until_tok:
                    if cont[-len(t) :] == t:
                        cont = cont[: -len(t)]
                text = c.text
                pieces[idx[j]].append((list(cont), c.text, False))
                if ignore_str is not None:
                    pieces[idx[j]].append((list(ignore_tok), ignore_str, True))
                    cont += ignore_tok
                    text += ignore_str
                if acc[idx[j]] is None:
                    acc[idx[j]] = Completion(cont, text, c.finish_reason)
                else:
                    acc[idx[j]].token_ids += cont
                    acc[idx[j]].text += text
                new_pending.append(pending[j] + cont)
                new_idx.append(idx[j])
            pending, idx = new_pending, new_idx
        outputs = []
        for i, c in enumerate(acc):
            shown = c.text
            if len(c.token_ids) > params["max_tokens"]:
                c.token_ids = c.token_ids[: params["max_tokens"]]
                shown = cut_text(pieces[i], params["max_tokens"], context[i], tok)  # s1 keeps the whole text
            outputs.append((c, shown))
    else:
        outputs = [(o.outputs[0], o.outputs[0].text) for o in engine.generate(requests, params)]
    answers, heads = [], []
    for i, (c, shown) in enumerate(outputs):
        cont = list(c.token_ids)
        for t in until_tok:
            if cont[-len(t) :] == t:
                cont = cont[: -len(t)]
        if c.finish_reason == "length":
            if c.text.endswith("\n") or start.startswith("\n"):
                requests[i] = requests[i] + cont + end_max_tok
                heads.append(start + shown + end_max)
            else:
                requests[i] = requests[i] + cont + newline_tok + end_max_tok
                heads.append(start + shown + "\n" + end_max)
        else:
            requests[i] = requests[i] + cont + end_tok
            heads.append(start + shown + end)
    for head, o in zip(heads, engine.generate(requests, {"max_tokens": max_tokens, "stop": stop}), strict=True):
        answers.append(head + o.outputs[0].text)
    return answers


def cut_text(pieces, budget, context, tok):
    """Ours cuts the thinking text with the ids, to a prefix of s1's text: s1's text of the whole pieces kept, then
    the decoded rest of a generated piece, or of an ignore string as many of its characters as the decode of its kept
    ids shows beyond what its full decode adds in front of it (a space before ``Wait``)."""
    text, ids = "", []
    for piece_ids, piece_text, literal in pieces:
        if len(ids) + len(piece_ids) <= budget:
            text, ids = text + piece_text, ids + piece_ids
            continue
        kept = piece_ids[: budget - len(ids)]
        before = tok.decode(context + ids, skip_special_tokens=False)
        shown = tok.decode(context + ids + kept, skip_special_tokens=False)[len(before) :]
        if not literal:
            return text + shown
        full = tok.decode(context + ids + piece_ids, skip_special_tokens=False)[len(before) :]
        return text + piece_text[: max(len(shown) - max(len(full) - len(piece_text), 0), 0)]
    return text
