"""Teacher responses as padded torch tensors, ready for a distillation loss.

torch is imported inside the function: the client package itself never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rcsd.client.protocol import CompletionScores, TeacherResponse

if TYPE_CHECKING:
    import torch


def to_padded_tensors(
    responses: Sequence[TeacherResponse], pad_logprob: float = 0.0, pad_token_id: int = 0
) -> dict[str, torch.Tensor]:
    """Stack every completion of `responses` (in order) into [B, T] / [B, T, K] tensors.

    Returns `teacher_logprobs_B_T` (float32), `token_ids_B_T` (int64), `mask_B_T` (bool, True on
    real tokens) and, when the responses carry top-k, `topk_ids_B_T_K` (int64) and
    `topk_logprobs_B_T_K` (float32). Padding is `pad_logprob` / `pad_token_id`.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_padded_tensors needs torch, which rcsd-client does not install; "
            "`pip install 'rcsd-client[torch]'` or install torch yourself"
        ) from exc

    completions: list[CompletionScores] = [c for response in responses for c in response.completions]
    B = len(completions)
    T = max((len(c.token_ids) for c in completions), default=0)
    K = _top_k(completions)

    logprobs_B_T = np.full((B, T), pad_logprob, dtype=np.float32)
    token_ids_B_T = np.full((B, T), pad_token_id, dtype=np.int64)
    mask_B_T = np.zeros((B, T), dtype=bool)
    topk_ids_B_T_K = np.full((B, T, K), pad_token_id, dtype=np.int64) if K else None
    topk_logprobs_B_T_K = np.full((B, T, K), pad_logprob, dtype=np.float32) if K else None
    for b, c in enumerate(completions):
        n = len(c.token_ids)
        logprobs_B_T[b, :n] = c.logprobs
        token_ids_B_T[b, :n] = c.token_ids
        mask_B_T[b, :n] = True
        if topk_ids_B_T_K is not None and topk_logprobs_B_T_K is not None:
            topk_ids_B_T_K[b, :n] = c.topk_ids
            topk_logprobs_B_T_K[b, :n] = c.topk_logprobs

    tensors = {
        "teacher_logprobs_B_T": torch.from_numpy(logprobs_B_T),
        "token_ids_B_T": torch.from_numpy(token_ids_B_T),
        "mask_B_T": torch.from_numpy(mask_B_T),
    }
    if topk_ids_B_T_K is not None and topk_logprobs_B_T_K is not None:
        tensors["topk_ids_B_T_K"] = torch.from_numpy(topk_ids_B_T_K)
        tensors["topk_logprobs_B_T_K"] = torch.from_numpy(topk_logprobs_B_T_K)
    return tensors


def _top_k(completions: Sequence[CompletionScores]) -> int:
    """The K all completions share (0 when none has top-k); mixing is an error."""
    ks = {0 if c.topk_ids is None else c.topk_ids.shape[1] for c in completions if len(c.token_ids)}
    if len(ks) > 1:
        raise ValueError(f"responses mix different top-k sizes {sorted(ks)}; score them with one top_k")
    return ks.pop() if ks else 0
