"""Knowledge-graph validation benchmark (prints figures, writes JSON; not a test).

Builds a synthetic thesaurus of 100,000 terms (pronounceable pseudo-words, 10% of them two
words long) and measures: building the matcher, validating a 1 KB command, validating a 1 MB
text, and one suggestion lookup. Texts mix known terms (30% of words) with unknown words built
from the same syllables, so unknown words often *contain* known terms: the hard case for word
boundaries. Targets from issue 6: matcher build < 2 s, 1 KB p50 < 50 µs, 1 MB < 20 ms. It
also times the floor under any pyahocorasick matcher: the automaton's bare walk over the
text (pyahocorasick does it in C; on 1 MB its memory traffic over a 100,000-term trie alone
exceeds the 1 MB target). Two peers frame that floor: the same walk by the Rust
``aho-corasick`` crate (``ahocorasick_rs``, installed by ``pip install 'conch[bench]'``) and
``str.split()`` of the 1 MB text, the least that anything reading every word from Python does.

    python benchmarks/validate.py [--quick] [--terms N] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

from conch.validate import KnowledgeGraphValidator, TermMatcher, Thesaurus
from conch.validate._tokens import ascii_boundary_key

SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
TARGETS = {"build_s": 2.0, "validate_1kb_p50_us": 50.0, "validate_1mb_ms": 20.0}


def pseudo_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def build_thesaurus(size: int, rng: random.Random) -> Thesaurus:
    terms: dict[str, int] = {}
    while len(terms) < size:
        term = pseudo_word(rng)
        if rng.random() < 0.1:
            term += " " + pseudo_word(rng)
        terms.setdefault(term, len(terms) // 3)  # about three surface terms per concept
    return Thesaurus.from_json(
        {
            "name": "bench",
            "data": {t: {"id": c, "nterm": f"concept{c}", "url": None} for t, c in terms.items()},
        }
    )


def make_text(terms: list[str], size: int, rng: random.Random, known_share: float = 0.3) -> str:
    unknown = [pseudo_word(rng) + "x" for _ in range(5000)]
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(terms) if rng.random() < known_share else rng.choice(unknown)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def timed(function, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return samples


def rust_peer_scan(keys: list[str], text: str, repeat: int) -> list[float] | None:
    """The bare scan by the Rust crate over the same keys and text: every raw hit, overlapping,
    handed to Python as pyahocorasick's walk does. None when ``ahocorasick_rs`` is absent."""
    try:
        import ahocorasick_rs
    except ImportError:
        return None
    peer = ahocorasick_rs.AhoCorasick(keys)
    return timed(lambda: peer.find_matches_as_indexes(text, overlapping=True), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--terms", type=int, default=100_000)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "validate.json"
    )
    args = parser.parse_args()
    rng = random.Random(6)
    small_repeat, large_repeat = (200, 3) if args.quick else (2000, 10)

    thesaurus = build_thesaurus(args.terms, rng)
    pairs = [(t, c.name) for t, c in thesaurus.terms.items()]
    build_s = min(timed(lambda: TermMatcher(pairs), 1 if args.quick else 3))
    validator = KnowledgeGraphValidator(thesaurus, "normal")
    terms = list(thesaurus.terms)

    command = make_text(terms, 1024, rng)
    small = timed(lambda: validator.validate(command, "command"), small_repeat)
    automaton = validator._matcher._automaton
    command_key = ascii_boundary_key(command)
    small_scan = timed(lambda: deque(automaton.iter(command_key), maxlen=0), small_repeat)
    megabyte = make_text(terms, 1024 * 1024, rng)
    large = timed(lambda: validator.validate(megabyte, "code"), large_repeat)
    matcher_only = timed(lambda: validator._matcher.find(megabyte), large_repeat)
    # The floor under any matcher built on pyahocorasick: the automaton's own walk over the
    # text's key, every raw hit handed to Python and dropped (measured for 1 KB above too).
    key = ascii_boundary_key(megabyte)
    scan = timed(lambda: deque(automaton.iter(key), maxlen=0), large_repeat)
    rust_scan = rust_peer_scan(list(automaton.keys()), key, large_repeat)
    split = timed(megabyte.split, large_repeat)
    result = validator.validate(command, "command")
    word = result.unknown[0]
    suggest = timed(lambda: validator._suggester.suggest(word), 5 if args.quick else 20)

    figures = {
        "terms": len(thesaurus.terms),
        "build_s": build_s,
        "validate_1kb_p50_us": statistics.median(small) * 1e6,
        "validate_1kb_p99_us": sorted(small)[int(len(small) * 0.99) - 1] * 1e6,
        "validate_1kb_matches": len(result.matched),
        "validate_1kb_unknown_words": len(result.unknown),
        "automaton_scan_1kb_p50_us": statistics.median(small_scan) * 1e6,
        "validate_1mb_ms": statistics.median(large) * 1e3,
        "match_1mb_ms": statistics.median(matcher_only) * 1e3,
        "automaton_scan_1mb_ms": statistics.median(scan) * 1e3,
        "peer_rust_scan_1mb_ms": statistics.median(rust_scan) * 1e3 if rust_scan else None,
        "peer_str_split_1mb_ms": statistics.median(split) * 1e3,
        "validate_1mb_matches": len(validator.validate(megabyte).matched),
        "suggest_one_word_ms": statistics.median(suggest) * 1e3,
    }
    f = figures
    print(f"thesaurus: {f['terms']:,} terms")
    print(f"build matcher:   {f['build_s']:8.3f} s   (target < {TARGETS['build_s']} s)")
    print(
        f"validate 1 KB:   {f['validate_1kb_p50_us']:8.1f} µs p50, "
        f"{f['validate_1kb_p99_us']:.1f} µs p99 "
        f"(target p50 < {TARGETS['validate_1kb_p50_us']:.0f} µs; "
        f"{f['validate_1kb_matches']} matches)"
    )
    print(
        f"validate 1 MB:   {f['validate_1mb_ms']:8.1f} ms  "
        f"(target < {TARGETS['validate_1mb_ms']:.0f} ms; matcher alone {f['match_1mb_ms']:.1f} ms; "
        f"{f['validate_1mb_matches']:,} matches)"
    )
    print(
        f"  floor: the bare automaton scan takes {f['automaton_scan_1kb_p50_us']:.1f} µs "
        f"of the 1 KB and {f['automaton_scan_1mb_ms']:.1f} ms of the 1 MB"
    )
    rust = f["peer_rust_scan_1mb_ms"]
    print(
        "  peers on the 1 MB: the Rust aho-corasick scan "
        + (f"{rust:.1f} ms" if rust is not None else "not run (pip install 'conch[bench]')")
        + f"; str.split() {f['peer_str_split_1mb_ms']:.1f} ms"
    )
    print(f"suggest 1 word:  {f['suggest_one_word_ms']:8.2f} ms  (computed lazily, on read)")
    for name, target in TARGETS.items():
        print(f"  {name}: {'met' if figures[name] < target else 'MISSED'}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "benchmark": "validate",
                "quick": args.quick,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "targets": TARGETS,
                "figures": figures,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
