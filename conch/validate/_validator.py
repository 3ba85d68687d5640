"""``KnowledgeGraphValidator``: does this code or command speak the domain's language?

The strictness table (``min_match_ratio`` overrides the threshold of either blocking mode):

==============  =====================================================================
permissive      never blocks; reports matched and unknown terms and suggestions
normal          blocks when no term is known, or the match ratio is under 0.1
strict          blocks when no term is known, the match ratio is under 0.3, or the
                matched concepts are not connected in the role graph
==============  =====================================================================

The *match ratio* counts words: the words covered by matched terms divided by those plus the
unknown words. Syntax (see ``_tokens.is_syntax``) counts on neither side. Empty or
whitespace-only input has nothing to run and always passes.
"""

from __future__ import annotations

import enum
from collections import Counter
from pathlib import Path

from conch.errors import ValidationConfigError
from conch.sandbox import ValidationResult
from conch.validate._events import Decision, EventSink, ValidationEvent
from conch.validate._matcher import Match, TermMatcher
from conch.validate._suggestions import DEFAULT_LIMIT, LazySuggestions, Suggester
from conch.validate._thesaurus import Thesaurus
from conch.validate._tokens import GAP_SEPARATOR, KINDS, candidate_words, is_syntax

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

    def validate(self, text: str, kind: str = "code") -> ValidationResult:
        result = self._check(text, kind)
        if self._on_event is not None:
            decision = Decision.RUN if result.passed else Decision.BLOCKED
            self._on_event(
                ValidationEvent.from_result(
                    text, kind, result, decision, strictness=self.strictness.value
                )
            )
        return result

    def _check(self, text: str, kind: str) -> ValidationResult:
        if not isinstance(text, str):
            raise TypeError(
                f"validate() takes text (str), not {type(text).__name__}; decode bytes first"
            )
        if kind not in KINDS:
            raise ValidationConfigError(f"unknown kind {kind!r}; use 'code' or 'command'")
        if not text.strip():
            return ValidationResult(passed=True, message="nothing to validate (empty input)")
        if len(text) > self.max_input_chars:
            return self._too_large(len(text))

        matches = self._matcher.find(text)
        unknown_counts = _count_unknown(text, matches, kind)
        unknown = _distinct_casefolded(unknown_counts)
        known_words = sum(match.words for match in matches)
        unknown_words = sum(unknown_counts.values())
        total = known_words + unknown_words
        ratio = known_words / total if total else 0.0
        concepts = {match.concept for match in matches}
        graph = self.thesaurus.role_graph
        connected = graph.connected(concepts) if graph is not None and concepts else None

        problems: list[str] = []
        if not matches:
            problems.append("no term of the knowledge graph appears in it")
        elif ratio < self.min_match_ratio:
            problems.append(
                f"only {ratio:.0%} of its words are known terms "
                f"(at least {self.min_match_ratio:.0%} needed)"
            )
        if self.strictness is Strictness.STRICT and connected is False:
            problems.append(
                "its concepts are not related in the role graph ("
                + ", ".join(sorted(concepts)[:_LISTED_IN_MESSAGE])
                + ")"
            )
        blocked = bool(problems) and self.strictness is not Strictness.PERMISSIVE
        return ValidationResult(
            passed=not blocked,
            matched=tuple(match.as_matched_term(text) for match in matches),
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


def _count_unknown(text: str, matches: list[Match], kind: str) -> Counter[str]:
    """Occurrences of each word outside every match that is not syntax."""
    words = Counter(candidate_words(_uncovered(text, matches), kind))
    for word in [w for w in words if is_syntax(w, kind)]:
        del words[word]
    return words


def _uncovered(text: str, matches: list[Match]) -> str:
    """The text with every match cut out, the remaining gaps joined by GAP_SEPARATOR."""
    if not matches:
        return text
    gaps: list[str] = []
    previous_end = 0
    for match in matches:
        gaps.append(text[previous_end : match.start])
        previous_end = match.end
    gaps.append(text[previous_end:])
    return GAP_SEPARATOR.join(gaps)


def _distinct_casefolded(counts: Counter[str]) -> tuple[str, ...]:
    """Unknown words in order of first appearance, one spelling per case-folded word."""
    seen: dict[str, str] = {}
    for word in counts:
        seen.setdefault(word.casefold(), word)
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
