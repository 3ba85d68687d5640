"""``best_available()``: the most isolated backend that works here, strongest first."""

from __future__ import annotations

import logging

import pytest

from conch import sandbox
from conch.sandbox import bwrap, gvisor
from conch.sandbox.bwrap import BubblewrapEnvironment
from conch.sandbox.gvisor import GVisorEnvironment
from conch.sandbox.local import LocalEnvironment
from tests._required import require_backend


def broken(reason: str):
    return lambda **options: (False, reason)


async def test_gvisor_is_chosen_where_it_works(tmp_path):
    require_backend("gvisor")
    env = sandbox.best_available(root=tmp_path)
    try:
        assert isinstance(env, GVisorEnvironment)
    finally:
        await env.cleanup()


async def test_bwrap_is_next_when_gvisor_does_not_work(tmp_path, monkeypatch):
    require_backend("bwrap")
    monkeypatch.setattr(gvisor, "gvisor_works", broken("no runsc here"))
    env = sandbox.best_available(root=tmp_path)
    try:
        assert isinstance(env, BubblewrapEnvironment)
    finally:
        await env.cleanup()


async def test_local_comes_last_with_a_warning_naming_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gvisor, "gvisor_works", broken("no runsc here"))
    monkeypatch.setattr(bwrap, "bwrap_works", broken("no user namespaces here"))
    with caplog.at_level(logging.WARNING, logger="conch.sandbox"):
        env = sandbox.best_available(root=tmp_path)
    try:
        assert isinstance(env, LocalEnvironment)
        assert "gvisor: no runsc here" in caplog.text
        assert "bwrap: no user namespaces here" in caplog.text
    finally:
        await env.cleanup()


@pytest.mark.parametrize("name", ["docker", "firecracker", "e2b"])
async def test_backends_that_need_configuration_are_never_picked(tmp_path, monkeypatch, name):
    monkeypatch.setattr(gvisor, "gvisor_works", broken("no runsc here"))
    monkeypatch.setattr(bwrap, "bwrap_works", broken("no user namespaces here"))
    module = __import__(f"conch.sandbox.{name}", fromlist=["_"])
    monkeypatch.setattr(module, f"{name}_works", lambda **options: (True, "works"))
    env = sandbox.best_available(root=tmp_path)
    try:
        assert isinstance(env, LocalEnvironment)
    finally:
        await env.cleanup()
