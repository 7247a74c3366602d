"""Named API keys from the settings, a file and the environment; errors name the place, never the key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rcsd.services.kit.api_keys import ApiKeyError, NamedKey, collect_keys
from rcsd.services.teacher.app import create_app
from rcsd.services.teacher.settings import TeacherSettings


def test_keys_come_from_the_single_key_a_file_and_the_environment(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# trainers\nalice:alice-secret-1\n\n bob : bob-secret-22 \n")
    monkeypatch.setenv("RCSD_TEACHER_API_KEYS", "carol:carol-secret-3,dave:dave-secret-44")
    monkeypatch.setenv("RCSD_TEACHER_API_KEYS_FILE", str(keys_file))
    settings = TeacherSettings(model="unused", api_key="the-old-single-key")
    assert settings.named_keys() == [
        NamedKey("default", "the-old-single-key"),
        NamedKey("alice", "alice-secret-1"),
        NamedKey("bob", "bob-secret-22"),
        NamedKey("carol", "carol-secret-3"),
        NamedKey("dave", "dave-secret-44"),
    ]
    assert "secret" not in repr(settings.named_keys())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice:alice-secret-1\nalice:other-secret-2", "names used twice: alice"),
        ("alice:same-secret-1\nbob:same-secret-1", "under two names"),
        ("no colon here", "entry 1: expected `name:key`"),
        ("a b:secret-secret", "entry 1"),
        ("alice:short", "entry 1 (alice): the key is shorter"),
    ],
)
def test_bad_key_files_are_refused_without_echoing_keys(tmp_path, text, message):
    keys_file = tmp_path / "keys"
    keys_file.write_text(text)
    with pytest.raises(ApiKeyError, match="^api_keys_file|^API key|^one API key") as caught:
        collect_keys(None, keys_file, None)
    assert message in str(caught.value)
    assert "secret-1" not in str(caught.value) and "short" not in str(caught.value).replace("shorter", "")


def test_every_named_key_opens_the_service_and_labels_its_metrics(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("alice:alice-secret-1\nbob:bob-secret-22\n")
    app = create_app(TeacherSettings(model="unused", api_keys_file=keys_file))  # engine never loaded
    client = TestClient(app)
    for secret in ("alice-secret-1", "bob-secret-22"):
        assert (
            client.get("/v1/info", headers={"authorization": f"Bearer {secret}"}).status_code == 503
        )  # loading
    assert client.get("/v1/info", headers={"authorization": "Bearer carol-secret"}).status_code == 401
    metrics = client.get("/metrics", headers={"authorization": "Bearer alice-secret-1"}).text
    assert 'rcsd_key_requests_total{key_name="bob",status="503"} 1.0' in metrics
    assert "secret" not in metrics
