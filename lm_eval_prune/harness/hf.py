"""``pruned-hf``: lm-eval's HFLM that prunes the model right after loading it (or loads it from the prune cache)."""

from __future__ import annotations

import inspect
from typing import Any

from lm_eval.models.huggingface import HFLM

from lm_eval_prune.store.pipeline import prune_loaded_model_, split_model_args, summary

HFLM_KEYS = frozenset(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}


class PrunedHFLM(HFLM):
    """HFLM plus the engine's model args (``method``, ``alloc``, ``sparsity``, ... , ``prune_cache``).

    Keys HFLM also has (``device``) stay HFLM's: pruning runs where HFLM put the model.
    """

    def __init__(self, pretrained: Any = None, **kwargs: Any) -> None:
        self._prune_request, rest = split_model_args(kwargs, HFLM_KEYS)
        if isinstance(pretrained, str) and not self._prune_request.dense:
            from lm_eval_prune.store.checkpoint import load_config_and_tokenizer

            load_config_and_tokenizer(
                pretrained, rest.get("revision")
            )  # unsupported architecture: refused before weights load
        self.prune_report = None
        super().__init__(pretrained=pretrained, **rest)
        if self.prune_report is None:  # a model object was passed: no _create_model call
            self._prune_in_place(getattr(self._model.config, "_name_or_path", "model"), None)

    def _create_model(self, pretrained: str, revision: str | None = "main", **kwargs: Any) -> None:
        super()._create_model(pretrained=pretrained, revision=revision, **kwargs)
        self._prune_in_place(pretrained, revision)

    def _prune_in_place(self, pretrained: str, revision: str | None) -> None:
        self.prune_report, self.prune_cache_status, self.prune_cache_key = prune_loaded_model_(
            self._model, self.tokenizer, pretrained, revision, self._prune_request
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's generation, plus s1 budget forcing for requests whose gen_kwargs ask for it."""
        from lm_eval_prune.generation.drivers import generate_until_with_budget_forcing, hf_run_steps, prompt_encoder

        batch = self.batch_size if isinstance(self.batch_size, int) else 8  # "auto" sizes lm-eval's own batches only
        return generate_until_with_budget_forcing(
            requests,
            self.tokenizer,
            prompt_encoder(self.tokenizer, bool(self.add_bos_token)),
            self.max_gen_toks,
            hf_run_steps(self.model, self.tokenizer, self.max_length, batch),
            lambda plain: super(PrunedHFLM, self).generate_until(plain, disable_tqdm),
        )

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info.update(summary(self.prune_report, self.prune_cache_status, self.prune_cache_key))
        return info
