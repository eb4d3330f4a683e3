"""Budget-forced ``generate_until`` for lm-eval requests: s1's batching of ``Instance``s with lm-eval's Collator.

The protocol (:mod:`lm_eval_prune.generation.protocol`) and the step drivers know nothing of lm-eval; this module
turns requests into policies batch by batch, exactly as s1's ``generate_until`` chunks them, and runs each batch with
:func:`~lm_eval_prune.generation.protocol.drive` so the engine gets the calls s1 makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lm_eval.models.utils import Collator

from lm_eval_prune.generation.drivers import RunSteps, engine_text
from lm_eval_prune.generation.protocol import (
    Encoded,
    Policy,
    Sampling,
    drive,
    is_driven,
    parse_gen_kwargs,
    plain_policy,
    s1_policy,
    thinking_budget,
)


def chunk_size(batch_size: int | str) -> int:
    """lm-eval's batch size as the Collator's ``n``: 0 (one chunk per gen_kwargs group) for ``auto`` / ``auto:N``."""
    return 0 if str(batch_size).startswith("auto") else int(batch_size)


def batch_policies(
    chunk: Sequence[tuple[tuple[str, list[int], int], dict[str, Any] | None]],
    tokenizer: Any,
    encode: Callable[[str], list[int]],
    *,
    max_length: int,
    default_max_gen_toks: int,
) -> list[Policy]:
    """One Collator chunk (same gen_kwargs) as policies: prompts cut to ``max_length - max_gen_toks`` as s1 cuts them,
    ``auto`` budgets from the chunk's longest (cut) prompt."""
    eos_text = tokenizer.decode(tokenizer.eos_token_id)
    plans = [
        parse_gen_kwargs(kw or {}, eos_text, default_max_gen_toks, tokenizer, index) for (_, _, index), kw in chunk
    ]
    context_len = max_length - plans[0].max_gen_toks
    prompts = [ids[-context_len:] for (_, ids, _), _ in chunk]
    longest = max(len(ids) for ids in prompts)
    policies: list[Policy] = []
    for plan, prompt in zip(plans, prompts, strict=True):
        if plan.thinking is None:
            policies.append(plain_policy(prompt, plan))
            continue
        encoded = Encoded.of(plan, encode)
        budget = thinking_budget(plan, encoded, longest)
        special = {key: value for key, value in plan.thinking.items() if "special" in key}
        detok = engine_text(tokenizer, Sampling.build(1, special))
        policies.append(s1_policy(prompt, plan, encoded, budget, detok))
    return policies


def budget_forced_generate_until(
    requests: Sequence[Any],
    tokenizer: Any,
    *,
    add_bos_token: bool,
    max_length: int,
    default_max_gen_toks: int,
    batch_size: int | str,
    run_steps: RunSteps,
    plain_generate_until: Callable[[list[Any]], list[str]],
    cache_hook: Any = None,
) -> list[str]:
    """s1's ``generate_until`` for the requests :func:`is_driven` picks; the others go through lm-eval's own path.

    Batching is s1's: lm-eval's Collator groups by gen_kwargs, sorts longest prompt first, cuts ``batch_size`` chunks
    (one per group for ``auto``); each chunk runs to its end (thinking rounds, then answers) before the next, as in s1.
    It matters: ``max_tokens_thinking=auto`` uses the chunk's longest prompt, and batch composition can move numerics.
    """
    responses: list[str] = [""] * len(requests)
    driven = [i for i, r in enumerate(requests) if is_driven(r.args[1])]
    chosen = set(driven)
    plain = [i for i in range(len(requests)) if i not in chosen]
    if plain:
        for index, text in zip(plain, plain_generate_until([requests[i] for i in plain]), strict=True):
            responses[index] = text
    if not driven:
        return responses

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_bos_token)["input_ids"])

    items = [((requests[i].args[0], encode(requests[i].args[0]), i), requests[i].args[1]) for i in driven]
    collator = Collator(items, lambda item: (-len(item[0][1]), item[0][0]), group_by="gen_kwargs")
    for chunk in collator.get_batched(n=chunk_size(batch_size), batch_fn=None):
        policies = batch_policies(
            chunk, tokenizer, encode, max_length=max_length, default_max_gen_toks=default_max_gen_toks
        )
        for ((_, _, index), _), response in zip(chunk, drive(policies, run_steps), strict=True):
            responses[index] = response
            if cache_hook is not None:
                cache_hook.add_partial("generate_until", requests[index].args, response)
    return responses
