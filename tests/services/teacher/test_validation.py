"""Bad input gets a 4xx that names the field and the limit; never a 5xx."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from rcsd.client import BatchError, TeacherClient, TeacherRequest
from rcsd.client.protocol import TeacherBatchResponse
from tests.services.teacher.payloads import RUBRIC, group

VOCAB = 1000  # the tiny model's


def _bad_cases() -> list[tuple[str, dict, str, str]]:
    # (case, body, field the error must name, text the message must contain)
    return [
        ("id past vocab", group("rubric", [[1, VOCAB]]), "completions.0", f"[0, {VOCAB})"),
        ("negative id", group("rubric", [[5], [-1, 3]]), "completions.1", "-1"),
        ("empty completion", group("rubric", [[1, 2], []]), "completions.1", "empty"),
        ("no completions", group("rubric", []), "completions", "at least 1"),
        ("over max_model_len", group("none", [[7] * 4096]), "completions.0", "max_model_len 4096"),
        ("top_k over max", group("rubric", [[1]], top_k=33), "top_k", "max_top_k 32"),
        ("too many completions", group("rubric", [[1]] * 65), "completions", "max_completions_per_group 64"),
        (
            "rubric missing field",
            group("rubric", [[1]], rubric=[{"title": "x", "weight": 3}]),
            "rubric.0.description",
            "required",
        ),
        (
            "rubric weight",
            group("rubric", [[1]], rubric=[{**RUBRIC[0], "weight": 11}]),
            "rubric.0.weight",
            "10",
        ),
        ("unknown mode", group("rubric", [[1]], context_mode="oracle"), "context_mode", "rubric"),
        (
            "rubric mode without rubric",
            {"question": "q", "context_mode": "rubric", "completions": [[1]]},
            "body",
            "needs a non-empty rubric",
        ),
        ("unknown field", group("none", [[1]], top_p=0.9), "top_p", "xtra"),
        ("rationale without privileged context", group("none", [[1]], rationale="hint"), "rationale", "none"),
        (
            "zero temperature",
            group("none", [[1]], temperature=0),
            "temperature",
            "greater than or equal to 0.001",
        ),
        ("tiny temperature", group("none", [[1]], temperature=1e-210), "temperature", "0.001"),
        (
            "system message not first",
            group(
                "none", [[1]], messages=[{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]
            ),
            "messages",
            "a system message may only come first",
        ),
        (
            "prompt not ending with the user",
            group(
                "none",
                [[1]],
                messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            ),
            "messages",
            "the last message must be the user's",
        ),
        (
            "unknown role",
            group("none", [[1]], messages=[{"role": "tool", "content": "x"}]),
            "messages.0.role",
            "user",
        ),
        ("no messages", group("none", [[1]], messages=[]), "messages", "at least 1"),
        (
            "template option name",
            group("none", [[1]], chat_template_kwargs={"enable thinking": False}),
            "chat_template_kwargs.enable thinking.[key]",
            "pattern",
        ),
        (
            "template option value",
            group("none", [[1]], chat_template_kwargs={"enable_thinking": [True]}),
            "chat_template_kwargs.enable_thinking.bool",
            "boolean",
        ),
    ]


@pytest.mark.parametrize(("case", "body", "field", "text"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_group_is_422_naming_the_field(teacher_servers, case, body, field, text):
    r = httpx.post(f"{teacher_servers['hf'].url}/v1/teacher_logprobs", json=body, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == error["param"] == field, error
    assert error["code"], error
    assert text in error["message"], error
    assert error["request_id"] == r.headers["x-request-id"]


def test_a_failing_group_fails_alone_and_names_its_field(teacher_servers):
    url = teacher_servers["hf"].url
    groups = [
        group("none", [[1, 2, 3]]),
        group("none", [[5], [7] * 4096]),  # over max_model_len: found before any group computes
        group("rubric", [[1, 5000]]),
        group("reference", [[4, 5]], top_k=2),
    ]
    r = httpx.post(f"{url}/teacher_logprobs/batch", json={"groups": groups}, timeout=60)
    assert r.status_code == 200, r.text
    items = TeacherBatchResponse.model_validate_json(r.content).results
    assert [item.ok for item in items] == [True, False, False, True]
    assert items[1].error.field == "groups.1.completions.1" and "max_model_len 4096" in items[1].error.message
    assert items[2].error.field == "groups.2.completions.0" and items[2].error.status == 422
    single = httpx.post(f"{url}/teacher_logprobs", json=groups[3], timeout=60).json()
    np.testing.assert_allclose(
        items[3].result.completions[0].logprobs, single["completions"][0]["logprobs"], atol=1e-4
    )

    with TeacherClient(url) as client, pytest.raises(BatchError) as caught:
        client.score_batch([TeacherRequest.model_validate(g) for g in groups])
    assert sorted(caught.value.errors) == [1, 2] and sorted(caught.value.results) == [0, 3]
    assert caught.value.errors[1].field == "groups.1.completions.1"


def test_limits_of_the_whole_batch_are_still_422(teacher_servers):
    url = f"{teacher_servers['hf'].url}/teacher_logprobs/batch"
    r = httpx.post(url, json={"groups": [group("none", [[1]])] * 65}, timeout=60)
    assert r.status_code == 422 and "max_groups_per_batch 64" in r.json()["error"]["message"]
    r = httpx.post(url, json={"groups": [group("none", [[1]]), {"question": "q"}]}, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "groups.1.completions"


def test_malformed_bodies_are_4xx(teacher_servers):
    url = f"{teacher_servers['hf'].url}/teacher_logprobs"
    assert (
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )
    assert httpx.post(url, json=[1, 2, 3]).status_code == 422
    assert httpx.get(url).status_code == 405
    assert httpx.post(f"{teacher_servers['hf'].url}/nope", json={}).status_code == 404
