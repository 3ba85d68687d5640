"""``KnowledgeGraphValidator``: does this code or command speak the domain's language?

The strictness table (``min_match_ratio`` overrides the threshold of either blocking mode):

==============  =====================================================================
permissive      never blocks; reports matched and unknown terms and suggestions
normal          blocks when no term is known, or the match ratio is under 0.1
strict          blocks when no term is known, the match ratio is under 0.3, or the
                matched concepts are not connected in the role graph
==============  =====================================================================

The *match ratio* counts words: the words covered by matched terms divided by those plus the
unknown words. Syntax (see ``_tokens.is_syntax``) counts on neither side, and so do the
words a caller names as syntax of its own language (``validate(..., syntax=...)``: an RLM's
REPL names). Empty or whitespace-only input has nothing to run and always passes.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from pathlib import Path

from conch.errors import ValidationConfigError
from conch.sandbox import MatchedTerm, ValidationResult
from conch.validate._events import Decision, EventSink, ValidationEvent
from conch.validate._matcher import TermMatcher, build_all
from conch.validate._suggestions import DEFAULT_LIMIT, LazySuggestions, Suggester
from conch.validate._thesaurus import Thesaurus
from conch.validate._tokens import GAP_SEPARATOR, KINDS, candidate_words, syntax_words

DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_INPUT_CHARS = 16 * 1024 * 1024
_LISTED_IN_MESSAGE = 10


class Strictness(enum.StrEnum):
    PERMISSIVE = "permissive"
    NORMAL = "normal"
    STRICT = "strict"

    @property
    def default_min_match_ratio(self) -> float:
        return {"permissive": 0.0, "normal": 0.1, "strict": 0.3}[self.value]


class KnowledgeGraphValidator:
    """Checks text against a thesaurus. Satisfies ``conch.sandbox.Validator``; thread-safe."""

    def __init__(
        self,
        thesaurus: Thesaurus | str | Path,
        strictness: Strictness | str = Strictness.NORMAL,
        max_retries: int = DEFAULT_MAX_RETRIES,
        min_match_ratio: float | None = None,
        *,
        max_suggestions: int = DEFAULT_LIMIT,
        max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
        on_event: EventSink | None = None,
    ) -> None:
        """
        ``max_retries``: blocked attempts in a row before a ``ValidationGate`` built on this
        validator escalates. ``min_match_ratio``: overrides the strictness's threshold.
        ``max_input_chars``: longer input is not scanned (blocked, or reported in permissive
        mode). ``on_event``: receives one ``ValidationEvent`` per call; when a gate wraps the
        validator give it to the gate instead, which knows the retry count and decision.
        """
        try:
            self.strictness = Strictness(strictness)
        except ValueError:
            choices = ", ".join(s.value for s in Strictness)
            raise ValidationConfigError(
                f"unknown strictness {strictness!r}; choose one of {choices}"
            ) from None
        if min_match_ratio is not None and not 0.0 <= min_match_ratio <= 1.0:
            raise ValidationConfigError(
                f"min_match_ratio must be within 0..1, got {min_match_ratio}"
            )
        if max_retries < 1:
            raise ValidationConfigError(f"max_retries must be at least 1, got {max_retries}")
        if max_input_chars < 1:
            raise ValidationConfigError(f"max_input_chars must be positive, got {max_input_chars}")
        if not isinstance(thesaurus, Thesaurus):
            thesaurus = Thesaurus.load(thesaurus)
        self.thesaurus = thesaurus
        self.max_retries = max_retries
        self.min_match_ratio = (
            self.strictness.default_min_match_ratio if min_match_ratio is None else min_match_ratio
        )
        self.max_input_chars = max_input_chars
        self._on_event = on_event
        self._matcher = TermMatcher((t, c.name) for t, c in thesaurus.terms.items())
        self._suggester = Suggester(thesaurus.terms, limit=max_suggestions)

    def validate(
        self, text: str, kind: str = "code", *, syntax: Collection[str] = ()
    ) -> ValidationResult:
        """``syntax``: words of the language ``text`` is written in, beyond Python's or the
        shell's (e.g. the names a REPL defines). Like builtins, they are never unknown words
        (a thesaurus term still matches); compared exactly, case and all."""
        result = self._check(
            text, kind, syntax if isinstance(syntax, frozenset) else frozenset(syntax)
        )
        if self._on_event is not None:
            decision = Decision.RUN if result.passed else Decision.BLOCKED
            self._on_event(
                ValidationEvent.from_result(
                    text, kind, result, decision, strictness=self.strictness.value
                )
            )
        return result

    def _check(self, text: str, kind: str, syntax: frozenset[str]) -> ValidationResult:
        if not isinstance(text, str):
            raise TypeError(
                f"validate() takes text (str), not {type(text).__name__}; decode bytes first"
            )
        if kind not in KINDS:
            raise ValidationConfigError(f"unknown kind {kind!r}; use 'code' or 'command'")
        if not text or text.isspace():
            return ValidationResult(passed=True, message="nothing to validate (empty input)")
        if len(text) > self.max_input_chars:
            return self._too_large(len(text))

        starts, ends, concepts_found, word_counts = self._matcher._match_columns(text)
        if starts:
            # The matched surface terms, and the gaps between them (for the unknown words).
            # Sliced through map() in C: these run once per match, and texts have many.
            terms = list(map(text.__getitem__, map(slice, starts, ends)))
            gaps = map(text.__getitem__, map(slice, (0, *ends), (*starts, len(text))))
            unknown, unknown_words = _unknown_words(GAP_SEPARATOR.join(gaps), kind, syntax)
        else:
            terms = []
            unknown, unknown_words = _unknown_words(text, kind, syntax)
        known_words = sum(word_counts)
        total = known_words + unknown_words
        ratio = known_words / total if total else 0.0
        graph = self.thesaurus.role_graph
        connected = graph.connected(concepts_found) if graph is not None and starts else None

        problems: list[str] = []
        if not starts:
            problems.append("no term of the knowledge graph appears in it")
        elif ratio < self.min_match_ratio:
            problems.append(
                f"only {ratio:.0%} of its words are known terms "
                f"(at least {self.min_match_ratio:.0%} needed)"
            )
        if self.strictness is Strictness.STRICT and connected is False:
            problems.append(
                "its concepts are not related in the role graph ("
                + ", ".join(sorted(set(concepts_found))[:_LISTED_IN_MESSAGE])
                + ")"
            )
        blocked = bool(problems) and self.strictness is not Strictness.PERMISSIVE
        return ValidationResult(
            passed=not blocked,
            matched=build_all(MatchedTerm, terms, concepts_found, starts, ends) if terms else (),
            unknown=unknown,
            message=_message(blocked, problems, unknown, self.strictness),
            match_ratio=ratio,
            connected=connected,
            suggestions=LazySuggestions(unknown, self._suggester),
        )

    def _too_large(self, length: int) -> ValidationResult:
        problem = (
            f"input of {length:,} characters is over the validation limit of "
            f"{self.max_input_chars:,}; split it into smaller pieces"
        )
        if self.strictness is Strictness.PERMISSIVE:
            return ValidationResult(passed=True, message=f"not checked: {problem}", match_ratio=0.0)
        return ValidationResult(passed=False, message=f"blocked: {problem}", match_ratio=0.0)


def _unknown_words(
    uncovered: str, kind: str, extra_syntax: frozenset[str]
) -> tuple[tuple[str, ...], int]:
    """The words of the text outside every match (``uncovered``: the gaps between matches
    joined by GAP_SEPARATOR) that are not syntax: the distinct ones in order of first
    appearance (one spelling per case-folded word), and how many occurrences there are."""
    words = candidate_words(uncovered, kind)
    if not words:
        return (), 0
    distinct = dict.fromkeys(words)
    joined = "".join(distinct)
    syntax = syntax_words(distinct, kind, joined, extra_syntax)
    count = len(words)
    if syntax:
        for word in syntax:
            del distinct[word]
        count -= sum(map(syntax.__contains__, words))
    if joined.isascii() and joined == joined.lower():  # nothing to case-fold: the common case
        return tuple(distinct), count
    return _distinct_casefolded(distinct), count


def _distinct_casefolded(words: Collection[str]) -> tuple[str, ...]:
    """The distinct ``words`` (in order), one spelling per case-folded word."""
    folded = list(map(str.casefold, words))
    if len(set(folded)) == len(folded):  # no two spellings of one word
        return tuple(words)
    seen: dict[str, str] = {}
    for key, word in zip(folded, words, strict=True):
        seen.setdefault(key, word)
    return tuple(seen.values())


def _message(
    blocked: bool, problems: list[str], unknown: tuple[str, ...], strictness: Strictness
) -> str:
    listed = ", ".join(unknown[:_LISTED_IN_MESSAGE])
    if len(unknown) > _LISTED_IN_MESSAGE:
        listed += f" and {len(unknown) - _LISTED_IN_MESSAGE} more"
    unknown_part = f"unknown terms: {listed}" if unknown else "no unknown terms"
    if blocked:
        return f"blocked: {'; '.join(problems)}; {unknown_part}"
    if problems:  # permissive: report what would have blocked
        return f"passed ({strictness.value}; would block: {'; '.join(problems)}); {unknown_part}"
    return f"passed; {unknown_part}"
