"""The runtime layer: what an embedder shares between runtimes, and each session's graph.

``RuntimeEnvironment`` (built once per process, via ``RuntimeEnvironment.builder()``)
carries the plugin host, the ``Residency`` of session graphs, the background task host, the
store factory, the attachment store, the prompt layer, tracing and the
``TerminationPolicy``. A ``SessionGraph`` is one session's nodes in memory, loaded from a
``SessionStore`` according to the residency; ``park_graph`` reduces it to a
``ParkedSession`` handle (id, store, policy) and ``resume_graph`` loads it back.

``Runtime`` is one session open for writing: ``turn()`` runs an RLM turn in the session's
sandbox session and commits it atomically with the plugins' state; a REPL snapshot on each
turn's last node lets ``rewind()`` and a later ``open``/``resume`` restore the variables of
any point. ``park()`` leaves only a ``ParkedSession`` handle.

The system prompt is a ``PromptLayer`` of ``PromptContribution``s in the slots of a
``PromptTemplate``, stacked environment -> session -> turn. Plugins (``Plugin``,
``PluginHost``, one ``PluginSession`` per session) hook into turns, model calls and code
cells and save their state with each commit; ``OutputBudgetPlugin`` caps cell output.
"""

from conch.runtime._background import (
    BackgroundTaskHost,
    BackgroundTaskNotFoundError,
    EventLoopTaskHost,
    TaskState,
    TaskStatus,
)
from conch.runtime._environment import Residency, RuntimeEnvironment, RuntimeEnvironmentBuilder
from conch.runtime._graph import SessionGraph, SessionParkedError
from conch.runtime._output_budget import OutputBudgetPlugin
from conch.runtime._parked import ParkedSession, park_graph, resume_graph
from conch.runtime._plugins import (
    CellAction,
    CellDecision,
    ChatMessage,
    Plugin,
    PluginContext,
    PluginError,
    PluginFactory,
    PluginHost,
    PluginSession,
    TurnInfo,
    TurnOutcome,
)
from conch.runtime._prompt import (
    DEFAULT_TEMPLATE,
    PromptContribution,
    PromptLayer,
    PromptSlot,
    PromptTemplate,
)
from conch.runtime._runtime import (
    ReplRestore,
    Runtime,
    RuntimePolicy,
    SnapshotPolicy,
    TurnResult,
    default_owner,
    sandbox_session_id,
)
from conch.runtime._termination import TerminationPolicy

__all__ = [
    "DEFAULT_TEMPLATE",
    "BackgroundTaskHost",
    "BackgroundTaskNotFoundError",
    "CellAction",
    "CellDecision",
    "ChatMessage",
    "EventLoopTaskHost",
    "OutputBudgetPlugin",
    "ParkedSession",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PluginFactory",
    "PluginHost",
    "PluginSession",
    "PromptContribution",
    "PromptLayer",
    "PromptSlot",
    "PromptTemplate",
    "ReplRestore",
    "Residency",
    "Runtime",
    "RuntimeEnvironment",
    "RuntimeEnvironmentBuilder",
    "RuntimePolicy",
    "SessionGraph",
    "SessionParkedError",
    "SnapshotPolicy",
    "TaskState",
    "TaskStatus",
    "TerminationPolicy",
    "TurnInfo",
    "TurnOutcome",
    "TurnResult",
    "default_owner",
    "park_graph",
    "resume_graph",
    "sandbox_session_id",
]
