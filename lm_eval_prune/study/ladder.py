"""The budget ladder: generate once at the largest budget, derive every smaller budget's generations from it.

It depends on one interface only, the step driver of :mod:`lm_eval_prune.generation`: a policy asks for
:class:`Step` s (continue ``prefix`` under vLLM-style ``params``) and gets :class:`StepOutput` s back. Budget forcing
runs at budget ``b`` ask for the same steps as at budget ``B > b`` except that thinking rounds carry
``max_tokens = b``. Decoding is autoregressive and ``max_tokens`` changes no token's distribution, so a step's output
under ``max_tokens = b`` is the one under ``B`` truncated: the same ids when that one stopped within ``b`` tokens, else
its first ``b`` ids ending on ``"length"``. :class:`StepCache` records every step a run asks for and answers a later
step with the same prefix and the same params (but a ``max_tokens`` no larger) from the record; everything else goes to
the engine. The policy (s1's cut rule, ``Final Answer:``) runs unchanged at every budget, so the ladder needs no copy
of it. Running the budgets largest first, the thinking is generated once, and answers are reused wherever the thinking
ended before the smaller budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lm_eval_prune.generation.protocol import Sampling, Step, StepOutput

RunSteps = Callable[[list[Step]], list[StepOutput]]
TextOf = Callable[[Step, list[int]], str]  # (step, first ids of its output) -> the engine's text of those ids


def _key(step: Step) -> tuple[tuple[int, ...], Sampling]:
    return tuple(step.prefix), dataclasses.replace(step.params, max_tokens=0)


def truncate(recorded: StepOutput, max_tokens: int, step: Step, text_of: TextOf) -> StepOutput:
    """The output ``step`` (asking ``max_tokens``) gets, given the output of the same step with more tokens allowed.

    Stopped within the budget: the same output. Longer: the first ``max_tokens`` ids, finish ``"length"`` (no stop
    token or stop string ends inside them, or the recorded run would have stopped there). Shorter but ``"length"``:
    the engine's context limit cut both, so the same output.
    """
    if len(recorded.token_ids) <= max_tokens:
        return recorded
    ids = list(recorded.token_ids[:max_tokens])
    return StepOutput(ids, text_of(step, ids), "length")


@dataclass
class Counts:
    """Tokens the engine generated and tokens served from the record, thinking steps apart from all steps."""

    generated: int = 0
    served: int = 0
    thinking_generated: int = 0
    thinking_served: int = 0
    steps_run: int = 0
    steps_served: int = 0

    def add(self, other: Counts) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class StepCache:
    """Records steps and answers the ones a larger ``max_tokens`` already covered (see the module docstring).

    ``enabled=False`` only counts (the separate-runs baseline). Thinking tokens are counted by step kind: every step
    the policy does not mark ``final`` is a thinking round, so an answer step whose ``max_gen_toks`` equals the budget
    is still an answer.
    """

    def __init__(self, text_of: TextOf, enabled: bool = True) -> None:
        self.text_of, self.enabled = text_of, enabled
        self.record: dict[tuple[tuple[int, ...], Sampling], tuple[int, StepOutput]] = {}
        self.counts = Counts()

    def clear(self) -> None:
        """Forget the record (between (task, seed) groups: nothing there can match again)."""
        self.record.clear()

    def lookup(self, step: Step) -> StepOutput | None:
        if not self.enabled:
            return None
        found = self.record.get(_key(step))
        if found is None or found[0] < step.params.max_tokens:
            return None
        return truncate(found[1], step.params.max_tokens, step, self.text_of)

    def remember(self, step: Step, output: StepOutput) -> None:
        if not self.enabled:
            return
        key = _key(step)
        if key not in self.record or self.record[key][0] < step.params.max_tokens:
            self.record[key] = (step.params.max_tokens, output)

    def _count(self, step: Step, output: StepOutput, served: bool) -> None:
        n = len(output.token_ids)
        thinking = not step.final
        c = self.counts
        if served:
            c.served, c.steps_served = c.served + n, c.steps_served + 1
            c.thinking_served += n if thinking else 0
        else:
            c.generated, c.steps_run = c.generated + n, c.steps_run + 1
            c.thinking_generated += n if thinking else 0

    def wrap(self, run_steps: RunSteps) -> RunSteps:
        """``run_steps`` answering recorded steps from the record and recording the rest."""

        def run(steps: list[Step]) -> list[StepOutput]:
            outputs: list[StepOutput | None] = [self.lookup(step) for step in steps]
            missing = [i for i, out in enumerate(outputs) if out is None]
            fresh = run_steps([steps[i] for i in missing]) if missing else []
            for i, out in zip(missing, fresh, strict=True):
                outputs[i] = out
                self.remember(steps[i], out)
            done = [out for out in outputs if out is not None]
            for i, (step, out) in enumerate(zip(steps, done, strict=True)):
                self._count(step, out, i not in set(missing))
            return done

        return run


def engine_text_of(tokenizer: Any) -> TextOf:
    """The text the engine shows for the first ids of a step's output (the drivers' incremental detokenization)."""
    from lm_eval_prune.generation.drivers import engine_text

    return lambda step, ids: engine_text(tokenizer, step.params)(step.prefix, ids)


def ladder_order(budgets: list[int], ladder: bool) -> list[int]:
    """Budgets largest first with the ladder (the largest run records what the others reuse), else as given."""
    return sorted(budgets, reverse=True) if ladder else list(budgets)
