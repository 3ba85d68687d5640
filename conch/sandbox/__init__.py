"""Sandboxes: the ``ExecutionEnvironment`` contract and its backends.

Every backend runs the same stdlib-only worker (``conch.sandbox.worker``) inside its
isolation boundary and talks to it over one framed, bidirectional channel, so code,
callbacks into the host, timeouts, output limits and snapshots behave the same everywhere.
"""

from conch.sandbox._environment import ExecutionEnvironment
from conch.sandbox._registry import (
    BackendStatus,
    backend_names,
    backend_statuses,
    best_available,
    create,
)
from conch.sandbox._types import (
    BackendType,
    Capability,
    ExecutionContext,
    ExecutionResult,
    HostFunction,
    MatchedTerm,
    RestoreReport,
    SnapshotId,
    ValidationResult,
    Validator,
)
from conch.sandbox._worker_environment import ResourceLimits

__all__ = [
    "BackendStatus",
    "BackendType",
    "Capability",
    "ExecutionContext",
    "ExecutionEnvironment",
    "ExecutionResult",
    "HostFunction",
    "MatchedTerm",
    "ResourceLimits",
    "RestoreReport",
    "SnapshotId",
    "ValidationResult",
    "Validator",
    "backend_names",
    "backend_statuses",
    "best_available",
    "create",
]
