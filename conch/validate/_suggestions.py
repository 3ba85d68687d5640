"""Closest known terms for an unknown word (``rapidfuzz``), computed only when read.

Against 100,000 terms one lookup costs milliseconds, far more than validating a command, so
``ValidationResult.suggestions`` is a mapping that looks words up on first access and caches
them. Reading it (feedback to the model, ``--json`` output, ``repr``) pays; a passing check
that nobody inspects does not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

from rapidfuzz import fuzz, process

DEFAULT_LIMIT = 3
DEFAULT_CUTOFF = 60.0
"""Minimum ``fuzz.ratio`` (0-100) for a term to count as close."""


class Suggester:
    """Ranks known terms by edit similarity to a word, case-insensitively."""

    def __init__(
        self, terms: Iterable[str], *, limit: int = DEFAULT_LIMIT, cutoff: float = DEFAULT_CUTOFF
    ) -> None:
        by_folded: dict[str, str] = {}
        for term in terms:
            by_folded.setdefault(term.casefold(), term)
        self._folded = list(by_folded)
        self._surface = list(by_folded.values())
        self._limit = limit
        self._cutoff = cutoff

    def suggest(self, word: str) -> tuple[str, ...]:
        if not self._folded or self._limit <= 0:
            return ()
        ranked = process.extract(
            word.casefold(),
            self._folded,
            scorer=fuzz.ratio,
            limit=self._limit,
            score_cutoff=self._cutoff,
        )
        return tuple(self._surface[index] for _, _, index in ranked)


class LazySuggestions(Mapping[str, tuple[str, ...]]):
    """``unknown word -> closest known terms``, each computed on first access."""

    def __init__(self, words: Iterable[str], suggester: Suggester) -> None:
        self._words = tuple(words)
        self._member_set: frozenset[str] | None = None  # made on first lookup
        self._suggester = suggester
        self._cache: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @property
    def _members(self) -> frozenset[str]:
        # Built on demand: most results are never looked into. Two threads may both build
        # it; they build the same set.
        if self._member_set is None:
            self._member_set = frozenset(self._words)
        return self._member_set

    def __getitem__(self, word: str) -> tuple[str, ...]:
        if word not in self._members:
            raise KeyError(word)
        with self._lock:
            if word not in self._cache:
                self._cache[word] = self._suggester.suggest(word)
            return self._cache[word]

    def __iter__(self) -> Iterator[str]:
        return iter(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._members

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazySuggestions({dict(self.items())!r})"
