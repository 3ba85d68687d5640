"""One run of the recursive loop: ask the model, run its cells, serve its sub-calls, stop.

With a validation gate, no code runs on the model's behalf before the gate lets it: neither
its cells nor the code the loop writes to read a FINAL given outside them.

A ``Run`` owns one sandbox session for its life. It shares the environment, the budget
ledger and the trace sink with its parent and children; it shares nothing mutable with
other runs (no process-wide stdout, cwd or handlers), so any number run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from conch.errors import ModelError
from conch.lm import Completion, CompletionOptions, LanguageModel, Message
from conch.rlm import _prompts
from conch.rlm._budget import BudgetExhausted, BudgetLedger, TerminationReason
from conch.rlm._context import Context, check_context, load_context
from conch.rlm._helpers import (
    ANSWER_CHECK,
    HELPER_SOURCE,
    RESERVED_NAMES,
    describe_tools,
    host_functions,
    tool_source,
)
from conch.rlm._parsing import (
    STOP_SEQUENCES,
    cut_at_fake_output,
    extract_code_blocks,
    find_plain_final,
    text_outside_code,
    value_reference,
)
from conch.rlm._result import RLMResult
from conch.rlm._trajectory import Trajectory, preview
from conch.rlm._turn import RunHooks, TurnSetup
from conch.sandbox import ExecutionContext, ExecutionEnvironment, ExecutionResult
from conch.trace import new_trace_id
from conch.validate import ValidationGate

logger = logging.getLogger("conch.rlm")

# Recognised in a best-answer reply; anything else in it is taken whole.
_BEST_ANSWER_REASONS = frozenset(
    {
        TerminationReason.MAX_ITERATIONS,
        TerminationReason.CONSECUTIVE_ERRORS,
        TerminationReason.SUB_CALL_BUDGET,
    }
)

# Small models write final(...) as often as FINAL(...): both work in code, as in plain text.
_FINAL_ALIASES = "final = FINAL\nfinal_var = FINAL_VAR\n"
#: What the REPL defines besides Python (its functions, their aliases, `context`, `answer`):
#: syntax to a validator, as Python's builtins are. The worker's own channel is left out: the
#: model is never told of it. Each run adds its tools' names.
REPL_NAMES = (RESERVED_NAMES - {"host_call", "HostCallError"}) | {"final", "final_var"}
# Shown when an empty reply is sent back to the model (some APIs refuse empty messages).
_EMPTY_REPLY_SENT = "(empty reply)"
# A FINAL beside code that reads one of these was given before the code found anything.
_EMPTY_ANSWERS = frozenset({"", "none", "null", "[]", "{}", "()", "''", '""'})


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything a run needs from its ``RLM`` (children get the same, one level deeper)."""

    model: LanguageModel
    sub_model: LanguageModel
    max_depth: int
    max_iterations: int
    max_output_chars: int
    cell_timeout_s: float
    max_consecutive_errors: int
    batch_concurrency: int
    tools: Mapping[str, Callable[..., Any]]
    model_options: CompletionOptions
    gate: ValidationGate | None
    keep_session: bool


def system_prompt_for(settings: RunSettings, *, can_recurse: bool) -> str:
    """The default system prompt of a run with these settings."""
    return _prompts.system_prompt(
        max_output_chars=settings.max_output_chars,
        can_recurse=can_recurse,
        tool_lines=describe_tools(settings.tools),
        sub_call_chars=_prompts.sub_call_chars(
            getattr(settings.sub_model, "context_window_tokens", None)
        ),
    )


@dataclass
class _Final:
    answer: str
    source: str


class Run:
    def __init__(
        self,
        settings: RunSettings,
        env: ExecutionEnvironment,
        ledger: BudgetLedger,
        trajectory: Trajectory,
        *,
        run_id: str,
        depth: int = 0,
        model: LanguageModel | None = None,
        turn: TurnSetup | None = None,
    ) -> None:
        self.settings = settings
        self.env = env
        self.ledger = ledger
        self.trajectory = trajectory
        self.run_id = run_id
        self.turn = turn
        self.session_id = turn.session_id if turn is not None else f"rlm-{run_id}"
        self.hooks = turn.hooks if turn is not None and turn.hooks is not None else RunHooks()
        self.depth = depth
        self.model = model or settings.model
        self.iterations = 0
        self.final: _Final | None = None
        self.error: str | None = None
        self.rejected = False
        """Set when the validation gate rejected code: the run ends ``validation_rejected``."""
        self._repl_names = REPL_NAMES | frozenset(settings.tools)
        self.messages: list[Message] = []
        self.context_description: str | None = None
        self._host_functions = host_functions(
            llm_query=self._llm_query,
            rlm_query=self._rlm_query,
            final=self._record_final("FINAL"),
            tools=settings.tools,
            batch_concurrency=settings.batch_concurrency,
        )
        # After a cell that set `answer`, the check runs with a `final` that labels the source.
        self._answer_check_functions = {
            **self._host_functions,
            "final": lambda payload: self._set_final(str(payload.get("answer", "")), "answer"),
        }

    @property
    def can_recurse(self) -> bool:
        return self.depth < self.settings.max_depth

    # --- the run ------------------------------------------------------------------------

    async def execute(self, context: Context, query: str) -> RLMResult:
        started = time.monotonic()
        self.ledger.enter_depth(self.depth)
        self.trajectory.run_start(
            query=query,
            depth=self.depth,
            model=self.model.model,
            sub_model=self.settings.sub_model.model,
            max_iterations=self.settings.max_iterations,
            max_depth=self.settings.max_depth,
            session_id=self.session_id,
        )
        reason: TerminationReason | None = None  # None in the trace: an exception escaped
        try:
            try:
                reason = await self._run(context, query)
            except BudgetExhausted as exhausted:
                reason, self.error = exhausted.reason, str(exhausted)
            except ModelError as error:
                reason, self.error = TerminationReason.MODEL_ERROR, str(error)
            if self.final is None and reason in _BEST_ANSWER_REASONS:
                await self._ask_for_best_answer(reason)
        except asyncio.CancelledError:
            reason = TerminationReason.CANCELLED
            raise
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            raise
        finally:
            if self.final is not None:
                self.trajectory.final(self.final.answer, self.final.source)
            self.trajectory.run_end(
                termination_reason=str(reason) if reason else "error",
                iterations=self.iterations,
                answered=self.final is not None,
                error=self.error,
                duration_s=time.monotonic() - started,
                tree_usage=self.ledger.usage.as_dict(),
                tree_cost_usd=self.ledger.cost_usd,
            )
            await self._end_session()
        return RLMResult(
            answer=self.final.answer if self.final else None,
            termination_reason=reason,
            iterations=self.iterations,
            usage=self.ledger.usage,
            cost_usd=self.ledger.cost_usd,
            duration_s=time.monotonic() - started,
            run_id=self.run_id,
            answer_source=self.final.source if self.final else None,
            sub_calls=self.ledger.sub_calls,
            max_depth_reached=self.ledger.deepest,
            cost_known=self.ledger.cost_known,
            error=self.error,
            context_description=self.context_description,
        )

    async def _end_session(self) -> None:
        if self.settings.gate is not None:
            self.settings.gate.reset(self.session_id)
        if not self.settings.keep_session and self.turn is None:
            # Shielded: a cancelled run still releases its worker.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.env.end_session(self.session_id))

    async def _run(self, context: Context, query: str) -> TerminationReason:
        turn = self.turn
        if turn is not None and context is None and turn.context_description is not None:
            description = turn.context_description  # loaded by an earlier turn
        else:
            description = (await load_context(self.env, self.session_id, context)).describe()
        self.context_description = description
        await self.env.define_helpers(
            self.session_id, HELPER_SOURCE + _FINAL_ALIASES + tool_source(self.settings.tools)
        )
        settings = self.settings
        messages = self.messages
        system = turn.system_prompt if turn is not None else None
        if system is None:
            system = system_prompt_for(settings, can_recurse=self.can_recurse)
        messages.append({"role": "system", "content": system})
        if turn is not None:
            messages.extend(dict(message) for message in turn.history)
        messages.append(
            {
                "role": "user",
                "content": _prompts.first_message(
                    query=query,
                    context_description=description,
                    max_iterations=settings.max_iterations,
                ),
            }
        )
        failures_in_a_row = 0
        for iteration in range(1, settings.max_iterations + 1):
            self.ledger.check()
            request = await self.hooks.on_model_request(list(messages))
            completion = await self._complete(self.model, request, stop=True)
            self.iterations = iteration
            reply = cut_at_fake_output(await self.hooks.on_model_reply(completion.text))
            # The trace records the reply as the next request carries it, so that the logged
            # messages plus replies rebuild every prompt.
            sent = reply or _EMPTY_REPLY_SENT
            self.trajectory.model_call(iteration, messages, completion, sent)
            messages.append({"role": "assistant", "content": sent})

            blocks = extract_code_blocks(reply)
            if not blocks:
                refusal = await self._accept_plain_final(reply, iteration)
                if self.final is not None:
                    return TerminationReason.FINAL
                if self.rejected:
                    return TerminationReason.VALIDATION_REJECTED
                if refusal is None:
                    refusal = _prompts.EMPTY_REPLY if not reply.strip() else _prompts.NO_CODE
                messages.append({"role": "user", "content": refusal})
                failures_in_a_row += 1
            else:
                outputs, failed = await self._run_cells(iteration, blocks)
                if self.final is None and not self.rejected:
                    refusal = await self._accept_final_beside_code(
                        reply, iteration, len(blocks), failed
                    )
                    if refusal is not None:
                        outputs.append(refusal)
                if self.final is not None:
                    return TerminationReason.FINAL
                if self.rejected:
                    return TerminationReason.VALIDATION_REJECTED
                failures_in_a_row = failures_in_a_row + 1 if failed == len(blocks) else 0
                messages.append(
                    {
                        "role": "user",
                        "content": _prompts.next_turn(
                            outputs, iteration=iteration, max_iterations=settings.max_iterations
                        ),
                    }
                )
                # A cell's sub-calls may have spent the budget (its output is kept above).
                self.ledger.check()
            if failures_in_a_row >= settings.max_consecutive_errors:
                self.error = (
                    f"{failures_in_a_row} replies in a row had no code that ran without error"
                )
                return TerminationReason.CONSECUTIVE_ERRORS
        return TerminationReason.MAX_ITERATIONS

    async def _run_cells(self, iteration: int, blocks: Sequence[Any]) -> tuple[list[str], int]:
        """Run a reply's cells in order; stop after the one that gives the final answer, or
        at a validation rejection. Returns the outputs and how many cells failed."""
        outputs: list[str] = []
        failed = 0
        for index, block in enumerate(blocks, start=1):
            review = await self.hooks.on_code_cell(block.code)
            if review.code is None:
                refusal = f"Not run: {review.reason or 'refused by the host'}"
                outputs.append(_prompts.cell_output(index, len(blocks), refusal))
                self.trajectory.code_cell(
                    iteration, index, block.code, blocked=True, output=refusal
                )
                failed += 1
                continue
            # A rewritten cell's record keeps what the model wrote beside what ran.
            rewrite: dict[str, str] = {}
            if review.code != block.code:
                rewrite = {"original_code": block.code, "rewrite_reason": review.reason}
                block = replace(block, code=review.code)
            feedback = await self._refused_by_gate(block.code, iteration, index, **rewrite)
            if feedback is not None:
                outputs.append(_prompts.cell_output(index, len(blocks), feedback))
                failed += 1
                if self.rejected:
                    break
                continue
            result = await self._execute(block.code, self._host_functions)
            if self.final is None and "answer" in block.code and result.ok:
                await self._execute(ANSWER_CHECK, self._answer_check_functions)
            shown = await self.hooks.on_cell_output(self._format_output(result))
            outputs.append(_prompts.cell_output(index, len(blocks), shown))
            self.trajectory.code_cell(
                iteration,
                index,
                block.code,
                output=shown,
                exit_code=result.exit_code,
                timed_out=result.timed_out,
                duration_ms=result.duration_ms,
                state_lost=result.state_lost,
                **rewrite,
            )
            if not result.ok:
                failed += 1
                if result.timed_out and self.ledger.time_left() <= 0:
                    self.ledger.check()
            if self.final is not None:
                break
        return outputs, failed

    async def _refused_by_gate(
        self, code: str, iteration: int, index: int, **cell: Any
    ) -> str | None:
        """None when ``code`` may run; else the feedback that replaces its output.

        Every piece of code the loop runs on the model's behalf comes through here first: its
        cells, and the code it writes for a FINAL the model wrote outside one. A refusal is
        traced as a blocked cell (``cell``: more for that record); a rejection sets
        ``rejected`` and ``error``.
        """
        gate = self.settings.gate
        if gate is None:
            return None
        outcome = await gate.check(
            code, "code", session_id=self.session_id, syntax=self._repl_names
        )
        if outcome.event is not None:
            self.trajectory.validation(outcome.event.to_record())
        if outcome.should_run:
            return None
        feedback = outcome.feedback or "Not run: blocked by validation."
        self.trajectory.code_cell(iteration, index, code, blocked=True, output=feedback, **cell)
        if outcome.ends_turn:
            self.rejected, self.error = True, feedback
        return feedback

    async def _accept_plain_final(self, reply: str, iteration: int) -> str | None:
        """A ``FINAL(...)`` in a reply without code; ``FINAL_VAR(name)`` is read in the REPL.

        Sets the final answer when it is taken. Returns what to tell the model when the
        validation gate refused the code that reads the variable, else None.
        """
        plain = find_plain_final(reply)
        if plain is None:
            return None
        if not plain.is_variable:
            self._set_final(plain.value, "plain_text")
            return None
        # The same rule as a FINAL beside code, narrowed to what FINAL_VAR looks up: a name.
        name = plain.value.strip()
        if not name.isidentifier() or value_reference(name) is None:
            return None  # not a variable: nothing is read, and the model is nudged as usual
        code = f"FINAL_VAR({name!r})"
        feedback = await self._refused_by_gate(code, iteration, 1)
        if feedback is not None:
            return f"(Your FINAL_VAR({name}) was not read: validation blocked {code}.)\n{feedback}"
        result = await self._execute(code, self._host_functions)
        self.trajectory.code_cell(
            iteration, 1, code, output=self._format_output(result), exit_code=result.exit_code
        )
        return None

    async def _accept_final_beside_code(
        self, reply: str, iteration: int, cells: int, failed: int
    ) -> str | None:
        """A ``FINAL(x)`` written outside the code of a reply that has code.

        The code runs first; then ``x`` is read in the REPL, and only if it names a value
        there (``value_reference``: no calls) that the reply's cells did not fail to compute,
        and the validation gate lets the reading code run. Returns the note that tells the
        model why its FINAL was not taken, or None.
        """
        plain = find_plain_final(text_outside_code(reply))
        if plain is None:
            return None
        written = plain.value.strip() if plain.is_variable else plain.raw.strip()
        if failed:
            return _prompts.final_not_taken("a cell of this reply failed")
        expression = value_reference(written)  # what runs: rebuilt, not the model's text
        if expression is None:
            return _prompts.final_not_taken(
                "outside code it must name a variable your code set (no calls), not a "
                "written-out value"
            )
        code = f"FINAL({expression})"
        feedback = await self._refused_by_gate(code, iteration, cells + 1)
        if feedback is not None:
            return f"{_prompts.final_not_taken(f'validation blocked {code}')}\n{feedback}"
        given: list[str] = []
        functions = {
            **self._host_functions,
            "final": lambda payload: given.append(str(payload.get("answer", ""))),
        }
        result = await self._execute(code, functions)
        shown = self._format_output(result)
        self.trajectory.code_cell(
            iteration, cells + 1, code, output=shown, exit_code=result.exit_code
        )
        if not result.ok or not given:
            return _prompts.final_not_taken(f"{expression} could not be read: {shown}")
        if given[-1].strip().lower() in _EMPTY_ANSWERS:
            return _prompts.final_not_taken(f"{expression} is empty ({given[-1]!r})")
        self._set_final(given[-1], "FINAL_after_code")
        return None

    async def _ask_for_best_answer(self, reason: TerminationReason) -> None:
        """One last request, without code, when only this run's own limits were hit."""
        problem = self.ledger.exhausted()
        if not self.messages or (problem is not None and problem.reason.is_budget):
            return
        request = [
            *self.messages,
            {"role": "user", "content": _prompts.best_answer_request(reason.replace("_", " "))},
        ]
        try:
            completion = await self._complete(self.model, request, stop=False)
        except (ModelError, BudgetExhausted) as error:
            logger.info("the best-answer request failed: %s", error)
            return
        self.trajectory.model_call(
            self.iterations, request, completion, completion.text, kind="best_answer"
        )
        plain = find_plain_final(completion.text)
        answer = plain.value if plain is not None and not plain.is_variable else completion.text
        if answer.strip():
            self._set_final(answer.strip(), "best_answer")

    # --- the model and the sandbox ------------------------------------------------------

    async def _complete(
        self, model: LanguageModel, messages: Sequence[Message], *, stop: bool
    ) -> Completion:
        options: dict[str, Any] = dict(self.settings.model_options)
        if stop:
            options["stop"] = list(STOP_SEQUENCES)
        time_left = self.ledger.time_left()
        self.trajectory.model_request(model.model, messages, options)
        try:
            async with asyncio.timeout(None if math.isinf(time_left) else max(time_left, 0)):
                completion = await model.complete(messages, **options)
        except TimeoutError:
            self.ledger.check()
            raise
        self.ledger.charge(completion)
        self.trajectory.model_reply(completion)
        return completion

    async def _execute(self, code: str, functions: Mapping[str, Any]) -> ExecutionResult:
        timeout = min(self.settings.cell_timeout_s, self.ledger.time_left())
        return await self.env.execute_code(
            code,
            ExecutionContext(
                session_id=self.session_id,
                timeout_s=max(timeout, 0.001),
                max_output_bytes=self.settings.max_output_chars * 4,
                host_functions=functions,
            ),
        )

    def _format_output(self, result: ExecutionResult) -> str:
        """A cell's output as the model sees it: stdout, then stderr, cut at the limit."""
        limit = self.settings.max_output_chars
        stdout, stderr = result.stdout, result.stderr
        if result.error and result.error not in stderr:
            separator = "" if not stderr or stderr.endswith("\n") else "\n"
            stderr = f"{stderr}{separator}[{result.error}]"
        # Keep the end of stderr (the traceback's last line says what went wrong).
        stderr_room = min(len(stderr), limit // 4)
        if len(stderr) > stderr_room:
            stderr = "…" + stderr[-stderr_room:]
        stdout_room = max(limit - len(stderr), 0)
        total = len(stdout) if not result.truncated else max(len(stdout), result.stdout_bytes)
        shown = stdout[:stdout_room]
        text = shown
        if stderr:
            text += ("" if not text or text.endswith("\n") else "\n") + stderr
        if total > len(shown):
            text += _prompts.truncation_marker(len(shown), total)
        return text.rstrip("\n") if text.strip() else "(no output)"

    # --- what the REPL functions do on the host ------------------------------------------

    def _record_final(self, source: str) -> Callable[[str, str], None]:
        def record(answer: str, given_source: str) -> None:
            self._set_final(answer, given_source or source)

        return record

    def _set_final(self, answer: str, source: str) -> None:
        # Traced once the run ends, after the cell that gave it (the last FINAL wins).
        self.final = _Final(answer, source)

    def _resolve_model(self, name: str | None) -> LanguageModel:
        if name is None:
            return self.settings.sub_model
        for candidate in (self.settings.sub_model, self.settings.model):
            if candidate.model == name:
                return candidate
        known = sorted({self.settings.sub_model.model, self.settings.model.model})
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(known)} or None")

    async def _llm_query(self, prompt: str, model_name: str | None) -> str:
        self.ledger.check()
        model = self._resolve_model(model_name)
        self.ledger.reserve_sub_call()
        return await self._sub_completion(model, prompt, "llm_query")

    async def _sub_completion(self, model: LanguageModel, prompt: str, kind: str) -> str:
        started = time.monotonic()
        try:
            completion = await self._complete(
                model, [{"role": "user", "content": prompt}], stop=False
            )
        except Exception as error:
            self.trajectory.sub_call(
                kind,
                prompt=preview(prompt),
                error=f"{type(error).__name__}: {error}",
                duration_s=time.monotonic() - started,
            )
            raise
        self.trajectory.sub_call(
            kind,
            model=completion.model,
            prompt=preview(prompt),
            reply=preview(completion.text),
            usage=completion.usage.as_dict(),
            cost_usd=completion.cost_usd,
            duration_s=time.monotonic() - started,
        )
        return completion.text

    async def _rlm_query(self, context: Any, query: str) -> str:
        self.ledger.check()
        check_context(context)  # a bad piece fails here, in the caller's cell
        self.ledger.reserve_sub_call()
        if not self.can_recurse:
            # At max_depth a sub-agent may not start: the question goes to the sub-model.
            text = context if isinstance(context, str) else repr(context)
            return await self._sub_completion(
                self.settings.sub_model, f"{query}\n\nContext:\n{text}", "rlm_query_fallback"
            )
        child_id = new_trace_id()
        child = Run(
            self.settings,
            self.env,
            self.ledger,
            self.trajectory.child(child_id, f"rlm-{child_id}"),
            run_id=child_id,
            depth=self.depth + 1,
            model=self.settings.sub_model,
        )
        started = time.monotonic()
        result = await child.execute(context, query)
        self.trajectory.sub_call(
            "rlm_query",
            child_run_id=child_id,
            query=preview(query),
            answer=preview(result.answer or ""),
            termination_reason=str(result.termination_reason),
            duration_s=time.monotonic() - started,
        )
        if result.answer is None:
            raise RuntimeError(
                f"the sub-agent ended without an answer ({result.termination_reason}"
                + (f": {result.error}" if result.error else "")
                + ")"
            )
        return result.answer
