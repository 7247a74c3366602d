"""Streamed rollouts: every request in flight at once, each keeps its own seed, yielded as it finishes."""

from __future__ import annotations

import time

from rcsd.trainer.rollout.base import Rollout, SamplingParams
from rcsd.trainer.rollout.vllm import VllmRollout


def _stub_engine() -> VllmRollout:
    engine = VllmRollout.__new__(VllmRollout)  # no server: `_complete` is replaced below
    engine.max_concurrency = 8
    seen: list[tuple[list[int], int, int]] = []

    def complete(prompt: list[int], params: SamplingParams, n: int, seed: int) -> list[Rollout]:
        time.sleep(0.05 * (3 - prompt[0]))  # the first request finishes last
        seen.append((prompt, n, seed))
        return [Rollout(list(prompt), [seed, k], False) for k in range(n)]

    engine._complete = complete  # type: ignore[method-assign]
    engine.seen = seen  # type: ignore[attr-defined]
    return engine


def test_sample_stream_keeps_each_request_seed_and_yields_in_finish_order() -> None:
    engine = _stub_engine()
    requests = [([i], SamplingParams(max_new_tokens=4, seed=100 + i)) for i in range(3)]
    started = time.perf_counter()
    out = list(engine.sample_stream(requests, n=2))
    elapsed = time.perf_counter() - started
    assert [i for i, _ in out] == [2, 1, 0]  # as each finishes, not in submission order
    assert elapsed < 0.25  # in parallel: 0.15 s of the slowest, not 0.30 s of the sum
    by_index = dict(out)
    for i in range(3):
        assert by_index[i] == [Rollout([i], [100 + i, k], False) for k in range(2)]
