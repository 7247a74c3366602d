"""Padded tensors from teacher responses, checked element by element."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcsd.client import CompletionScores, TeacherResponse, to_padded_tensors


def response(completions: list[CompletionScores]) -> TeacherResponse:
    return TeacherResponse(
        completions=completions,
        context_length=3,
        model="m",
        model_revision="r",
        tokenizer_hash="h",
        backend="hf",
        template_version="v1",
    )


def scores(ids: list[int], k: int) -> CompletionScores:
    logprobs_T = -np.arange(1, len(ids) + 1, dtype=np.float32)
    if not k:
        return CompletionScores(token_ids=ids, logprobs=logprobs_T)
    topk_ids_T_K = np.array(ids)[:, None] + np.arange(k)[None, :]
    topk_logprobs_T_K = logprobs_T[:, None] - np.arange(k, dtype=np.float32)[None, :]
    return CompletionScores(
        token_ids=ids, logprobs=logprobs_T, topk_ids=topk_ids_T_K, topk_logprobs=topk_logprobs_T_K
    )


def test_padded_tensors_across_responses_in_order():
    responses = [response([scores([5, 6, 7], 2), scores([8], 2)]), response([scores([9, 10], 2)])]
    t = to_padded_tensors(responses, pad_logprob=-99.0)
    assert set(t) == {
        "teacher_logprobs_B_T",
        "token_ids_B_T",
        "mask_B_T",
        "topk_ids_B_T_K",
        "topk_logprobs_B_T_K",
    }
    assert t["token_ids_B_T"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert t["mask_B_T"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert t["teacher_logprobs_B_T"].tolist() == [[-1, -2, -3], [-1, -99, -99], [-1, -2, -99]]
    assert t["topk_ids_B_T_K"].shape == (3, 3, 2) and t["topk_ids_B_T_K"][2, 1].tolist() == [10, 11]
    assert t["topk_logprobs_B_T_K"][0, 2].tolist() == [-3, -4]
    assert t["topk_logprobs_B_T_K"][1, 1].tolist() == [-99, -99]
    assert t["teacher_logprobs_B_T"].dtype == torch.float32 and t["token_ids_B_T"].dtype == torch.int64
    assert t["mask_B_T"].dtype == torch.bool and t["topk_ids_B_T_K"].dtype == torch.int64


def test_no_top_k_means_no_top_k_tensors():
    t = to_padded_tensors([response([scores([1, 2], 0)])])
    assert set(t) == {"teacher_logprobs_B_T", "token_ids_B_T", "mask_B_T"}
    assert t["teacher_logprobs_B_T"].tolist() == [[-1, -2]]


def test_mixed_top_k_is_an_error():
    with pytest.raises(ValueError, match="mix different top-k sizes"):
        to_padded_tensors([response([scores([1], 2), scores([1], 3)])])
