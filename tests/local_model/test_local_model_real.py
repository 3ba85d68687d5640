"""LocalModel with real llama.cpp and the real 0.5B weights (a few seconds per test).

Skipped, with the reason, when llama-cpp-python is not installed or the weights are not in
``$CONCH_HOME``: ``scripts/install-local-model.sh`` provides both.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator

import pytest

from conch.errors import ModelConnectionError
from conch.lm import LocalModel, create_model, loaded_local_models, unload_local_models
from conch.lm._weights import SMALL_LOCAL_MODEL, list_models

pytestmark = pytest.mark.integration

MAX_TOKENS = 16


def _missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return (
            "llama-cpp-python is not installed; scripts/install-local-model.sh installs it "
            "(about ten minutes the first time)"
        )
    state = next(s for s in list_models() if s.name == SMALL_LOCAL_MODEL)
    if not state.verified:
        return (
            f"the {SMALL_LOCAL_MODEL} weights are not pulled into {state.path.parent}; "
            f"run: conch models pull {SMALL_LOCAL_MODEL}"
        )
    return None


@pytest.fixture(scope="module")
def small_model() -> Iterator[LocalModel]:
    reason = _missing()
    if reason is not None:
        print(f"skipping the real local model tests: {reason}")
        pytest.skip(reason)
    unload_local_models()
    yield LocalModel(SMALL_LOCAL_MODEL)  # default settings, as create_model builds it
    unload_local_models()  # give the memory back to the rest of the run


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_a_completion_has_text_usage_and_no_cost(small_model: LocalModel) -> None:
    completion = await small_model.complete(
        ask("Write a Python function that adds two numbers."),
        max_tokens=MAX_TOKENS,
        temperature=0.0,
    )
    assert completion.text.strip()
    assert completion.model == SMALL_LOCAL_MODEL
    assert completion.usage.input_tokens > 5  # the prompt, wrapped in the chat template
    assert 0 < completion.usage.output_tokens <= MAX_TOKENS
    assert completion.cost_usd == 0.0 and completion.cost_known
    assert completion.finish_reason in ("stop", "length")
    assert completion.latency_s > 0


async def test_the_gguf_chat_template_is_used(small_model: LocalModel) -> None:
    completion = await small_model.complete(
        ask("Reply with exactly one word, the colour of the sky on a clear day."),
        max_tokens=MAX_TOKENS,
        temperature=0.0,
    )
    # Without the Qwen chat template a raw completion would ramble on, not answer.
    assert "blue" in completion.text.lower()
    # The template applied: the prompt carries Qwen's role markers, several tokens more
    # than the question's own words.
    assert completion.usage.input_tokens > len(completion.text.split()) + 15


async def test_stop_sequences_cut_the_text_where_they_start(small_model: LocalModel) -> None:
    messages = ask("Count from 1 to 30, separated by commas. Output only the numbers.")
    full = await small_model.complete(messages, max_tokens=MAX_TOKENS * 2, temperature=0.0)
    assert len(full.text) > 10, full.text
    # A stop sequence taken from the middle of the greedy reply: the same request with it
    # must return exactly the text before its first occurrence.
    middle = len(full.text) // 2
    stop = full.text[middle : middle + 3]
    assert stop.strip(), f"picked a blank stop sequence from {full.text!r}"

    cut = await small_model.complete(
        messages, max_tokens=MAX_TOKENS * 2, temperature=0.0, stop=[stop]
    )

    assert stop not in cut.text
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.usage.output_tokens < full.usage.output_tokens


async def test_concurrent_completions_share_one_loaded_model(small_model: LocalModel) -> None:
    other = create_model(f"local:{SMALL_LOCAL_MODEL}")
    first, second = await asyncio.gather(
        small_model.complete(ask("Name a prime number."), max_tokens=8, temperature=0.0),
        other.complete(ask("Name a sorting algorithm."), max_tokens=8, temperature=0.0),
    )
    assert first.text.strip() and second.text.strip()
    assert loaded_local_models() == {small_model.path: 1}


async def test_a_timeout_cuts_a_long_generation_and_the_model_stays_usable(
    small_model: LocalModel,
) -> None:
    with pytest.raises(ModelConnectionError, match="did not finish within"):
        await small_model.complete(
            ask("Write a very long essay on the history of computing."), timeout=0.5
        )
    after = await small_model.complete(ask("Say hello."), max_tokens=4, temperature=0.0)
    assert after.text.strip()


async def test_the_prompt_cache_gives_the_same_answers(small_model: LocalModel) -> None:
    root = [
        {"role": "system", "content": "You write Python. " + "Keep answers short. " * 40},
        {"role": "user", "content": "Write a function that reverses a string."},
    ]
    sub = ask("What is 2 + 2?")

    async def root_sub_root(model: LocalModel) -> list[str]:
        texts = []
        for messages in (root, sub, root):
            completion = await model.complete(messages, max_tokens=MAX_TOKENS, temperature=0.0)
            texts.append(completion.text)
        return texts

    without_cache = await root_sub_root(small_model)
    unload_local_models()
    try:
        cached = LocalModel(SMALL_LOCAL_MODEL, prompt_cache_mb=512)
        with_cache = await root_sub_root(cached)
    finally:
        unload_local_models()  # the next test loads the default settings again
    # The second root turn restores the saved state instead of re-reading the prompt; the
    # greedy reply must not change because of it.
    assert with_cache == without_cache
    assert without_cache[0] == without_cache[2]
