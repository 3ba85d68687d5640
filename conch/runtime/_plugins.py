"""Plugins: per-session extensions that see and shape every turn.

A ``PluginHost`` holds factories and is built once per process (it lives on the
``RuntimeEnvironment``). For each session it builds a ``PluginSession``: one instance of
every plugin, in registration order, with the state they saved last time. The runtime
calls the session's hooks during a turn and saves ``PluginSession.save_state()`` in the
turn's commit (``TurnCommit.plugin_state``), so a plugin's state and the turn it belongs
to are durable together.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from conch.errors import ConfigurationError, PluginError
from conch.runtime._prompt import PromptContribution, PromptLayer

if TYPE_CHECKING:
    from conch.runtime._background import BackgroundTaskHost

ChatMessage = Mapping[str, Any]
"""A chat message as model clients take it: ``{"role": ..., "content": ...}``."""

#: Version of the blob ``PluginSession.save_state`` writes.
STATE_FORMAT = 1


class CellAction(enum.StrEnum):
    RUN = "run"
    VETO = "veto"
    REWRITE = "rewrite"


@dataclass(frozen=True, slots=True)
class CellDecision:
    """What a plugin decides about a code cell: ``CellDecision.run()``,
    ``CellDecision.veto(reason)`` or ``CellDecision.rewrite(code)``."""

    action: CellAction
    code: str | None = None
    """The code to run instead (REWRITE; after the chain: the code that runs)."""
    reason: str = ""
    """Why (VETO: shown to the model in place of the cell's output)."""
    plugin: str = ""
    """The plugin that vetoed or last rewrote the cell (set by ``PluginSession``)."""

    @classmethod
    def run(cls) -> CellDecision:
        return cls(CellAction.RUN)

    @classmethod
    def veto(cls, reason: str) -> CellDecision:
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigurationError(
                "CellDecision.veto needs a reason: the model is shown it instead of the "
                "cell's output, so say what was refused and what to do instead"
            )
        return cls(CellAction.VETO, reason=reason)

    @classmethod
    def rewrite(cls, code: str, reason: str = "") -> CellDecision:
        if not isinstance(code, str):
            raise ConfigurationError(
                f"CellDecision.rewrite takes the new code as a str, got {type(code).__name__}"
            )
        return cls(CellAction.REWRITE, code=code, reason=reason)


@dataclass(frozen=True, slots=True)
class TurnInfo:
    """The turn a hook is called for."""

    session_id: str
    turn_key: str
    user_input: str


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How a turn ended, as ``after_turn`` sees it."""

    answer: str | None
    """The final answer (None: the turn ended without one)."""
    reason: str
    """Why it ended (a ``conch.rlm.TerminationReason`` value such as ``"final"``)."""
    failed: bool


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a factory is given to build a session's plugin instance."""

    session_id: str
    background_tasks: BackgroundTaskHost | None = None
    """The environment's host, for plugins that start work of their own."""


class Plugin:
    """Base class of plugins: override the hooks you need; the defaults change nothing.

    ``name`` identifies the plugin's saved state and must be unique within a host (it
    defaults to the class name). Hooks that return a value get the value the previous
    plugin returned and pass theirs to the next.
    """

    name: str = ""

    def __init__(self, context: PluginContext | None = None) -> None:
        # Taking the context lets a Plugin subclass itself serve as its factory.
        self.context = context

    async def before_turn(self, turn: TurnInfo) -> None:
        """Called before the turn's first model request."""

    async def after_turn(self, turn: TurnInfo, outcome: TurnOutcome) -> None:
        """Called after the turn ended, before its commit (state saved here is kept)."""

    async def on_model_request(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """The messages about to be sent to the model; return them, changed or not."""
        return messages

    async def on_model_reply(self, text: str) -> str:
        """The model's reply text, before its code is read from it."""
        return text

    async def on_code_cell(self, code: str) -> CellDecision:
        """A code cell about to run: run it, veto it, or rewrite it."""
        return CellDecision.run()

    async def on_cell_output(self, output: str) -> str:
        """A cell's output, before the model sees it."""
        return output

    def prompt_contributions(self) -> Sequence[PromptContribution]:
        """Text this plugin adds to the system prompt (the session's prompt layer)."""
        return ()

    def repl_tools(self) -> Mapping[str, Callable[..., Any]]:
        """Functions this plugin offers in the REPL, by the name code calls them with."""
        return {}

    def save_state(self) -> Any:
        """JSON-serialisable state to keep with the session (None: nothing to keep)."""
        return None

    def load_state(self, state: Any) -> None:
        """Restore what ``save_state`` returned when the session was last committed."""


PluginFactory = Callable[[PluginContext], Plugin]
"""Makes a session's instance of a plugin: a ``Plugin`` subclass (called with the context),
or a function such as ``OutputBudgetPlugin.factory(max_chars_per_cell=2_000)``."""

_T = TypeVar("_T")


def _plugin_name(plugin: Plugin) -> str:
    return plugin.name or type(plugin).__name__


class PluginSession:
    """One session's plugin instances; runs their hooks in registration order."""

    def __init__(self, session_id: str, plugins: Sequence[Plugin], carried: Mapping[str, Any]):
        self.session_id = session_id
        self._plugins = tuple(plugins)
        # State of plugins that are saved but no longer registered: kept, so removing a
        # plugin from the host for a while does not erase what it saved.
        self._carried = dict(carried)

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        return self._plugins

    async def before_turn(self, turn: TurnInfo) -> None:
        for plugin in self._plugins:
            await self._call(plugin, "before_turn", plugin.before_turn(turn))

    async def after_turn(self, turn: TurnInfo, outcome: TurnOutcome) -> None:
        for plugin in self._plugins:
            await self._call(plugin, "after_turn", plugin.after_turn(turn, outcome))

    async def on_model_request(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        current = list(messages)
        for plugin in self._plugins:
            current = await self._call(plugin, "on_model_request", plugin.on_model_request(current))
            self._expect(plugin, "on_model_request", current, list, "the (changed) message list")
        return current

    async def on_model_reply(self, text: str) -> str:
        for plugin in self._plugins:
            text = await self._call(plugin, "on_model_reply", plugin.on_model_reply(text))
            self._expect(plugin, "on_model_reply", text, str, "the (changed) reply text")
        return text

    async def on_code_cell(self, code: str) -> CellDecision:
        """The chain's decision: the first veto stops it; each rewrite is what the next
        plugin sees. RUN carries the original code; REWRITE the code to run instead."""
        rewritten_by = ""
        reasons: list[str] = []
        current = code
        for plugin in self._plugins:
            name = _plugin_name(plugin)
            decision = await self._call(plugin, "on_code_cell", plugin.on_code_cell(current))
            self._expect(plugin, "on_code_cell", decision, CellDecision, "a CellDecision")
            if decision.action is CellAction.VETO:
                return CellDecision(CellAction.VETO, current, decision.reason, name)
            if decision.action is CellAction.REWRITE and decision.code != current:
                current, rewritten_by = decision.code or "", name
                if decision.reason:
                    reasons.append(decision.reason)
        if current == code:
            return CellDecision(CellAction.RUN, code)
        return CellDecision(CellAction.REWRITE, current, "; ".join(reasons), rewritten_by)

    async def on_cell_output(self, output: str) -> str:
        for plugin in self._plugins:
            output = await self._call(plugin, "on_cell_output", plugin.on_cell_output(output))
            self._expect(plugin, "on_cell_output", output, str, "the (changed) output text")
        return output

    def prompt_layer(self) -> PromptLayer:
        """The session's prompt layer: every plugin's contributions, ``source`` set to the
        plugin's name where the plugin left it empty."""
        layer = PromptLayer()
        for plugin in self._plugins:
            name = _plugin_name(plugin)
            for item in self._sync(plugin, "prompt_contributions", plugin.prompt_contributions):
                self._expect(
                    plugin, "prompt_contributions", item, PromptContribution, "PromptContributions"
                )
                if not item.source:
                    item = PromptContribution(item.slot, item.text, item.priority, name)
                layer = layer.with_contribution(item)
        return layer

    def repl_tools(self) -> dict[str, Callable[..., Any]]:
        """Every plugin's REPL tools; two plugins offering one name is an error."""
        tools: dict[str, Callable[..., Any]] = {}
        owners: dict[str, str] = {}
        for plugin in self._plugins:
            name = _plugin_name(plugin)
            for tool, function in self._sync(plugin, "repl_tools", plugin.repl_tools).items():
                if not callable(function):
                    raise PluginError(
                        f"plugin {name!r} offers REPL tool {tool!r} as a "
                        f"{type(function).__name__}, which cannot be called; offer a function"
                    )
                if tool in owners:
                    raise PluginError(
                        f"plugins {owners[tool]!r} and {name!r} both offer a REPL tool named "
                        f"{tool!r}; rename one of them"
                    )
                tools[tool], owners[tool] = function, name
        return tools

    def save_state(self) -> bytes:
        """Every plugin's state as one blob, for ``TurnCommit.plugin_state``."""
        states = dict(self._carried)
        for plugin in self._plugins:
            state = self._sync(plugin, "save_state", plugin.save_state)
            if state is None:
                states.pop(_plugin_name(plugin), None)
            else:
                states[_plugin_name(plugin)] = state
        try:
            return json.dumps(
                {"format": STATE_FORMAT, "plugins": states}, allow_nan=False, sort_keys=True
            ).encode()
        except (TypeError, ValueError) as exc:
            raise PluginError(
                f"plugin state of session {self.session_id!r} cannot be saved as JSON ({exc}); "
                "save_state() must return dicts, lists, strings, finite numbers, booleans "
                "or None"
            ) from exc

    async def _call(self, plugin: Plugin, hook: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except Exception as exc:
            raise PluginError(f"plugin {_plugin_name(plugin)!r} failed in {hook}: {exc!r}") from exc

    def _sync(self, plugin: Plugin, hook: str, method: Callable[[], _T]) -> _T:
        try:
            return method()
        except Exception as exc:
            raise PluginError(f"plugin {_plugin_name(plugin)!r} failed in {hook}: {exc!r}") from exc

    @staticmethod
    def _expect(plugin: Plugin, hook: str, value: object, kind: type, what: str) -> None:
        if not isinstance(value, kind):
            raise PluginError(
                f"plugin {_plugin_name(plugin)!r}: {hook} returned a "
                f"{type(value).__name__}; it must return {what}"
            )


class PluginHost:
    """The process's plugins: factories, built into one ``PluginSession`` per session."""

    def __init__(self, factories: Sequence[PluginFactory] = ()) -> None:
        for factory in factories:
            if not callable(factory):
                raise ConfigurationError(
                    f"a plugin factory must be callable with a PluginContext, got "
                    f"{type(factory).__name__}; pass the Plugin class or a function"
                )
        self._factories = tuple(factories)

    @property
    def factories(self) -> tuple[PluginFactory, ...]:
        return self._factories

    def build_session(
        self,
        session_id: str,
        saved_state: bytes | None = None,
        *,
        background_tasks: BackgroundTaskHost | None = None,
    ) -> PluginSession:
        """One instance of every plugin for the session, given the state it saved last
        (``SessionRecord.plugin_state``; None for a new session)."""
        states = _decode_state(session_id, saved_state)
        context = PluginContext(session_id, background_tasks)
        plugins: list[Plugin] = []
        names: set[str] = set()
        for factory in self._factories:
            plugin = factory(context)
            if not isinstance(plugin, Plugin):
                raise ConfigurationError(
                    f"plugin factory {factory!r} returned a {type(plugin).__name__}, not a "
                    "Plugin; subclass conch.runtime.Plugin"
                )
            name = _plugin_name(plugin)
            if name in names:
                raise ConfigurationError(
                    f"two plugins are named {name!r}; names key their saved state, so give "
                    "each plugin its own name (set the class attribute `name`)"
                )
            names.add(name)
            if name in states:
                try:
                    plugin.load_state(states[name])
                except Exception as exc:
                    raise PluginError(
                        f"plugin {name!r} could not load the state session {session_id!r} "
                        f"saved: {exc!r}"
                    ) from exc
            plugins.append(plugin)
        carried = {name: state for name, state in states.items() if name not in names}
        return PluginSession(session_id, plugins, carried)


def _decode_state(session_id: str, blob: bytes | None) -> dict[str, Any]:
    if blob is None:
        return {}
    try:
        data = json.loads(blob)
        if data.get("format") != STATE_FORMAT or not isinstance(data.get("plugins"), dict):
            raise ValueError(f"format {data.get('format')!r}, expected {STATE_FORMAT}")
    except (ValueError, AttributeError, TypeError) as exc:
        raise PluginError(
            f"the plugin state saved with session {session_id!r} is not one this version of "
            f"conch wrote ({exc}); it was not changed. Build the session's plugins without "
            "it (saved_state=None) to start their state afresh"
        ) from exc
    return data["plugins"]
