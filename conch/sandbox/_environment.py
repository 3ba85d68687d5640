"""The ``ExecutionEnvironment`` contract every sandbox backend implements.

The operations and their meaning are those of the seed contract (terraphim's
``ExecutionEnvironment`` trait), spelled the Python way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from conch.sandbox._types import (
    BackendType,
    Capability,
    ExecutionContext,
    ExecutionResult,
    RestoreReport,
    SnapshotId,
    ValidationResult,
)


class ExecutionEnvironment(abc.ABC):
    """Runs Python and bash for sessions, validates input, and keeps snapshots.

    A session is created on first use of its id in an :class:`ExecutionContext` and lives
    until :meth:`end_session`. Calls for one session are serialized; calls for different
    sessions run concurrently. Use as an async context manager to get :meth:`cleanup`.
    """

    @abc.abstractmethod
    async def execute_code(self, code: str, ctx: ExecutionContext) -> ExecutionResult:
        """Run Python ``code`` in the session's persistent interpreter."""

    @abc.abstractmethod
    async def execute_command(self, cmd: str, ctx: ExecutionContext) -> ExecutionResult:
        """Run ``cmd`` with ``bash -c`` in the session's directory and environment."""

    @abc.abstractmethod
    async def validate(self, text: str, kind: str = "code") -> ValidationResult:
        """Check ``text`` against the environment's validator (everything passes without one)."""

    @abc.abstractmethod
    async def create_snapshot(self, session_id: str, name: str) -> SnapshotId:
        """Save the session's interpreter state, files and environment under ``name``."""

    @abc.abstractmethod
    async def restore_snapshot(
        self, snapshot: SnapshotId | str, *, session_id: str | None = None
    ) -> RestoreReport:
        """Put the snapshot's session back into the saved state.

        ``session_id``, when given, must be the snapshot's own session: restoring one
        session's snapshot into another is refused. External state is not restored.
        """

    @abc.abstractmethod
    async def list_snapshots(self, session_id: str) -> Sequence[SnapshotId]:
        """The session's snapshots, oldest first."""

    @abc.abstractmethod
    async def delete_snapshot(self, snapshot: SnapshotId | str) -> None: ...

    @abc.abstractmethod
    async def delete_session_snapshots(self, session_id: str) -> None: ...

    @abc.abstractmethod
    def capabilities(self) -> frozenset[Capability]: ...

    def has_capability(self, capability: Capability) -> bool:
        return capability in self.capabilities()

    @abc.abstractmethod
    def backend_type(self) -> BackendType: ...

    @abc.abstractmethod
    async def health_check(self) -> bool:
        """True when the environment can start a session and run code right now."""

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """End every session and release every resource the environment holds."""

    async def end_session(self, session_id: str) -> None:
        """Release the session's worker, directory and snapshots. A no-op for unknown ids."""
        return None

    async def suspend_session(self, session_id: str) -> None:
        """Release the session's worker and directory but keep its snapshots: what a
        host does with an idle session it will continue later from a snapshot (the next
        use of the id starts a fresh interpreter). A no-op for unknown ids; backends that
        cannot release part of a session keep it running."""
        return None

    async def __aenter__(self) -> ExecutionEnvironment:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup()
