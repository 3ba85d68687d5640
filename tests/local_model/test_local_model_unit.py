"""LocalModel against a stand-in ``llama_cpp`` module: sharing, queueing, options, errors.

The stand-in behaves like llama-cpp-python's ``Llama`` where LocalModel depends on it (one
call at a time, stop sequences, stopping criteria per token, usage), so these tests run in
milliseconds whether or not the real library is built. The real thing is tested in
test_local_model_real.py.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import re
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conch.errors import (
    ConfigurationError,
    ModelBadRequestError,
    ModelConnectionError,
    ModelUnavailableError,
)
from conch.lm import (
    LanguageModel,
    LocalModel,
    _local,
    create_model,
    loaded_local_models,
    unload_local_models,
)

REPLY_WORDS = [
    "one",
    "two",
    "three",
    "STOP",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
]


class FakeLlama:
    """Generates REPLY_WORDS one word per token, checking stopping criteria like llama.cpp."""

    instances: ClassVar[list[FakeLlama]] = []
    token_delay_s = 0.0
    gate: threading.Event | None = None
    """When set, generation waits for it: only a free event loop can open it."""

    def __init__(self, model_path: str, n_ctx: int, **settings: Any) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.settings = settings
        self.requests: list[dict[str, Any]] = []
        self.generated: list[int] = []
        self.active = 0
        self.max_active = 0
        self.closed = False
        self.cache: Any = None
        self._guard = threading.Lock()
        FakeLlama.instances.append(self)

    def create_chat_completion(
        self, messages: list[dict[str, str]], **options: Any
    ) -> dict[str, Any]:
        # Like llama-cpp-python: no stopping criteria here; the chat handler passes the
        # template's own (none for this fake) to create_completion.
        unknown = set(options) - {"stop", "max_tokens", "temperature", "top_p", "seed"}
        if unknown:
            raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
        return self.create_completion(messages, stopping_criteria=None, **options)

    def create_completion(
        self, messages: list[dict[str, str]], stopping_criteria: Any = None, **options: Any
    ) -> dict[str, Any]:
        with self._guard:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self._generate(messages, stopping_criteria, options)
        finally:
            with self._guard:
                self.active -= 1

    def _generate(
        self, messages: list[dict[str, str]], stopping_criteria: Any, options: dict[str, Any]
    ) -> dict[str, Any]:
        self.requests.append({"messages": messages, **options})
        if FakeLlama.gate is not None and not FakeLlama.gate.wait(timeout=10):
            raise RuntimeError("the event loop never ran while generation was in progress")
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        if prompt_tokens > self.n_ctx:
            raise ValueError(
                f"Requested tokens ({prompt_tokens}) exceed context window of {self.n_ctx}"
            )
        words: list[str] = []
        finish = "length"
        for word in REPLY_WORDS[: options.get("max_tokens") or len(REPLY_WORDS)]:
            time.sleep(self.token_delay_s)
            if stopping_criteria is not None and stopping_criteria(None, None):
                finish = "stop"
                break
            words.append(word)
        else:
            finish = "length" if options.get("max_tokens") else "stop"
        self.generated.append(len(words))
        text = " ".join(words)
        for stop in options.get("stop") or []:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return {
            "model": self.model_path,
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            },
        }

    def set_cache(self, cache: Any) -> None:
        self.cache = cache

    def close(self) -> None:
        self.closed = True


class FakeStoppingCriteriaList(list):
    def __call__(self, input_ids: Any, logits: Any) -> bool:
        return any(criterion(input_ids, logits) for criterion in self)


@pytest.fixture(autouse=True)
def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    module = types.ModuleType("llama_cpp")
    module.__spec__ = importlib.machinery.ModuleSpec("llama_cpp", None)
    module.Llama = FakeLlama  # type: ignore[attr-defined]
    module.StoppingCriteriaList = FakeStoppingCriteriaList  # type: ignore[attr-defined]
    module.LlamaRAMCache = lambda capacity_bytes: ("ram-cache", capacity_bytes)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llama_cpp", module)
    FakeLlama.instances = []
    FakeLlama.token_delay_s = 0.0
    FakeLlama.gate = None
    unload_local_models()
    yield
    unload_local_models()


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-model.gguf"
    path.write_bytes(b"GGUF")
    return path


HELLO = [{"role": "user", "content": "say something"}]


def test_the_window_it_states_is_the_one_llama_cpp_is_given(gguf: Path) -> None:
    assert LocalModel(gguf).context_window_tokens == LocalModel(gguf).settings.n_ctx == 8192
    assert LocalModel(gguf, n_ctx=4096).context_window_tokens == 4096


async def test_a_completion_carries_text_usage_and_zero_cost(gguf: Path) -> None:
    model = LocalModel(gguf)
    completion = await model.complete(HELLO, max_tokens=3, temperature=0.0)

    assert isinstance(model, LanguageModel)
    assert completion.text == "one two three"
    assert completion.model == "tiny-model.gguf"
    assert completion.usage.input_tokens == 2
    assert completion.usage.output_tokens == 3
    assert completion.cost_usd == 0.0 and completion.cost_known
    assert completion.finish_reason == "length"
    assert completion.latency_s > 0
    (request,) = FakeLlama.instances[0].requests
    assert request == {"messages": HELLO, "max_tokens": 3, "temperature": 0.0}


async def test_stop_sequences_are_passed_and_cut_the_text(gguf: Path) -> None:
    completion = await LocalModel(gguf).complete(HELLO, stop=["STOP"])
    assert completion.text == "one two three "
    assert completion.finish_reason == "stop"
    assert FakeLlama.instances[0].requests[0]["stop"] == ["STOP"]


async def test_extra_body_reaches_llama_and_unknown_fields_are_explained(gguf: Path) -> None:
    model = LocalModel(gguf)
    await model.complete(HELLO, max_tokens=1, extra_body={"seed": 7, "top_p": 0.5})
    assert FakeLlama.instances[0].requests[0]["seed"] == 7
    with pytest.raises(ConfigurationError, match="check the names in extra_body"):
        await model.complete(HELLO, extra_body={"no_such_option": 1})


async def test_every_instance_shares_one_loaded_model_and_requests_queue(gguf: Path) -> None:
    FakeLlama.token_delay_s = 0.002
    first, second = LocalModel(gguf), LocalModel(str(gguf))
    assert not FakeLlama.instances  # nothing loads before the first request

    completions = await asyncio.gather(
        *(model.complete(HELLO, max_tokens=5) for model in [first, second] * 4)
    )

    assert [c.text for c in completions] == ["one two three STOP four"] * 8
    assert len(FakeLlama.instances) == 1
    assert FakeLlama.instances[0].max_active == 1  # one at a time, never overlapping
    assert loaded_local_models() == {gguf.resolve(): 1}


async def test_callers_on_different_event_loops_share_the_model_too(gguf: Path) -> None:
    def complete_in_own_loop() -> str:
        return asyncio.run(LocalModel(gguf).complete(HELLO, max_tokens=2)).text

    texts = await asyncio.gather(*(asyncio.to_thread(complete_in_own_loop) for _ in range(3)))
    assert texts == ["one two"] * 3
    assert len(FakeLlama.instances) == 1


async def test_the_event_loop_stays_free_while_generating(gguf: Path) -> None:
    # Generation cannot finish until the loop itself opens the gate: a call that blocked
    # the loop would never get there.
    FakeLlama.gate = threading.Event()
    task = asyncio.create_task(LocalModel(gguf).complete(HELLO, max_tokens=2))
    await asyncio.sleep(0.05)
    assert not task.done()
    FakeLlama.gate.set()
    assert (await task).text == "one two"


async def test_a_timeout_stops_generation_and_later_requests_still_run(gguf: Path) -> None:
    FakeLlama.token_delay_s = 0.05
    model = LocalModel(gguf)
    with pytest.raises(ModelConnectionError, match=r"did not finish within 0\.1 s"):
        await model.complete(HELLO, timeout=0.1)
    FakeLlama.token_delay_s = 0.0
    assert (await model.complete(HELLO, max_tokens=1)).text == "one"


async def test_a_cancelled_request_stops_generating(gguf: Path) -> None:
    FakeLlama.token_delay_s = 0.05
    model = LocalModel(gguf)
    task = asyncio.create_task(model.complete(HELLO))
    await asyncio.sleep(0.12)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    FakeLlama.token_delay_s = 0.0
    follow_up = await model.complete(HELLO, max_tokens=1)  # queued behind the cancelled one
    assert follow_up.text == "one"
    cancelled_tokens, follow_up_tokens = FakeLlama.instances[0].generated
    assert cancelled_tokens < len(REPLY_WORDS)  # stopped early, not run to the end
    assert follow_up_tokens == 1


async def test_a_prompt_longer_than_the_context_is_a_bad_request(gguf: Path) -> None:
    model = LocalModel(gguf, n_ctx=256)
    long_prompt = [{"role": "user", "content": "word " * 300}]
    with pytest.raises(ModelBadRequestError, match="larger n_ctx"):
        await model.complete(long_prompt)


async def test_asking_for_more_context_than_the_loaded_model_has_is_refused(gguf: Path) -> None:
    await LocalModel(gguf, n_ctx=1024).complete(HELLO, max_tokens=1)
    with pytest.raises(ConfigurationError, match="already loaded in this process with n_ctx=1024"):
        await LocalModel(gguf, n_ctx=4096).complete(HELLO, max_tokens=1)
    await LocalModel(gguf, n_ctx=512).complete(HELLO, max_tokens=1)  # smaller fits
    assert len(FakeLlama.instances) == 1


async def test_load_settings_reach_llama_cpp(gguf: Path) -> None:
    await LocalModel(gguf, n_ctx=1024, n_threads=3, prompt_cache_mb=64).complete(HELLO)
    (llama,) = FakeLlama.instances
    assert llama.n_ctx == 1024
    assert llama.settings["n_threads"] == llama.settings["n_threads_batch"] == 3
    assert llama.settings["chat_format"] is None  # None: the template inside the GGUF
    assert llama.cache == ("ram-cache", 64 << 20)


async def test_no_prompt_cache_unless_asked(gguf: Path) -> None:
    await LocalModel(gguf).complete(HELLO)
    assert FakeLlama.instances[0].cache is None


async def test_unload_frees_the_model_and_the_next_call_reloads(gguf: Path) -> None:
    model = LocalModel(gguf)
    await model.complete(HELLO, max_tokens=1)
    unload_local_models()
    assert FakeLlama.instances[0].closed
    assert loaded_local_models() == {}
    await model.complete(HELLO, max_tokens=1)
    assert len(FakeLlama.instances) == 2


async def test_a_file_llama_cannot_load_is_reported_and_retried(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("Failed to load model from file")

    monkeypatch.setattr(sys.modules["llama_cpp"], "Llama", refuse)
    with pytest.raises(ModelUnavailableError, match="could not load"):
        await LocalModel(gguf).complete(HELLO)
    monkeypatch.setattr(sys.modules["llama_cpp"], "Llama", FakeLlama)
    assert (await LocalModel(gguf).complete(HELLO, max_tokens=1)).text == "one"


async def test_unknown_options_are_rejected_before_queueing(gguf: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown completion option"):
        await LocalModel(gguf).complete(HELLO, max_token=3)  # type: ignore[call-arg]
    assert not FakeLlama.instances


# --- construction errors say what to do -------------------------------------------------------


def test_without_llama_cpp_the_error_says_how_to_install_it(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError) as caught:
        LocalModel(gguf)
    assert "pip install 'conch[local]'" in str(caught.value)
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in str(caught.value)


def test_missing_default_weights_name_the_pull_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONCH_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(ModelUnavailableError) as caught:
        LocalModel()
    assert "conch models pull qwen2.5-coder-1.5b" in str(caught.value)


def test_a_missing_gguf_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no GGUF file at"):
        LocalModel(tmp_path / "absent.gguf")


def test_an_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(ConfigurationError, match=re.escape("qwen2.5-coder-0.5b")):
        LocalModel("llama-70b")


def test_create_model_builds_local_models(gguf: Path, tmp_path, monkeypatch) -> None:
    model = create_model(f"local:{gguf}")
    assert isinstance(model, LocalModel) and model.path == gguf.resolve()
    monkeypatch.setenv("CONCH_HOME", str(tmp_path / "empty-home"))
    for spec, name in [("local", "qwen2.5-coder-1.5b"), ("local:qwen2.5-coder-0.5b", None)]:
        name = name or spec.removeprefix("local:")
        with pytest.raises(ModelUnavailableError) as caught:
            create_model(spec)
        assert f"conch models pull {name}" in str(caught.value)
    with pytest.raises(ConfigurationError, match="do not apply"):
        create_model(f"local:{gguf}", base_url="http://localhost:8080/v1")


def test_the_local_extra_pins_the_version_local_model_was_written_for() -> None:
    import tomllib

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert extras["local"] == [f"llama-cpp-python=={_local.LLAMA_CPP_VERSION}"]
