"""Reading a model's reply: its code blocks, a plain-text FINAL, and where to stop trusting it.

A code block opens with a fence of three or more backticks or tildes followed by ``repl``,
``python``, ``python3`` or ``py`` and closes with a fence of the same character at least as
long. A block left open at the end of the reply runs to the end. A fence line inside an
unfinished triple-quoted string is part of the code, not a boundary (unless that string
never ends, in which case the fence is a boundary after all).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

CODE_LANGUAGES = frozenset({"repl", "python", "python3", "py"})

#: What the loop shows the model before each cell's output; the model must never write it.
OUTPUT_FENCE = "```output"
#: The model stops before writing a fake output block (and replies are cut there anyway):
#: the loop's own fence, its tilde twin, and the loop's "Output:" label over a plain fence,
#: which small models write when they imitate the output they expect. (OpenAI-compatible
#: APIs accept at most four stop sequences.)
STOP_SEQUENCES: tuple[str, ...] = (OUTPUT_FENCE, "~~~output", "\nOutput:\n```")

_OPENING = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[^\n`]*$")
_PLAIN_FINAL = re.compile(
    r"^[ \t]*(?P<kind>FINAL_VAR|FINAL)\((?P<body>.*)\)[ \t.]*$",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class CodeBlock:
    code: str
    language: str
    closed: bool
    """False when the reply ended before the closing fence."""


@dataclass(frozen=True, slots=True)
class PlainFinal:
    """A ``FINAL(...)`` or ``FINAL_VAR(...)`` written as text, outside any code."""

    value: str
    is_variable: bool
    """True for ``FINAL_VAR(name)``: the value is a variable name to read in the REPL."""
    raw: str = ""
    """What stood between the parentheses, quotes kept (``FINAL("x")`` is the string x)."""


def cut_at_fake_output(text: str) -> str:
    """The reply before anything that imitates the loop's output block.

    Stop sequences do this at the provider; a provider that ignores them is cut here, so
    invented output (and any code or FINAL after it) is never trusted.
    """
    cuts = [i for i in (text.find(stop) for stop in STOP_SEQUENCES) if i >= 0]
    return text[: min(cuts)] if cuts else text


def extract_code_blocks(text: str) -> list[CodeBlock]:
    """Every code block of the reply, in order."""
    return [block for block, _, _ in _code_blocks_with_lines(text)]


def text_outside_code(text: str) -> str:
    """The reply without its code blocks (fences included): the prose around the code."""
    lines = text.split("\n")
    inside: set[int] = set()
    for _, first, last in _code_blocks_with_lines(text):
        inside.update(range(first, last + 1))
    return "\n".join(line for number, line in enumerate(lines) if number not in inside)


def _code_blocks_with_lines(text: str) -> list[tuple[CodeBlock, int, int]]:
    """Each code block with the indices of its opening and closing fence lines."""
    lines = text.split("\n")
    blocks: list[tuple[CodeBlock, int, int]] = []
    index = 0
    while index < len(lines):
        opening = _OPENING.match(lines[index])
        if opening is None or opening["lang"].lower() not in CODE_LANGUAGES:
            index = _skip_other_block(lines, index, opening)
            continue
        fence = opening["fence"]
        body_start = index + 1
        end, closed = _find_closing(lines, body_start, fence)
        code = "\n".join(lines[body_start:end])
        blocks.append((CodeBlock(code, opening["lang"].lower(), closed), index, end))
        index = end + 1
    return blocks


def _skip_other_block(lines: list[str], index: int, opening: re.Match[str] | None) -> int:
    """Past a fenced block in another language (its content is not code to run)."""
    if opening is None:
        return index + 1
    end, _ = _find_closing(lines, index + 1, opening["fence"], aware_of_strings=False)
    return end + 1


def _find_closing(
    lines: list[str], start: int, fence: str, *, aware_of_strings: bool = True
) -> tuple[int, bool]:
    """Index of the closing fence line (or ``len(lines)``) and whether one was found."""
    closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    first_candidate = None
    for index in range(start, len(lines)):
        if not closing.match(lines[index]):
            continue
        if aware_of_strings and _inside_open_string("\n".join(lines[start:index])):
            first_candidate = index if first_candidate is None else first_candidate
            continue
        return index, True
    if first_candidate is not None:  # the string never ended: the fence was a boundary
        return first_candidate, True
    return len(lines), False


def _inside_open_string(code: str) -> bool:
    """Whether ``code`` ends inside an unfinished triple-quoted string."""
    if '"""' not in code and "'''" not in code:
        return False
    try:
        for _ in tokenize.generate_tokens(io.StringIO(code + "\n").readline):
            pass
    except tokenize.TokenError as error:
        return "string" in str(error.args[0]).lower()
    except (SyntaxError, ValueError):  # other breakage is not ours to judge here
        return False
    return False


def find_plain_final(text: str) -> PlainFinal | None:
    """A ``FINAL(answer)`` or ``FINAL_VAR(name)`` on a line of its own, any case.

    The answer runs to the last ``)`` of the reply, so it may span lines and contain
    parentheses; surrounding quotes are removed. Callers accept it only from replies that
    have no code block, where no code could have been claimed to run.
    """
    matches = list(_PLAIN_FINAL.finditer(text))
    if not matches:
        return None
    match = matches[0]
    body = match["body"].strip()
    is_variable = match["kind"].upper() == "FINAL_VAR"
    return PlainFinal(_unquote(body), is_variable, body)


def names_a_value(expression: str) -> bool:
    """Whether ``expression`` only reads a REPL variable (see ``value_reference``)."""
    return value_reference(expression) is not None


def value_reference(expression: str) -> str | None:
    """``expression`` rewritten from its syntax tree when it only reads a REPL variable, else
    None. Accepted: ``name``, ``name.attr``, and subscripts with literal keys (``name[0]``,
    ``name[-1]``, ``name["key"]``, ``name[1:3]``), chained. Refused: any call (a method's
    too: ``os.system("...")`` is one), values written out, computed keys, dunder names.

    A ``FINAL(...)`` beside code, or a ``FINAL_VAR(...)`` in plain text, is accepted only in
    this form: the loop runs code built from it on the model's behalf, so it must have no
    effect beyond reading, and its answer must come from what the code computed, never from
    a value the model typed before seeing any output. The rewrite (not the model's text) is
    what the loop runs.
    """
    try:
        root = ast.parse(expression.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # deep nesting included
        return None
    node = root
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and _is_dunder(node.attr):
            return None
        if isinstance(node, ast.Subscript) and not _constant_index(node.slice):
            return None
        node = node.value
    if not isinstance(node, ast.Name) or _is_dunder(node.id):
        return None
    try:
        return ast.unparse(root)
    except RecursionError:  # a chain too long to write back out is not worth reading
        return None


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _constant_index(node: ast.expr) -> bool:
    if isinstance(node, ast.Slice):
        return all(
            part is None or _constant_index(part) for part in (node.lower, node.upper, node.step)
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, int | str)


def _unquote(value: str) -> str:
    for quote in ('"""', "'''", '"', "'"):
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            return value[len(quote) : -len(quote)]
    return value
