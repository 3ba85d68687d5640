"""The term matcher: leftmost-longest, case-insensitive, on word boundaries, any script."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conch.sandbox import MatchedTerm
from conch.validate import Match, TermMatcher
from conch.validate._matcher import build_all
from conch.validate._tokens import is_unspaced_char, normalize


def found(matcher: TermMatcher, text: str) -> list[tuple[str, str]]:
    return [(m.text(text), m.concept) for m in matcher.find(text)]


@pytest.fixture
def matcher() -> TermMatcher:
    return TermMatcher(
        [
            ("print", "print"),
            ("git", "git"),
            ("git push", "git-push"),
            ("git-lfs", "lfs"),
            ("c++", "cpp"),
            ("--force", "force"),
            ("a.b*c", "regex-metachars"),
            ("(x|y)", "group"),
            ("naïve", "naive"),
            ("Straße", "street"),
            ("Москва", "moscow"),
            ("数据", "data"),
            ("東京", "tokyo"),
        ]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sprint", []),
        ("printer", []),
        ("print_value = 1", []),
        ("sprint print printer", [("print", "print")]),
        ("PRINT(x)", [("PRINT", "print")]),
        ("git push origin", [("git push", "git-push")]),
        ("github gitlab", []),
        ("git-lfs install", [("git-lfs", "lfs")]),
        ("git/lfs", [("git", "git")]),
        ("use c++ and --force", [("c++", "cpp"), ("--force", "force")]),
        ("a.b*c axbbc", [("a.b*c", "regex-metachars")]),
        ("(x|y) x|y", [("(x|y)", "group")]),
    ],
)
def test_matches_whole_words_leftmost_longest(matcher, text, expected):
    assert found(matcher, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Precomposed and combining-mark spellings are the same word; a mark never splits one.
        (
            "naïve NAÏVE nai\u0308ve",
            [("naïve", "naive"), ("NAÏVE", "naive"), ("nai\u0308ve", "naive")],
        ),
        ("naïveté", []),
        # Case folding lengthens ß to ss: spans still index the original text.
        (
            "STRASSE straße Strasse",
            [("STRASSE", "street"), ("straße", "street"), ("Strasse", "street")],
        ),
        ("ß Straße", [("Straße", "street")]),
        ("МОСКВА москва Москвабад", [("МОСКВА", "moscow"), ("москва", "moscow")]),
    ],
)
def test_unicode_words_and_case_folding(matcher, text, expected):
    assert found(matcher, text) == expected


def test_spans_index_the_original_text_after_expanding_case_folding(matcher):
    text = "ßßß ﬁ Straße"
    [match] = matcher.find(text)
    assert (match.start, match.end) == (6, 12)
    assert text[match.start : match.end] == "Straße"


def test_unspaced_scripts_match_inside_a_run_of_their_characters(matcher):
    # Chinese and Japanese have no spaces between words: every character boundary counts.
    assert found(matcher, "我们的数据库在東京") == [("数据", "data"), ("東京", "tokyo")]


def test_a_latin_term_touching_unspaced_script_is_on_a_boundary(matcher):
    text = "使用git命令"
    [match] = matcher.find(text)
    assert (match.start, match.end, match.concept) == (2, 5, "git")


def test_multi_word_terms_accept_any_single_whitespace_between_words(matcher):
    assert found(matcher, "git\tpush") == [("git\tpush", "git-push")]
    assert found(matcher, "git  push") == [("git", "git")]


def test_the_longest_term_at_the_leftmost_position_wins():
    matcher = TermMatcher([("new", "a"), ("new york", "b"), ("york city", "c")])
    assert found(matcher, "new york city") == [("new york", "b")]
    # The longest candidate is not on a boundary here, so the shorter one is used.
    assert found(matcher, "new yorkshire") == [("new", "a")]


def test_empty_inputs_find_nothing():
    assert TermMatcher([]).find("anything") == []
    assert TermMatcher([("x", "x")]).find("") == []


# --- properties ------------------------------------------------------------------------

_spaced_letter = st.characters(categories=("Lu", "Ll", "Lo"), exclude_characters="ǰ").filter(
    lambda c: not is_unspaced_char(c)
)
_word = st.text(_spaced_letter, min_size=1, max_size=8)
_filler = st.lists(st.text(_spaced_letter | st.sampled_from("0123456789_"), min_size=1, max_size=6))
_separator = st.sampled_from([" ", "\n", ", ", "(", ")", "; ", ".", "-", "/", '"'])


def _consistent(word: str) -> bool:
    """Words whose normalised form keeps to itself (folding stays one word)."""
    folded = normalize(word).text
    return folded and normalize(word + "a").text.startswith(folded)


@given(term=_word, before=_filler, after=_filler, left=_separator, right=_separator)
def test_a_term_inserted_at_a_word_boundary_is_always_found(term, before, after, left, right):
    assume(_consistent(term))
    matcher = TermMatcher([(term, "concept")])
    prefix = " ".join(before) + left
    text = prefix + term + right + " ".join(after)
    spans = [(m.start, m.end) for m in matcher.find(text)]
    assert (len(prefix), len(prefix) + len(term)) in spans


@given(
    term=_word,
    glue_before=st.text(_spaced_letter | st.sampled_from("0123456789_"), max_size=4),
    glue_after=st.text(_spaced_letter | st.sampled_from("0123456789_"), max_size=4),
)
def test_a_term_glued_inside_a_longer_word_is_never_found(term, glue_before, glue_after):
    assume(glue_before or glue_after)
    assume(_consistent(term))
    matcher = TermMatcher([(term, "concept")])
    assert matcher.find(glue_before + term + glue_after) == []


@given(term=_word, before=_filler)
def test_matching_ignores_case(term, before):
    shouted = term.upper()
    assume(_consistent(term) and normalize(shouted).text == normalize(term).text)
    matcher = TermMatcher([(term, "concept")])
    text = " ".join([*before, shouted])
    assert [m.text(text) for m in matcher.find(text)][-1:] == [shouted]


@given(st.text())
def test_casefold_is_character_by_character(text):
    # normalize() relies on this to map spans back piece by piece.
    assert text.casefold() == "".join(char.casefold() for char in text)


@given(st.text(max_size=200))
def test_arbitrary_text_never_breaks_the_matcher(text):
    matcher = TermMatcher([("a", "a"), ("ß", "ss"), ("数据", "data"), ("x y", "xy")])
    previous_end = 0
    for match in matcher.find(text):
        assert previous_end <= match.start < match.end <= len(text)
        previous_end = match.end


# --- the fast paths agree with the definitions -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A seam marker in a term stands for a seam, not for any non-word character.
        ("数Ж", [("数Ж", "seam")]),
        ("数'Ж", []),
        ("数 Ж", []),
    ],
)
def test_a_term_across_a_script_seam_needs_the_seam(text, expected):
    assert found(TermMatcher([("数Ж", "seam")]), text) == expected


def test_overlapping_terms_resolve_leftmost_longest_whatever_order_they_end_in():
    matcher = TermMatcher(
        [("a", "a"), ("b", "b"), ("a b", "ab"), ("b c d", "bcd"), ("c", "c"), ("x a b c", "x")]
    )
    assert found(matcher, "a b c d") == [("a b", "ab"), ("c", "c")]
    assert found(matcher, "b c d a") == [("b c d", "bcd"), ("a", "a")]
    assert found(matcher, "x a b c d") == [("x a b c", "x")]
    assert found(matcher, "x a b") == [("a b", "ab")]


_ASCII_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _reference_find(terms: list[tuple[str, str]], text: str) -> list[tuple[int, int, str]]:
    """The matcher's contract for ASCII, by brute force: every whole-word occurrence of every
    term (case-insensitive; a whitespace character of a term matches any whitespace
    character), then leftmost-longest, the earlier term first on equal spans."""
    folded = text.lower()
    occurrences = []
    for term, concept in terms:
        term = term.strip().lower()
        for start in range(len(folded) - len(term) + 1):
            end = start + len(term)
            if not all(
                a == b or (a.isspace() and b.isspace())
                for a, b in zip(folded[start:end], term, strict=True)
            ):
                continue
            if term[0] in _ASCII_WORD_CHARS and start and folded[start - 1] in _ASCII_WORD_CHARS:
                continue
            if term[-1] in _ASCII_WORD_CHARS and folded[end : end + 1] in _ASCII_WORD_CHARS:
                continue
            occurrences.append((start, end, concept))
    occurrences.sort(key=lambda o: (o[0], -o[1]))  # stable: the earlier term first on ties
    selected, covered = [], 0
    for start, end, concept in occurrences:
        if start >= covered:
            selected.append((start, end, concept))
            covered = end
    return selected


# Terms start and end with a word character, so that two terms sharing a key share its
# padding too; inside they may hold separators, which makes overlaps and shared keys common.
_term = st.sampled_from("abAB") | st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from("abAB"),
    st.text(st.sampled_from("ab -.\t"), max_size=4),
    st.sampled_from("ab"),
).filter(lambda term: "  " not in term)
_filler = st.text(st.sampled_from("abAB -.\t\n"), max_size=3)


@settings(max_examples=400)
@given(terms=st.lists(_term, min_size=1, max_size=6, unique_by=str.lower), data=st.data())
def test_find_agrees_with_a_brute_force_reference(terms, data):
    # Texts made of the terms themselves (in any case) and bits of filler.
    pieces = data.draw(
        st.lists(st.sampled_from(terms).map(str.upper) | st.sampled_from(terms) | _filler)
    )
    text = "".join(pieces)
    pairs = [(term, f"c{index}") for index, term in enumerate(terms)]
    matcher = TermMatcher(pairs)
    assert [(m.start, m.end, m.concept) for m in matcher.find(text)] == _reference_find(pairs, text)


def test_columns_are_find_in_parallel_sequences(matcher):
    text = "git push, then naïve STRASSE and 数据 and c++"
    starts, ends, concepts, words = matcher._match_columns(text)
    assert [Match(*row) for row in zip(starts, ends, concepts, words, strict=True)] == matcher.find(
        text
    )
    assert matcher._match_columns("nothing here") == ((), (), (), ())


def test_matches_built_in_bulk_equal_matches_built_one_by_one():
    rows = [(0, 3, "git", 1), (4, 12, "git-push", 2)]
    built = build_all(Match, *zip(*rows, strict=True))
    assert list(built) == [Match(*row) for row in rows]
    assert [hash(m) for m in built] == [hash(Match(*row)) for row in rows]
    assert [repr(m) for m in built] == [repr(Match(*row)) for row in rows]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].start = 1  # type: ignore[misc]
    terms = [("git", "git", 0, 3), ("push", "push", 4, 8)]
    assert list(build_all(MatchedTerm, *zip(*terms, strict=True))) == [
        MatchedTerm(*row) for row in terms
    ]


def test_bulk_building_falls_back_to_the_constructor_for_other_classes():
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    assert list(build_all(NoSlots, [1, 2])) == [NoSlots(1), NoSlots(2)]
    with pytest.raises(ValueError, match="negative"):
        build_all(Checked, [1, -1])
