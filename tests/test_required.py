"""``CONCH_TESTS_REQUIRE``: what CI requires to work turns a skip into a failure."""

from __future__ import annotations

import pytest

from tests._required import REQUIRE_ENV, skip_or_fail


def test_a_missing_piece_is_a_skip_with_its_reason(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no runsc"):
        skip_or_fail("gvisor", "no runsc")


def test_a_required_piece_that_is_missing_fails(monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "bwrap, gvisor,postgres")
    with pytest.raises(pytest.fail.Exception, match=r"no runsc .*says gvisor must work here"):
        skip_or_fail("gvisor", "no runsc")
    with pytest.raises(pytest.skip.Exception):  # not in the list: still a skip
        skip_or_fail("docker", "no engine")
