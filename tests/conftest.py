"""Shared pytest configuration. Fixtures specific to one layer live in that layer's conftest."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from conch.testing.postgres import PostgresServer, PostgresUnavailable, postgres_for_tests
from tests._required import skip_or_fail

# No per-example deadline: the machines are small and shared, and a slow example is not a bug.
# Under CI the examples are derandomized, so a run is repeatable and a red CI is reproducible.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (see ``conch.testing.postgres``)."""
    try:
        with postgres_for_tests() as server:
            yield server
    except PostgresUnavailable as exc:
        skip_or_fail("postgres", f"PostgreSQL tests skipped: {exc}")


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """One database for the contract tests; a test empties it before use."""
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn.rsplit("/", 1)[1])
