"""S-NIAH tasks: generated deterministically from the seed, needles where they say, scoring."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.bench import sniah
from conch.bench.sniah import (
    contains_match,
    exact_match,
    generate_tasks,
    make_task,
    normalize_answer,
)
from conch.errors import ConfigurationError

NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for ([a-z]+-[a-z]+) is: (\S+)\.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_the_same_seed_gives_the_same_tasks_and_another_seed_others():
    first = generate_tasks(6, length=5_000, seed=3)
    again = generate_tasks(6, length=5_000, seed=3)
    other = generate_tasks(6, length=5_000, seed=4)
    assert first == again
    assert [t.context for t in first] != [t.context for t in other]
    assert [t.expected for t in first] != [t.expected for t in other]


def test_task_i_does_not_depend_on_how_many_tasks_were_asked_for():
    assert generate_tasks(7, length=3_000, seed=1)[:2] == generate_tasks(2, length=3_000, seed=1)


def test_tasks_cycle_through_the_variants_in_order():
    tasks = generate_tasks(7, length=3_000, seed=0)
    assert [t.variant for t in tasks] == [
        "number", "uuid", "distractors", "number", "uuid", "distractors", "number",
    ]  # fmt: skip
    only = generate_tasks(3, length=3_000, seed=0, variants=["uuid"])
    assert {t.variant for t in only} == {"uuid"}
    assert len({t.task_id for t in tasks}) == 7


@pytest.mark.parametrize("length", [1_000, 20_000, 100_000])
def test_a_context_is_close_to_the_asked_length_and_never_longer(length):
    for task in generate_tasks(3, length=length, seed=5):
        assert length - 200 <= len(task.context) <= length


def test_the_number_variant_has_one_needle_with_a_seven_digit_number():
    task = make_task(0, length=20_000, seed=9, variant="number")
    found = NEEDLE.findall(task.context)
    assert found == [("numbers", task.key, task.expected)]
    assert re.fullmatch(r"[1-9]\d{6}", task.expected)
    # the filler has no other 7-digit number: the needle is found by what it says
    assert re.findall(r"\b\d{7}\b", task.context) == [task.expected]
    assert task.query.startswith(f"What is the special magic number for {task.key} ")
    assert task.distractors == ()


def test_the_uuid_variant_hides_a_uuid():
    task = make_task(1, length=20_000, seed=9, variant="uuid")
    assert NEEDLE.findall(task.context) == [("uuids", task.key, task.expected)]
    assert UUID.fullmatch(task.expected)
    assert "special magic uuid for" in task.query


def test_the_distractor_variant_adds_needles_for_other_keys_with_other_values():
    task = make_task(2, length=30_000, seed=9, variant="distractors")
    found = NEEDLE.findall(task.context)
    assert len(found) == 1 + sniah.DISTRACTORS
    keys = [key for _, key, _ in found]
    values = [value for _, _, value in found]
    assert len(set(keys)) == len(keys) and len(set(values)) == len(values)
    assert task.key in keys and keys.count(task.key) == 1
    assert {d.key for d in task.distractors} == set(keys) - {task.key}
    for needle in task.distractors:
        sentence = sniah.NEEDLE.format(kind="number", key=needle.key, value=needle.value)
        assert task.context[needle.offset :].startswith(sentence)


def test_the_needle_sits_at_its_depth_on_a_sentence_boundary():
    for task in generate_tasks(9, length=50_000, seed=2):
        offset = task.needle.offset
        assert task.context[offset:].startswith(task.needle_sentence)
        assert task.depth == pytest.approx(offset / len(task.context), abs=1e-4)
        assert offset == 0 or task.context[offset - 1] in " \n"
        assert offset < 2 or task.context[offset - 2] == "."


def test_depths_spread_over_the_document():
    depths = [t.depth for t in generate_tasks(30, length=2_000, seed=0)]
    assert min(depths) < 0.25 and max(depths) > 0.75


def test_keys_never_appear_in_the_filler():
    task = make_task(0, length=50_000, seed=11, variant="number")
    assert task.context.count(task.key) == 1
    assert "-" not in task.context.replace(task.needle_sentence, "")


def test_bad_arguments_are_refused_with_what_to_do():
    with pytest.raises(ConfigurationError, match="variant"):
        make_task(0, length=5_000, seed=0, variant="haystack")
    with pytest.raises(ConfigurationError, match="at least 1,000"):
        make_task(0, length=500, seed=0, variant="number")
    with pytest.raises(ConfigurationError, match="at least 1"):
        generate_tasks(0)


# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "1234567",
        " 1234567\n",
        '"1234567"',
        "'1234567'.",
        "[1234567]",
        "['1234567']",
        "**1234567**",
        "1,234,567",
        "1 234 567",
        "（1234567）",  # full-width brackets, folded by NFKC
    ],
)
def test_exact_match_forgives_quotes_brackets_punctuation_and_grouping(answer):
    assert exact_match(answer, "1234567")


@pytest.mark.parametrize(
    "answer",
    [None, "", "123456", "12345678", "The number is 1234567.", "1234567 and 7654321", "1234568"],
)
def test_exact_match_rejects_anything_else(answer):
    assert not exact_match(answer, "1234567")


def test_uuids_match_in_any_case_with_or_without_braces():
    value = "9b89f791-f2c2-4bf9-82aa-15ff59f26d86"
    assert exact_match("{9B89F791-F2C2-4BF9-82AA-15FF59F26D86}", value)
    assert not exact_match("9b89f791-f2c2-4bf9-82aa-15ff59f26d8", value)


def test_contains_finds_the_value_as_a_whole_token_only():
    assert contains_match("The special magic number is 1234567.", "1234567")
    assert not contains_match("It is 12345678.", "1234567")
    assert not contains_match(None, "1234567")
    value = "9b89f791-f2c2-4bf9-82aa-15ff59f26d86"
    assert contains_match(f"uuid: {value.upper()}", value)
    assert not contains_match(f"x{value}", value)


def test_normalize_answer_collapses_whitespace_inside():
    assert normalize_answer('  "New   York"\n') == "new york"


@given(st.text(max_size=40))
def test_normalisation_is_idempotent_and_matches_itself(text):
    once = normalize_answer(text)
    assert normalize_answer(once) == once
    assert exact_match(text, text)
