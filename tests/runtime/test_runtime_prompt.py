"""The prompt layer: slots in template order, priorities, and environment -> session -> turn."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conch.errors import ConfigurationError
from conch.runtime import PromptContribution, PromptLayer, PromptSlot, PromptTemplate

INTRO, EXECUTION, GUIDANCE = PromptSlot.INTRO, PromptSlot.EXECUTION, PromptSlot.GUIDANCE


def part(slot: PromptSlot | str, text: str, priority: int = 0) -> PromptContribution:
    return PromptContribution(slot, text, priority)


def test_an_empty_layer_renders_nothing() -> None:
    assert PromptLayer().render() == ""


def test_slots_render_in_template_order_whatever_order_they_were_filled_in() -> None:
    layer = (
        PromptLayer()
        .with_contribution(part(PromptSlot.ENVIRONMENT, "env"))
        .with_contribution(part(GUIDANCE, "guide"))
        .with_contribution(part(INTRO, "intro"))
    )

    assert layer.render() == "intro\n\nguide\n\nenv"


def test_within_a_slot_higher_priority_first_then_insertion_order() -> None:
    layer = PromptLayer().with_contributions(
        [part(INTRO, "a"), part(INTRO, "b", priority=5), part(INTRO, "c"), part(INTRO, "d", 5)]
    )

    assert [c.text for c in layer.contributions(INTRO)] == ["b", "d", "a", "c"]


def test_text_is_inserted_literally() -> None:
    layer = PromptLayer().with_contribution(part(INTRO, "use {braces} and %s freely"))

    assert layer.render() == "use {braces} and %s freely"


def test_a_template_chooses_slots_headings_and_separators() -> None:
    template = PromptTemplate(
        slots=("rules", INTRO),
        headings={"rules": "## Rules"},
        section_separator="\n---\n",
        contribution_separator="\n",
    )
    layer = (
        PromptLayer(template)
        .with_contribution(part(INTRO, "hello"))
        .with_contribution(part("rules", "one"))
        .with_contribution(part("rules", "two"))
    )

    assert layer.render() == "## Rules\none\ntwo\n---\nhello"


def test_text_for_a_slot_the_template_lacks_is_an_error_not_silently_dropped() -> None:
    layer = PromptLayer(PromptTemplate(slots=(INTRO,))).with_contribution(part(GUIDANCE, "x"))

    with pytest.raises(ConfigurationError, match=r"slots \['guidance'\].*template does not have"):
        layer.render()


@pytest.fixture
def environment() -> PromptLayer:
    return PromptLayer().with_contributions(
        [
            part(INTRO, "You are conch."),
            part(EXECUTION, "Use the REPL."),
            part(GUIDANCE, "Be brief."),
        ]
    )


def test_a_later_layer_adds_to_a_slot(environment: PromptLayer) -> None:
    session = PromptLayer().with_contribution(part(GUIDANCE, "Cite sources."))

    stacked = PromptLayer.stacked(environment, session)

    assert [c.text for c in stacked.contributions(GUIDANCE)] == ["Be brief.", "Cite sources."]


def test_a_later_layer_replaces_a_slot(environment: PromptLayer) -> None:
    turn = PromptLayer().with_replaced_slot(INTRO, [part(INTRO, "You are a grader.")])

    assert PromptLayer.stacked(environment, turn).render().startswith("You are a grader.\n\n")


def test_a_later_layer_clears_a_slot(environment: PromptLayer) -> None:
    session = PromptLayer().with_cleared_slot(GUIDANCE)

    assert PromptLayer.stacked(environment, session).render() == ("You are conch.\n\nUse the REPL.")


def test_what_a_layer_adds_after_clearing_stays(environment: PromptLayer) -> None:
    session = PromptLayer().with_cleared_slot(GUIDANCE).with_contribution(part(GUIDANCE, "new"))
    turn = PromptLayer().with_contribution(part(GUIDANCE, "newer"))

    stacked = PromptLayer.stacked(environment, session, turn)

    assert [c.text for c in stacked.contributions(GUIDANCE)] == ["new", "newer"]


def test_stacking_is_the_same_grouped_either_way(environment: PromptLayer) -> None:
    session = PromptLayer().with_replaced_slot(EXECUTION, [part(EXECUTION, "s")])
    turn = PromptLayer().with_contribution(part(EXECUTION, "t"))

    left = PromptLayer.stacked(PromptLayer.stacked(environment, session), turn)
    right = PromptLayer.stacked(environment, PromptLayer.stacked(session, turn))

    assert left.render() == right.render()


def test_the_latest_layer_with_a_template_wins(environment: PromptLayer) -> None:
    template = PromptTemplate(slots=(GUIDANCE, INTRO, EXECUTION))
    session = PromptLayer(template)
    turn = PromptLayer()

    assert PromptLayer.stacked(environment, session, turn).render() == (
        "Be brief.\n\nYou are conch.\n\nUse the REPL."
    )


def test_layers_are_immutable_so_sharing_one_is_safe(environment: PromptLayer) -> None:
    before = environment.render()

    environment.with_contribution(part(INTRO, "changed")).with_cleared_slot(EXECUTION)

    assert environment.render() == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PromptContribution("", "x"), "non-empty name"),
        (lambda: PromptContribution(INTRO, b"x"), "text must be a str"),  # type: ignore[arg-type]
        (lambda: PromptContribution(INTRO, "x", priority=1.5), "priority must be an int"),  # type: ignore[arg-type]
        (lambda: PromptTemplate(slots=(INTRO, "intro")), "more than once"),
        (lambda: PromptTemplate(slots=(INTRO,), headings={"nope": "#"}), "not in its slots"),
        (
            lambda: PromptLayer().with_replaced_slot(INTRO, [part(GUIDANCE, "x")]),
            "must be a PromptContribution for slot 'intro'",
        ),
    ],
    ids=[
        "empty-slot",
        "bytes-text",
        "float-priority",
        "repeated-slot",
        "stray-heading",
        "wrong-slot",
    ],
)
def test_bad_prompt_input_says_what_is_wrong(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make()
