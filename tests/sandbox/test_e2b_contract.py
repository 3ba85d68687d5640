"""The contract suite (execution and snapshots) through the e2b backend's code path.

The sandboxes are FAKE: ``conch.testing.fake_e2b`` implements the e2b SDK surface the backend
uses and runs commands locally under bubblewrap. This exercises the backend's worker start,
text-mode channel, stdin pump, inputs, snapshots and faults; it says nothing about E2B's
service itself (see test_e2b.py and docs/sandboxes.md).
"""

from __future__ import annotations

import sys

import pytest

from conch.sandbox.bwrap import bwrap_works
from conch.sandbox.e2b import E2BEnvironment
from conch.testing.fake_e2b import FakeE2B
from tests.sandbox import test_execution, test_snapshots

pytestmark = pytest.mark.skipif(
    not bwrap_works()[0],
    reason=f"the fake E2B SDK runs commands under bubblewrap: {bwrap_works()[1]}",
)

# Contract tests whose premise does not hold for a cloud sandbox, each with the reason.
NOT_FOR_E2B = {
    "test_a_temporary_root_is_removed_by_cleanup": "creates its backend by name from the "
    "registry, which (rightly) reports that E2B cannot be used here",
    "test_uploaded_inputs_are_readable_but_not_writable_in_the_sandbox": "inputs are files "
    "in the sandbox's own disk, written by the worker's user: the sandbox is the boundary, "
    "and the host re-sends its copy to every new worker of the session",
}

for _module in (test_execution, test_snapshots):
    for _name in dir(_module):
        if _name.startswith("test_") and _name not in NOT_FOR_E2B:
            globals()[_name] = getattr(_module, _name)


@pytest.fixture
def backend() -> str:
    return "e2b"


@pytest.fixture
async def make_env(tmp_path):
    fake = FakeE2B(tmp_path / "fake-e2b")
    created: list[E2BEnvironment] = []

    async def make(**options):
        options.setdefault("root", tmp_path / f"env{len(created)}")
        options.setdefault("interrupt_grace_s", 1.0)
        env = E2BEnvironment(sdk=fake, python=sys.executable, **options)
        created.append(env)
        return env

    yield make
    for env in created:
        await env.cleanup()
    fake.cleanup()
