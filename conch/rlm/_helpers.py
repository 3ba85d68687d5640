"""The REPL functions: their in-sandbox source, and the host functions that serve them.

Every function the model calls in the REPL (``llm_query``, ``llm_query_batched``,
``rlm_query``, ``FINAL``, ``FINAL_VAR``, ``SHOW_VARS`` and user tools) is a thin stub that
calls the host through the worker's ``host_call`` channel, so every sandbox backend has
them, with the same behaviour. The host side runs the model calls, the child runs and the
tools; the loop (``_loop``) supplies what each one does.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import keyword
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from conch.errors import ConfigurationError
from conch.sandbox import HostFunction

DEFAULT_BATCH_CONCURRENCY = 16

#: Names the REPL reserves; a user tool may not take one.
RESERVED_NAMES = frozenset(
    {
        "llm_query",
        "llm_query_batched",
        "rlm_query",
        "FINAL",
        "FINAL_VAR",
        "SHOW_VARS",
        "context",
        "answer",
        "host_call",
        "HostCallError",
    }
)

# Runs inside the sandbox: stdlib only. Public names become builtins of the REPL (so they are
# not user variables and snapshots skip them); `host_call` is the worker's channel to the host.
HELPER_SOURCE = r'''
import json as _json


def _text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _answer_text(value):
    """dict and list answers become JSON; anything else its str()."""
    if isinstance(value, (dict, list, tuple)):
        try:
            return _json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(value)
    return _text(value)


def _jsonable(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    try:
        _json.dumps(value)
        return value
    except (TypeError, ValueError):
        return _json.loads(_json.dumps(value, default=str))


def llm_query(prompt, model=None):
    """Ask a language model one question; returns its reply as a str."""
    return host_call("llm_query", {"prompt": _text(prompt), "model": model})


def llm_query_batched(prompts, model=None):
    """Ask many questions at once (concurrently); returns the replies in order.

    A question that fails gives a str starting with "Error:" in its place.
    """
    if isinstance(prompts, (str, bytes)):
        raise TypeError("llm_query_batched takes a list of prompts; use llm_query for one")
    return host_call(
        "llm_query_batched", {"prompts": [_text(p) for p in prompts], "model": model}
    )


def rlm_query(context, query):
    """Hand `context` to a sub-agent that works like you (its own REPL); returns its answer."""
    return host_call("rlm_query", {"context": _jsonable(context), "query": _text(query)})


def FINAL(value):
    """Give the final answer: the run ends after this cell."""
    host_call("final", {"answer": _answer_text(value), "source": "FINAL"})


def FINAL_VAR(name):
    """Give the variable called `name` as the final answer: the run ends after this cell."""
    import __main__

    if isinstance(name, str):
        variables = vars(__main__)
        if name not in variables:
            known = ", ".join(n for n in variables if not n.startswith("_")) or "none"
            raise NameError(
                "FINAL_VAR(%r): there is no variable named %r (variables: %s)"
                % (name, name, known)
            )
        value = variables[name]
    else:  # FINAL_VAR(some_value): the value itself, as models often write
        value = name
    host_call("final", {"answer": _answer_text(value), "source": "FINAL_VAR"})


def SHOW_VARS():
    """Print your variables with their types and sizes."""
    import __main__

    rows = []
    for name, value in vars(__main__).items():
        if name.startswith("_") or type(value).__name__ == "module":
            continue
        try:
            size = " (len %d)" % len(value)
        except TypeError:
            size = ""
        rows.append("%s: %s%s" % (name, type(value).__name__, size))
    print("\n".join(rows) if rows else "(no variables)")
'''

#: Run after a cell that mentions ``answer``: an ``answer = {"content": ..., "ready": True}``
#: dict is the final answer. An expression evaluating to None, so it prints nothing.
ANSWER_CHECK = (
    '(lambda a: FINAL(a.get("content")) if isinstance(a, dict) and a.get("ready") '
    'and "content" in a else None)(globals().get("answer"))'
)


def check_tools(tools: Mapping[str, Callable[..., Any]]) -> None:
    for name, function in tools.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigurationError(f"tool name {name!r} is not a Python identifier")
        if name in RESERVED_NAMES or name.startswith("_"):
            raise ConfigurationError(
                f"tool name {name!r} is reserved by the REPL (or private); choose another"
            )
        if not callable(function):
            raise ConfigurationError(f"tool {name!r} is {type(function).__name__}, not callable")


def tool_source(tools: Mapping[str, Callable[..., Any]]) -> str:
    """In-sandbox stubs: each tool forwards its arguments (JSON values) to the host."""
    lines = []
    for name, function in tools.items():
        doc = inspect.getdoc(function) or f"The host tool {name}."
        lines.append(
            f"def {name}(*args, **kwargs):\n"
            f"    return host_call({('tool:' + name)!r}, "
            f"{{'args': _jsonable(list(args)), 'kwargs': _jsonable(kwargs)}})\n"
            f"{name}.__doc__ = {doc!r}\n"
        )
    return "\n".join(lines)


def describe_tools(tools: Mapping[str, Callable[..., Any]]) -> list[str]:
    """One line per tool for the system prompt: signature and first doc line."""
    described = []
    for name, function in tools.items():
        try:  # eval_str: show `str`, not the "'str'" of postponed annotations
            signature = str(inspect.signature(function, eval_str=True))
        except Exception:
            try:
                signature = str(inspect.signature(function))
            except (TypeError, ValueError):
                signature = "(...)"
        doc = (inspect.getdoc(function) or "").split("\n")[0]
        described.append(f"{name}{signature}" + (f": {doc}" if doc else ""))
    return described


def host_functions(
    *,
    llm_query: Callable[[str, str | None], Awaitable[str]],
    rlm_query: Callable[[Any, str], Awaitable[str]],
    final: Callable[[str, str], None],
    tools: Mapping[str, Callable[..., Any]],
    batch_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
) -> dict[str, HostFunction]:
    """The host side of the REPL functions, for ``ExecutionContext.host_functions``."""

    async def serve_llm_query(payload: dict) -> str:
        return await llm_query(_require_str(payload, "prompt"), payload.get("model"))

    async def serve_llm_query_batched(payload: dict) -> list[str]:
        prompts = payload.get("prompts")
        if not isinstance(prompts, list):
            raise TypeError("llm_query_batched needs a list of prompts")
        gate = asyncio.Semaphore(batch_concurrency)
        model = payload.get("model")

        async def one(prompt: str) -> str:
            async with gate:
                try:
                    return await llm_query(prompt, model)
                except Exception as error:  # one bad item must not sink the batch
                    return f"Error: {type(error).__name__}: {error}"

        return list(await asyncio.gather(*(one(str(p)) for p in prompts)))

    async def serve_rlm_query(payload: dict) -> str:
        return await rlm_query(payload.get("context"), _require_str(payload, "query"))

    def serve_final(payload: dict) -> None:
        final(str(payload.get("answer", "")), str(payload.get("source", "FINAL")))

    served: dict[str, HostFunction] = {
        "llm_query": serve_llm_query,
        "llm_query_batched": serve_llm_query_batched,
        "rlm_query": serve_rlm_query,
        "final": serve_final,
    }
    for name, function in tools.items():
        served[f"tool:{name}"] = _serve_tool(function)
    return served


def _serve_tool(function: Callable[..., Any]) -> HostFunction:
    async def serve(payload: dict) -> Any:
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        if inspect.iscoroutinefunction(function):
            result = await function(*args, **kwargs)
        else:  # a blocking tool must not stall the event loop other runs share
            result = await asyncio.to_thread(function, *args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        try:
            json.dumps(result)
            return result
        except (TypeError, ValueError):
            return str(result)

    return serve


def _require_str(payload: Any, key: str) -> str:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a str")
    return value
