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
- llm_query(prompt) -> str: ask a language model; it can read about 100,000 characters.
- llm_query_batched(prompts) -> list[str]: many llm_query calls at once, much faster than a \
loop. A failed item is a str starting with "Error:".
- rlm_query(context, query) -> str: give a piece of context to a sub-agent that works like \
you, with its own REPL.{depth_note}
- SHOW_VARS(): print your variables.
- FINAL(value): give the final answer. FINAL_VAR("name"): the variable `name` is the answer.{tools}

How to work:
1. Look at `context` with code (print slices, lengths, structure) before you answer.
2. Split big text into chunks, ask llm_query_batched about the chunks, then combine.
3. Print only what you need to read; keep large results in variables.
4. Stop after your code: never write its output yourself, it is shown to you.
5. When you know the answer, call FINAL(...) or FINAL_VAR(...) in a ```repl block.

Example of a good block:
```repl
chunks = [context[i:i + 50000] for i in range(0, len(context), 50000)]
found = llm_query_batched([f"Quote every date in this text, or say NONE:\\n{{c}}" for c in chunks])
dates = [f for f in found if "NONE" not in f]
print(len(chunks), "chunks;", len(dates), "with dates:", dates[:3])
```"""

_DEPTH_NOTE_LEAF = " Here it is a plain llm_query: no deeper sub-agents are allowed."


def system_prompt(
    *, max_output_chars: int, can_recurse: bool, tool_lines: Sequence[str] = ()
) -> str:
    tools = "".join(f"\n- {line}" for line in tool_lines)
    if tools:
        tools = "\nTools:" + tools
    return _SYSTEM.format(
        max_output_chars=max_output_chars,
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
        + f"\n\n({left} replies left.) Continue with a ```repl block, or call FINAL(...) "
        "in one when you have the answer."
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
SKIPPED_AFTER_FINAL = "(not run: the final answer was already given)"


def best_answer_request(reason: str) -> str:
    return (
        f"You cannot run more code ({reason}). Reply now with your best answer to the query "
        "as FINAL(your answer), in plain text, without a code block."
    )
