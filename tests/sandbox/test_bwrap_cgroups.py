"""bwrap's pids cgroups: those of a process that died before its cleanup ran are reaped by
the next environment; those of a live process are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from conch.sandbox import bwrap
from tests._required import require_backend

ROOT = bwrap._PIDS_CGROUP_ROOT / "conch"


@pytest.fixture
def cgroups_here():
    require_backend("bwrap")
    if not os.access(bwrap._PIDS_CGROUP_ROOT, os.W_OK):
        pytest.skip("the pids cgroup controller is not writable here; sessions use RLIMIT_NPROC")
    ROOT.mkdir(exist_ok=True)


def a_dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_cgroups_of_a_dead_process_are_reaped_and_a_live_ones_kept(cgroups_here):
    orphan = ROOT / f"{a_dead_pid()}-{uuid.uuid4().hex[:8]}"
    (orphan / "rlm-left-behind").mkdir(parents=True)
    living = ROOT / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    living.mkdir()
    created = bwrap._PidsCgroups.create(f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        assert created is not None
        assert not orphan.exists()
        assert living.exists()
    finally:
        for cgroups in (created, bwrap._PidsCgroups(living), bwrap._PidsCgroups(orphan)):
            if cgroups is not None:
                cgroups.remove_all()
