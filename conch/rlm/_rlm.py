"""``RLM``: the configuration of recursive runs, the sandbox they use, and how to start one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from conch.errors import ConfigurationError
from conch.lm import CompletionOptions, LanguageModel, create_model
from conch.lm._types import check_options
from conch.rlm._budget import Budget, BudgetLedger
from conch.rlm._context import Context, check_context
from conch.rlm._helpers import DEFAULT_BATCH_CONCURRENCY, check_tools
from conch.rlm._loop import Run, RunSettings, system_prompt_for
from conch.rlm._result import RLMResult
from conch.rlm._trajectory import Trajectory
from conch.rlm._turn import TurnSetup
from conch.sandbox import ExecutionEnvironment, Validator
from conch.sandbox import create as create_sandbox
from conch.trace import (
    JsonlTraceSink,
    MultiSink,
    TraceContext,
    TraceLevel,
    TraceSink,
    new_trace_id,
)
from conch.validate import EscalationCallback, ValidationGate

DEFAULT_MAX_OUTPUT_CHARS = 20_000
DEFAULT_CELL_TIMEOUT_S = 120.0
DEFAULT_MAX_CONSECUTIVE_ERRORS = 5


class RLM:
    """A Recursive Language Model: answers queries about contexts of any size.

    ::

        rlm = RLM(OpenAIModel("gpt-4o-mini"), budget=Budget(max_cost_usd=0.50))
        result = await rlm.acompletion(Path("big.log"), "Which service failed first?")
        print(result.answer, result.termination_reason)

    ``model`` writes the code (a ``LanguageModel`` or a spec such as ``"openai:gpt-4o-mini"``);
    ``sub_model`` (default: ``model``) answers ``llm_query`` and is the root model of child
    runs. The root run is at depth 0; a run at depth ``d < max_depth`` may start child runs
    with ``rlm_query``, and at ``max_depth`` ``rlm_query`` is a plain sub-model call.
    ``max_iterations`` bounds each run's replies; ``budget`` bounds the whole call tree.

    ``sandbox`` is a backend name (``"best"``, or one of ``conch.sandbox.backend_names()``:
    ``"gvisor"``, ``"bwrap"``, ``"local"``, ``"docker"``, ...) or an ``ExecutionEnvironment``
    you own. Each run gets its own session in it, ended when the run
    ends (unless ``keep_session``). A named backend is created per event loop and released
    by ``aclose()`` (or ``async with``); ``completion()`` releases it itself.

    ``tools`` maps names to host callables (sync or async) the code can call with JSON
    arguments. ``trace`` is a JSONL path or a ``TraceSink``. ``validator`` (with
    ``escalate``) checks each cell through a ``ValidationGate`` before it runs.
    """

    def __init__(
        self,
        model: LanguageModel | str,
        sub_model: LanguageModel | str | None = None,
        *,
        sandbox: str | ExecutionEnvironment = "best",
        max_depth: int = 1,
        max_iterations: int = 30,
        budget: Budget | None = None,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        trace: str | os.PathLike[str] | TraceSink | None = None,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        model_options: CompletionOptions | None = None,
        validator: Validator | None = None,
        escalate: EscalationCallback | None = None,
        keep_session: bool = False,
    ) -> None:
        for name, value, least in (
            ("max_depth", max_depth, 0),
            ("max_iterations", max_iterations, 1),
            ("max_output_chars", max_output_chars, 100),
            ("max_consecutive_errors", max_consecutive_errors, 1),
            ("batch_concurrency", batch_concurrency, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ConfigurationError(f"{name} must be an integer >= {least}, not {value!r}")
        if cell_timeout_s <= 0:
            raise ConfigurationError(f"cell_timeout_s must be > 0, not {cell_timeout_s!r}")
        options = dict(model_options or {})
        check_options(options)
        if "stop" in options:
            raise ConfigurationError(
                "model_options may not set 'stop': the loop sets its own stop sequences"
            )
        tools = dict(tools or {})
        check_tools(tools)
        root_model = create_model(model) if isinstance(model, str) else model
        child_model = create_model(sub_model) if isinstance(sub_model, str) else sub_model
        self._settings = RunSettings(
            model=root_model,
            sub_model=child_model or root_model,
            max_depth=max_depth,
            max_iterations=max_iterations,
            max_output_chars=max_output_chars,
            cell_timeout_s=cell_timeout_s,
            max_consecutive_errors=max_consecutive_errors,
            batch_concurrency=batch_concurrency,
            tools=tools,
            model_options=options,  # type: ignore[arg-type]
            gate=ValidationGate(validator, escalate=escalate) if validator else None,
            keep_session=keep_session,
        )
        self.budget = budget or Budget()
        self._trace = trace
        self._sandbox = sandbox
        self._owned_env: ExecutionEnvironment | None = None
        self._owned_env_loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> LanguageModel:
        return self._settings.model

    @property
    def sub_model(self) -> LanguageModel:
        return self._settings.sub_model

    async def acompletion(self, context: Context, query: str) -> RLMResult:
        """Answer ``query`` about ``context`` (see ``conch.rlm`` for what contexts become)."""
        run_id = new_trace_id()
        return await self._execute(
            context,
            query,
            self._settings,
            self.budget,
            TraceContext(run_id=run_id, session_id=f"rlm-{run_id}"),
        )

    async def arun_turn(self, context: Context, query: str, setup: TurnSetup) -> RLMResult:
        """One turn of a session that outlives it (what ``conch.runtime.Runtime`` calls).

        Like ``acompletion``, but in the sandbox session ``setup.session_id`` (kept when the
        turn ends, REPL variables and all), after ``setup.history``, with the setup's system
        prompt, hooks, extra tools and limits. ``context=None`` with a
        ``setup.context_description`` continues with the context already in the REPL.
        """
        if not isinstance(setup, TurnSetup):
            raise ConfigurationError(f"arun_turn needs a TurnSetup, got {type(setup).__name__}")
        settings = self._settings
        if setup.extra_tools:
            tools = {**settings.tools, **setup.extra_tools}
            check_tools(tools)
            settings = replace(settings, tools=tools)
        if setup.max_iterations is not None:
            settings = replace(settings, max_iterations=setup.max_iterations)
        return await self._execute(
            context,
            query,
            settings,
            setup.budget or self.budget,
            setup.trace_context or TraceContext(session_id=setup.session_id),
            level=setup.trace_level,
            extra_sink=setup.trace_sink,
            turn=setup,
        )

    async def _execute(
        self,
        context: Context,
        query: str,
        settings: RunSettings,
        budget: Budget,
        trace_context: TraceContext,
        *,
        level: TraceLevel = TraceLevel.STANDARD,
        extra_sink: TraceSink | None = None,
        turn: TurnSetup | None = None,
    ) -> RLMResult:
        """Check the input, then run one root run, its records going to the RLM's trace
        (and ``extra_sink``); a trace file the RLM opened is closed after the run."""
        if not isinstance(query, str) or not query.strip():
            raise ConfigurationError("the query is empty; ask a question about the context")
        check_context(context)
        own_sink, trace_path, owns_sink = self._open_trace()
        sinks = [s for s in (extra_sink, own_sink) if s is not None]
        sink = sinks[0] if len(sinks) == 1 else MultiSink(sinks) if sinks else None
        try:
            run = Run(
                settings,
                self._environment(),
                BudgetLedger(budget),
                Trajectory(sink, trace_context, level),
                run_id=trace_context.run_id,
                turn=turn,
            )
            result = await run.execute(context, query)
        finally:
            if owns_sink and own_sink is not None:
                own_sink.close()
        return result if trace_path is None else _with_trace_path(result, trace_path)

    def system_prompt(self, *, extra_tools: Mapping[str, Callable[..., Any]] | None = None) -> str:
        """The default system prompt of this RLM's root runs (with ``extra_tools`` listed)."""
        settings = self._settings
        if extra_tools:
            settings = replace(settings, tools={**settings.tools, **extra_tools})
        return system_prompt_for(settings, can_recurse=settings.max_depth > 0)

    def completion(self, context: Context, query: str) -> RLMResult:
        """``acompletion`` for code without an event loop (not callable from inside one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise ConfigurationError(
                "RLM.completion() cannot run inside an event loop; use await rlm.acompletion()"
            )

        async def once() -> RLMResult:
            try:
                return await self.acompletion(context, query)
            finally:
                await self.aclose()

        return asyncio.run(once())

    async def aclose(self) -> None:
        """Release the sandbox this RLM created (one given to it is left alone)."""
        env, self._owned_env, self._owned_env_loop = self._owned_env, None, None
        if env is not None:
            await env.cleanup()

    async def __aenter__(self) -> RLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _environment(self) -> ExecutionEnvironment:
        if isinstance(self._sandbox, ExecutionEnvironment):
            return self._sandbox
        loop = asyncio.get_running_loop()
        if self._owned_env is None or self._owned_env_loop is not loop:
            # Workers are bound to the loop that started them: a new loop needs its own.
            self._owned_env = create_sandbox(self._sandbox)
            self._owned_env_loop = loop
        return self._owned_env

    def _open_trace(self) -> tuple[TraceSink | None, str | None, bool]:
        trace = self._trace
        if trace is None:
            return None, None, False
        if isinstance(trace, str | os.PathLike):
            return JsonlTraceSink(trace), str(Path(trace)), True
        return trace, (str(trace.path) if isinstance(trace, JsonlTraceSink) else None), False


def _with_trace_path(result: RLMResult, trace_path: str) -> RLMResult:
    return replace(result, trace_path=trace_path)
