"""Named studies: ``--preset tts-pruning`` is the seed paper's grid (arXiv 2604.25098).

``--models`` and ``--limit`` narrow it.
"""

from __future__ import annotations

import copy
from typing import Any

from lm_eval_prune.errors import PruneConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "tts-pruning": {
        "models": ["simplescaling/s1.1-7B", "Qwen/Qwen3-8B"],
        "backend": "vllm",
        "model_args": {"dtype": "bfloat16", "tensor_parallel_size": 1},
        "calibration": {"source": "c4", "nsamples": 128, "seqlen": 2048, "seed": 0},
        "variants": [
            {"method": "none"},
            {"method": ["magnitude", "wanda"], "alloc": ["uniform", "owl", "layerif"], "sparsity": [0.1, 0.2]},
            {"method": "shortgpt", "drop_layers": [1, 2]},
        ],
        "tasks": ["tts_aime24", "tts_amc23", "tts_math500", "tts_gpqa_diamond"],
        "budgets": [512, 1024, 2048, 4096, 8192],
        "gen_kwargs": {"thinking_n_ignore": 1, "temperature": 0.6, "top_p": 0.95, "do_sample": True},
        "seeds": [0, 1, 2],
        "data_dir": None,
    }
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of the named study (to narrow or override)."""
    if name not in PRESETS:
        raise PruneConfigError(f"--preset {name!r} is not known; presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])
