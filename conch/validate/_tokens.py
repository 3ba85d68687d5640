"""Characters, words and case folding: the text model every other module relies on.

Definitions (one place, so matcher, tokeniser and tests agree):

- A *word character* is what Python's ``\\w`` matches (Unicode letters, digits, ``_``) plus
  every combining mark (categories Mn, Mc, Me). Marks are included so that ``naïve`` written
  with a combining diaeresis, or Devanagari with its vowel signs, stays one word.
- A *word boundary* lies between a word character and anything else (or the text's ends).
- *Unspaced scripts* (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar) do not put spaces
  between words, and conch has no dictionary to segment them. So inside those scripts every
  character boundary counts as a word boundary: a Chinese term matches wherever its characters
  appear, but a run of unspaced characters that nothing matched counts as one unknown word.
  Where an unspaced character touches a spaced word character (``使用git命令``) there is a
  boundary too. Hangul is written with spaces and follows the ordinary rule.
- Matching is case-insensitive through ``str.casefold()``. Case folding is applied character
  by character and can lengthen text (``ß`` → ``ss``), so the normalised text carries a
  :class:`SpanMap` back to the original when its length differs.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable, Collection
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter

#: Stands for "not a word character" in the key space of the matcher. Any non-word character
#: of the text becomes this one, and a seam between unspaced and spaced scripts is marked by it.
BOUNDARY = "\x01"

_UNSPACED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, number zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana
    (0x20000, 0x323AF),  # CJK extensions B-H
)

#: Combining marks live only in these planes (checked against the Unicode database).
_MARK_SEARCH_RANGES = ((0x0000, 0x20000), (0xE0000, 0xE0200))


def _in_unspaced(codepoint: int) -> bool:
    return any(low <= codepoint <= high for low, high in _UNSPACED_RANGES)


def _ranges_to_class(codepoints: list[int]) -> str:
    """Render sorted code points as the inside of a regex character class."""
    parts: list[str] = []
    index = 0
    while index < len(codepoints):
        low = high = codepoints[index]
        while index + 1 < len(codepoints) and codepoints[index + 1] == high + 1:
            index += 1
            high = codepoints[index]
        parts.append(
            re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        )
        index += 1
    return "".join(parts)


def _scan_unicode() -> tuple[str, str, str, frozenset[str]]:
    """Character classes for combining marks outside unspaced scripts, for all combining
    marks, and for characters whose case folding is longer than one character; and the
    first class's characters as a set."""
    marks: list[int] = []
    all_marks: list[int] = []
    expanding: list[int] = []
    for low, high in _MARK_SEARCH_RANGES:
        for codepoint in range(low, high):
            char = chr(codepoint)
            if unicodedata.category(char)[0] == "M":
                all_marks.append(codepoint)
                if not _in_unspaced(codepoint):
                    marks.append(codepoint)
            if len(char.casefold()) > 1:
                expanding.append(codepoint)
    return (
        _ranges_to_class(marks),
        _ranges_to_class(all_marks),
        _ranges_to_class(expanding),
        frozenset(map(chr, marks)),
    )


_MARKS, _ALL_MARKS, _EXPANDING_CHARS, _MARK_CHARS = _scan_unicode()
_UNSPACED = "".join(
    re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
    for low, high in _UNSPACED_RANGES
)

#: One word character of a spaced script (letters, digits, ``_``, combining marks).
SPACED_WORD_CLASS = f"(?:[^\\W{_UNSPACED}]|[{_MARKS}])"
UNSPACED_CLASS = f"[{_UNSPACED}]"

_SPACED_WORD_CHAR = re.compile(SPACED_WORD_CLASS)
_UNSPACED_CHAR = re.compile(UNSPACED_CLASS)
_ANY_UNSPACED = _UNSPACED_CHAR
_NON_WORD = re.compile(f"[^\\w{_MARKS}{_UNSPACED}]")
_EXPANDING = re.compile(f"[{_EXPANDING_CHARS}]")
_SCRIPT_SEAM = re.compile(
    f"(?<={UNSPACED_CLASS})(?={SPACED_WORD_CLASS})|(?<={SPACED_WORD_CLASS})(?={UNSPACED_CLASS})"
)

# ASCII fast path: every byte that is not [A-Za-z0-9_] becomes BOUNDARY.
_ASCII_KEY_TABLE = bytes(
    byte if (chr(byte).isalnum() or byte == ord("_")) and byte < 128 else ord(BOUNDARY)
    for byte in range(256)
)


def is_spaced_word_char(char: str) -> bool:
    """True for a word character of a script that separates words with spaces."""
    return _SPACED_WORD_CHAR.fullmatch(char) is not None


def is_unspaced_char(char: str) -> bool:
    return _UNSPACED_CHAR.fullmatch(char) is not None


# --- normalisation and mapping spans back ------------------------------------------------

_IDENTITY, _BLOCK, _SEAM = 0, 1, 2

#: A character whose folding is longer, or a character followed by combining marks: either
#: is normalised as one unit that maps back to its whole original range.
_SPECIAL_UNIT = re.compile(f"(?s)[^{_ALL_MARKS}][{_ALL_MARKS}]+|[{_EXPANDING_CHARS}]")


@dataclass(frozen=True, slots=True)
class SpanMap:
    """Maps a span of the normalised text back to the span of the original it came from.

    The normalised text is a sequence of segments: runs copied one character per character,
    units normalised as a whole (``ß`` → ``ss``; ``e`` + combining acute → ``é``), and
    inserted seam markers.
    """

    starts: tuple[int, ...]
    """Normalised offset where each segment begins (sorted)."""
    origins: tuple[int, ...]
    """Original offset of each segment's first character."""
    widths: tuple[int, ...]
    """Original characters a unit segment stands for (unused for the other kinds)."""
    kinds: tuple[int, ...]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        first = bisect_right(self.starts, start) - 1
        origin = self.origins[first]
        original_start = (
            origin + (start - self.starts[first]) if self.kinds[first] == _IDENTITY else origin
        )
        last = bisect_right(self.starts, end - 1) - 1
        origin, kind = self.origins[last], self.kinds[last]
        if kind == _IDENTITY:
            original_end = origin + (end - 1 - self.starts[last]) + 1
        elif kind == _BLOCK:
            original_end = origin + self.widths[last]
        else:  # a seam marker occupies no original character
            original_end = origin
        return original_start, original_end


@dataclass(frozen=True, slots=True)
class Normalized:
    text: str
    """Case-folded, NFC text, with a BOUNDARY inserted at every unspaced/spaced script seam."""
    span_map: SpanMap | None
    """None when offsets in ``text`` are offsets in the original."""

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return (start, end) if self.span_map is None else self.span_map.original_span(start, end)


def _fold_unit(unit: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", unit).casefold())


def normalize(text: str) -> Normalized:
    """Case-fold ``text`` (NFC-composed) and mark script seams, remembering how to map spans
    back to the original."""
    if text.isascii():
        # ASCII has no unspaced scripts or marks, and casefold equals lower there.
        return Normalized(text.lower(), None)
    seams = [m.start() for m in _SCRIPT_SEAM.finditer(text)] if _ANY_UNSPACED.search(text) else []
    if not seams and unicodedata.is_normalized("NFC", text):
        folded = text.casefold()
        if len(folded) == len(text):
            # casefold never shortens a character, so equal length means one-to-one.
            return Normalized(folded, None)
    starts: list[int] = []
    origins: list[int] = []
    widths: list[int] = []
    kinds: list[int] = []
    parts: list[str] = []

    def segment(kind: int, origin: int, width: int, normalized: str) -> None:
        starts.append(sum_so_far[0])
        origins.append(origin)
        widths.append(width)
        kinds.append(kind)
        parts.append(normalized)
        sum_so_far[0] += len(normalized)

    sum_so_far = [0]
    bounds = [0, *seams, len(text)]
    for index in range(len(bounds) - 1):
        piece_start, piece_end = bounds[index], bounds[index + 1]
        if index:
            segment(_SEAM, piece_start, 0, BOUNDARY)
        copied_from = piece_start
        for unit in _SPECIAL_UNIT.finditer(text, piece_start, piece_end):
            if unit.start() > copied_from:
                run = text[copied_from : unit.start()]
                segment(_IDENTITY, copied_from, len(run), run.casefold())
            segment(_BLOCK, unit.start(), unit.end() - unit.start(), _fold_unit(unit.group()))
            copied_from = unit.end()
        if copied_from < piece_end:
            run = text[copied_from:piece_end]
            segment(_IDENTITY, copied_from, len(run), run.casefold())
    return Normalized(
        "".join(parts), SpanMap(tuple(starts), tuple(origins), tuple(widths), tuple(kinds))
    )


# ASCII text straight to its padded key: lower-cased, every byte that is not [a-z0-9_] one
# BOUNDARY (the same as normalize() then boundary_key() with the padding, in one pass).
_ASCII_FOLDED_KEY_TABLE = bytes(
    ord(chr(byte).lower()) if _ASCII_KEY_TABLE[byte] != ord(BOUNDARY) else ord(BOUNDARY)
    for byte in range(256)
)
_ASCII_PAD = BOUNDARY.encode("ascii")


def ascii_boundary_key(text: str) -> str:
    """``BOUNDARY + boundary_key(normalize(text).text) + BOUNDARY`` for ASCII ``text``."""
    return (
        (_ASCII_PAD + text.encode("ascii") + _ASCII_PAD)
        .translate(_ASCII_FOLDED_KEY_TABLE)
        .decode("ascii")
    )


class _TranslationCache(dict[int, int | str]):
    """A ``str.translate`` table filled in one character at a time, on first sight.

    The classes of word characters hold hundreds of ranges, some beyond the Basic
    Multilingual Plane, and the regex engine then tests a character against the ranges one
    by one: a microsecond per character. This asks the regex once per distinct character,
    and str.translate looks the answer up in C after that.
    """

    __slots__ = ("_classify",)
    _LIMIT = 1 << 16
    """Characters remembered at most; beyond that, new ones are classified every time."""

    def __init__(self, classify: Callable[[str], int | str]) -> None:
        super().__init__()
        self._classify = classify

    def __missing__(self, codepoint: int) -> int | str:
        value = self._classify(chr(codepoint))
        if len(self) < self._LIMIT:
            self[codepoint] = value
        return value


_KEY_TRANSLATION = _TranslationCache(
    lambda char: BOUNDARY if _NON_WORD.match(char) is not None else ord(char)
)


def boundary_key(normalized: str) -> str:
    """The matcher's view of normalised text: every non-word character becomes BOUNDARY.

    Same length as the input, so offsets carry over unchanged.
    """
    if normalized.isascii():
        return normalized.encode("ascii").translate(_ASCII_KEY_TABLE).decode("ascii")
    return normalized.translate(_KEY_TRANSLATION)


# --- words that count ---------------------------------------------------------------------


def _token_patterns(spaced_word: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    # The common branch first: the regex engine tries alternatives in order at every word.
    code = re.compile(f"{spaced_word}+|{UNSPACED_CLASS}+")
    # In commands a flag keeps its dashes (``--dry-run``) and a hyphenated word stays whole
    # (``apt-get``); a flag starts only after whitespace or at the start of the text.
    command = re.compile(
        f"(?<!\\S)--?{spaced_word}(?:{spaced_word}|-)*|{spaced_word}+(?:-{spaced_word}+)*|{UNSPACED_CLASS}+"
    )
    return code, command


# Two versions of each: a single character class is several times faster than the
# alternation that also admits combining marks, and most text holds no marks at all.
_CODE_TOKEN, _COMMAND_TOKEN = _token_patterns(f"[^\\W{_UNSPACED}]")
_CODE_TOKEN_WITH_MARKS, _COMMAND_TOKEN_WITH_MARKS = _token_patterns(SPACED_WORD_CLASS)
_ANY_MARK = re.compile(f"[{_MARKS}]")  # the definition; tested in bulk through _MARK_CHARS
# Text with neither unspaced scripts nor combining marks (all ASCII text, most other text) is
# split without running a regular expression over it, which costs tens of nanoseconds a
# character (a microsecond beyond ASCII, where the classes hold hundreds of ranges): a table
# maps it to word characters and separators and str.split() cuts it. The word table keeps
# word characters (``\w``) and makes anything else a space. The chunk table (commands) also
# keeps ``-``, makes whitespace (as ``\s`` and str.split() define it) a space, and anything
# else NUL. For ASCII the tables are bytes, used through bytes.translate.
_ASCII_WORD_BYTES = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
_ASCII_WORDS = bytes(byte if byte in _ASCII_WORD_BYTES else 0x20 for byte in range(256))
_ASCII_CHUNKS = bytes(
    byte if byte in _ASCII_WORD_BYTES or byte == ord("-") else 0x20 if chr(byte).isspace() else 0x00
    for byte in range(256)
)
_WORD_CHAR = re.compile(r"\w")
_WORD_TRANSLATION = _TranslationCache(
    lambda char: ord(char) if _WORD_CHAR.match(char) is not None else " "
)
_CHUNK_TRANSLATION = _TranslationCache(
    lambda char: (
        ord(char)
        if char == "-" or _WORD_CHAR.match(char) is not None
        else " "
        if char.isspace()
        else "\x00"
    )
)
#: Hyphens right after a character that is neither a word character nor whitespace: they
#: cannot start a flag there, so they belong to no token.
_HYPHENS_AFTER_OTHER = re.compile("\x00-+")
_FLAG_START = re.compile(r"--?\w")
_HYPHENATED = re.compile(r"\w+(?:-\w+)*")


def _is_plain(text: str) -> bool:
    """No unspaced script and no combining mark: every word is a run of word characters."""
    return text.isascii() or (_MARK_CHARS.isdisjoint(text) and _ANY_UNSPACED.search(text) is None)


def _split_words(text: str) -> list[str]:
    """What ``_CODE_TOKEN`` finds in plain text: its runs of word characters."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
    return text.translate(_WORD_TRANSLATION).split()


def _split_command_words(text: str) -> list[str]:
    """What ``_COMMAND_TOKEN`` finds in plain text, without running it over every character.

    Without a hyphen every token is a run of word characters. Otherwise the text is cut into
    chunks of word characters and hyphens; a chunk that starts with a hyphen after whitespace
    or at the start of the text may be a flag, and then is one token (a flag runs to the end
    of its chunk); any other chunk holding a hyphen is cut into hyphen-joined words.
    """
    if "-" not in text:
        return _split_words(text)
    if text.isascii():
        chunked = text.encode("ascii").translate(_ASCII_CHUNKS).decode("ascii")
    else:
        chunked = text.translate(_CHUNK_TRANSLATION)
    if "\x00" in chunked:
        chunked = _HYPHENS_AFTER_OTHER.sub(" ", chunked).replace("\x00", " ")
    chunks = chunked.split()
    hyphenated = list(compress(range(len(chunks)), map(str.__contains__, chunks, repeat("-"))))
    for index in reversed(hyphenated):  # from the back, so that earlier indices stay valid
        chunk = chunks[index]
        if _FLAG_START.match(chunk) is None:
            chunks[index : index + 1] = _HYPHENATED.findall(chunk)
    return chunks


# String prefixes glued to a quote (f"...", rb'...') are syntax, not words. One or two prefix
# letters not after a word character, written so that the pattern starts with a character
# class: the regex engine then skips ahead to candidates instead of trying every position.
_STRING_PREFIX = re.compile(r"[rRbBuUfF](?<!\w[rRbBuUfF])[rRbBuUfF]?(?=['\"])")
#: Separates the uncovered gaps of a text when they are tokenised together. Not whitespace,
#: so a gap starting with ``-get`` (the rest of ``apt-get``) is not mistaken for a flag.
GAP_SEPARATOR = "\x00"

PYTHON_SYNTAX: frozenset[str] = frozenset(
    [
        *keyword.kwlist,
        *keyword.softkwlist,
        *(name for name in dir(builtins) if not name.startswith("_")),
        "self",  # conventions every Python reader treats as syntax
        "cls",
    ]
)
BASH_SYNTAX: frozenset[str] = frozenset(
    {"if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until"}
    | {"do", "done", "in", "function", "time"}
)

KINDS = ("code", "command")
_FIRST = itemgetter(0)


def candidate_words(text: str, kind: str) -> list[str]:
    """The words of ``text`` in order, syntax not yet removed (see :func:`is_syntax`).

    In code, string prefixes glued to a quote (``f"..."``) are dropped here already.
    """
    if _is_plain(text):
        if kind == "code":
            if "'" in text or '"' in text:
                text = _STRING_PREFIX.sub(" ", text)
            return _split_words(text)
        return _split_command_words(text)
    if not _MARK_CHARS.isdisjoint(text):  # what _ANY_MARK.search() tells, without a regex
        code, command = _CODE_TOKEN_WITH_MARKS, _COMMAND_TOKEN_WITH_MARKS
    else:
        code, command = _CODE_TOKEN, _COMMAND_TOKEN
    if kind == "code":
        return code.findall(_STRING_PREFIX.sub(" ", text))
    return command.findall(text)


def is_syntax(word: str, kind: str, extra: Collection[str] = ()) -> bool:
    """True for a word that belongs to the language, not to the domain.

    Code: keywords, soft keywords, builtins, ``self``/``cls`` and dunder names. Commands:
    shell reserved words only; the command words and flags themselves count, because they
    are what the domain must know. A word that starts with a digit is a number in both.
    ``extra``: more words the caller's language has, for either kind (an RLM's REPL
    defines ``context``, ``FINAL``, its tools: builtins there as much as ``print`` is).
    Every comparison is exact: ``Print`` is not ``print``.
    """
    if word[0].isdigit() or word in extra:
        return True
    if kind == "code":
        return word in PYTHON_SYNTAX or (word.startswith("__") and word.endswith("__"))
    return word in BASH_SYNTAX


def syntax_words(
    words: Collection[str],
    kind: str,
    joined: str | None = None,
    extra: frozenset[str] = frozenset(),
) -> set[str]:
    """Those of the distinct ``words`` that :func:`is_syntax` calls syntax, found in bulk.

    The same test as ``is_syntax`` with the per-word work done in C: it runs over every
    distinct unknown word of every validated text. ``joined``: ``"".join(words)``, when the
    caller has it already. ``extra``: as for ``is_syntax``.
    """
    reserved = PYTHON_SYNTAX if kind == "code" else BASH_SYNTAX
    if len(words) > len(reserved) and isinstance(words, dict | set | frozenset):
        found = set(filter(words.__contains__, reserved))  # look up the fewer words
    else:
        found = set(reserved.intersection(words))
    if extra:
        found.update(extra.intersection(words))
    if joined is None:
        joined = "".join(words)
    if not joined.isascii() or any(map(joined.__contains__, "0123456789")):
        found.update(compress(words, map(str.isdigit, map(_FIRST, words))))
    if kind == "code" and "__" in joined:
        found.update(w for w in words if w.startswith("__") and w.endswith("__"))
    return found


def word_count(normalized_term: str) -> int:
    """How many words a term covers, for the match ratio (a symbol-only term counts as one)."""
    return max(1, len(candidate_words(normalized_term, "code")))
