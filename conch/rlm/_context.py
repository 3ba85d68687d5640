"""Putting a context into a sandbox session once, as the variable ``context``, and describing it.

What each kind of context becomes inside the REPL:

- ``str`` → ``str``; ``bytes`` → ``bytes``; ``list``/``dict`` → the same, through JSON.
- a file (``pathlib.Path``) → ``str``, decoded as UTF-8; bytes that are not UTF-8 are
  replaced with U+FFFD and the metadata says so. A plain ``str`` is always text, never a path.
- a directory (``pathlib.Path``) → ``dict`` of relative path → text, for every regular file
  under it (hidden ones included, symlinks not followed), in sorted order.
- ``None`` → ``None`` (a query with no context).

Files go in by hard link (``ExecutionEnvironment.upload``) and the metadata (size, lines,
head and tail) is computed inside the sandbox, so the host never reads a file context: a
1 GB file costs no host memory. A ``str``, ``list`` or ``dict`` is written to a staging file
in pieces of about a million characters (JSON through a streaming encoder here that gives
``json.dumps``'s text and errors) and that file goes in the same way, so the host never holds
a second whole copy of the context; ``bytes`` go in as they are. The model sees only the
metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conch.errors import ConfigurationError, SandboxError
from conch.sandbox import ExecutionContext, ExecutionEnvironment

Context = str | bytes | bytearray | list | dict | os.PathLike[str] | None

PREVIEW_CHARS = 500
_LOAD_TIMEOUT_S = 600.0
_PIECE_CHARS = 1 << 20
"""About how many characters of a context the host encodes at a time."""
_SMALL_DEPTH = 32


@dataclass(frozen=True, slots=True)
class ContextInfo:
    """What the model is told about the context: never the context itself."""

    type: str
    """The Python type of ``context`` in the REPL."""
    size: int
    unit: str
    """What ``size`` counts: characters, bytes, items, keys or files."""
    source: str
    """Where it came from: "text", "bytes", "json", "file NAME", "directory NAME"."""
    lines: int | None = None
    head: str = ""
    tail: str = ""
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The metadata as the model reads it (see ``_prompts``)."""
        if self.type == "NoneType":
            return "There is no context: `context` is None. Answer the query directly."
        parts = [f"`context` is a {self.type} of {self.size:,} {self.unit} ({self.source})."]
        if self.lines is not None:
            parts.append(f"It has {self.lines:,} lines.")
        for key, value in self.extra.items():
            parts.append(f"{key}: {value}")
        parts.extend(self.notes)
        if self.head:
            label = "Preview" if not self.tail else "Head"
            parts.append(f"{label}:\n{self.head}")
        if self.tail:
            parts.append(f"Tail:\n{self.tail}")
        return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class _Upload:
    kind: str
    """How the sandbox reads it: none, text, bytes, json, directory."""
    name: str | None
    source: bytes | os.PathLike[str] | None
    label: str
    files: tuple[tuple[str, Path], ...] = ()
    pieces: Callable[[], Iterator[str]] | None = None
    """The text to stage in a file and upload, in bounded pieces (str, list, dict)."""


def check_context(context: Context) -> None:
    """Raise ``ConfigurationError`` for a context that cannot be loaded (before any work)."""
    plan = _plan(context)
    if plan.kind == "json":
        # Encoding is the only exact test of what JSON accepts; the pieces are dropped as
        # they come, so the check costs no copy of the context.
        for _ in plan.pieces():
            pass


def _plan(context: Context) -> _Upload:
    if context is None:
        return _Upload("none", None, None, "none")
    if isinstance(context, str):
        _require_content(len(context), "the context string is empty")
        pieces = functools.partial(_text_pieces, context)
        return _Upload("text", "context.txt", None, "text", pieces=pieces)
    if isinstance(context, bytes | bytearray):
        _require_content(len(context), "the context bytes are empty")
        data = context if isinstance(context, bytes) else bytes(context)  # bytes: not copied
        return _Upload("bytes", "context.bin", data, "bytes")
    if isinstance(context, list | dict):
        _require_content(len(context), f"the context {type(context).__name__} is empty")
        pieces = functools.partial(_json_text, context)
        return _Upload("json", "context.json", None, "json", pieces=pieces)
    if isinstance(context, os.PathLike):
        return _plan_path(Path(context))
    raise ConfigurationError(
        f"unsupported context type {type(context).__name__}: pass str, bytes, a list or dict "
        "of JSON values, a pathlib.Path to a file or directory, or None"
    )


def _plan_path(path: Path) -> _Upload:
    if not path.exists():
        raise ConfigurationError(
            f"the context path {path} does not exist; check the path (relative paths are "
            f"read from {Path.cwd()})"
        )
    if path.is_dir():
        files = tuple(
            (file.relative_to(path).as_posix(), file)
            for file in sorted(path.rglob("*"))
            if file.is_file() and not file.is_symlink()
        )
        if not files:
            raise ConfigurationError(f"the context directory {path} holds no files")
        return _Upload("directory", None, None, f"directory {path.name}", files)
    if not path.is_file():
        raise ConfigurationError(f"the context path {path} is not a regular file or directory")
    # Checked without opening it: the host never reads a file context (see module docstring).
    if not os.access(path, os.R_OK):
        raise ConfigurationError(f"cannot read the context file {path}: permission denied")
    size = path.stat().st_size
    _require_content(size, f"the context file {path} is empty")
    return _Upload("text", "context.txt", path, f"file {path.name}")


def _require_content(size: int, message: str) -> None:
    if size == 0:
        raise ConfigurationError(f"{message}; give the model something to read, or pass None")


async def load_context(env: ExecutionEnvironment, session_id: str, context: Context) -> ContextInfo:
    """Upload ``context`` into the session and bind it to the REPL variable ``context``."""
    plan = _plan(context)
    spec: dict[str, Any] = {"kind": plan.kind, "preview": PREVIEW_CHARS, "label": plan.label}
    upload = getattr(env, "upload", None)
    if plan.kind != "none" and upload is None:
        raise SandboxError(
            f"the {env.backend_type()} sandbox cannot receive files (no upload); "
            "use a worker-based backend such as 'local' or 'bwrap'"
        )
    if plan.kind == "directory":
        names = {}
        for number, (relative, file) in enumerate(plan.files):
            inside = await upload(session_id, f"context-{number:06d}", file)
            names[inside] = relative
        spec["manifest"] = await upload(
            session_id, "context-manifest.json", json.dumps(names).encode("utf-8")
        )
    elif plan.pieces is not None:
        async with _staged(env, plan.name, plan.pieces) as path:
            spec["path"] = await upload(session_id, plan.name, path)
    elif plan.kind != "none":
        spec["path"] = await upload(session_id, plan.name, plan.source)
    result = await env.execute_code(
        _LOADER.replace("__SPEC__", repr(json.dumps(spec))),
        ExecutionContext(session_id=session_id, timeout_s=_LOAD_TIMEOUT_S),
    )
    if not result.ok:
        raise SandboxError(
            f"loading the context into the sandbox failed: {result.error or result.stderr[-2000:]}"
        )
    try:
        meta = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SandboxError(
            f"the context loader printed no metadata: {result.stdout[-500:]!r}"
        ) from None
    return ContextInfo(
        type=meta["type"],
        size=meta["size"],
        unit=meta["unit"],
        source=plan.label,
        lines=meta.get("lines"),
        head=meta.get("head", ""),
        tail=meta.get("tail", ""),
        notes=tuple(meta.get("notes", ())),
        extra=meta.get("extra", {}),
    )


@contextlib.asynccontextmanager
async def _staged(
    env: ExecutionEnvironment, name: str, pieces: Callable[[], Iterator[str]]
) -> AsyncIterator[Path]:
    """A file holding ``pieces()`` as UTF-8, removed afterwards (also on error or cancel)."""
    # Beside the sandbox's own files when the environment says where they are: on the same
    # file system, the upload is a hard link, not a second copy on disk.
    root = getattr(env, "root", None)
    near = os.fspath(root) if isinstance(root, str | os.PathLike) and os.path.isdir(root) else None
    directory = Path(tempfile.mkdtemp(prefix=".conch-context-", dir=near))  # private: 0700
    stop = threading.Event()
    try:
        path = directory / name
        await asyncio.to_thread(_write_pieces, path, pieces, stop)  # seconds for 1 GB
        yield path
    finally:
        stop.set()  # a cancelled writer thread stops at its next piece
        shutil.rmtree(directory, ignore_errors=True)


def _write_pieces(path: Path, pieces: Callable[[], Iterator[str]], stop: threading.Event) -> None:
    with open(path, "wb") as file:
        for piece in pieces():
            if stop.is_set():
                return
            # Code points encode independently, so pieces cut anywhere give the same bytes
            # as the whole; "surrogatepass" as for the whole string before.
            file.write(piece.encode("utf-8", "surrogatepass"))


def _text_pieces(text: str) -> Iterator[str]:
    for start in range(0, len(text), _PIECE_CHARS):
        yield text[start : start + _PIECE_CHARS]


def _json_text(value: list | dict) -> Iterator[str]:
    """``json.dumps(value, ensure_ascii=False)`` in pieces, its errors as ConfigurationError."""
    try:
        yield from _json_pieces(value, json.JSONEncoder(ensure_ascii=False).encode, set())
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"a {type(value).__name__} context must be JSON-serialisable ({error}); "
            "convert its values to str, numbers, lists and dicts first"
        ) from None
    except RecursionError:
        raise ConfigurationError(
            f"the {type(value).__name__} context is nested too deeply to send as JSON"
        ) from None


def _json_pieces(value: Any, encode: Callable[[Any], str], open_ids: set[int]) -> Iterator[str]:
    """The JSON text of ``value`` (as ``encode`` gives it) in pieces of bounded size.

    Runs of small children are encoded together by the C encoder, so the text and its
    errors are ``json``'s own and most of the work stays in C; only a container too big for
    one piece is walked here, and a long string is escaped a slice at a time.
    """
    if isinstance(value, str):
        if len(value) <= _PIECE_CHARS:
            yield encode(value)
            return
        yield '"'
        for piece in _text_pieces(value):  # escaping is per character: slices are safe
            yield encode(piece)[1:-1]
        yield '"'
        return
    if isinstance(value, dict):
        pairs, children = True, value.items()
    elif isinstance(value, list | tuple):
        pairs, children = False, value
    else:
        yield encode(value)  # a number, True, False, None, or json's TypeError
        return
    if id(value) in open_ids:
        raise ValueError("Circular reference detected")  # json's words
    open_ids.add(id(value))
    yield "{" if pairs else "["
    run: list[Any] = []
    run_size = 0
    separator = ""
    for child in children:
        if pairs:
            key, item = child
            size = _small_size(item, _PIECE_CHARS, _SMALL_DEPTH)
            if size is not None:
                size = size + len(key) + 4 if isinstance(key, str) else size + 28
                size = size if size <= _PIECE_CHARS else None
        else:
            item = child
            size = _small_size(item, _PIECE_CHARS, _SMALL_DEPTH)
        if size is not None:
            run.append(child)
            run_size += size
            if run_size < _PIECE_CHARS:
                continue
        if run:
            yield separator
            yield encode(dict(run) if pairs else run)[1:-1]
            separator, run, run_size = ", ", [], 0
        if size is None:
            yield separator
            separator = ", "
            if pairs and isinstance(key, str):
                yield from _json_pieces(key, encode, open_ids)
                yield ": "
            elif pairs:
                yield encode({key: 0})[1:-4] + ": "  # json's text (or error) for this key
            yield from _json_pieces(item, encode, open_ids)
    if run:
        yield separator
        yield encode(dict(run) if pairs else run)[1:-1]
    yield "}" if pairs else "]"
    open_ids.discard(id(value))


_SCALARS = frozenset({float, bool, type(None)})


def _small_size(value: Any, budget: int, depth: int) -> int | None:
    """About the JSON length of ``value`` when it is at most ``budget``, else None.

    Stops as soon as it knows, so a big value costs a walk of ``budget`` at most; the depth
    bound stops it on reference cycles, which the walk in ``_json_pieces`` then reports.
    """
    if isinstance(value, str):
        return len(value) + 2 if len(value) <= budget else None
    if isinstance(value, int):
        return value.bit_length() // 3 + 2  # at least the digits (bool too)
    if isinstance(value, dict):
        if 2 * len(value) > budget:
            return None
        size = 2 + sum(len(key) + 4 if isinstance(key, str) else 28 for key in value)
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        if 2 * len(value) > budget:
            return None
        size = 2
        children = value
    else:
        return 24  # a float's longest repr; anything else json will refuse
    if depth == 0:
        return None
    for item in children:
        kind = type(item)
        if kind is str:  # the common leaves without a call
            size += len(item) + 4
        elif kind in _SCALARS or (kind is int and item.bit_length() < 64):
            size += 26
        else:
            inner = _small_size(item, budget - size, depth - 1)
            if inner is None:
                return None
            size += inner + 2
        if size > budget:
            return None
    return size


# Runs inside the sandbox (stdlib only). Everything is local to one function, deleted after,
# so the user's namespace gains only `context`.
_LOADER = r"""
def _conch_load_context(spec):
    import json

    kind, preview = spec["kind"], spec["preview"]
    notes, extra = [], {}

    def read_text(path):
        try:
            with open(path, encoding="utf-8") as file:
                return file.read(), 0
        except UnicodeDecodeError as error:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read()
            return text, error.start

    def count_lines(text):
        return text.count("\n") + (1 if text and not text.endswith("\n") else 0)

    def cut(text):
        if len(text) <= 2 * preview:
            return text, ""
        return text[:preview], text[-preview:]

    if kind == "none":
        value, meta = None, {"type": "NoneType", "size": 0, "unit": "items"}
    elif kind == "text":
        value, bad_at = read_text(spec["path"])
        if bad_at:
            notes.append(
                "The file is not valid UTF-8 (first bad byte at offset %d): undecodable "
                "bytes were replaced with U+FFFD." % bad_at
            )
        head, tail = cut(value)
        meta = {"type": "str", "size": len(value), "unit": "characters",
                "lines": count_lines(value), "head": head, "tail": tail}
    elif kind == "bytes":
        with open(spec["path"], "rb") as file:
            value = file.read()
        try:
            value.decode("utf-8")
            notes.append("The bytes are valid UTF-8: context.decode() gives the text.")
        except UnicodeDecodeError as error:
            notes.append("The bytes are not UTF-8 (first bad byte at offset %d)." % error.start)
        tail = repr(value[-preview:]) if len(value) > 2 * preview else ""
        meta = {"type": "bytes", "size": len(value), "unit": "bytes",
                "head": repr(value[:preview]), "tail": tail}
    elif kind == "json":
        with open(spec["path"], encoding="utf-8") as file:
            value = json.load(file)
        if isinstance(value, dict):
            keys = list(value)[:20]
            more = " ..." if len(value) > 20 else ""
            extra["First keys"] = ", ".join(repr(k) for k in keys) + more
            sample = {k: value[k] for k in keys[:3]}
            meta = {"type": "dict", "size": len(value), "unit": "keys"}
        else:
            kinds = sorted({type(item).__name__ for item in value[:100]})
            extra["Item types"] = ", ".join(kinds)
            sample = value[:3]
            meta = {"type": "list", "size": len(value), "unit": "items"}
        head, _ = cut(repr(sample))
        meta["head"] = head
        meta["tail"] = ""
    else:  # directory
        with open(spec["manifest"], encoding="utf-8") as file:
            names = json.load(file)
        value = {}
        for inside, relative in names.items():
            text, bad_at = read_text(inside)
            if bad_at:
                notes.append("%s is not valid UTF-8: bad bytes became U+FFFD." % relative)
            value[relative] = text
        total = sum(len(text) for text in value.values())
        listing = ["%s (%d chars)" % (name, len(text)) for name, text in list(value.items())[:30]]
        extra["Keys are relative paths, values the file text; total characters"] = "%d" % total
        meta = {"type": "dict", "size": len(value), "unit": "files",
                "head": "\n".join(listing) + ("\n..." if len(value) > 30 else ""), "tail": ""}
        notes = notes[:10] + (["... and more files that are not UTF-8"] if len(notes) > 10 else [])
    meta["notes"] = notes
    meta["extra"] = extra
    return value, meta


context, _conch_meta = _conch_load_context(__import__("json").loads(__SPEC__))
print(__import__("json").dumps(_conch_meta))
del _conch_load_context, _conch_meta
"""
