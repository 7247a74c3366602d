"""Fixtures of the client tests: fake service replicas on loopback, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.client.fake_service import FakeReplica, FakeState


@pytest.fixture
def start_replica() -> Iterator[Callable[..., FakeReplica]]:
    """start_replica(limits=..., delay_s=..., ...) -> a started FakeReplica."""
    started: list[FakeReplica] = []

    def start(**state: object) -> FakeReplica:
        replica = FakeReplica(FakeState(**state)).start()  # type: ignore[arg-type]
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
