"""The term matcher: leftmost-longest, case-insensitive, on word boundaries, any script."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conch.validate import TermMatcher
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
