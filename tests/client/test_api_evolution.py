"""API evolution: a client keeps working against a later server (new fields, /v1 paths), and fails
loudly when the teacher itself changes during a run (model revision, tokenizer or chat template)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rcsd.client import (
    AsyncTeacherClient,
    BadRequestError,
    IncompatibleTokenizerError,
    RubricClient,
    RubricRequest,
    TeacherChangedError,
    TeacherClient,
    TeacherRequest,
)
from rcsd.client.protocol import ErrorResponse

REQUEST = TeacherRequest(question="2+2?", context_mode="none", completions=[[5, 6, 7]], top_k=2)


class Tokenizer:
    """What `tokenizer_hash` reads, for a fake teacher whose hash we set to match."""

    all_special_tokens: list[str] = []
    chat_template = "{{ messages }}"

    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "b": 1}

    def __len__(self) -> int:
        return 2


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_a_client_reads_answers_with_fields_it_does_not_know(start_replica, binary):
    later = start_replica(added_fields=True)
    raw = httpx.post(f"{later.url}/v1/teacher_logprobs", json=REQUEST.model_dump(mode="json")).json()
    assert "added_later" in raw and "added_later" in raw["completions"][0]  # the server did add them
    with TeacherClient(later.url, binary=binary) as teacher:
        assert teacher.info().model.name == "fake-teacher"
        scored = teacher.score(REQUEST)
        assert list(scored.completions[0].token_ids) == [5, 6, 7]
        assert len(teacher.score_batch([REQUEST, REQUEST])) == 2
    with RubricClient(later.url, binary=binary) as rubrics:
        made = rubrics.generate(RubricRequest(question="What is 2+2?"))
        assert made.criteria[0].weight == 5
        assert rubrics.get(made.rubric_id).rubric_id == made.rubric_id


def test_errors_with_fields_the_client_does_not_know_keep_their_meaning(start_replica):
    later = start_replica(added_fields=True)
    later.state.fail_next(422)
    with TeacherClient(later.url, max_retries=0) as teacher, pytest.raises(BadRequestError) as caught:
        teacher.score(REQUEST)
    assert caught.value.field == "completions" and caught.value.param == "completions"
    assert caught.value.code == "fake_refusal"


def test_requests_stay_strict():
    with pytest.raises(ValueError, match="extra"):
        TeacherRequest.model_validate({**REQUEST.model_dump(), "surprise": 1})
    assert ErrorResponse.model_validate({"error": {"type": "t", "message": "m", "new": 1}, "new": 2})


def test_the_client_uses_the_v1_paths(start_replica):
    replica = start_replica()
    with TeacherClient(replica.url) as teacher:
        teacher.score(REQUEST)
        teacher.score_batch([REQUEST])
    with RubricClient(replica.url) as rubrics:
        rubrics.generate(RubricRequest(question="What is 2+2?"))
    assert {path for path, _ in replica.state.seen} == {
        "/v1/info",
        "/v1/teacher_logprobs",
        "/v1/teacher_logprobs/batch",
        "/v1/rubrics",
    }


def test_a_revision_change_during_a_run_fails_loudly(start_replica):
    replica = start_replica()
    with TeacherClient(replica.url) as teacher:
        teacher.score(REQUEST)  # the first answer pins revision r0
        replica.state.model_revision = "r1"  # a rolling update
        with pytest.raises(TeacherChangedError, match="revision r1"):
            teacher.score(REQUEST)
        with pytest.raises(TeacherChangedError):
            teacher.score_batch([REQUEST])
    with TeacherClient(replica.url, pin_teacher=False) as teacher:  # the opt-out
        teacher.score(REQUEST)
        replica.state.model_revision = "r2"
        assert teacher.score(REQUEST).model_revision == "r2"


def test_check_compatible_pins_the_revision_and_the_chat_template(start_replica):
    from rcsd.client import tokenizer_hash

    tokenizer = Tokenizer()
    replica = start_replica(tokenizer_hash=tokenizer_hash(tokenizer), vocab_size=2)

    async def run() -> None:
        async with AsyncTeacherClient(replica.url) as teacher:
            await teacher.check_compatible(tokenizer)
            await teacher.score(REQUEST)
            replica.state.model_revision = "r1"
            with pytest.raises(TeacherChangedError):
                await teacher.score(REQUEST)
            replica.state.model_revision = "r0"
            tokenizer.chat_template = "{{ messages }} changed"  # the teacher's template changed
            replica.state.tokenizer_hash = tokenizer_hash(tokenizer)
            with pytest.raises(IncompatibleTokenizerError, match="chat template"):
                await teacher.score(REQUEST)

    asyncio.run(run())


def test_replicas_of_different_revisions_are_refused_at_check(start_replica):
    from rcsd.client import tokenizer_hash

    digest = tokenizer_hash(Tokenizer())
    one = start_replica(tokenizer_hash=digest, vocab_size=2)
    two = start_replica(tokenizer_hash=digest, vocab_size=2, model_revision="r9")
    with TeacherClient([one.url, two.url]) as teacher, pytest.raises(TeacherChangedError, match="r9"):
        teacher.check_compatible(Tokenizer())
