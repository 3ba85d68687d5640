"""Finding thesaurus terms in text: Aho-Corasick, leftmost-longest, on word boundaries.

How word boundaries stay cheap: the automaton does not run over the text itself but over its
*boundary key* (``_tokens.boundary_key``): the case-folded text with every non-word character
replaced by one marker, padded with that marker at both ends. A term that starts (ends) with a
spaced word character is stored with the marker in front (behind), so it can only match where
the text has a non-word character or an end there. ``print`` is stored as ``␁print␁`` and never
fires inside ``sprint`` or ``printer``, so the boundary test runs in C and the raw hits are
already (nearly) the real matches.

A term made only of word characters needs nothing more: its key *is* its text, so a hit proves
the match. Only a term with a non-word character in it is confirmed against the normalised
text, because the key forgets *which* non-word character stood where (``git-lfs`` must not
match ``git/lfs``); a single whitespace character inside a multi-word term may be any
whitespace (``git\\tpush``).

Leftmost-longest without sorting: the automaton reports hits in order of their end. A new hit
ends at or after every hit seen so far, so it can only replace a tail of the selection made so
far (see ``_overlapping``); in the common case it starts after the last selected match ends and
is simply appended.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from itertools import repeat
from typing import Any, TypeVar

import ahocorasick

from conch.errors import ValidationConfigError
from conch.sandbox import MatchedTerm
from conch.validate._tokens import (
    BOUNDARY,
    ascii_boundary_key,
    boundary_key,
    is_spaced_word_char,
    normalize,
    word_count,
)

_WHITESPACE = re.compile(r"\s")

#: A term as stored under its key: ``(back, pad_right, normalized, concept, words)``. A hit
#: whose last key index is ``last`` spans ``last - back`` to ``last - pad_right`` in the
#: normalised text (the key's own padding included); ``words`` counts for the match ratio.
_Term = tuple[int, int, str, str, int]
#: A term to confirm a hit against: ``(back, pad_right, normalized, whitespace-normalised,
#: concept, words)``.
_Candidate = tuple[int, int, str, str, str, int]


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


#: No matches, as :meth:`TermMatcher._match_columns` returns them.
_EMPTY_COLUMNS: tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]] = (
    (),
    (),
    (),
    (),
)


class TermMatcher:
    """All surface terms of a thesaurus in one automaton. Immutable once built; thread-safe."""

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        """``terms``: ``(surface term, concept)`` pairs. Terms that fold to the same text must
        name the same concept (the thesaurus checks this with a better message)."""
        automaton = ahocorasick.Automaton()
        # key -> the term stored under it, or the list of them when several share it
        by_key: dict[str, _Term | list[_Term]] = {}
        seen: dict[str, str] = {}
        for surface, concept in terms:
            stripped = surface.strip()
            normalized = stripped.lower() if stripped.isascii() else normalize(stripped).text
            if not normalized:
                raise ValidationConfigError(f"empty term for concept {concept!r}: give it text")
            if normalized in seen:  # another spelling of a term already stored
                if seen[normalized] != concept:
                    raise ValidationConfigError(
                        f"term {surface!r} maps to both {seen[normalized]!r} and {concept!r}"
                    )
                continue
            seen[normalized] = concept
            pad_left = int(_is_spaced_word_char(normalized[0]))
            pad_right = int(_is_spaced_word_char(normalized[-1]))
            core = boundary_key(normalized)
            key = BOUNDARY * pad_left + core + BOUNDARY * pad_right
            # Key offsets are one more than text offsets (the text's key is padded too).
            term = (len(key) - pad_left, pad_right, normalized, concept, word_count(normalized))
            earlier = by_key.get(key)
            if earlier is None:
                by_key[key] = term
                # A term of word characters only is its own key: a hit spells it exactly
                # and needs no confirmation. (A seam marker in a term is not such a
                # character: the text must have the seam there, not any non-word character.)
                exact = core == normalized and BOUNDARY not in normalized
                automaton.add_word(key, _value([term], confirm=not exact))
            else:  # rare: terms that differ only in their non-word characters
                group = [earlier, term] if isinstance(earlier, tuple) else [*earlier, term]
                by_key[key] = group
                automaton.add_word(key, _value(group, confirm=True))  # replaces the value
        if by_key:
            automaton.make_automaton()
        self._automaton = automaton
        self._term_count = len(seen)

    def __len__(self) -> int:
        return self._term_count

    def find(self, text: str) -> list[Match]:
        """Every match in ``text``, leftmost-longest, non-overlapping, in order."""
        starts, ends, concepts, words = self._match_columns(text)
        if not starts:
            return []
        return list(build_all(Match, starts, ends, concepts, words))

    def _match_columns(
        self, text: str
    ) -> tuple[Sequence[int], Sequence[int], Sequence[str], Sequence[int]]:
        """What :meth:`find` returns, as four parallel sequences ``(starts, ends, concepts,
        words)`` instead of ``Match`` objects, which cost more than finding them on a text
        with many matches (the validator reads these)."""
        if not self._term_count or not text:
            return _EMPTY_COLUMNS
        if text.isascii():
            # The common case, without the general normaliser: ASCII folds to lower case,
            # one character per character, so spans need no mapping back.
            folded = None  # text.lower(), made when a hit needs confirming
            key = ascii_boundary_key(text)
            span_map = None
        else:
            normalized = normalize(text)
            folded = normalized.text
            key = BOUNDARY + boundary_key(folded) + BOUNDARY
            span_map = normalized.span_map
        # The hot loop: one iteration per raw hit, so it does as little as it can. Offsets
        # in the padded key are one more than in ``folded``; the stored lengths allow for it.
        # The selection is one flat list, four items a match: no object per match that
        # outlives the loop, which would wake the garbage collector on texts with many.
        selected: list[Any] = []
        add = selected.extend
        latest = -1  # where the last selected match starts
        covered = 0  # and where it ends
        for last, (back, pad_right, concept, words, check, alternatives) in self._automaton.iter(
            key
        ):
            start = last - back
            end = last - pad_right
            if check is not None:
                if folded is None:
                    folded = text.lower()
                if folded[start:end] != check:
                    confirmed = _confirm(folded, last, alternatives)
                    if confirmed is None:
                        continue
                    start, end, concept, words = confirmed
            if start >= covered:
                add((start, end, concept, words))
                latest, covered = start, end
            elif start > latest:
                continue  # overlaps the last selected match and starts after it: never picked
            else:
                latest, covered = _overlapping(selected, start, end, concept, words)
        if not selected:
            return _EMPTY_COLUMNS
        starts, ends = selected[0::4], selected[1::4]
        if span_map is not None:
            starts, ends = zip(*map(span_map.original_span, starts, ends), strict=True)
        return starts, ends, selected[2::4], selected[3::4]


def _value(terms: list[_Term], *, confirm: bool) -> tuple[Any, ...]:
    """What the automaton stores for a key: ``(back, pad_right, concept, words, check,
    candidates)`` of its first term, where ``check`` (the normalised term) and
    ``candidates`` (every term under the key, see ``_confirm``) are None when a hit needs no
    confirming."""
    back, pad_right, normalized, concept, words = terms[0]
    if not confirm:
        return back, pad_right, concept, words, None, None
    candidates = tuple(
        (back, pad_right, normalized, _WHITESPACE.sub(" ", normalized), concept, words)
        for back, pad_right, normalized, concept, words in terms
    )
    return back, pad_right, concept, words, normalized, candidates


_ASCII_WORD_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")


def _is_spaced_word_char(char: str) -> bool:
    return char in _ASCII_WORD_CHARS if char.isascii() else is_spaced_word_char(char)


def _confirm(
    folded: str, last: int, candidates: tuple[_Candidate, ...]
) -> tuple[int, int, str, int] | None:
    """The first term stored under the hit's key that the normalised text really spells
    there, as ``(start, end, concept, words)``; None when there is none.

    A single whitespace character of a multi-word term may be any whitespace character.
    """
    for back, pad_right, normalized, spaced, concept, words in candidates:
        start, end = last - back, last - pad_right
        found = folded[start:end]
        if found == normalized or (
            len(found) == len(normalized) and _WHITESPACE.sub(" ", found) == spaced
        ):
            return start, end, concept, words
    return None


def _overlapping(
    selected: list[Any], start: int, end: int, concept: str, words: int
) -> tuple[int, int]:
    """Fold a hit that overlaps the selection so far into it; return the span of the last
    selected match.

    ``selected`` (flat: start, end, concept, words of each match) is the leftmost-longest
    selection among the hits seen so far, and the new hit ends at or after every one of
    them. Run the greedy choice (smallest start, then largest end) over all hits including
    the new one: it picks the same matches up to the first selected match that the new hit
    beats (starts later than the new one, or at the same place and shorter), and picks the
    new hit there if it is not covered by the match before; after it nothing can be picked,
    since nothing starts at or after its end. Otherwise the new hit is never picked and the
    selection stands.
    """
    keep = len(selected)  # 4 x the matches kept
    while keep and (
        selected[keep - 4] > start or (selected[keep - 4] == start and selected[keep - 3] < end)
    ):
        keep -= 4
    if keep == 0 or selected[keep - 3] <= start:
        del selected[keep:]
        selected.extend((start, end, concept, words))
    return selected[-4], selected[-3]


# --- building many frozen dataclass instances at once ------------------------------------

_T = TypeVar("_T")
_new = object.__new__
_drain = deque(maxlen=0).extend  # runs an iterator to its end in C, keeping nothing


def _slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...] | None:
    """The slot descriptors' setters of a ``slots=True`` dataclass, in field order; None
    when ``cls`` is not such a plain record (it has ``__post_init__``, a field its
    ``__init__`` does not take positionally, or its own ``__new__``), so that callers build
    it the ordinary way."""
    if (
        not is_dataclass(cls)
        or hasattr(cls, "__post_init__")
        or "__slots__" not in cls.__dict__
        or cls.__new__ is not object.__new__
    ):
        return None
    setters = []
    for item in fields(cls):
        descriptor = cls.__dict__.get(item.name)
        if type(descriptor) is not _MEMBER_DESCRIPTOR or not item.init or item.kw_only:
            return None
        setters.append(descriptor.__set__)
    return tuple(setters)


class _Probe:
    __slots__ = ("slot",)


_MEMBER_DESCRIPTOR = type(_Probe.__dict__["slot"])
_SETTERS: dict[type, tuple[Callable[[Any, Any], None], ...] | None] = {}


def build_all(cls: type[_T], *columns: Sequence[Any]) -> tuple[_T, ...]:
    """``cls(*row)`` for every row of the parallel ``columns``, several times faster.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, a
    Python-level call per field, which dominated validating a text with many matches. For a
    ``slots=True`` dataclass that is a plain record (see ``_slot_setters``) the objects are
    allocated and their slots filled column by column through the slot descriptors, with no
    Python-level call per object; the result is the same (equal, hashable, same repr). Any
    other class is built the ordinary way. Used for ``Match`` and ``MatchedTerm``; the tests
    check that both still build identically.
    """
    if cls not in _SETTERS:
        _SETTERS[cls] = _slot_setters(cls)
    setters = _SETTERS[cls]
    if setters is None or len(setters) != len(columns):
        return tuple(map(cls, *columns))
    objects = tuple(map(_new, repeat(cls, len(columns[0]))))
    for setter, column in zip(setters, columns, strict=True):
        _drain(map(setter, objects, column))
    return objects
