"""Bad input gets a 4xx that names the field and the limit; never a 5xx."""

from __future__ import annotations

import httpx
import pytest

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
        ("zero temperature", group("none", [[1]], temperature=0), "temperature", "greater than 0"),
    ]


@pytest.mark.parametrize(("case", "body", "field", "text"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_group_is_422_naming_the_field(teacher_servers, case, body, field, text):
    r = httpx.post(f"{teacher_servers['hf'].url}/teacher_logprobs", json=body, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    assert text in error["message"], error
    assert error["request_id"] == r.headers["x-request-id"]


def test_batch_errors_name_the_group(teacher_servers):
    url = f"{teacher_servers['hf'].url}/teacher_logprobs/batch"
    r = httpx.post(url, json={"groups": [group("none", [[1]]), group("none", [[1, 5000]])]}, timeout=60)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "groups.1.completions.0"
    r = httpx.post(url, json={"groups": [group("none", [[1]])] * 65}, timeout=60)
    assert r.status_code == 422 and "max_groups_per_batch 64" in r.json()["error"]["message"]


def test_malformed_bodies_are_4xx(teacher_servers):
    url = f"{teacher_servers['hf'].url}/teacher_logprobs"
    assert (
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    )
    assert httpx.post(url, json=[1, 2, 3]).status_code == 422
    assert httpx.get(url).status_code == 405
    assert httpx.post(f"{teacher_servers['hf'].url}/nope", json={}).status_code == 404
