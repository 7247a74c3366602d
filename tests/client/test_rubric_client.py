"""The rubric client against a loopback imitation of the rubric service."""

from __future__ import annotations

import pytest

from rcsd.client import AsyncRubricClient, BatchError, NotFoundError, RubricClient, RubricRequest

QUESTIONS = [RubricRequest(question=f"What is {i} + {i}?") for i in range(7)]


def test_generate_then_get(start_replica):
    replica = start_replica()
    with RubricClient(replica.url) as client:
        rubric = client.generate(QUESTIONS[0])
        again = client.get(rubric.rubric_id)
        with pytest.raises(NotFoundError) as caught:
            client.get("no-such-rubric")
    assert again == rubric
    assert "no rubric 'no-such-rubric'" in str(caught.value) and caught.value.status_code == 404
    assert [p for p, _ in replica.state.seen].count("/v1/rubrics/no-such-rubric") == 1  # 404: not retried


def test_generate_batch_splits_by_max_batch_in_order(start_replica):
    replica = start_replica(limits={"max_batch": 3})
    with RubricClient(replica.url) as client:
        rubrics = client.generate_batch(QUESTIONS)
    assert replica.state.hits["/v1/rubrics/batch"] == 3
    assert [r.criteria[0].title for r in rubrics] == [f"About {q.question}" for q in QUESTIONS]


async def test_generate_batch_async(start_replica):
    replica = start_replica(limits={"max_batch": 2}, delay_s=0.05)
    async with AsyncRubricClient(replica.url, max_concurrency=4) as client:
        rubrics = await client.generate_batch(QUESTIONS)
        assert (await client.get(rubrics[3].rubric_id)) == rubrics[3]
        assert await client.generate_batch([]) == []
    assert replica.state.hits["/v1/rubrics/batch"] == 4 and replica.state.max_in_flight == 4
    assert [r.criteria[0].title for r in rubrics] == [f"About {q.question}" for q in QUESTIONS]


@pytest.mark.parametrize("max_batch", [2, 64])
def test_failed_requests_keep_the_others_and_name_the_callers_indices(start_replica, max_batch):
    replica = start_replica(limits={"max_batch": max_batch})
    requests = list(QUESTIONS)
    requests[3] = requests[3].model_copy(update={"max_tokens": 8000})  # over the fake's max_model_len
    requests[6] = RubricRequest(question="unsolvable: what is the last digit of pi?")
    with RubricClient(replica.url) as client, pytest.raises(BatchError) as caught:
        client.generate_batch(requests)
    errors = caught.value.errors
    assert sorted(errors) == [3, 6]
    assert errors[3].field == "requests.3.max_tokens" and errors[3].message.startswith(
        "requests.3.max_tokens: "
    )
    assert errors[6].type == "rubric_generation_failed" and errors[6].field is None
    kept = caught.value.results
    assert sorted(kept) == [0, 1, 2, 4, 5]
    assert all(kept[i].criteria[0].title == f"About {QUESTIONS[i].question}" for i in kept)
