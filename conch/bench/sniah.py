"""RULER-style single needle-in-a-haystack (S-NIAH): tasks, scoring, runner and summary.

**Tasks.** Each task hides the needle ``"One of the special magic numbers for {key} is:
{value}."`` at a random depth of filler prose and asks for the value. Everything comes from
the seed, offline: the same ``(seed, index, length, variant)`` always gives the same task,
and task ``i`` does not depend on how many tasks were asked for. Variants:

- ``number``: one needle, a 7-digit number.
- ``uuid``: one needle, a UUID (``"special magic uuids"``).
- ``distractors``: the needle plus three needles of the same form for other keys, each with
  its own 7-digit number at its own random depth (RULER's multi-key task).

Task ``i`` takes ``variants[i % len(variants)]``. The filler is generated prose (no 7-digit
numbers, no UUIDs, no hyphenated words), so a needle is found only by what it says.

**Scoring** is exact match after normalisation (``normalize_answer``): Unicode NFKC, case
folded, runs of whitespace made one space, then quotes, brackets, ``*`` and sentence
punctuation stripped from both ends (repeatedly), and a number written in groups
(``1,234,567`` or ``1 234 567``) joined. So ``'"1234567".'`` and ``[1234567]`` match
``1234567``, but ``The number is 1234567`` does not: that answer only *contains* the value,
which is recorded separately (``contains``, RULER's looser string match).

**Running.** ``run_sniah`` runs conch's RLM on each task in turn (one sandbox for the whole
run, one session per task) and, optionally, a no-RLM baseline: the same model asked directly,
with the context cut to the model's window (head and tail kept, the middle dropped).
Each finished task gives a record (a JSON object, one line of the results file);
``summarize`` turns records into accuracy, mean iterations, tokens, time and the
distribution of termination reasons, per system.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import re
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conch.errors import ConfigurationError, ModelBadRequestError, ModelError
from conch.lm import CompletionOptions, LanguageModel

VARIANTS: tuple[str, ...] = ("number", "uuid", "distractors")
DISTRACTORS = 3
MIN_LENGTH = 1_000
NEEDLE = "One of the special magic {kind}s for {key} is: {value}."
QUERY = (
    "What is the special magic {kind} for {key} mentioned in the provided text? "
    "Answer with the {kind} only."
)

SYSTEM_RLM = "rlm"
SYSTEM_BASELINE = "baseline"

# --- the filler: plain prose from small word lists -----------------------------------------

_NOUNS = (
    "engineer", "farmer", "teacher", "committee", "river", "library", "garden", "village",
    "market", "bridge", "harbour", "painter", "student", "orchestra", "council", "museum",
    "storm", "mountain", "kitchen", "train", "lantern", "letter", "journal", "map",
    "bakery", "workshop", "forest", "tower", "meadow", "school", "report", "festival",
    "ship", "clock", "window", "notebook", "theatre", "road", "valley", "island",
)  # fmt: skip
_ADJECTIVES = (
    "quiet", "old", "small", "busy", "careful", "distant", "bright", "patient", "narrow",
    "wooden", "early", "famous", "modest", "cold", "green", "heavy", "local", "young",
    "gentle", "plain", "crowded", "northern", "simple", "tired", "curious", "steady",
)  # fmt: skip
_VERBS = (
    "visited", "described", "repaired", "painted", "studied", "crossed", "followed",
    "opened", "measured", "praised", "ignored", "watched", "cleaned", "moved", "built",
    "carried", "remembered", "questioned", "finished", "copied", "explored", "sold",
)  # fmt: skip
_PHRASES = (
    "before noon", "after the long winter", "near the old station", "in the early spring",
    "during the harvest", "at the end of the week", "without much trouble", "by lamplight",
    "along the coast", "under a grey sky", "on the following morning", "for many years",
    "at the edge of town", "in a hurry", "with great care", "late in the evening",
    "across the square", "for the second time", "in the rain", "beside the canal",
)  # fmt: skip
_NAMES = (
    "Marta", "Jonas", "Ilse", "Tomas", "Ada", "Henrik", "Lucia", "Piet", "Noor", "Oskar",
    "Greta", "Emil", "Sofia", "Anton", "Klara", "Felix",
)  # fmt: skip
_ADVERBS = (
    "slowly", "again", "every day", "without fail", "as usual", "with some pride",
    "more often than before", "only in summer", "at dawn", "now and then",
)  # fmt: skip
# Keys are "adjective-noun" from their own lists, so a key never appears in the filler.
_KEY_ADJECTIVES = (
    "amber", "brisk", "dusty", "eager", "fancy", "fuzzy", "giddy", "hollow", "icy",
    "jolly", "lanky", "lucky", "mellow", "misty", "nimble", "odd", "plucky", "rusty",
    "shiny", "silky", "snowy", "spicy", "sturdy", "tangy", "tidy", "vivid", "wobbly",
    "zesty", "breezy", "chilly", "dapper", "frosty", "glossy", "hasty", "jumpy", "merry",
)  # fmt: skip
_KEY_NOUNS = (
    "otter", "parrot", "walrus", "badger", "falcon", "lobster", "pelican", "beetle",
    "teapot", "kettle", "trumpet", "violin", "saddle", "anchor", "compass", "button",
    "pretzel", "waffle", "muffin", "biscuit", "pumpkin", "cactus", "tulip", "acorn",
    "marble", "pebble", "feather", "ribbon", "mitten", "scarf", "helmet", "ladder",
)  # fmt: skip


def _sentence(rng: random.Random) -> str:
    noun, other = rng.sample(_NOUNS, 2)
    form = rng.randrange(5)
    if form == 0:
        text = (
            f"The {rng.choice(_ADJECTIVES)} {noun} {rng.choice(_VERBS)} the {other} "
            f"{rng.choice(_PHRASES)}"
        )
    elif form == 1:
        phrase = rng.choice(_PHRASES)
        text = (
            f"{phrase[0].upper()}{phrase[1:]}, the {noun} {rng.choice(_VERBS)} the "
            f"{rng.choice(_ADJECTIVES)} {other}"
        )
    elif form == 2:
        text = (
            f"{rng.choice(_NAMES)} said that the {noun} was {rng.choice(_ADJECTIVES)} "
            f"{rng.choice(_ADVERBS)}"
        )
    elif form == 3:
        text = f"There were {rng.randint(2, 90)} {noun}s {rng.choice(_PHRASES)}"
    else:
        text = (
            f"In {rng.randint(1800, 2020)}, {rng.choice(_NAMES)} {rng.choice(_VERBS)} the "
            f"{rng.choice(_ADJECTIVES)} {noun} {rng.choice(_PHRASES)}"
        )
    return text + "."


def _filler_pieces(rng: random.Random, budget: int) -> list[str]:
    """Sentences (each with the space or newline after it) totalling at most ``budget``."""
    pieces: list[str] = []
    total = 0
    left_in_paragraph = rng.randint(3, 8)
    while True:
        left_in_paragraph -= 1
        separator = "\n" if left_in_paragraph == 0 else " "
        piece = _sentence(rng) + separator
        if total + len(piece) > budget:
            return pieces
        pieces.append(piece)
        total += len(piece)
        if left_in_paragraph == 0:
            left_in_paragraph = rng.randint(3, 8)


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Needle:
    key: str
    value: str
    offset: int
    """Where its sentence starts in the context."""


@dataclass(frozen=True, slots=True)
class SniahTask:
    task_id: str
    variant: str
    seed: int
    index: int
    key: str
    expected: str
    depth: float
    """Where the needle sentence starts, as a fraction of the context (0 = the start)."""
    context: str
    query: str
    needle: Needle
    distractors: tuple[Needle, ...] = ()

    @property
    def kind(self) -> str:
        return "uuid" if self.variant == "uuid" else "number"

    @property
    def needle_sentence(self) -> str:
        return NEEDLE.format(kind=self.kind, key=self.key, value=self.expected)


def make_task(index: int, *, length: int, seed: int, variant: str) -> SniahTask:
    """Task ``index`` of ``seed``: about ``length`` characters (never more)."""
    if variant not in VARIANTS:
        raise ConfigurationError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if length < MIN_LENGTH:
        raise ConfigurationError(f"length must be at least {MIN_LENGTH:,} characters, not {length}")
    rng = random.Random(f"conch-sniah:{seed}:{index}")
    kind = "uuid" if variant == "uuid" else "number"
    count = 1 + (DISTRACTORS if variant == "distractors" else 0)
    keys = _distinct(rng, count, lambda: f"{rng.choice(_KEY_ADJECTIVES)}-{rng.choice(_KEY_NOUNS)}")
    if kind == "uuid":
        values = _distinct(rng, count, lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    else:
        values = _distinct(rng, count, lambda: str(rng.randrange(1_000_000, 10_000_000)))
    depths = [rng.random() for _ in range(count)]
    sentences = [
        NEEDLE.format(kind=kind, key=k, value=v) for k, v in zip(keys, values, strict=True)
    ]

    pieces = _filler_pieces(rng, length - sum(len(s) + 1 for s in sentences))
    starts, total = [], 0
    for piece in pieces:
        starts.append(total)
        total += len(piece)
    # Each needle goes in at the sentence boundary nearest its depth (later ones first, so
    # the earlier boundaries keep their indices).
    boundaries = [*starts, total]
    places = [_nearest(boundaries, depth * total) for depth in depths]
    order = sorted(range(count), key=lambda n: (places[n], n), reverse=True)
    for number in order:
        pieces.insert(places[number], sentences[number] + " ")
    context = "".join(pieces).rstrip()

    needles = [
        Needle(k, v, context.index(s)) for k, v, s in zip(keys, values, sentences, strict=True)
    ]
    target = needles[0]
    return SniahTask(
        task_id=f"sniah-s{seed}-{index:03d}",
        variant=variant,
        seed=seed,
        index=index,
        key=target.key,
        expected=target.value,
        depth=round(target.offset / len(context), 4),
        context=context,
        query=QUERY.format(kind=kind, key=target.key),
        needle=target,
        distractors=tuple(needles[1:]),
    )


def generate_tasks(
    n: int, *, length: int = 100_000, seed: int = 0, variants: Sequence[str] = VARIANTS
) -> list[SniahTask]:
    """``n`` tasks; task ``i`` is the variant ``variants[i % len(variants)]``."""
    if n < 1:
        raise ConfigurationError(f"n must be at least 1, not {n}")
    if not variants:
        raise ConfigurationError(f"give at least one variant ({', '.join(VARIANTS)})")
    return [
        make_task(index, length=length, seed=seed, variant=variants[index % len(variants)])
        for index in range(n)
    ]


def _nearest(boundaries: list[int], position: float) -> int:
    """The index of the boundary closest to ``position`` (boundaries ascend)."""
    after = bisect.bisect_left(boundaries, position)
    candidates = [i for i in (after - 1, after) if 0 <= i < len(boundaries)]
    return min(candidates, key=lambda i: abs(boundaries[i] - position))


def _distinct(rng: random.Random, count: int, draw: Callable[[], str]) -> list[str]:
    values: list[str] = []
    while len(values) < count:
        value = draw()
        if value not in values:
            values.append(value)
    return values


# --- scoring -------------------------------------------------------------------------------

_EDGE = " \t\r\n'\"`‘’“”«»()[]{}<>*.,;:!?"
_GROUPED_NUMBER = re.compile(r"\d{1,3}(?:[ ,_]\d{3})+")


def normalize_answer(text: str) -> str:
    """The form answers are compared in (see the module's docstring)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    previous = None
    while previous != text:
        previous, text = text, text.strip(_EDGE)
    if _GROUPED_NUMBER.fullmatch(text):
        text = re.sub(r"[ ,_]", "", text)
    return text


def exact_match(answer: str | None, expected: str) -> bool:
    return answer is not None and normalize_answer(answer) == normalize_answer(expected)


def contains_match(answer: str | None, expected: str) -> bool:
    """The value appears in the answer as a whole token (not inside a longer number)."""
    if answer is None:
        return False
    value = re.escape(normalize_answer(expected))
    text = unicodedata.normalize("NFKC", answer).casefold()
    return re.search(rf"(?<![\w-]){value}(?![\w-])", text) is not None


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SniahSettings:
    """How each task is run; the defaults suit a small local model on a CPU."""

    sandbox: str = "best"
    max_iterations: int = 10
    max_time_s: float | None = 600.0
    """Wall time per RLM task (the budget of its whole call tree)."""
    max_output_chars: int = 4_000
    temperature: float | None = 0.0
    max_tokens: int | None = 1_024
    """Per model call, root and sub-calls alike."""
    baseline: bool = False
    baseline_window_tokens: int | None = None
    """The no-RLM baseline's window; None: the local model's n_ctx, else 8,192."""
    trace_dir: Path | None = None
    """Write each RLM task's trace to ``trace_dir/<task_id>.jsonl``."""

    @property
    def model_options(self) -> CompletionOptions:
        options: CompletionOptions = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        return options


DEFAULT_WINDOW_TOKENS = 8_192
CHARS_PER_TOKEN = 3.5
"""A cautious guess for cutting text to a token window (prose runs about 4 per token)."""
_ANSWER_ROOM_TOKENS = 384
BASELINE_PROMPT = "{context}\n\n{query}"


def window_tokens(model: LanguageModel, settings: SniahSettings) -> int:
    if settings.baseline_window_tokens is not None:
        return settings.baseline_window_tokens
    loaded = getattr(model, "settings", None)  # LocalModel: its llama.cpp context size
    n_ctx = getattr(loaded, "n_ctx", None)
    return n_ctx if isinstance(n_ctx, int) else DEFAULT_WINDOW_TOKENS


def cut_to_window(context: str, max_chars: int) -> tuple[str, tuple[int, int]]:
    """The context with its middle dropped to fit ``max_chars``, and the dropped span."""
    if len(context) <= max_chars:
        return context, (len(context), len(context))
    head = max_chars // 2
    tail_start = len(context) - (max_chars - head)
    marker = f"\n[... {tail_start - head:,} characters omitted ...]\n"
    return context[:head] + marker + context[tail_start:], (head, tail_start)


async def run_rlm_task(
    task: SniahTask,
    model: LanguageModel,
    settings: SniahSettings,
    *,
    sandbox: Any,
    sub_model: LanguageModel | None = None,
) -> dict[str, Any]:
    """One task through conch's RLM; ``sandbox`` is an environment shared by the run."""
    from conch.rlm import RLM, Budget

    trace = None
    if settings.trace_dir is not None:
        settings.trace_dir.mkdir(parents=True, exist_ok=True)
        trace = settings.trace_dir / f"{task.task_id}.jsonl"
        trace.unlink(missing_ok=True)
    rlm = RLM(
        model,
        sub_model,
        sandbox=sandbox,
        max_iterations=settings.max_iterations,
        max_output_chars=settings.max_output_chars,
        budget=Budget(max_time_s=settings.max_time_s),
        model_options=settings.model_options,
        trace=trace,
    )
    started = time.monotonic()
    result = await rlm.acompletion(task.context, task.query)
    return _record(
        task,
        SYSTEM_RLM,
        model=model.model,
        answer=result.answer,
        iterations=result.iterations,
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        cost_usd=result.cost_usd,
        seconds=time.monotonic() - started,
        termination_reason=str(result.termination_reason),
        answer_source=result.answer_source,
        sub_calls=result.sub_calls,
        error=result.error,
        trace_path=str(trace) if trace else None,
    )


async def run_baseline_task(
    task: SniahTask, model: LanguageModel, settings: SniahSettings
) -> dict[str, Any]:
    """The model asked directly, the context cut to its window (shrunk if it still overflows)."""
    window = window_tokens(model, settings)
    room = window - _ANSWER_ROOM_TOKENS - len(task.query) // 3
    max_chars = max(int(room * CHARS_PER_TOKEN), 200)
    started = time.monotonic()
    usage_in = usage_out = 0
    cost = 0.0
    answer: str | None = None
    reason, error = "answered", None
    for _ in range(5):
        text, dropped = cut_to_window(task.context, max_chars)
        prompt = BASELINE_PROMPT.format(context=text, query=task.query)
        try:
            completion = await model.complete(
                [{"role": "user", "content": prompt}], **settings.model_options
            )
        except ModelBadRequestError as failure:
            if "context" not in str(failure).lower() and "token" not in str(failure).lower():
                reason, error = "model_error", str(failure)
                break
            max_chars = int(max_chars * 0.75)  # the window was smaller than guessed
            continue
        except ModelError as failure:
            reason, error = "model_error", str(failure)
            break
        usage_in += completion.usage.input_tokens
        usage_out += completion.usage.output_tokens
        cost += completion.cost_usd
        answer = completion.text.strip()
        break
    else:
        reason, error = "model_error", f"the prompt never fit the {window:,}-token window"
    start, end = task.needle.offset, task.needle.offset + len(task.needle_sentence)
    return _record(
        task,
        SYSTEM_BASELINE,
        model=model.model,
        answer=answer,
        iterations=None,
        input_tokens=usage_in,
        output_tokens=usage_out,
        cost_usd=cost,
        seconds=time.monotonic() - started,
        termination_reason=reason,
        answer_source="completion" if answer is not None else None,
        sub_calls=0,
        error=error,
        context_chars_sent=len(text),
        needle_in_window=end <= dropped[0] or start >= dropped[1],
    )


def _record(task: SniahTask, system: str, *, answer: str | None, **fields: Any) -> dict[str, Any]:
    record = {
        "system": system,
        "task_id": task.task_id,
        "variant": task.variant,
        "seed": task.seed,
        "index": task.index,
        "length": len(task.context),
        "depth": task.depth,
        "key": task.key,
        "expected": task.expected,
        "answer": answer,
        "correct": exact_match(answer, task.expected),
        "contains": contains_match(answer, task.expected),
    }
    record.update(fields)
    record["tokens"] = record["input_tokens"] + record["output_tokens"]
    return record


OnRecord = Callable[[dict[str, Any]], None]
OnStart = Callable[[SniahTask, str], None]


async def run_sniah(
    tasks: Sequence[SniahTask],
    model: LanguageModel,
    settings: SniahSettings | None = None,
    *,
    sub_model: LanguageModel | None = None,
    on_start: OnStart | None = None,
    on_record: OnRecord | None = None,
) -> list[dict[str, Any]]:
    """Every task through the RLM (and the baseline after it, when asked), in order."""
    from conch import sandbox as sandboxes

    settings = settings or SniahSettings()
    env = sandboxes.create(settings.sandbox)
    records: list[dict[str, Any]] = []

    def done(record: dict[str, Any]) -> None:
        records.append(record)
        if on_record is not None:
            on_record(record)

    try:
        for task in tasks:
            if on_start is not None:
                on_start(task, SYSTEM_RLM)
            try:
                record = await run_rlm_task(task, model, settings, sandbox=env, sub_model=sub_model)
            except Exception as error:  # one broken task must not lose the others
                record = _record(
                    task,
                    SYSTEM_RLM,
                    model=model.model,
                    answer=None,
                    iterations=0,
                    input_tokens=0,
                    output_tokens=0,
                    cost_usd=0.0,
                    seconds=0.0,
                    termination_reason="error",
                    answer_source=None,
                    sub_calls=0,
                    error=f"{type(error).__name__}: {error}",
                )
            done(record)
            if settings.baseline:
                if on_start is not None:
                    on_start(task, SYSTEM_BASELINE)
                done(await run_baseline_task(task, model, settings))
    finally:
        await asyncio.shield(env.cleanup())
    return records


# --- summary -------------------------------------------------------------------------------


@dataclass
class SystemSummary:
    system: str
    tasks: int = 0
    correct: int = 0
    contains: int = 0
    iterations: list[int] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0
    termination_reasons: Counter[str] = field(default_factory=Counter)
    by_variant: dict[str, list[int]] = field(default_factory=dict)
    needle_in_window: int | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        self.tasks += 1
        self.correct += bool(record["correct"])
        self.contains += bool(record.get("contains"))
        if record.get("iterations") is not None:
            self.iterations.append(int(record["iterations"]))
        self.tokens += int(record.get("tokens", 0))
        self.seconds += float(record.get("seconds", 0.0))
        self.cost_usd += float(record.get("cost_usd", 0.0))
        self.termination_reasons[str(record.get("termination_reason"))] += 1
        counts = self.by_variant.setdefault(str(record["variant"]), [0, 0])
        counts[0] += 1
        counts[1] += bool(record["correct"])
        if "needle_in_window" in record:
            self.needle_in_window = (self.needle_in_window or 0) + bool(record["needle_in_window"])

    def to_dict(self) -> dict[str, Any]:
        n = self.tasks
        summary: dict[str, Any] = {
            "system": self.system,
            "tasks": n,
            "correct": self.correct,
            "accuracy": self.correct / n if n else 0.0,
            "contains_accuracy": self.contains / n if n else 0.0,
            "mean_iterations": (
                sum(self.iterations) / len(self.iterations) if self.iterations else None
            ),
            "mean_tokens": self.tokens / n if n else 0.0,
            "total_tokens": self.tokens,
            "mean_seconds": self.seconds / n if n else 0.0,
            "total_seconds": self.seconds,
            "total_cost_usd": self.cost_usd,
            "termination_reasons": dict(self.termination_reasons.most_common()),
            "by_variant": {
                variant: {"tasks": t, "correct": c, "accuracy": c / t}
                for variant, (t, c) in sorted(self.by_variant.items())
            },
        }
        if self.needle_in_window is not None:
            summary["needle_in_window"] = self.needle_in_window
        return summary


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system (``rlm``, then ``baseline`` if present): the figures of its records."""
    systems: dict[str, SystemSummary] = {}
    for record in records:
        system = str(record["system"])
        systems.setdefault(system, SystemSummary(system)).add(record)
    order = sorted(systems, key=lambda name: (name != SYSTEM_RLM, name))
    return {name: systems[name].to_dict() for name in order}


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a results file (blank lines skipped)."""
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
