"""The process-level infrastructure an embedder builds once and shares with every runtime.

Three ways to use it:

* Interactive, one runtime: ``RuntimeEnvironment()`` (every default).
* Long autonomous agent: ``Residency.ACTIVE_PATH_ONLY``, and the host now and then
  tombstones ``orphaned_node_ids()`` and calls ``store.vacuum()`` on its own schedule:
  conch owns RAM, the host owns disk.
* Multi-tenant server: one environment per process, ``ACTIVE_PATH_ONLY``, and
  ``park()`` / ``resume()`` around each request.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from typing import Any

from conch.errors import ConfigurationError
from conch.runtime._background import BackgroundTaskHost
from conch.runtime._plugins import PluginHost
from conch.runtime._prompt import PromptContribution, PromptLayer, PromptSlot, PromptTemplate
from conch.runtime._termination import TerminationPolicy
from conch.store import AttachmentStore, InMemoryAttachmentStore, SessionStoreFactory
from conch.trace import JsonlTraceSink, TraceContext, TraceLevel, TraceSink


class Residency(enum.StrEnum):
    """Which nodes of a session graph a runtime keeps in memory."""

    KEEP_ALL = "keep_all"
    """Every live node (the default): rewinding and browsing branches never touch disk."""
    ACTIVE_PATH_ONLY = "active_path_only"
    """Only the active path; other nodes stay on disk and are read on demand
    (``get_historic_node``). Memory per session follows the path, not the history."""


@dataclass(frozen=True, slots=True)
class RuntimeEnvironment:
    """Shared runtime infrastructure; immutable, so sharing it between runtimes (and
    tasks) is free. Derive a variant with ``dataclasses.replace`` or ``builder()``."""

    plugin_host: PluginHost | None = None
    """Builds each session's plugins (None: no plugins)."""
    residency: Residency = Residency.KEEP_ALL
    background_task_host: BackgroundTaskHost | None = None
    """Where background turns run (None: the runtime's default, on the event loop)."""
    session_store_factory: SessionStoreFactory | None = None
    """Opens stores for sessions the runtime creates itself (child sessions)."""
    attachment_store: AttachmentStore = field(default_factory=InMemoryAttachmentStore)
    prompt: PromptLayer = field(default_factory=PromptLayer)
    """The environment's prompt layer; sessions and turns stack theirs on top."""
    trace_sink: TraceSink | None = None
    trace_level: TraceLevel = TraceLevel.STANDARD
    trace_context: TraceContext = field(default_factory=TraceContext)
    termination: TerminationPolicy = field(default_factory=TerminationPolicy)

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def builder(cls) -> RuntimeEnvironmentBuilder:
        return RuntimeEnvironmentBuilder()


def _check(env: RuntimeEnvironment) -> None:
    expected: dict[str, tuple[type | tuple[type, ...], str]] = {
        "plugin_host": ((PluginHost, type(None)), "a PluginHost or None"),
        "residency": (Residency, "a Residency"),
        "attachment_store": (AttachmentStore, "an AttachmentStore"),
        "prompt": (PromptLayer, "a PromptLayer"),
        "trace_sink": ((TraceSink, type(None)), "a TraceSink or None"),
        "trace_level": (TraceLevel, "a TraceLevel"),
        "trace_context": (TraceContext, "a TraceContext"),
        "termination": (TerminationPolicy, "a TerminationPolicy"),
        "background_task_host": ((BackgroundTaskHost, type(None)), "a BackgroundTaskHost or None"),
        "session_store_factory": (
            (SessionStoreFactory, type(None)),
            "a SessionStoreFactory or None",
        ),
    }
    for name, (kind, what) in expected.items():
        value = getattr(env, name)
        if not isinstance(value, kind):
            raise ConfigurationError(
                f"RuntimeEnvironment.{name} must be {what}, got {type(value).__name__}"
            )


class RuntimeEnvironmentBuilder:
    """Fluent construction of a ``RuntimeEnvironment``; each ``with_*`` returns the builder.

    Prompt calls apply in the order they are made: ``with_prompt_layer`` replaces every
    prompt call before it, later calls add to it.
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._prompt = PromptLayer()
        self._trace_path: str | os.PathLike[str] | None = None

    def with_plugin_host(self, host: PluginHost) -> RuntimeEnvironmentBuilder:
        return self._set("plugin_host", host)

    def with_residency(self, residency: Residency) -> RuntimeEnvironmentBuilder:
        return self._set("residency", residency)

    def with_background_task_host(self, host: BackgroundTaskHost) -> RuntimeEnvironmentBuilder:
        return self._set("background_task_host", host)

    def with_session_store_factory(self, factory: SessionStoreFactory) -> RuntimeEnvironmentBuilder:
        return self._set("session_store_factory", factory)

    def with_attachment_store(self, store: AttachmentStore) -> RuntimeEnvironmentBuilder:
        return self._set("attachment_store", store)

    def with_prompt_template(self, template: PromptTemplate) -> RuntimeEnvironmentBuilder:
        self._prompt = self._prompt.with_template(template)
        return self

    def with_prompt_contribution(
        self, contribution: PromptContribution
    ) -> RuntimeEnvironmentBuilder:
        self._prompt = self._prompt.with_contribution(contribution)
        return self

    def with_replaced_prompt_slot(
        self, slot: PromptSlot | str, contributions: list[PromptContribution]
    ) -> RuntimeEnvironmentBuilder:
        self._prompt = self._prompt.with_replaced_slot(slot, contributions)
        return self

    def with_cleared_prompt_slot(self, slot: PromptSlot | str) -> RuntimeEnvironmentBuilder:
        self._prompt = self._prompt.with_cleared_slot(slot)
        return self

    def with_prompt_layer(self, prompt: PromptLayer) -> RuntimeEnvironmentBuilder:
        self._prompt = prompt
        return self

    def with_trace_jsonl_path(
        self, path: str | os.PathLike[str] | None
    ) -> RuntimeEnvironmentBuilder:
        """Trace to a JSONL file (None: no tracing). The file is opened by ``build()``."""
        self._fields.pop("trace_sink", None)
        self._trace_path = path
        return self

    def with_trace_sink(self, sink: TraceSink | None) -> RuntimeEnvironmentBuilder:
        self._trace_path = None
        return self._set("trace_sink", sink)

    def with_trace_level(self, level: TraceLevel) -> RuntimeEnvironmentBuilder:
        return self._set("trace_level", level)

    def with_trace_context(self, context: TraceContext) -> RuntimeEnvironmentBuilder:
        return self._set("trace_context", context)

    def with_termination(self, termination: TerminationPolicy) -> RuntimeEnvironmentBuilder:
        return self._set("termination", termination)

    def build(self) -> RuntimeEnvironment:
        fields = dict(self._fields, prompt=self._prompt)
        # Checked before the trace file is opened, so a bad option leaves no file behind.
        env = RuntimeEnvironment(**fields)
        if self._trace_path is not None:
            env = replace(env, trace_sink=JsonlTraceSink(self._trace_path))
        return env

    def _set(self, name: str, value: Any) -> RuntimeEnvironmentBuilder:
        self._fields[name] = value
        return self
