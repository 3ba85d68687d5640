"""Value types of the sandbox contract: what goes into an execution and what comes out."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_TIMEOUT_S = 60.0

#: A host function code in the sandbox may call during execution through ``host_call``.
#: It receives the JSON payload the code sent and returns a JSON-serialisable reply
#: (or an awaitable of one). An exception it raises is re-raised inside the sandbox.
HostFunction = Callable[[Any], Any | Awaitable[Any]]


class Capability(enum.StrEnum):
    """What a backend can do beyond running code."""

    PYTHON = "python"
    BASH = "bash"
    PERSISTENT_STATE = "persistent_state"
    """Variables survive from one execution to the next within a session."""
    HOST_CALLBACKS = "host_callbacks"
    """Code can call host functions during execution (``host_call``, ``llm_query``)."""
    SNAPSHOT = "snapshot"
    """Interpreter state (pickled name by name), files and environment can be saved."""
    FILESYSTEM_SNAPSHOT = "filesystem_snapshot"
    VM_SNAPSHOT = "vm_snapshot"
    """The whole process or VM memory can be checkpointed (every object survives)."""
    PROCESS_ISOLATION = "process_isolation"
    """Code runs in its own namespaces: cannot see or signal host processes."""
    FILESYSTEM_ISOLATION = "filesystem_isolation"
    """Code sees only system directories read-only and its own session directory."""
    NETWORK_ISOLATION = "network_isolation"
    """Code has no network unless it was asked for."""
    RESOURCE_LIMITS = "resource_limits"
    """Memory, processes, file size and CPU time are bounded."""


class BackendType(enum.StrEnum):
    LOCAL = "local"
    BWRAP = "bwrap"
    GVISOR = "gvisor"
    DOCKER = "docker"
    FIRECRACKER = "firecracker"
    E2B = "e2b"


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    """Per-call settings. Sessions are created lazily on first use of their id."""

    session_id: str = "default"
    timeout_s: float = DEFAULT_TIMEOUT_S
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment variables for this execution only (on top of the session's)."""
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    """Bytes of stdout (and, separately, stderr) returned inline; the rest is spilled."""
    host_functions: Mapping[str, HostFunction] = field(default_factory=dict)
    """Functions code may call back into during this execution, by name."""


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    timed_out: bool = False
    truncated: bool = False
    """True when stdout or stderr held more than ``max_output_bytes``."""
    output_path: str | None = None
    """Host path of the complete stdout when it was truncated."""
    stderr_path: str | None = None
    """Host path of the complete stderr when it was truncated."""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    duration_ms: float = 0.0
    state_lost: bool = False
    """The session's worker was replaced during or before this call: variables are gone."""
    error: str | None = None
    """Why the call did not complete normally (worker died, timeout, blocked), for people."""
    validation: ValidationResult | None = None
    """Set when a validator checked the input; a blocked input was not run (exit code 126)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True, slots=True)
class SnapshotId:
    id: str
    session_id: str
    name: str
    created: datetime
    size: int
    """Bytes stored for this snapshot (state and files, before deduplication)."""
    unpicklable: tuple[str, ...] = ()
    """Variables that could not be saved, each as ``name: reason``."""


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore brought back. ``failed`` lists names that could not be loaded."""

    snapshot: SnapshotId
    restored: tuple[str, ...]
    failed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MatchedTerm:
    term: str
    """The surface text as it appeared in the input."""
    concept: str
    """The normalised concept the term maps to."""
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ValidationResult:
    passed: bool
    matched: tuple[MatchedTerm, ...] = ()
    unknown: tuple[str, ...] = ()
    message: str = ""
    match_ratio: float = 1.0
    connected: bool | None = None
    """Whether the matched concepts are connected in the role graph (None: not checked)."""
    suggestions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """For each unknown word, the closest known terms."""

    @property
    def matched_terms(self) -> tuple[str, ...]:
        return tuple(m.term for m in self.matched)


@runtime_checkable
class Validator(Protocol):
    """Checks text a model wants to run. ``kind`` is ``"code"`` (Python) or ``"command"``."""

    def validate(self, text: str, kind: str = "code") -> ValidationResult: ...
