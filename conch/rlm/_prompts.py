"""Every text the loop sends to a model, in one place: system prompt, turns, and nudges."""

from __future__ import annotations

from collections.abc import Sequence

from conch.rlm._parsing import OUTPUT_FENCE

_SYSTEM = """\
You answer a query about a context that may be far too large to read at once. You work in a \
Python REPL where the variable `context` already holds it; you are shown only its size and \
a preview. Write Python in ```repl blocks. Each block runs in order, and you then see its \
output (cut after {max_output_chars:,} characters). Variables persist between blocks.

Functions in the REPL:
- llm_query(prompt) -> str: ask a language model; it can read about {sub_call_chars:,} \
characters. \
It sees only the prompt you give it, so put the text it must read into the prompt. It is \
slow and costly: use it to understand text you have found, not to search.
- llm_query_batched(prompts) -> list[str]: many llm_query calls at once, much faster than a \
loop. A failed item is a str starting with "Error:".
- rlm_query(context, query) -> str: give a piece of context to a sub-agent that works like \
you, with its own REPL.{depth_note}
- SHOW_VARS(): print your variables.
- FINAL(value): give the final answer. FINAL_VAR("name"): the variable `name` is the answer.{tools}

How to work:
1. Search first, with code. Pick the most distinctive term of the query: a name or an \
identifier (like billing-gateway below) or a rare word. Search for that term alone, not \
the words around it: the text may phrase those differently. Find it in `context` with \
re.finditer or str.find, ignoring case; print how many matches there are and each match \
with some text around it.
2. Read the printed text. If it holds the answer, give it. If there were 0 matches, the \
text does not write your term that way: search again for a shorter term (one word of \
it), or print a few slices of `context` to see how it is written. Never answer with a \
value that no output has shown you and no code has computed.
3. Use llm_query only when the answer needs understanding (summaries, reasoning over many \
parts): send it the passages you found, or chunks of `context` with llm_query_batched, \
then combine.
4. End your reply after a code block: its output is shown to you. Never write the output \
yourself and never guess it.
5. Give the answer with FINAL(...) in a ```repl block once an output has shown it (or \
FINAL(variable) for a value your code computed): only the value the query asks for, in \
the form it asks for.

Example. Query: "What is the port number for billing-gateway?" A good first block:
```repl
import re
term = "billing-gateway"  # the name alone, not the words around it
hits = [m.start() for m in re.finditer(re.escape(term), context, re.IGNORECASE)]
print(len(hits), "matches")
for i in hits[:10]:
    print(context[max(0, i - 200):i + 200].replace("\\n", " "))
    print("---")
```
If it prints "0 matches", the next block searches again with term = "gateway". Once an \
output shows "... the billing-gateway service listens on port 8443 ...", the next block is:
```repl
FINAL("8443")
```"""

_DEPTH_NOTE_LEAF = " Here it is a plain llm_query: no deeper sub-agents are allowed."


DEFAULT_SUB_CALL_CHARS = 100_000
"""What the prompt says ``llm_query`` reads when the sub-model does not state its window."""
_CHARS_PER_TOKEN = 3  # on the low side for English and code, so the prompt under-promises
_REPLY_TOKENS = 1_024  # room the sub-model keeps for its reply


def sub_call_chars(context_window_tokens: int | None) -> int:
    """About how many characters a prompt to a model with this window may hold, rounded
    down to a thousand (or to a hundred for a tiny window)."""
    if context_window_tokens is None:
        return DEFAULT_SUB_CALL_CHARS
    tokens = max(context_window_tokens - _REPLY_TOKENS, context_window_tokens // 2)
    chars = tokens * _CHARS_PER_TOKEN
    step = 1_000 if chars >= 10_000 else 100
    return max(step, chars // step * step)


def system_prompt(
    *,
    max_output_chars: int,
    can_recurse: bool,
    tool_lines: Sequence[str] = (),
    sub_call_chars: int = DEFAULT_SUB_CALL_CHARS,
) -> str:
    tools = "".join(f"\n- {line}" for line in tool_lines)
    if tools:
        tools = "\nTools:" + tools
    return _SYSTEM.format(
        max_output_chars=max_output_chars,
        sub_call_chars=sub_call_chars,
        depth_note="" if can_recurse else _DEPTH_NOTE_LEAF,
        tools=tools,
    )


def first_message(*, query: str, context_description: str, max_iterations: int) -> str:
    return (
        f"{context_description}\n\n"
        f"Query: {query}\n\n"
        f"You have {max_iterations} replies. Start by looking at `context` in a ```repl block."
    )


def cell_output(index: int, total: int, output: str) -> str:
    """One cell's output as the model reads it (the fence the model must never write itself)."""
    label = f"Cell {index} of {total}" if total > 1 else "Output"
    return f"{label}:\n{OUTPUT_FENCE}\n{output}\n```"


def next_turn(outputs: Sequence[str], *, iteration: int, max_iterations: int) -> str:
    left = max_iterations - iteration
    return (
        "\n\n".join(outputs)
        + f"\n\n({left} replies left.) If the output shows the answer, call FINAL(...) with it "
        "in a ```repl block; if not, continue with a ```repl block."
    )


def truncation_marker(shown: int, total: int) -> str:
    return (
        f"\n[output truncated: {shown:,} of {total:,} characters shown; keep large values "
        "in variables and print slices]"
    )


NO_CODE = (
    "Your reply had no ```repl block and no FINAL(...). Write Python in a ```repl block to "
    "examine `context`, or, if you know the answer, reply with FINAL(your answer)."
)
EMPTY_REPLY = (
    "Your reply was empty. Write Python in a ```repl block to examine `context`, or reply "
    "with FINAL(your answer)."
)


def final_not_taken(why: str) -> str:
    """Shown after the outputs when a FINAL written beside code was not taken."""
    return (
        f"(Your FINAL(...) after the code was not taken: {why}. Read the output above; once "
        "it shows the answer, call FINAL(...) in a ```repl block.)"
    )


SKIPPED_AFTER_FINAL = "(not run: the final answer was already given)"


def best_answer_request(reason: str) -> str:
    return (
        f"You cannot run more code ({reason}). Reply now with your best answer to the query "
        "as FINAL(your answer), in plain text, without a code block."
    )
