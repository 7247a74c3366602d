"""Fixtures of the rubric tests: fresh store URLs for each engine; PostgreSQL is a real server on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pg_server import INSTALL_HINT, PostgresServer, find_pg_bindir, start_postgres

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session; each test takes fresh databases from it."""
    if find_pg_bindir() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def new_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes URLs of fresh, empty stores of the test's engine (each test runs once per engine)."""
    if request.param == "sqlite":
        numbers = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f'rubrics{next(numbers)}.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database


@pytest.fixture
def store_url(new_store_url: Callable[[], str]) -> str:
    return new_store_url()
