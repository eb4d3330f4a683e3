"""One lm-eval model per (model, variant): ``pruned-hf`` / ``pruned-vllm`` whose step driver goes through the ladder.

The adapters build their step driver inside ``generate_until`` from ``generation.drivers.hf_run_steps`` /
``vllm_run_steps`` (looked up at call time). These subclasses run the adapter's own ``generate_until`` with that
factory wrapped by the unit's :class:`~lm_eval_prune.study.ladder.StepCache`, so the adapters' batching, budget
forcing and fallbacks stay theirs. (Once the adapters take a ``run_steps`` wrapper, this becomes an attribute.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lm_eval_prune.study.ladder import StepCache, engine_text_of


@contextlib.contextmanager
def _wrapped_driver(name: str, cache: StepCache) -> Iterator[None]:
    """``generation.drivers.<name>`` returns drivers wrapped by ``cache`` while the block runs (this process only)."""
    from lm_eval_prune.generation import drivers

    original = getattr(drivers, name)
    setattr(drivers, name, lambda *args, **kwargs: cache.wrap(original(*args, **kwargs)))
    try:
        yield
    finally:
        setattr(drivers, name, original)


def make_hf(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-hf`` model (pruned once, through the prune pipeline) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.hf import PrunedHFLM

    class StudyHFLM(PrunedHFLM):
        step_cache: StepCache

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            with _wrapped_driver("hf_run_steps", self.step_cache):
                return super().generate_until(requests, disable_tqdm)

    lm = StudyHFLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    return lm


def make_vllm(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-vllm`` model (one engine for the whole unit) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.vllm import PrunedVLLM

    class StudyVLLM(PrunedVLLM):
        step_cache: StepCache

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            with _wrapped_driver("vllm_run_steps", self.step_cache):
                return super().generate_until(requests, disable_tqdm)

    lm = StudyVLLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    return lm


def make_lm(backend: str, pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    return (make_hf if backend == "hf" else make_vllm)(pretrained, model_args, ladder)
