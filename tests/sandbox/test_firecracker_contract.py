"""The contract suite (execution and snapshots) through the firecracker backend's code path.

The VMs are ``conch.testing.fake_firecracker`` ones: the backend's real API calls, vsock
handshake, pool, snapshot requests and reconnects, with the real worker standing in for the
guest (under bubblewrap). See test_firecracker.py and docs/sandboxes.md for what a fake
cannot show.
"""

from __future__ import annotations

import pytest

from conch.sandbox.bwrap import bwrap_works
from tests.sandbox import test_execution, test_snapshots

pytestmark = pytest.mark.skipif(
    not bwrap_works()[0],
    reason=f"the fake Firecracker's guest runs under bubblewrap: {bwrap_works()[1]}",
)

# Contract tests whose premise does not hold inside a VM, each with the reason.
_EXIT_STATUS = (
    "the worker's exit status does not leave the VM (the guest init ends the VM when the "
    "worker ends); the error names the VM and the loss is reported (test_firecracker.py)"
)
NOT_FOR_VMS = {
    "test_a_temporary_root_is_removed_by_cleanup": "creates its backend by name from the "
    "registry, which (rightly) reports that real Firecracker cannot run here",
    "test_os_exit_is_a_clear_error_and_the_next_call_gets_a_fresh_worker": _EXIT_STATUS,
    "test_a_worker_killed_by_a_signal_is_reported_as_128_plus_the_signal": _EXIT_STATUS,
    "test_uploaded_inputs_are_readable_but_not_writable_in_the_sandbox": "inputs are files "
    "in the guest's own tmpfs, written by the worker (root in the guest): the VM is the "
    "boundary, and the host re-sends its copy to every new VM of the session",
}

for _module in (test_execution, test_snapshots):
    for _name in dir(_module):
        if _name.startswith("test_") and _name not in NOT_FOR_VMS:
            globals()[_name] = getattr(_module, _name)


@pytest.fixture
def backend() -> str:
    return "firecracker"


@pytest.fixture
def make_env(make_fc):
    """The contract suite's environments are the fake-backed ones of ``make_fc``."""

    async def make(**options):
        options.setdefault("mem_mib", 2)
        return await make_fc(**options)

    return make
