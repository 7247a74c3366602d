"""The released reason-first analysis (`teacher.reason_first`): sampled by the rollout engine, recorded.

Every step, one analysis per question of the teacher's privileged context, as the release does it
(carriegu0818/RCSD rcsd_trainer_reward.py L1147-1248): sampled from the weights that sample the answers
(the current student), with the rollouts' temperature, top_p and top_k and its own token budget, after
the reason-first prompt (privileged context + "Briefly explain ... Do NOT solve the question yet").
The teacher then scores the answers after [that prompt + the analysis ids + the transition]
(`rcsd.client.prompts.teacher_context`). Not cached: the student changes every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import Question
from rcsd.trainer.rollout import Rollout, RolloutEngine, SamplingParams
from rcsd.trainer.service_calls import Rubric
from rcsd.trainer.tasks import AnsweringQuestions


def sample_analyses(
    engine: RolloutEngine,
    task: AnsweringQuestions,
    tokenizer: Any,
    config: TrainConfig,
    mine: list[tuple[int, Question]],
    rubrics: list[Rubric | None],
) -> list[Rollout]:
    """One analysis per question of `mine` (data position, question), in one call to the engine."""
    prompts = [
        task.analysis_prompt_ids(tokenizer, question, rubric)
        for (_, question), rubric in zip(mine, rubrics, strict=True)
    ]
    params = SamplingParams(
        max_new_tokens=config.teacher.analysis_max_tokens,
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
        # seeded by the run's seed and the step's first data position, apart from the rollouts' seeds
        seed=int(np.random.default_rng([config.seed, mine[0][0], 1]).integers(2**31 - 1)),
    )
    return [rollouts[0] for rollouts in engine.sample(prompts, params, n=1)]


def analyses_file(run_dir: Path, rank: int) -> Path:
    """`analyses.jsonl` in the run folder (rank 0), `analyses.rank<N>.jsonl` for the other ranks."""
    return run_dir / ("analyses.jsonl" if rank == 0 else f"analyses.rank{rank}.jsonl")


def record_analyses(
    path: Path, step: int, mine: list[tuple[int, Question]], analyses: list[Rollout], tokenizer: Any
) -> None:
    """One JSON line per analysis: the step (1-based), the question, its token ids and their text."""
    with path.open("a", encoding="utf-8") as out:
        for (position, question), analysis in zip(mine, analyses, strict=True):
            record = {
                "step": step,
                "position": position,
                "question_id": question.id,
                "tokens": len(analysis.completion_ids),
                "truncated": analysis.truncated,
                "text": tokenizer.decode(analysis.completion_ids, skip_special_tokens=True),
                "token_ids": analysis.completion_ids,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
