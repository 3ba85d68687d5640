"""Finding thesaurus terms in text: Aho-Corasick, leftmost-longest, on word boundaries.

How word boundaries stay cheap: the automaton does not run over the text itself but over its
*boundary key* (``_tokens.boundary_key``): the case-folded text with every non-word character
replaced by one marker, padded with that marker at both ends. A term that starts (ends) with a
spaced word character is stored with the marker in front (behind), so it can only match where
the text has a non-word character or an end there. ``print`` is stored as ``␁print␁`` and never
fires inside ``sprint`` or ``printer``, which keeps the number of raw hits close to the number
of real matches. Because the key forgets *which* non-word character stood where, every raw hit
is confirmed against the normalised text itself (``git-lfs`` must not match ``git/lfs``);
a single whitespace character inside a multi-word term may be any whitespace (``git\\tpush``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick

from conch.errors import ValidationConfigError
from conch.sandbox import MatchedTerm
from conch.validate._tokens import (
    BOUNDARY,
    boundary_key,
    is_spaced_word_char,
    normalize,
    word_count,
)

_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class _Term:
    normalized: str
    """Case-folded form the text must contain (seams marked like the text's)."""
    concept: str
    pad_left: int
    pad_right: int
    words: int
    """How many words the term covers, for the match ratio."""


@dataclass(frozen=True, slots=True)
class Match:
    """One occurrence of a term: ``start``/``end`` index the original text."""

    start: int
    end: int
    concept: str
    words: int

    def as_matched_term(self, text: str) -> MatchedTerm:
        return MatchedTerm(self.text(text), self.concept, self.start, self.end)

    def text(self, text: str) -> str:
        return text[self.start : self.end]


class TermMatcher:
    """All surface terms of a thesaurus in one automaton. Immutable once built; thread-safe."""

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        """``terms``: ``(surface term, concept)`` pairs. Terms that fold to the same text must
        name the same concept (the thesaurus checks this with a better message)."""
        automaton = ahocorasick.Automaton()
        by_key: dict[str, list[_Term]] = {}
        seen: dict[str, str] = {}
        for surface, concept in terms:
            normalized = normalize(surface.strip()).text
            if not normalized:
                raise ValidationConfigError(f"empty term for concept {concept!r}: give it text")
            if seen.setdefault(normalized, concept) != concept:
                raise ValidationConfigError(
                    f"term {surface!r} maps to both {seen[normalized]!r} and {concept!r}"
                )
            pad_left = int(is_spaced_word_char(normalized[0]))
            pad_right = int(is_spaced_word_char(normalized[-1]))
            key = BOUNDARY * pad_left + boundary_key(normalized) + BOUNDARY * pad_right
            candidates = by_key.setdefault(key, [])
            if all(c.normalized != normalized for c in candidates):
                candidates.append(
                    _Term(normalized, concept, pad_left, pad_right, word_count(normalized))
                )
        for key, candidates in by_key.items():
            automaton.add_word(key, (len(key), tuple(candidates)))
        if by_key:
            automaton.make_automaton()
        self._automaton = automaton
        self._term_count = len(seen)

    def __len__(self) -> int:
        return self._term_count

    def find(self, text: str) -> list[Match]:
        """Every match in ``text``, leftmost-longest, non-overlapping, in order."""
        if not self._term_count or not text:
            return []
        normalized = normalize(text)
        folded = normalized.text
        # Offsets in the padded key are one more than in ``folded``.
        key = BOUNDARY + boundary_key(folded) + BOUNDARY
        hits: list[tuple[int, int, _Term]] = []
        for last, (key_length, candidates) in self._automaton.iter(key):
            for term in candidates:
                start = last - key_length + 1 + term.pad_left - 1
                end = last - term.pad_right
                found = folded[start:end]
                if found == term.normalized or (
                    len(found) == len(term.normalized)
                    and _WHITESPACE.sub(" ", found) == _WHITESPACE.sub(" ", term.normalized)
                ):
                    hits.append((start, -end, term))
                    break
        if not hits:
            return []
        hits.sort(key=_leftmost_longest)
        matches: list[Match] = []
        covered_until = 0
        for start, negative_end, term in hits:
            if start >= covered_until:
                original_start, original_end = normalized.original_span(start, -negative_end)
                matches.append(Match(original_start, original_end, term.concept, term.words))
                covered_until = -negative_end
        return matches


def _leftmost_longest(hit: tuple[int, int, _Term]) -> tuple[int, int]:
    return hit[0], hit[1]
