"""What the suites must find working here: a test that would skip for want of it fails instead.

``CONCH_TESTS_REQUIRE`` lists what must work, comma-separated: sandbox backends by name
(``local``, ``bwrap``, ``gvisor``, ``docker``) and ``postgres``. CI sets it (see ``.ci/run``),
so a probe that wrongly says "not on this machine" cannot quietly turn a suite into skips.
Unset, every missing piece is a skip with its reason, as on a developer's laptop.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from conch import sandbox

REQUIRE_ENV = "CONCH_TESTS_REQUIRE"


def required() -> frozenset[str]:
    return frozenset(item.strip() for item in os.environ.get(REQUIRE_ENV, "").split(",") if item)


def skip_or_fail(what: str, reason: str) -> NoReturn:
    """Skip with ``reason``, unless ``what`` is required here: then fail with it."""
    if what in required():
        pytest.fail(f"{reason} (and {REQUIRE_ENV} says {what} must work here)", pytrace=False)
    pytest.skip(reason)


def backend_skip_reason(name: str) -> str | None:
    for status in sandbox.backend_statuses():
        if status.name == name and not status.available:
            return f"the {name} backend cannot run on this machine: {status.reason}"
    return None


def require_backend(name: str) -> None:
    """Go on if the ``name`` backend works here; otherwise skip (or fail, if required)."""
    reason = backend_skip_reason(name)
    if reason is not None:
        skip_or_fail(name, reason)
