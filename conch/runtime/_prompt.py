"""The prompt layer: a system prompt assembled from named slots, stacked in layers.

A ``PromptTemplate`` orders the slots and says how sections are joined. A ``PromptLayer``
holds contributions per slot and, per slot, whether it *replaces* what earlier layers put
there. Layers stack environment -> session -> turn: a later layer adds to a slot, replaces
it, or clears it. Layers are immutable, so one environment's layer is shared by every
runtime and each ``with_*`` call returns a new layer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from conch.errors import ConfigurationError


class PromptSlot(enum.StrEnum):
    """The slots of the default template, in the order they are rendered."""

    INTRO = "intro"
    """Who the model is and what it is asked to do."""
    EXECUTION = "execution"
    """How code runs: the REPL, its functions, how output is shown."""
    GUIDANCE = "guidance"
    """How to work well: strategy, examples, pitfalls."""
    PROJECT_INSTRUCTIONS = "project_instructions"
    """The embedder's or user's standing instructions."""
    RUNTIME_CONTEXT = "runtime_context"
    """What is true now: the session, the turn, budgets left."""
    ENVIRONMENT = "environment"
    """The machine and sandbox: backend, limits, available tools."""


def _slot_name(slot: object, where: str) -> str:
    if isinstance(slot, str) and slot.strip():
        return str(slot)  # a PromptSlot becomes its plain value
    raise ConfigurationError(
        f"{where}: a prompt slot must be a PromptSlot or a non-empty name, got {slot!r}"
    )


@dataclass(frozen=True, slots=True)
class PromptContribution:
    """Text for one slot. Higher ``priority`` renders first within the slot; equal
    priorities keep the order they were added in. ``source`` says who contributed it (an
    environment, a plugin's name) so a rendered prompt can be traced back."""

    slot: PromptSlot | str
    text: str
    priority: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        _slot_name(self.slot, "PromptContribution")
        if not isinstance(self.text, str):
            raise ConfigurationError(
                f"PromptContribution.text must be a str, got {type(self.text).__name__}"
            )
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ConfigurationError(
                f"PromptContribution.priority must be an int, got {self.priority!r}"
            )


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """Which slots a prompt has, in which order, and how they are joined.

    A slot renders as its heading (if ``headings`` names one) followed by its
    contributions joined by ``contribution_separator``; empty slots are left out, and the
    sections are joined by ``section_separator``. Contributions are inserted as literal
    text (braces included): a template formats nothing.
    """

    slots: tuple[str, ...] = tuple(PromptSlot)
    headings: Mapping[str, str] = field(default_factory=dict, hash=False)
    section_separator: str = "\n\n"
    contribution_separator: str = "\n\n"

    def __post_init__(self) -> None:
        names = tuple(_slot_name(s, "PromptTemplate.slots") for s in self.slots)
        if not names:
            raise ConfigurationError("a PromptTemplate needs at least one slot")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigurationError(f"PromptTemplate.slots names {repeated} more than once")
        unknown = sorted(set(map(str, self.headings)) - set(names))
        if unknown:
            raise ConfigurationError(
                f"PromptTemplate.headings names slots {unknown} that are not in its slots "
                f"{list(names)}; add them to slots or remove their headings"
            )
        object.__setattr__(self, "slots", names)
        object.__setattr__(
            self, "headings", MappingProxyType({str(k): v for k, v in self.headings.items()})
        )


DEFAULT_TEMPLATE = PromptTemplate()


@dataclass(frozen=True, slots=True)
class _SlotEdit:
    """What one layer does to one slot: add ``contributions`` to what earlier layers put
    there, or (``replaces``) put them there instead."""

    replaces: bool
    contributions: tuple[PromptContribution, ...]

    def then(self, later: _SlotEdit) -> _SlotEdit:
        if later.replaces:
            return _SlotEdit(True, later.contributions)
        return _SlotEdit(self.replaces, self.contributions + later.contributions)


_NO_EDITS: Mapping[str, _SlotEdit] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PromptLayer:
    """Contributions per slot, and optionally the template to render them with.

    ``PromptLayer()`` is empty. Build one with ``with_contribution``,
    ``with_replaced_slot`` and ``with_cleared_slot`` (each returns a new layer), combine
    layers with ``PromptLayer.stacked(environment, session, turn)``, and ``render()`` the
    result.
    """

    template: PromptTemplate | None = None
    """None: inherit the template of an earlier layer (or use the default)."""
    _edits: Mapping[str, _SlotEdit] = field(
        default_factory=lambda: _NO_EDITS, repr=False, hash=False
    )

    def with_contribution(self, contribution: PromptContribution) -> PromptLayer:
        """A layer that also adds ``contribution`` to its slot."""
        if not isinstance(contribution, PromptContribution):
            raise ConfigurationError(
                f"expected a PromptContribution, got {type(contribution).__name__}"
            )
        return self._edit(str(contribution.slot), _SlotEdit(False, (contribution,)))

    def with_contributions(self, contributions: Iterable[PromptContribution]) -> PromptLayer:
        layer = self
        for contribution in contributions:
            layer = layer.with_contribution(contribution)
        return layer

    def with_replaced_slot(
        self, slot: PromptSlot | str, contributions: Iterable[PromptContribution]
    ) -> PromptLayer:
        """A layer whose ``slot`` holds only ``contributions``, whatever earlier layers (and
        this one so far) put there."""
        name = _slot_name(slot, "with_replaced_slot")
        items = tuple(contributions)
        for item in items:
            if not isinstance(item, PromptContribution) or str(item.slot) != name:
                raise ConfigurationError(
                    f"with_replaced_slot({name!r}, ...) was given {item!r}; every replacement "
                    f"must be a PromptContribution for slot {name!r}"
                )
        return self._edit(name, _SlotEdit(True, items))

    def with_cleared_slot(self, slot: PromptSlot | str) -> PromptLayer:
        """A layer whose ``slot`` is empty (until a later contribution fills it again)."""
        return self._edit(_slot_name(slot, "with_cleared_slot"), _SlotEdit(True, ()))

    def with_template(self, template: PromptTemplate) -> PromptLayer:
        return PromptLayer(template, self._edits)

    @classmethod
    def stacked(cls, *layers: PromptLayer) -> PromptLayer:
        """One layer equal to applying ``layers`` in order (environment, session, turn):
        each adds to, replaces or clears what the ones before it hold."""
        result = cls()
        for layer in layers:
            if not isinstance(layer, PromptLayer):
                raise ConfigurationError(
                    f"PromptLayer.stacked takes PromptLayers, got {type(layer).__name__}"
                )
            result = PromptLayer(layer.template or result.template, result._edits)
            for name, edit in layer._edits.items():
                result = result._edit(name, edit)
        return result

    def contributions(self, slot: PromptSlot | str) -> tuple[PromptContribution, ...]:
        """The slot's contributions in render order: priority descending, then as added."""
        edit = self._edits.get(_slot_name(slot, "contributions"))
        if edit is None:
            return ()
        # sorted() is stable, so equal priorities keep their insertion order.
        return tuple(sorted(edit.contributions, key=lambda c: -c.priority))

    def render(self) -> str:
        """The prompt text: slots in template order, empty slots left out."""
        template = self.template or DEFAULT_TEMPLATE
        unknown = sorted(
            name
            for name, edit in self._edits.items()
            if edit.contributions and name not in template.slots
        )
        if unknown:
            # Dropping text silently would hide a plugin's or embedder's instructions.
            raise ConfigurationError(
                f"prompt contributions name slots {unknown} that the template does not have "
                f"(its slots: {list(template.slots)}); add the slots to the template or "
                "contribute to one of its slots"
            )
        sections: list[str] = []
        for name in template.slots:
            texts = [c.text for c in self.contributions(name) if c.text]
            if not texts:
                continue
            body = template.contribution_separator.join(texts)
            heading = template.headings.get(name)
            sections.append(f"{heading}\n{body}" if heading else body)
        return template.section_separator.join(sections)

    def _edit(self, name: str, edit: _SlotEdit) -> PromptLayer:
        edits = dict(self._edits)
        earlier = edits.get(name)
        edits[name] = earlier.then(edit) if earlier else edit
        return PromptLayer(self.template, MappingProxyType(edits))
