"""What both lm-eval adapters expose about their prune (one place, so ``pruned-hf`` and ``pruned-vllm`` agree)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.store.pipeline import PipelineResult, summary


class PruneResultMixin:
    """``prune_result`` (set by the adapter) read as the report, the cache status and the identity."""

    prune_result: PipelineResult | None = None
    # wraps the step driver of budget-forced generation (the study's budget ladder serves steps from it); None: as is
    run_steps_wrapper: Callable[[Any], Any] | None = None

    def _driver(self, run_steps: Any) -> Any:
        return self.run_steps_wrapper(run_steps) if self.run_steps_wrapper is not None else run_steps

    def _budget_forced(self, requests: list[Any], run_steps: Any, plain: Callable[[list[Any]], list[str]]) -> list[str]:
        """s1's generate_until over ``run_steps`` (batched as s1 batches); requests without thinking go to ``plain``."""
        from lm_eval_prune.harness.budget import budget_forced_generate_until

        lm: Any = self  # an HFLM or VLLM: tokenizer, add_bos_token, max_length, ... are theirs
        return budget_forced_generate_until(
            requests,
            lm.tokenizer,
            add_bos_token=bool(lm.add_bos_token),
            max_length=lm.max_length,
            default_max_gen_toks=lm.max_gen_toks,
            batch_size=lm.batch_size,
            run_steps=self._driver(run_steps),
            plain_generate_until=plain,
            cache_hook=lm.cache_hook,
        )

    @property
    def prune_report(self) -> PruneReport | None:
        return self.prune_result.report if self.prune_result else None

    @property
    def prune_cache_status(self) -> str | None:
        return self.prune_result.status if self.prune_result else None

    @property
    def prune_cache_key(self) -> str | None:
        return self.prune_result.identity if self.prune_result else None

    def prune_info(self) -> dict[str, Any]:
        """``config.prune`` of lm-eval's results JSON."""
        return summary(self.prune_result) if self.prune_result else {}
