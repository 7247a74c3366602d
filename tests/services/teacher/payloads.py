"""Request bodies and independent reference computations shared by the teacher tests."""

from __future__ import annotations

import numpy as np
import torch

QUESTION = "A ball is dropped from 20 m. How long does it take to reach the ground? (g = 9.8 m/s^2)"
REFERENCE = "t = sqrt(2h/g) = sqrt(40/9.8) = 2.02 s"
RUBRIC = [
    {
        "title": "Uses free-fall kinematics",
        "description": "Applies h = g t^2 / 2 with zero initial speed.",
        "weight": 8,
    },
    {"title": "Correct final value", "description": "States t close to 2.0 s with units.", "weight": 9},
    {
        "title": "Wrong sign of g",
        "description": "Treats g as negative and takes a root of a negative.",
        "weight": -1,
    },
]
TOLERANCE = {"hf": 1e-4, "vllm": 1e-4}


def random_completions(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def group(mode: str, completions: list[list[int]], **extra: object) -> dict:
    body: dict = {"question": QUESTION, "context_mode": mode, "completions": completions}
    if "reference" in mode:
        body["reference_answer"] = REFERENCE
    if "rubric" in mode:
        body["rubric"] = RUBRIC
    return {**body, **extra}


@torch.inference_mode()
def plain_logprobs(
    model: torch.nn.Module, context_ids: list[int], completion: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """log p(completion_t | ...) rows from one plain forward over context + completion: [T, V]."""
    logits = model(torch.tensor([context_ids + completion])).logits[0].float()
    return torch.log_softmax(logits / temperature, dim=-1)[len(context_ids) - 1 : -1]


def assert_matches_reference(
    scores: dict, rows_T_V: torch.Tensor, completion: list[int], top_k: int, tolerance: float
) -> None:
    assert list(scores["token_ids"]) == completion
    expected = rows_T_V.gather(-1, torch.tensor(completion)[:, None])[:, 0].numpy()
    logprobs = np.asarray(scores["logprobs"])
    assert logprobs.shape == (len(completion),)
    np.testing.assert_allclose(logprobs, expected, atol=tolerance, rtol=0)
    if top_k == 0:
        assert scores["topk_ids"] is None
        return
    values, indices = rows_T_V.topk(top_k, dim=-1)
    np.testing.assert_allclose(np.asarray(scores["topk_logprobs"]), values.numpy(), atol=tolerance, rtol=0)
    # ids must agree except where two candidates tie within the tolerance
    got_ids = np.asarray(scores["topk_ids"])
    got_values = rows_T_V.gather(-1, torch.tensor(got_ids, dtype=torch.long)).numpy()
    np.testing.assert_allclose(got_values, values.numpy(), atol=tolerance, rtol=0)
