"""The rubric app's loader: a failed engine load leaves no store open behind it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import rcsd.services.rubric.app as rubric_app
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.rubric.store import RubricStore


def test_a_failed_engine_load_closes_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[RubricStore] = []
    closed: list[RubricStore] = []
    real_open = rubric_app.open_store

    async def tracked_open(url: str) -> RubricStore:
        store = await real_open(url)
        real_close = store.aclose

        async def aclose() -> None:
            closed.append(store)
            await real_close()

        store.aclose = aclose  # type: ignore[method-assign]
        opened.append(store)
        return store

    async def no_engine(*_: object) -> None:
        raise OSError("no config.json in /nowhere")

    monkeypatch.setattr(rubric_app, "open_store", tracked_open)
    monkeypatch.setattr(rubric_app, "load_engine", no_engine)
    settings = RubricSettings(model="m", store_url=f"sqlite:///{tmp_path / 'rubrics.db'}")
    with TestClient(rubric_app.create_app(settings)) as client:
        for _ in range(200):
            if client.get("/ready").json()["status"] != "loading":
                break
            time.sleep(0.01)
        assert client.get("/ready").json()["status"] == "failed"
    assert len(opened) == 1 and closed == opened
