"""The validator: the strictness table, what counts as a word, suggestions, bad input."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conch.errors import ValidationConfigError
from conch.sandbox import Validator
from conch.validate import Decision, KnowledgeGraphValidator, Strictness, ValidationEvent

# Inputs with a known shape against the ``devops`` thesaurus (command kind):
ALL_KNOWN_CONNECTED = "git commit && docker container"  # ratio 1.0, git-docker related
ALL_KNOWN_UNRELATED = "git commit && kubectl"  # ratio 1.0, kubernetes stands alone
ONE_IN_FIVE = "git alpha beta gamma delta"  # ratio 0.2
ONE_IN_TWENTY = "git " + " ".join(f"word{n}" for n in range(19))  # ratio 0.05
NOTHING_KNOWN = "curl example"


@pytest.mark.parametrize(
    ("strictness", "text", "passes"),
    [
        ("permissive", NOTHING_KNOWN, True),
        ("permissive", ONE_IN_TWENTY, True),
        ("permissive", ALL_KNOWN_UNRELATED, True),
        ("normal", NOTHING_KNOWN, False),
        ("normal", ONE_IN_TWENTY, False),
        ("normal", ONE_IN_FIVE, True),
        ("normal", ALL_KNOWN_UNRELATED, True),
        ("strict", NOTHING_KNOWN, False),
        ("strict", ONE_IN_FIVE, False),
        ("strict", ALL_KNOWN_UNRELATED, False),
        ("strict", ALL_KNOWN_CONNECTED, True),
    ],
)
def test_strictness_table(validator_for, strictness, text, passes):
    assert validator_for(strictness).validate(text, "command").passed is passes


def known_then_unknown(known: str, unknown: int) -> str:
    return known + "".join(f" word{n}" for n in range(unknown))


# Each threshold is the least ratio that passes: exactly at it passes, just under it blocks.
@pytest.mark.parametrize(
    ("strictness", "text", "ratio", "passes"),
    [
        ("normal", known_then_unknown("git", 9), 1 / 10, True),
        ("normal", known_then_unknown("git", 10), 1 / 11, False),
        ("strict", known_then_unknown("git commit docker", 7), 3 / 10, True),
        ("strict", known_then_unknown("git commit docker", 8), 3 / 11, False),
        ("permissive", known_then_unknown("git", 99), 1 / 100, True),
    ],
    ids=["normal-at-0.1", "normal-under-0.1", "strict-at-0.3", "strict-under-0.3", "permissive"],
)
def test_the_thresholds_are_exactly_the_tables(validator_for, strictness, text, ratio, passes):
    result = validator_for(strictness).validate(text, "command")
    assert result.match_ratio == ratio
    assert result.passed is passes


def test_the_default_strictness_is_normal(devops):
    validator = KnowledgeGraphValidator(devops)
    assert (validator.strictness, validator.min_match_ratio) == (Strictness.NORMAL, 0.1)
    assert validator.validate(ONE_IN_FIVE, "command").passed  # strict would block 0.2
    assert not validator.validate(ONE_IN_TWENTY, "command").passed  # permissive would not


def test_words_named_as_syntax_are_neither_unknown_nor_counted(validator_for):
    code = "print(context[:100])\nFINAL_VAR('answer')\ndf = pandas.read_csv(Context)"
    plain = validator_for().validate(code)
    assert plain.unknown == ("context", "FINAL_VAR", "answer", "df")  # Context: as context
    assert plain.match_ratio == pytest.approx(2 / 7)
    repl = validator_for().validate(code, syntax={"context", "FINAL_VAR", "answer"})
    assert repl.unknown == ("df", "Context")  # compared exactly: Context is not context
    assert repl.match_ratio == pytest.approx(2 / 4)


def test_a_thesaurus_term_named_as_syntax_still_matches(validator_for):
    result = validator_for().validate("pandas", syntax=frozenset({"pandas"}))
    assert [m.term for m in result.matched] == ["pandas"]
    assert result.passed


def test_match_ratio_counts_words(validator_for):
    assert validator_for().validate(ONE_IN_FIVE, "command").match_ratio == pytest.approx(0.2)
    # A multi-word term covers two words.
    assert validator_for().validate("git push origin", "command").match_ratio == pytest.approx(
        2 / 3
    )


def test_an_explicit_ratio_overrides_the_strictness_default(validator_for):
    assert not validator_for("normal", min_match_ratio=0.5).validate(ONE_IN_FIVE, "command").passed
    assert validator_for("strict", min_match_ratio=0.1).validate(ONE_IN_FIVE, "command").passed


def test_strict_reports_and_blocks_on_unrelated_concepts(validator_for):
    result = validator_for("strict").validate(ALL_KNOWN_UNRELATED, "command")
    assert result.connected is False
    assert "not related" in result.message


def test_without_a_role_graph_connectivity_is_not_checked(thesaurus_of):
    validator = KnowledgeGraphValidator(thesaurus_of({"git": "git", "kubectl": "k8s"}), "strict")
    result = validator.validate("git kubectl", "command")
    assert result.connected is None
    assert result.passed


def test_permissive_reports_what_would_have_blocked(validator_for):
    result = validator_for("permissive").validate(NOTHING_KNOWN, "command")
    assert result.passed
    assert "would block" in result.message
    assert result.unknown == ("curl", "example")


def test_result_lists_matched_terms_with_concepts_and_spans(validator_for):
    text = "x = pandas.read_csv(path)"
    result = validator_for().validate(text)
    assert [(m.term, m.concept) for m in result.matched] == [
        ("pandas", "pandas"),
        ("read_csv", "pandas"),
    ]
    assert all(text[m.start : m.end] == m.term for m in result.matched)


def test_python_syntax_is_not_unknown(validator_for):
    code = (
        "import pandas\n"
        "def load(self, n=10):\n"
        "    for i in range(0x1F):\n"
        "        print(f'{n}', len([True, None]), __name__, 3.5e2)\n"
    )
    assert validator_for().validate(code, "code").unknown == ("load", "n", "i")


def test_for_commands_the_command_words_and_flags_count(validator_for):
    result = validator_for().validate("for f in *.txt; do rm --force -r $f; done", "command")
    assert result.unknown == ("f", "txt", "rm", "--force", "-r")


def test_hyphenated_command_words_stay_whole(validator_for):
    assert validator_for().validate("apt-get install git", "command").unknown == (
        "apt-get",
        "install",
    )


def test_unknown_words_are_listed_once_in_order_of_appearance(validator_for):
    result = validator_for().validate("git Foo foo FOO bar", "command")
    assert result.unknown == ("Foo", "bar")


def test_suggestions_name_the_closest_known_terms(validator_for):
    result = validator_for().validate("git comit to dokcer", "command")
    assert result.suggestions["comit"][0] == "commit"
    assert result.suggestions["dokcer"][0] == "docker"
    assert result.suggestions["to"] == ()
    assert set(result.suggestions) == set(result.unknown)


def test_a_non_latin_thesaurus_works(thesaurus_of):
    validator = KnowledgeGraphValidator(
        thesaurus_of({"Москва": "moscow", "数据": "data", "straße": "street"})
    )
    result = validator.validate("МОСКВА и STRASSE 的数据库", "command")
    assert [m.concept for m in result.matched] == ["moscow", "street", "data"]
    assert result.unknown == ("и", "的", "库")


def test_empty_input_passes_in_every_mode(validator_for):
    for strictness in Strictness:
        result = validator_for(strictness).validate("  \n\t")
        assert result.passed
        assert "empty" in result.message


def test_syntax_only_code_has_no_known_term_and_is_blocked(validator_for):
    result = validator_for().validate("print(len([1, 2]))")
    assert not result.passed
    assert result.unknown == ()


def test_ten_megabytes_are_validated(thesaurus_of):
    validator = KnowledgeGraphValidator(thesaurus_of({"git": "git", "push": "push"}), "permissive")
    prose = "lorem ipsum dolor sit amet\n" * (10 * 1024 * 1024 // 27)
    text = prose + "git push"
    result = validator.validate(text, "command")
    assert [(m.term, m.start) for m in result.matched] == [
        ("git", len(prose)),
        ("push", len(prose) + 4),
    ]
    assert result.unknown == ("lorem", "ipsum", "dolor", "sit", "amet")
    assert 0 < result.match_ratio < 0.001


@pytest.mark.parametrize(("strictness", "passes"), [("permissive", True), ("normal", False)])
def test_input_over_the_size_limit_is_not_scanned(validator_for, strictness, passes):
    result = validator_for(strictness, max_input_chars=100).validate("git " * 30, "command")
    assert result.passed is passes
    assert "over the validation limit" in result.message


def test_binary_looking_text_is_validated_not_crashed_on(validator_for):
    text = "git\x00\x01\xff\udcff docker \ufffd" + bytes(range(32)).decode("latin-1")
    result = validator_for().validate(text, "command")
    assert [m.term for m in result.matched] == ["git", "docker"]


def test_bytes_are_refused_with_a_hint(validator_for):
    with pytest.raises(TypeError, match="decode bytes"):
        validator_for().validate(b"git push")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"strictness": "paranoid"}, "unknown strictness"),
        ({"min_match_ratio": 1.5}, "min_match_ratio"),
        ({"max_retries": 0}, "max_retries"),
    ],
)
def test_bad_settings_are_refused(devops, options, problem):
    with pytest.raises(ValidationConfigError, match=problem):
        KnowledgeGraphValidator(devops, **options)


def test_unknown_kind_is_refused(validator_for):
    with pytest.raises(ValidationConfigError, match="kind"):
        validator_for().validate("git", "sql")


def test_satisfies_the_sandbox_validator_protocol(validator_for):
    assert isinstance(validator_for(), Validator)


def test_every_validation_emits_an_event(devops):
    events: list[ValidationEvent] = []
    validator = KnowledgeGraphValidator(devops, on_event=events.append)
    validator.validate("git push", "command")
    validator.validate("curl", "command")
    assert [e.decision for e in events] == [Decision.RUN, Decision.BLOCKED]
    record = events[1].to_record()
    assert record["passed"] is False
    assert record["unknown"] == ["curl"]
    assert record["input_sha256"] == hashlib.sha256(b"curl").hexdigest()
    assert record["schema_version"] == 1 and record["kind"] == "command"


# The thesaurus fixture is read-only, so sharing it across generated inputs is safe.
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), kind=st.sampled_from(["code", "command"]))
def test_any_text_gives_a_consistent_result(devops, text, kind):
    result = KnowledgeGraphValidator(devops, "normal").validate(text, kind)
    assert 0.0 <= result.match_ratio <= 1.0
    assert all(text[m.start : m.end] == m.term for m in result.matched)
    assert result.passed == (
        not text.strip() or (bool(result.matched) and result.match_ratio >= 0.1)
    )
