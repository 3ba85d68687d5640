"""The recursive loop: a model answers a query about a context of any size by writing code.

The context is loaded once into a sandbox session as the variable ``context``; the model
sees only its metadata. Each reply's ```repl / ```python blocks run in order and the model
reads their output, cut at ``max_output_chars``. The answer comes from REPL state only:
``FINAL(value)``, ``FINAL_VAR("name")`` or ``answer = {"content": ..., "ready": True}``
(a ``FINAL(name)`` written beside code is read from the REPL after the code ran; a
written-out value counts only in a reply with no code). In the REPL,
``llm_query``, ``llm_query_batched``, ``rlm_query`` (a child run at depth + 1), ``SHOW_VARS``
and user tools are served through the sandbox's host-callback channel, so every backend has
them. One ``Budget`` ledger covers the whole call tree; a run ends with a
``TerminationReason``. Runs share no mutable global state and may run concurrently.

    from conch.rlm import RLM, Budget
    rlm = RLM("openai:gpt-4o-mini", budget=Budget(max_cost_usd=0.25), trace="run.jsonl")
    result = rlm.completion(Path("big.txt"), "How many distinct error codes appear?")
"""

from conch.rlm._budget import Budget, BudgetExhausted, BudgetLedger, TerminationReason
from conch.rlm._context import ContextInfo, check_context
from conch.rlm._result import RLMResult
from conch.rlm._rlm import RLM
from conch.rlm._turn import CellReview, RunHooks, TurnSetup

__all__ = [
    "RLM",
    "Budget",
    "BudgetExhausted",
    "BudgetLedger",
    "CellReview",
    "ContextInfo",
    "RLMResult",
    "RunHooks",
    "TerminationReason",
    "TurnSetup",
    "check_context",
]
