"""Splitting a batch to fit the teacher's limits: the parts fit, and the answers come back in order."""

from __future__ import annotations

import numpy as np
import pytest

from rcsd.client import (
    AsyncTeacherClient,
    BatchError,
    LimitExceededError,
    TeacherClient,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client._splitting import ScorePlan, TeacherLimits

LIMITS = {
    "max_top_k": 8,
    "max_completions_per_group": 3,
    "max_groups_per_batch": 2,
    "max_completion_tokens_per_request": 20,
    "max_model_len": 4096,
}


def make_groups(seed: int = 0) -> list[TeacherRequest]:
    """Groups of 1-8 completions of 1-12 tokens; some exceed every limit but none is unsplittable."""
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(9):
        completions = [
            rng.integers(0, 1000, size=int(rng.integers(1, 13))).tolist()
            for _ in range(int(rng.integers(1, 9)))
        ]
        groups.append(
            TeacherRequest(
                question=f"question {g}?", context_mode="none", completions=completions, top_k=[0, 4][g % 2]
            )
        )
    return groups


def assert_same(got: list[TeacherResponse], expected: list[TeacherResponse]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.context_length == b.context_length and len(a.completions) == len(b.completions)
        for x, y in zip(a.completions, b.completions, strict=True):
            np.testing.assert_array_equal(x.token_ids, y.token_ids)
            np.testing.assert_array_equal(x.logprobs, y.logprobs)
            assert (x.topk_ids is None) == (y.topk_ids is None)
            if x.topk_ids is not None:
                np.testing.assert_array_equal(x.topk_ids, y.topk_ids)
                np.testing.assert_array_equal(x.topk_logprobs, y.topk_logprobs)


def test_plan_parts_fit_and_cover_every_completion_in_order():
    groups = make_groups()
    plan = ScorePlan(groups, TeacherLimits.from_info(LIMITS))
    batches = plan.next_round()
    assert len(batches) > 5 and plan.next_round() == []
    covered: dict[str, list[list[int]]] = {}
    for batch in batches:
        assert len(batch.groups) <= 2
        assert sum(len(c) for g in batch.groups for c in g.completions) <= 20
        for group in batch.groups:
            assert len(group.completions) <= 3
            covered.setdefault(group.question, []).extend(group.completions)
    assert covered == {g.question: g.completions for g in groups}


def test_limits_that_nothing_can_fit_are_refused_before_sending():
    limits = TeacherLimits.from_info(LIMITS)
    too_long = TeacherRequest(question="q", context_mode="none", completions=[[1] * 5, [1] * 21])
    with pytest.raises(LimitExceededError, match=r"completion 1: 21 tokens cannot fit"):
        ScorePlan([too_long], limits)
    with pytest.raises(LimitExceededError, match="top_k 9 > the teacher's max_top_k 8"):
        ScorePlan([TeacherRequest(question="q", context_mode="none", completions=[[1]], top_k=9)], limits)


def test_no_limits_means_one_request():
    plan = ScorePlan(make_groups(), TeacherLimits.from_info({}))
    assert plan.unsplit and len(plan.next_round()) == 1


@pytest.mark.parametrize("binary", [True, False])
def test_split_batch_equals_the_unsplit_one(start_replica, binary):
    limited, unlimited = start_replica(limits=LIMITS), start_replica()
    groups = make_groups(seed=1)
    with (
        TeacherClient(limited.url, binary=binary, max_concurrency=3) as split,
        TeacherClient(unlimited.url) as whole,
    ):
        got = split.score_batch(groups, request_id="batch")
        expected = whole.score_batch(groups)
    assert unlimited.state.hits["/v1/teacher_logprobs/batch"] == 1
    assert (
        limited.state.hits["/v1/teacher_logprobs/batch"] > 5
    )  # every part fit: the server enforces the limits
    assert 1 < limited.state.max_in_flight <= 3
    part_ids = [rid for path, rid in limited.state.seen if path == "/v1/teacher_logprobs/batch"]
    assert sorted(part_ids) == sorted(f"batch-{i}" for i in range(len(part_ids)))
    assert_same(got, expected)


async def test_split_batch_equals_the_unsplit_one_async(start_replica):
    limited, unlimited = start_replica(limits=LIMITS), start_replica()
    groups = make_groups(seed=2)
    async with (
        AsyncTeacherClient(limited.url, max_concurrency=2) as split,
        AsyncTeacherClient(unlimited.url) as whole,
    ):
        got = await split.score_batch(groups)
        expected = await whole.score_batch(groups)
        one = await split.score(groups[0])  # a single group over the limits goes through the batch path
    assert limited.state.max_in_flight == 2
    assert_same(got, expected)
    assert_same([one], expected[:1])


def test_a_group_split_across_requests_is_joined_in_order(start_replica):
    replica = start_replica(limits={"max_completions_per_group": 2, "max_groups_per_batch": 1})
    completions = [[i, i + 1, i + 2] for i in range(7)]
    group = TeacherRequest(question="q?", context_mode="none", completions=completions, top_k=2)
    with TeacherClient(replica.url) as client:
        response = client.score(group)
    assert replica.state.hits["/v1/teacher_logprobs/batch"] == 4
    assert [c.token_ids.tolist() for c in response.completions] == completions


def test_an_auto_rationale_group_split_in_two_rounds_gets_one_rationale(start_replica):
    replica = start_replica(limits={"max_completions_per_group": 2})
    group = TeacherRequest(
        question="why?",
        reference_answer="because",
        context_mode="reference",
        rationale="auto",
        completions=[[1]] * 5,
    )
    with TeacherClient(replica.url) as client:
        response = client.score(group)
    rationales = [r for path, r in replica.state.seen if path == "/v1/teacher_logprobs/batch"]
    assert len(rationales) == 2  # one round for the first part, one for the rest
    assert response.rationale and len(response.completions) == 5
    assert response.context_length == len("why?") + len(response.rationale)


def test_binary_and_json_decode_to_equal_arrays(start_replica):
    replica = start_replica()
    group = make_groups()[1]
    with TeacherClient(replica.url, binary=True) as packed, TeacherClient(replica.url, binary=False) as plain:
        a, b = packed.score(group), plain.score(group)
    assert replica.state.msgpack_answers == 1
    assert_same([a], [b])
    for x, y in zip(a.completions, b.completions, strict=True):
        assert x.logprobs.dtype == y.logprobs.dtype == np.float32
        assert x.topk_ids.dtype == y.topk_ids.dtype == np.int32


def test_empty_batch_sends_nothing(start_replica):
    replica = start_replica()
    with TeacherClient(replica.url) as client:
        assert client.score_batch([]) == []
    assert replica.state.seen == []


def with_bad_token(groups: list[TeacherRequest], group: int, completion: int) -> list[TeacherRequest]:
    """A copy of `groups` where one completion holds a token id the fake teacher refuses."""
    bad = [list(c) for c in groups[group].completions]
    bad[completion] = [*bad[completion], 5000]
    return [g.model_copy(update={"completions": bad}) if i == group else g for i, g in enumerate(groups)]


@pytest.mark.parametrize("limits", [LIMITS, {}], ids=["split", "whole"])
def test_a_failed_group_keeps_the_others_and_names_the_callers_indices(start_replica, limits):
    replica, reference = start_replica(limits=limits), start_replica()
    groups = make_groups(seed=4)
    # split by max_completions_per_group 3, completion 5 of group 4 is completion 2 of a later part
    assert len(groups[4].completions) == 6
    broken = with_bad_token(groups, group=4, completion=5)
    with TeacherClient(replica.url) as client, TeacherClient(reference.url) as plain:
        with pytest.raises(BatchError) as caught:
            client.score_batch(broken)
        expected = plain.score_batch(groups)
    error = caught.value.errors[4]
    assert list(caught.value.errors) == [4] and error.status == 422
    assert error.field == "groups.4.completions.5" and error.message.startswith("groups.4.completions.5: ")
    kept = caught.value.results
    assert sorted(kept) == [i for i in range(len(groups)) if i != 4]
    assert_same([kept[i] for i in sorted(kept)], [expected[i] for i in sorted(kept)])


async def test_an_auto_rationale_group_whose_first_part_failed_sends_no_second_round(start_replica):
    replica = start_replica(limits={"max_completions_per_group": 2})
    auto = TeacherRequest(
        question="why?",
        reference_answer="because",
        context_mode="reference",
        rationale="auto",
        completions=[[1]] * 5,
    )
    groups = with_bad_token([auto, make_groups()[0]], group=0, completion=1)
    async with AsyncTeacherClient(replica.url) as client:
        with pytest.raises(BatchError) as caught:
            await client.score_batch(groups)
    assert caught.value.errors[0].field == "groups.0.completions.1" and list(caught.value.results) == [1]
    assert replica.state.hits["/v1/teacher_logprobs/batch"] == 1  # the rest of group 0 was not sent
