"""Step drivers for the budget-forcing policies: HF's ``model.generate`` and vLLM's ``LLM.generate``.

lm-eval's side (requests, s1's batching with its Collator) is in :mod:`lm_eval_prune.harness.budget`.

Both drivers answer a :class:`Step` as vLLM does: output ids keep a final stop/eos token (left out of the text), stop
strings cut the text before them while the ids keep what was generated, ``min_tokens`` masks eos and stop ids, and a
generation reaching ``max_length`` ends with ``"length"``. The HF driver emulates this on ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lm_eval_prune.errors import PruneConfigError
from lm_eval_prune.generation.protocol import Sampling, Step, StepOutput

RunSteps = Callable[[list[Step]], list[StepOutput]]
INITIAL_OFFSET = 5  # tokens of context a slow tokenizer's incremental decode starts from, as in vLLM


class TextStream:
    """vLLM's incremental detokenization of one generation: text per new token, relative to the prompt ids.

    Fast tokenizers use ``tokenizers``' ``DecodeStream`` prefilled with the prompt (as vLLM does) and vLLM's rule for
    consecutive added tokens; others decode a short window. Each step decodes a few tokens, never the whole text.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], skip_special: bool = False, spaces: bool = False):
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self.backend = getattr(tokenizer, "_tokenizer", None)
        self.added: dict[int, str] = {}
        self.last_special = False
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=skip_special)
            if not (skip_special or spaces):
                self.added = {tid: tok.content for tid, tok in self.backend.get_added_tokens_decoder().items()}
        else:
            self.ids = list(prompt_ids)
            self.prefix_offset = max(len(self.ids) - INITIAL_OFFSET, 0)
            self.read_offset = len(self.ids)

    def step(self, token_id: int) -> str:
        if self.backend is None:
            return self._slow_step(token_id)
        try:
            piece = self.stream.step(self.backend, token_id)
        except Exception:  # tokenizers' non-monotonic UTF-8 edge case: vLLM restarts the stream the same way
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=self.skip_special)
            piece = self.stream.step(self.backend, token_id)
        if self.added:
            special = self.added.get(token_id)
            if special is not None and self.last_special:
                piece = special
            self.last_special = special is not None
        return piece or ""

    def _slow_step(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip_special)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=self.skip_special)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def text_of(self, token_ids: Sequence[int]) -> str:
        return "".join(self.step(t) for t in token_ids)


def engine_text(tokenizer: Any, params: Sampling) -> Callable[[list[int], list[int]], str]:
    """(context ids, new ids) -> the text vLLM would show for the new ids."""
    return lambda context, ids: TextStream(
        tokenizer, context, params.skip_special_tokens, params.spaces_between_special_tokens
    ).text_of(ids)


def find_stop(text: str, new_chars: int, stops: Sequence[str]) -> int | None:
    """vLLM's stop-string check after one token: the start of the earliest-ending stop that ends in the new chars."""
    if not new_chars or not stops:
        return None
    best_index, best_end = None, None
    for stop in stops:
        index = text.find(stop, 1 - new_chars - len(stop))
        if index == -1:
            continue
        end = index + len(stop)
        if best_end is None or end < best_end:
            best_index, best_end = index, end
    return best_index


class EngineRow:
    """vLLM's bookkeeping for one generation, fed one token at a time (used by the HF driver)."""

    def __init__(self, tokenizer: Any, step: Step, max_length: int, eos_ids: Sequence[int]) -> None:
        p = step.params
        self.limit = min(p.max_tokens, max_length - len(step.prefix))
        self.stops = set(p.stop_token_ids) | set(eos_ids)
        self.stop_strings, self.min_tokens = list(p.stop), p.min_tokens
        self.stream = TextStream(tokenizer, step.prefix, p.skip_special_tokens, p.spaces_between_special_tokens)
        self.ids: list[int] = []
        self.text = ""
        self.finish: str | None = None

    def push(self, token: int) -> bool:
        """Add a generated token; True once the generation is finished."""
        self.ids.append(token)
        if token in self.stops:
            self.finish = "stop"  # the stop/eos token stays in the ids, not in the text
            return True
        piece = self.stream.step(token)
        self.text += piece
        if self.stop_strings and len(self.ids) > self.min_tokens:
            index = find_stop(self.text, len(piece), self.stop_strings)
            if index is not None:
                self.text, self.finish = self.text[:index], "stop"
                return True
        if len(self.ids) >= self.limit:
            self.finish = "length"
            return True
        return False

    def output(self) -> StepOutput:
        return StepOutput(self.ids, self.text, self.finish or "length")


def check_room(step: Step, max_length: int) -> None:
    if len(step.prefix) >= max_length:
        raise PruneConfigError(
            f"a generation prompt of {len(step.prefix)} tokens reaches max_length={max_length}; "
            "raise max_length (max_model_len) or lower max_gen_toks / max_tokens_thinking"
        )


def eos_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The tokenizer's EOS plus the generation config's (Qwen lists several): vLLM stops on all of them."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    extra = getattr(generation_config, "eos_token_id", None)
    for value in [] if extra is None else ([extra] if isinstance(extra, int) else list(extra)):
        if value not in ids:
            ids.append(value)
    return ids


# ----------------------------------------------------------------------------------------------- drivers
def hf_run_steps(model: Any, tokenizer: Any, max_length: int, batch_size: int = 8) -> RunSteps:
    """Steps on ``model.generate``: steps with equal params in left-padded batches, seeded steps one at a time."""
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    class Engine(StoppingCriteria):
        """Feeds each row's new token to its :class:`EngineRow`; a row is done when vLLM would finish it."""

        def __init__(self, rows: list[EngineRow]) -> None:
            self.rows = rows

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            last = input_ids[:, -1].tolist()
            done = [row.finish is not None or row.push(token) for row, token in zip(self.rows, last, strict=True)]
            return torch.tensor(done, device=input_ids.device)

    def run_batch(steps: list[Step]) -> list[StepOutput]:
        p = steps[0].params
        rows = [EngineRow(tokenizer, step, max_length, eos) for step in steps]
        width = max(len(step.prefix) for step in steps)
        ids = torch.full((len(steps), width), pad, dtype=torch.long)
        mask = torch.zeros((len(steps), width), dtype=torch.long)
        for r, step in enumerate(steps):
            ids[r, width - len(step.prefix) :] = torch.tensor(step.prefix)
            mask[r, width - len(step.prefix) :] = 1
        sample = p.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(row.limit for row in rows),
            min_new_tokens=p.min_tokens,
            do_sample=sample,
            temperature=p.temperature if sample else 1.0,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p if sample and p.min_p > 0 else None,
            repetition_penalty=p.repetition_penalty,
            eos_token_id=sorted(rows[0].stops),
            pad_token_id=pad,
        )
        if p.seed is not None:
            torch.manual_seed(p.seed)
        with torch.no_grad():
            model.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([Engine(rows)]),
            )
        return [row.output() for row in rows]

    def run(steps: list[Step]) -> list[StepOutput]:
        for step in steps:
            check_room(step, max_length)
        results: list[StepOutput | None] = [None] * len(steps)
        groups: dict[Any, list[int]] = {}
        for index, step in enumerate(steps):
            # alone: a seed per request cannot be honoured in a batch, and HF's repetition penalty would count the
            # left-padding tokens (vLLM counts prompt and output only)
            alone = step.params.seed is not None or step.params.repetition_penalty != 1.0
            key = ("alone", index) if alone else step.params
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            members.sort(key=lambda i: len(steps[i].prefix))
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                for index, output in zip(chunk, run_batch([steps[i] for i in chunk]), strict=True):
                    results[index] = output
        return [r for r in results if r is not None]

    return run


def vllm_run_steps(llm: Any, max_length: int) -> RunSteps:
    """Each round's steps as one vLLM batch (token-id prompts, per-step SamplingParams)."""
    from vllm import SamplingParams, TokensPrompt

    def run(steps: list[Step]) -> list[StepOutput]:
        for step in steps:
            check_room(step, max_length)
        params = [
            SamplingParams(
                max_tokens=s.params.max_tokens,
                min_tokens=s.params.min_tokens,
                temperature=s.params.temperature,
                top_p=s.params.top_p,
                top_k=s.params.top_k,
                min_p=s.params.min_p,
                repetition_penalty=s.params.repetition_penalty,
                seed=s.params.seed,
                stop=list(s.params.stop) or None,
                stop_token_ids=list(s.params.stop_token_ids) or None,
                skip_special_tokens=s.params.skip_special_tokens,
                spaces_between_special_tokens=s.params.spaces_between_special_tokens,
            )
            for s in steps
        ]
        prompts = [TokensPrompt(prompt_token_ids=s.prefix) for s in steps]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return [
            StepOutput(list(o.outputs[0].token_ids), o.outputs[0].text, str(o.outputs[0].finish_reason))
            for o in outputs
        ]

    return run
