"""What both lm-eval adapters expose about their prune (one place, so ``pruned-hf`` and ``pruned-vllm`` agree)."""

from __future__ import annotations

from typing import Any

from lm_eval_prune.engine.report import PruneReport
from lm_eval_prune.store.pipeline import PipelineResult, summary


class PruneResultMixin:
    """``prune_result`` (set by the adapter) read as the report, the cache status and the identity."""

    prune_result: PipelineResult | None = None

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
