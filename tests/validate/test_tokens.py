"""The text model's fast paths agree with its definitions (the regular expressions)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.validate._tokens import (
    _ANY_MARK,
    _CODE_TOKEN,
    _CODE_TOKEN_WITH_MARKS,
    _COMMAND_TOKEN,
    _COMMAND_TOKEN_WITH_MARKS,
    _NON_WORD,
    _STRING_PREFIX,
    BOUNDARY,
    GAP_SEPARATOR,
    ascii_boundary_key,
    boundary_key,
    candidate_words,
    is_syntax,
    normalize,
    syntax_words,
)

# Hyphens, quotes, string prefixes, the gap separator and ASCII's odd whitespace (\x1c-\x1f
# count as whitespace for str.split() and \s) are where a shortcut could go wrong.
_ascii = st.text(
    st.sampled_from("aZ_9-- \t\n=(.'\"fRb") | st.characters(max_codepoint=127), max_size=40
)
# Beyond ASCII: other whitespace and dashes, letters with and without combining marks,
# unspaced scripts, digits that are not ASCII digits.
_unicode = st.text(
    st.sampled_from("aZ_9- \t=.'\"fé\u0301ß\u2003\x85\u3000\u2014Жж数据ไทย²٣\U0001d7ce\U00020000")
    | st.characters(),
    max_size=40,
)
_tricky = ["-", "--", "---x", "a--b", "-a-", "x=-y", "(--force)", "\x00-get", "\x1c-v", "f'x'"]


def _regex_words(text: str, kind: str) -> list[str]:
    """The definition: the token patterns, the ones admitting marks when there are any."""
    marks = _ANY_MARK.search(text) is not None
    if kind == "code":
        pattern = _CODE_TOKEN_WITH_MARKS if marks else _CODE_TOKEN
        return pattern.findall(_STRING_PREFIX.sub(" ", text))
    return (_COMMAND_TOKEN_WITH_MARKS if marks else _COMMAND_TOKEN).findall(text)


@given(text=_ascii | _unicode, kind=st.sampled_from(["code", "command"]))
def test_words_are_the_regex_words(text, kind):
    assert candidate_words(text, kind) == _regex_words(text, kind)


@pytest.mark.parametrize("text", _tricky + [f"é {t}" for t in _tricky])
@pytest.mark.parametrize("kind", ["code", "command"])
def test_tricky_words(text, kind):
    assert candidate_words(text, kind) == _regex_words(text, kind)


def test_command_words_keep_flags_and_hyphenated_words():
    text = f"apt-get install -y --no-install-recommends x--y a=-b{GAP_SEPARATOR}-get"
    assert candidate_words(text, "command") == [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "x",
        "y",
        "a",
        "b",
        "get",
    ]


@given(text=_unicode)
def test_boundary_key_marks_every_non_word_character(text):
    assert boundary_key(text) == _NON_WORD.sub(BOUNDARY, text)


@given(text=st.text(max_size=40))
def test_ascii_boundary_key_is_the_padded_key_of_the_normalised_text(text):
    text = text.encode("ascii", "replace").decode("ascii")
    assert ascii_boundary_key(text) == BOUNDARY + boundary_key(normalize(text).text) + BOUNDARY


_word = st.text(st.sampled_from(string.ascii_letters + string.digits + "_-²٣"), min_size=1)


_extra = st.frozensets(st.sampled_from(["context", "FINAL", "do", "lookup"]) | _word, max_size=4)


@given(
    words=st.lists(
        _word | st.sampled_from(["for", "in", "print", "__init__", "__", "do", "context"]),
        max_size=300,
    ),
    kind=st.sampled_from(["code", "command"]),
    extra=_extra,
)
def test_syntax_words_are_the_words_is_syntax_accepts(words, kind, extra):
    distinct = dict.fromkeys(words)
    expected = {w for w in distinct if is_syntax(w, kind, extra)}
    assert syntax_words(distinct, kind, extra=extra) == expected
    assert syntax_words(list(distinct), kind, extra=extra) == expected


@pytest.mark.parametrize("kind", ["code", "command"])
def test_extra_syntax_words_count_exactly_as_given(kind):
    extra = frozenset({"context", "FINAL"})
    assert is_syntax("context", kind, extra) and is_syntax("FINAL", kind, extra)
    assert not is_syntax("Context", kind, extra) and not is_syntax("final", kind, extra)
    assert not is_syntax("context", kind)
