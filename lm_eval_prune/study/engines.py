"""One lm-eval model per (model, variant): ``pruned-hf`` / ``pruned-vllm`` whose step driver goes through the ladder.

The adapters take a ``run_steps_wrapper``: the unit's :class:`~lm_eval_prune.study.ladder.StepCache` wraps their step
driver, so the adapters' batching, budget forcing and fallbacks stay theirs and the ladder only answers steps.
"""

from __future__ import annotations

from typing import Any

from lm_eval_prune.study.ladder import StepCache, engine_text_of


def make_hf(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-hf`` model (pruned once, through the prune pipeline) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.hf import PrunedHFLM

    lm = PrunedHFLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    lm.run_steps_wrapper = lm.step_cache.wrap
    return lm


def make_vllm(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-vllm`` model (one engine for the whole unit) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.vllm import PrunedVLLM

    lm = PrunedVLLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    lm.run_steps_wrapper = lm.step_cache.wrap
    return lm


def make_lm(backend: str, pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    return (make_hf if backend == "hf" else make_vllm)(pretrained, model_args, ladder)
