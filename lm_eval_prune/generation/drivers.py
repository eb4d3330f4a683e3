"""Budget-forced ``generate_until`` for lm-eval models: request parsing plus the HF and vLLM step drivers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lm_eval_prune.generation.protocol import BudgetSpec, Step, StepResult, drive, plain_policy, policy


@dataclass(frozen=True)
class Sampling:
    """Greedy unless ``temperature`` > 0; ``seed`` makes sampling reproducible (each request gets seed + its index)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @classmethod
    def pop_from(cls, gen_kwargs: dict[str, Any], index: int) -> Sampling:
        do_sample = gen_kwargs.pop("do_sample", None)
        temperature = 0.0 if do_sample is False else float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        gen_kwargs.pop("temperature", None)
        seed = gen_kwargs.pop("seed", None)
        return cls(temperature, float(gen_kwargs.pop("top_p", 1.0) or 1.0), None if seed is None else int(seed) + index)


@dataclass
class ForcedRequest:
    """A request our driver runs: budget-forced (``spec``), or plain but seeded (``spec`` None)."""

    index: int
    prompt_ids: list[int]
    spec: BudgetSpec | None
    sampling: Sampling
    max_gen_toks: int
    until: list[str]


# run_steps(steps, their samplings) -> results; every driver strips a final stop/eos id and says whether one ended the step
RunSteps = Callable[[list[Step], list[Sampling]], list[StepResult]]


def split_requests(
    requests: Sequence[Any], encode: Callable[[str], list[int]], default_max_gen_toks: int
) -> tuple[list[ForcedRequest], list[int]]:
    """(budget-forced requests, indices of plain ones) from lm-eval ``generate_until`` instances."""
    forced, plain = [], []
    for index, request in enumerate(requests):
        context, gen_kwargs = request.args
        kwargs = dict(gen_kwargs or {})
        spec = BudgetSpec.pop_from(kwargs)
        if spec is None and "seed" not in kwargs:
            plain.append(index)
            continue
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        sampling = Sampling.pop_from(kwargs, index)
        forced.append(
            ForcedRequest(
                index, encode(context), spec, sampling, int(kwargs.pop("max_gen_toks", default_max_gen_toks)), until
            )
        )
    return forced, plain


def generate_until_with_budget_forcing(
    requests: Sequence[Any],
    tokenizer: Any,
    encode: Callable[[str], list[int]],
    default_max_gen_toks: int,
    run_steps: RunSteps,
    plain_generate_until: Callable[[list[Any]], list[str]],
) -> list[str]:
    """Responses for every request: budget-forced ones as JSON traces, the others through lm-eval's own path."""
    forced, plain = split_requests(requests, encode, default_max_gen_toks)
    responses: list[str] = [""] * len(requests)
    if plain:
        for index, text in zip(plain, plain_generate_until([requests[i] for i in plain]), strict=True):
            responses[index] = text
    if forced:
        policies = [
            policy(r.prompt_ids, r.spec, tokenizer, r.max_gen_toks, r.until)
            if r.spec
            else plain_policy(r.prompt_ids, tokenizer, r.max_gen_toks, r.until)
            for r in forced
        ]
        traces = drive(policies, lambda order, steps: run_steps(steps, [forced[i].sampling for i in order]))
        for request, trace in zip(forced, traces, strict=True):
            responses[request.index] = trace.to_response() if request.spec else trace.answer
    return responses


def prompt_encoder(tokenizer: Any, add_bos: bool) -> Callable[[str], list[int]]:
    """The prompt's ids, the same in every adapter: no special tokens, plus BOS when the model wants one."""

    def encode(context: str) -> list[int]:
        ids = tokenizer.encode(context, add_special_tokens=False)
        bos = tokenizer.bos_token_id
        return [bos, *ids] if add_bos and bos is not None and ids[:1] != [bos] else ids

    return encode


def eos_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The tokenizer's EOS plus the generation config's (Qwen lists several)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    extra = getattr(generation_config, "eos_token_id", None)
    for value in [] if extra is None else ([extra] if isinstance(extra, int) else list(extra)):
        if value not in ids:
            ids.append(value)
    return ids


def _finish(new: list[int], stops: Sequence[int], thinking: bool) -> StepResult:
    """Strip a final stop/eos id (vLLM ends on it) and say whether it ended a thinking step."""
    stopped = bool(new) and new[-1] in stops
    return (new[:-1] if stopped else new), stopped and thinking


def clamp(step: Step, max_length: int) -> Step:
    """Never ask for more tokens than the model's context has left (a 32k budget on a 32k model just ends there)."""
    room = max_length - len(step.prefix)
    return step if step.max_new <= room else Step(step.prefix, max(room, 0), step.stop_ids, step.stop_strings)


# ----------------------------------------------------------------------------------------------- drivers
def hf_run_steps(model: Any, tokenizer: Any, max_length: int, batch_size: int = 8) -> RunSteps:
    """Run steps with ``model.generate``: greedy steps that share their stops in left-padded batches, seeded sampled
    steps one at a time (a seed per request cannot be honoured inside a batch)."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        """Per row: stop once the decoded new text holds a stop string (any tokenizer; the text is cut later)."""

        def __init__(self, start: int, stops: Sequence[str]) -> None:
            self.start, self.stops = start, [s for s in stops if s]

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=False)
            return torch.tensor([any(stop in text for stop in self.stops) for text in texts], device=input_ids.device)

    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    def run_batch(steps: list[Step], sampling: Sampling) -> list[StepResult]:
        stops = list(steps[0].stop_ids) + [e for e in eos if e not in steps[0].stop_ids]
        width = max(len(step.prefix) for step in steps)
        ids = torch.full((len(steps), width), pad, dtype=torch.long)
        mask = torch.zeros((len(steps), width), dtype=torch.long)
        for row, step in enumerate(steps):
            ids[row, width - len(step.prefix) :] = torch.tensor(step.prefix)
            mask[row, width - len(step.prefix) :] = 1
        sample = sampling.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(step.max_new for step in steps),
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed + width)
        criteria = StoppingCriteriaList([StopOnStrings(width, steps[0].stop_strings)] if steps[0].stop_strings else [])
        with torch.no_grad():
            out = model.generate(
                ids.to(device), attention_mask=mask.to(device), generation_config=config, stopping_criteria=criteria
            )
        results: list[StepResult] = []
        for row, step in enumerate(steps):
            new = out[row, width:].tolist()
            cut = next((k for k, token in enumerate(new) if token in stops), None)
            if cut is not None and cut < step.max_new:
                results.append((new[:cut], bool(step.stop_ids)))
            else:
                results.append((new[: step.max_new], False))
        return results

    def run(steps: list[Step], samplings: list[Sampling]) -> list[StepResult]:
        steps = [clamp(step, max_length) for step in steps]
        results: list[StepResult] = [([], False)] * len(steps)
        groups: dict[Any, list[int]] = {}
        for index, (step, sampling) in enumerate(zip(steps, samplings, strict=True)):
            if step.max_new > 0:
                key = (step.stop_ids, step.stop_strings, sampling) if sampling.seed is None else ("alone", index)
                groups.setdefault(key, []).append(index)
        for members in groups.values():
            members.sort(key=lambda i: len(steps[i].prefix))
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                for index, result in zip(chunk, run_batch([steps[i] for i in chunk], samplings[chunk[0]]), strict=True):
                    results[index] = result
        return results

    return run


def vllm_run_steps(llm: Any, eos: Sequence[int], max_length: int) -> RunSteps:
    """Run each round's steps as one vLLM batch (token-id prompts, per-step SamplingParams)."""
    from vllm import SamplingParams, TokensPrompt

    def run(steps: list[Step], samplings: list[Sampling]) -> list[StepResult]:
        steps = [clamp(s, max_length) for s in steps]
        results: list[StepResult] = [([], False)] * len(steps)
        todo = [i for i, s in enumerate(steps) if s.max_new > 0]
        if not todo:
            return results
        stops = {i: list(steps[i].stop_ids) + [e for e in eos if e not in steps[i].stop_ids] for i in todo}
        params = [
            SamplingParams(
                max_tokens=steps[i].max_new,
                temperature=samplings[i].temperature,
                top_p=samplings[i].top_p,
                seed=samplings[i].seed,
                stop_token_ids=stops[i],
                stop=list(steps[i].stop_strings) or None,
                skip_special_tokens=False,
            )
            for i in todo
        ]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=steps[i].prefix) for i in todo], params, use_tqdm=False)
        for i, output in zip(todo, outputs, strict=True):
            results[i] = _finish(list(output.outputs[0].token_ids), stops[i], bool(steps[i].stop_ids))
        return results

    return run
