"""``pruned-hf``: lm-eval's HFLM that prunes the model right after loading it (or loads it from the prune cache)."""

from __future__ import annotations

import inspect
from typing import Any

from lm_eval.models.huggingface import HFLM

from lm_eval_prune.harness.common import PruneResultMixin
from lm_eval_prune.store.identity import BaseModel
from lm_eval_prune.store.pipeline import (
    PipelineResult,
    PruneRequest,
    check_before_load,
    prune_in_place,
    split_model_args,
)

HFLM_KEYS = frozenset(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}


class PrunedHFLM(PruneResultMixin, HFLM):
    """HFLM plus the engine's model args (``method``, ``alloc``, ``sparsity``, ... , ``prune_cache``).

    Keys HFLM also has (``device``) stay HFLM's: pruning runs where HFLM put the model.
    """

    def __init__(self, pretrained: Any = None, **kwargs: Any) -> None:
        self._prune_request, rest = split_model_args(kwargs, HFLM_KEYS)
        if isinstance(pretrained, str) and not self._prune_request.dense:
            from lm_eval_prune.store.checkpoint import load_config_and_tokenizer

            model_config, _ = load_config_and_tokenizer(pretrained, rest.get("revision"))
            check_before_load(self._prune_request.config, model_config)  # every known error before weights load
        self.prune_result: PipelineResult | None = None
        super().__init__(pretrained=pretrained, **rest)
        if self.prune_result is None:  # a model object was passed: no _create_model call
            # its weights may differ from what its name says (fine-tuned, edited): never serve it from the cache
            self._prune_request = PruneRequest(self._prune_request.config, None)
            self._prune_in_place(getattr(self._model.config, "_name_or_path", "model"), None)

    def _create_model(self, pretrained: str, revision: str | None = "main", **kwargs: Any) -> None:
        super()._create_model(pretrained=pretrained, revision=revision, **kwargs)
        self._prune_in_place(pretrained, revision)

    def _prune_in_place(self, pretrained: str, revision: str | None) -> None:
        dtype = str(next(self._model.parameters()).dtype).replace("torch.", "")
        base = BaseModel(pretrained, revision, dtype)
        self.prune_result = prune_in_place(self._model, self.tokenizer, base, self._prune_request)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's generation, plus s1 budget forcing (and per-request seeds) for requests whose gen_kwargs ask."""
        from lm_eval_prune.generation.drivers import hf_run_steps

        rows = self.batch_size if isinstance(self.batch_size, int) else 8  # rows per model.generate call
        return self._budget_forced(
            requests,
            hf_run_steps(self.model, self.tokenizer, self.max_length, rows),
            lambda plain: super(PrunedHFLM, self).generate_until(plain, disable_tqdm),
        )

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info.update(self.prune_info())
        return info
