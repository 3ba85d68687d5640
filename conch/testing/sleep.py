"""A stand-in for ``asyncio.sleep`` that records each wait and returns at once.

Inject it where a component takes a sleep function (``RetryPolicy(sleep=...)``) so tests
assert how long it would have waited without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingSleep:
    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
