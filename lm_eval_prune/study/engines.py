"""One lm-eval model per (model, variant): ``pruned-hf`` / ``pruned-vllm`` whose step driver goes through the ladder.

The adapters build their step driver inside ``generate_until``; these subclasses repeat those few lines with the
driver wrapped by :class:`~lm_eval_prune.study.ladder.StepCache`. (Once the adapters take a ``run_steps`` wrapper
hook, these become one-line subclasses; see the study README section.)
"""

from __future__ import annotations

from typing import Any

from lm_eval_prune.study.ladder import StepCache, engine_text_of


def make_hf(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-hf`` model (pruned once, through the prune pipeline) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.hf import PrunedHFLM

    class StudyHFLM(PrunedHFLM):
        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            from lm_eval_prune.generation.drivers import budget_forced_generate_until, hf_run_steps

            rows = self.batch_size if isinstance(self.batch_size, int) else 8
            return budget_forced_generate_until(
                requests,
                self.tokenizer,
                add_bos_token=bool(self.add_bos_token),
                max_length=self.max_length,
                default_max_gen_toks=self.max_gen_toks,
                batch_size=self.batch_size,
                run_steps=self.step_cache.wrap(hf_run_steps(self.model, self.tokenizer, self.max_length, rows)),
                plain_generate_until=lambda plain: super(StudyHFLM, self).generate_until(plain, disable_tqdm),
                cache_hook=self.cache_hook,
            )

    lm = StudyHFLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    return lm


def make_vllm(pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    """A ``pruned-vllm`` model (one engine for the whole unit) with a :class:`StepCache` on its driver."""
    from lm_eval_prune.harness.vllm import PrunedVLLM

    class StudyVLLM(PrunedVLLM):
        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            from lm_eval_prune.generation.drivers import budget_forced_generate_until, vllm_run_steps

            if getattr(self, "data_parallel_size", 1) > 1:
                return super().generate_until(requests, disable_tqdm)  # refuses budget forcing with one line
            return budget_forced_generate_until(
                requests,
                self.tokenizer,
                add_bos_token=bool(self.add_bos_token),
                max_length=self.max_length,
                default_max_gen_toks=self.max_gen_toks,
                batch_size=self.batch_size,
                run_steps=self.step_cache.wrap(vllm_run_steps(self.model, self.max_length)),
                plain_generate_until=lambda plain: super(PrunedVLLM, self).generate_until(plain, disable_tqdm),
                cache_hook=self.cache_hook,
            )

    lm = StudyVLLM(pretrained=pretrained, **model_args)
    lm.step_cache = StepCache(engine_text_of(lm.tokenizer), enabled=ladder)
    return lm


def make_lm(backend: str, pretrained: str, model_args: dict[str, Any], ladder: bool) -> Any:
    return (make_hf if backend == "hf" else make_vllm)(pretrained, model_args, ladder)
