"""The ``local`` backend: the worker as a plain child process. Fast, and not isolated.

Use it for trusted code and for development. Code in a local session runs with the host
user's rights: it can read any file the host can and reach the network. The worker runs
under a small keeper process, so ``os.kill(os.getppid(), ...)`` hits the keeper, not the
host, and the host still learns how the worker ended.
"""

from __future__ import annotations

from typing import Any

from conch.sandbox._connection import LaunchSpec
from conch.sandbox._types import BackendType, Capability
from conch.sandbox._worker_environment import WORKER_CAPABILITIES, WorkerEnvironment, _Session
from conch.sandbox.worker import AGENT_PATH


class LocalEnvironment(WorkerEnvironment):
    shares_session_directories = True  # the worker runs on the host's own file system

    def _launch_spec(self, session: _Session, worker_config: dict[str, Any]) -> LaunchSpec:
        return LaunchSpec(
            argv=self._python_argv(str(AGENT_PATH), {**worker_config, "keeper": True}),
            env=self._session_env(session),
            cwd=str(session.paths.work),
            log_path=session.paths.log,
            keeper=True,
        )

    def capabilities(self) -> frozenset[Capability]:
        caps = set(WORKER_CAPABILITIES)
        if self.limits.to_worker():
            caps.add(Capability.RESOURCE_LIMITS)
        return frozenset(caps)

    def backend_type(self) -> BackendType:
        return BackendType.LOCAL
