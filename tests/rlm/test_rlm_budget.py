"""The shared ledger: what counts, which limit is named, and that threads do not lose counts."""

from __future__ import annotations

import threading

import pytest

from conch.errors import BudgetExceededError, ConfigurationError
from conch.lm import Completion, Usage
from conch.rlm import Budget, BudgetExhausted, BudgetLedger, TerminationReason


def completion(tokens: int = 10, cost: float = 0.0) -> Completion:
    return Completion(text="", model="m", usage=Usage(tokens, 0), cost_usd=cost, cost_known=True)


def test_an_unlimited_ledger_never_runs_out():
    ledger = BudgetLedger()
    ledger.charge(completion(10**9, 10**6))
    ledger.reserve_sub_call(10**6)
    assert ledger.exhausted() is None


@pytest.mark.parametrize(
    ("budget", "reason"),
    [
        (Budget(max_tokens=100), TerminationReason.TOKEN_BUDGET),
        (Budget(max_cost_usd=0.5), TerminationReason.COST_BUDGET),
    ],
)
def test_spending_up_to_a_limit_names_that_limit(budget, reason):
    ledger = BudgetLedger(budget)
    ledger.charge(completion(60, 0.3))
    assert ledger.exhausted() is None
    ledger.charge(completion(60, 0.3))
    with pytest.raises(BudgetExhausted) as caught:
        ledger.check()
    assert caught.value.reason is reason
    assert isinstance(caught.value, BudgetExceededError)


def test_time_is_measured_on_the_injected_clock():
    now = [100.0]
    ledger = BudgetLedger(Budget(max_time_s=5), clock=lambda: now[0])
    now[0] += 4
    assert ledger.exhausted() is None
    now[0] += 2
    assert ledger.exhausted().reason is TerminationReason.TIME_BUDGET


def test_a_refused_sub_call_claims_nothing_and_spends_the_tree():
    ledger = BudgetLedger(Budget(max_sub_calls=3))
    ledger.reserve_sub_call(2)
    with pytest.raises(BudgetExhausted):
        ledger.reserve_sub_call(2)
    assert ledger.sub_calls == 2
    assert ledger.exhausted().reason is TerminationReason.SUB_CALL_BUDGET


def test_concurrent_charges_from_threads_all_count():
    ledger = BudgetLedger()

    def charge_many():
        for _ in range(1000):
            ledger.charge(completion(1, 0.001))

    threads = [threading.Thread(target=charge_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.usage.input_tokens == 8000
    assert ledger.model_calls == 8000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *((field, 0) for field in ("max_tokens", "max_cost_usd", "max_time_s", "max_sub_calls")),
        ("max_cost_usd", float("nan")),  # compares false with everything: would mean no limit
        ("max_time_s", float("nan")),
        ("max_time_s", float("inf")),
        ("max_tokens", 2.5),
        ("max_sub_calls", True),
        ("max_cost_usd", "1"),
    ],
)
def test_a_limit_that_is_not_a_positive_number_is_refused(field, value):
    with pytest.raises(ConfigurationError, match=f"Budget.{field} must be a positive"):
        Budget(**{field: value})
