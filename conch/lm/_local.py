"""The embedded default model: a GGUF file run in-process by llama.cpp (``llama-cpp-python``).

One loaded model serves the whole process. Every ``LocalModel`` naming the same file shares
it, and its requests queue on the one thread that owns it (llama.cpp contexts are not
thread-safe, and a second copy would double the memory), so concurrent callers wait their
turn instead of loading twice. The event loop never blocks: callers await a future.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

from conch.errors import (
    ConfigurationError,
    ModelBadRequestError,
    ModelConnectionError,
    ModelResponseError,
    ModelUnavailableError,
)
from conch.lm._types import (
    Completion,
    CompletionOptions,
    Message,
    Usage,
    check_messages,
    check_options,
)
from conch.lm._weights import CATALOG, DEFAULT_LOCAL_MODEL, installed_model_path

LLAMA_CPP_VERSION = "0.3.36"
INSTALL_HINT = (
    "pip install 'conch[local]' (it compiles llama.cpp, about ten minutes the first time; "
    "on a machine shared with others or in CI, build portable code with "
    "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'conch[local]')"
)
DEFAULT_N_CTX = 8192


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """How a GGUF file is loaded; fixed for as long as it stays loaded."""

    n_ctx: int
    n_threads: int
    n_batch: int
    chat_format: str | None
    prompt_cache_mb: int = 0


class _SharedLlama:
    """One loaded llama.cpp model and the single worker thread that runs every request on it."""

    def __init__(self, path: Path, settings: LoadSettings) -> None:
        self.path = path
        self.settings = settings
        self.loads = 0
        """How many times the file was loaded (1 once loaded; a test checks it never reaches 2)."""
        self._llama: Any = None
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"conch-llama-{path.stem}"
        )

    def submit(self, job: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        """Queue ``job(llama)`` behind earlier requests; the model loads before the first."""
        return self._worker.submit(lambda: job(self._loaded()))

    def _loaded(self) -> Any:
        # Runs only on the worker thread, so two loads can never race.
        if self._llama is None:
            llama_cpp = import_llama_cpp()
            try:
                self._llama = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.settings.n_ctx,
                    n_threads=self.settings.n_threads,
                    n_threads_batch=self.settings.n_threads,
                    n_batch=self.settings.n_batch,
                    chat_format=self.settings.chat_format,
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as error:
                raise ModelUnavailableError(
                    f"llama.cpp could not load {self.path} ({error}). If the file is damaged, "
                    "delete it and pull it again (conch models pull NAME); if memory is short, "
                    "lower n_ctx."
                ) from error
            if self.settings.prompt_cache_mb > 0:
                self._llama.set_cache(
                    llama_cpp.LlamaRAMCache(capacity_bytes=self.settings.prompt_cache_mb << 20)
                )
            _add_stop_hook(self._llama)
            self.loads += 1
        return self._llama

    def close(self) -> None:
        self._worker.shutdown(wait=True)  # queued requests finish first
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()


# The request the worker thread is running now, if it may be stopped early (see below).
_running = threading.local()


def _add_stop_hook(llama: Any) -> None:
    """Let a timed-out or abandoned request stop generating at the next token.

    ``create_chat_completion`` takes no stopping criteria, but the chat handler it calls
    renders the GGUF's template and then calls ``llama.create_completion``, which does. So
    this instance's ``create_completion`` adds the running request's check to whatever
    criteria the template brings. Should a future handler not go through it, requests
    still finish correctly; they just cannot be cut short.
    """
    llama_cpp = import_llama_cpp()
    original = llama.create_completion

    def create_completion(*args: Any, stopping_criteria: Any = None, **kwargs: Any) -> Any:
        should_stop = getattr(_running, "should_stop", None)
        if should_stop is not None:
            criteria = [*(stopping_criteria or ()), should_stop]
            stopping_criteria = llama_cpp.StoppingCriteriaList(criteria)
        return original(*args, stopping_criteria=stopping_criteria, **kwargs)

    llama.create_completion = create_completion


_registry_lock = threading.Lock()
_registry: dict[Path, _SharedLlama] = {}


def _submit(
    path: Path, settings: LoadSettings, job: Callable[[Any], Any]
) -> concurrent.futures.Future[Any]:
    """Queue a job on the file's shared model, creating the entry on first use.

    Under the registry lock, so ``unload_local_models`` can never close an entry between
    finding it and queueing on it.
    """
    with _registry_lock:
        shared = _registry.get(path)
        if shared is None:
            shared = _registry[path] = _SharedLlama(path, settings)
        elif settings.n_ctx > shared.settings.n_ctx:
            raise ConfigurationError(
                f"{path.name} is already loaded in this process with n_ctx="
                f"{shared.settings.n_ctx}, smaller than the n_ctx={settings.n_ctx} asked for; "
                "create every LocalModel of this file with the same n_ctx "
                "(or call unload_local_models() first)"
            )
        return shared.submit(job)


def loaded_local_models() -> dict[Path, int]:
    """Each GGUF file this process has a model for, and how many times it was loaded."""
    with _registry_lock:
        return {path: shared.loads for path, shared in _registry.items()}


def unload_local_models() -> None:
    """Free every loaded local model (waits for queued requests). The next call reloads."""
    with _registry_lock:
        shared_models = list(_registry.values())
        _registry.clear()
    for shared in shared_models:
        shared.close()


# Close models before the interpreter tears down the modules llama-cpp-python's finaliser uses.
atexit.register(unload_local_models)


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or an error that says how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelUnavailableError(
            f"the local model needs llama-cpp-python, which is not installed ({error}). "
            f"Install it with: {INSTALL_HINT}"
        ) from error
    return llama_cpp


def default_thread_count() -> int:
    """Every core this process may run on (llama.cpp's own default takes only half)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LocalModel:
    """A GGUF model run in this process by llama.cpp: no server, no API key, cost 0.

    ``path_or_name`` is a catalog name (``"qwen2.5-coder-1.5b"``, the default, or
    ``"qwen2.5-coder-0.5b"``) pulled with ``conch models pull NAME``, or the path of any
    ``.gguf`` file. The chat template comes from the GGUF file itself.

    Construction checks that llama-cpp-python is importable and the weights are present
    (so a missing piece is reported before any work starts); the model loads on the first
    ``complete``. All instances naming the same file share one loaded model, and their
    requests run one at a time in arrival order. ``aclose`` releases nothing, because the
    model is shared; ``unload_local_models()`` frees the memory.

    llama.cpp keeps only the last prompt's state, so a sub-call between two turns of a long
    root conversation makes the root re-read its whole prompt. ``prompt_cache_mb`` keeps
    recent prompt states in RAM instead (measured with the 0.5B model: an 842-token root turn
    after a sub-call 1.8 s instead of 6.3 s; each completion then spends time saving its
    state, about 0.2 s for a short one). Off by default.

    The ``timeout`` option bounds the whole call, waiting in the queue included; generation
    stops at the next token once it passes (reading the prompt cannot be interrupted).
    """

    def __init__(
        self,
        path_or_name: str | os.PathLike[str] = DEFAULT_LOCAL_MODEL,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_batch: int = 512,
        chat_format: str | None = None,
        prompt_cache_mb: int = 0,
    ) -> None:
        if n_ctx < 256:
            raise ConfigurationError(f"n_ctx must be at least 256 tokens, not {n_ctx}")
        if prompt_cache_mb < 0:
            raise ConfigurationError(
                f"prompt_cache_mb must be 0 (off) or more, not {prompt_cache_mb}"
            )
        if n_threads is not None and n_threads < 1:
            raise ConfigurationError(f"n_threads must be at least 1, not {n_threads}")
        self._name, self.path = _resolve(path_or_name)
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModelUnavailableError(
                f"the local model {self._name!r} needs llama-cpp-python, which is not "
                f"installed. Install it with: {INSTALL_HINT}"
            )
        self.settings = LoadSettings(
            n_ctx=n_ctx,
            n_threads=n_threads or default_thread_count(),
            n_batch=n_batch,
            chat_format=chat_format,
            prompt_cache_mb=prompt_cache_mb,
        )

    @property
    def model(self) -> str:
        return self._name

    @property
    def context_window_tokens(self) -> int:
        """Prompt and reply together: llama.cpp refuses a prompt that leaves no room."""
        return self.settings.n_ctx

    def __repr__(self) -> str:
        return f"LocalModel({self._name!r}, path={str(self.path)!r})"

    async def complete(
        self, messages: Sequence[Message], **options: Unpack[CompletionOptions]
    ) -> Completion:
        check_messages(messages)
        check_options(options)
        started = time.perf_counter()
        timeout = options.get("timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        request = self._request(messages, options)
        # Set when the caller gives up, so the worker stops generating at the next token
        # instead of finishing a reply nobody will read while others wait in the queue.
        abandoned = threading.Event()
        job = _Generation(request, abandoned, deadline)
        future = _submit(self.path, self.settings, job.run)
        try:
            response = await asyncio.wrap_future(future)
        except BaseException:
            abandoned.set()
            future.cancel()
            raise
        if job.timed_out:
            raise ModelConnectionError(
                f"the local model {self._name!r} did not finish within {timeout:g} s "
                f"(requests run one at a time, so queued ones wait their turn); raise "
                "timeout=, lower max_tokens, or use a smaller model"
            )
        return self._completion(response, time.perf_counter() - started)

    async def aclose(self) -> None:
        """Nothing to release here: the loaded model is shared (see unload_local_models)."""

    def _request(self, messages: Sequence[Message], options: CompletionOptions) -> dict[str, Any]:
        request: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages]
        }
        stop = options.get("stop")
        if stop:
            request["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if "max_tokens" in options:
            request["max_tokens"] = options["max_tokens"]
        if "temperature" in options:
            request["temperature"] = options["temperature"]
        request.update(options.get("extra_body") or {})
        return request

    def _completion(self, response: dict[str, Any], latency_s: float) -> Completion:
        try:
            choice = response["choices"][0]
            text = choice["message"].get("content") or ""
            usage = response.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise ModelResponseError(
                f"llama.cpp returned an unexpected response for {self._name!r} "
                f"({type(error).__name__}: {error})"
            ) from error
        return Completion(
            text=text,
            model=self._name,
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
            ),
            cost_usd=0.0,
            cost_known=True,
            finish_reason=choice.get("finish_reason"),
            latency_s=latency_s,
            raw=response,
        )


class _Generation:
    """One request as the worker thread runs it."""

    def __init__(
        self, request: dict[str, Any], abandoned: threading.Event, deadline: float | None
    ) -> None:
        self.request = request
        self.abandoned = abandoned
        self.deadline = deadline
        self.timed_out = False

    def _should_stop(self, *_: object) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.timed_out or self.abandoned.is_set()

    def run(self, llama: Any) -> dict[str, Any]:
        if self._should_stop():
            return {}  # gave up while queued: do not spend time on it
        _running.should_stop = self._should_stop
        try:
            return llama.create_chat_completion(**self.request)
        except TypeError as error:
            raise ConfigurationError(
                f"llama.cpp rejected a request option ({error}); check the names in extra_body"
            ) from error
        except ValueError as error:
            if "exceed context window" in str(error):
                raise ModelBadRequestError(
                    f"the prompt does not fit the local model's context ({error}); shorten "
                    "it, or create the LocalModel with a larger n_ctx (memory grows with it)"
                ) from error
            raise ModelResponseError(f"llama.cpp failed: {error}") from error
        finally:
            _running.should_stop = None


def _resolve(path_or_name: str | os.PathLike[str]) -> tuple[str, Path]:
    """A catalog name or a .gguf path -> (display name, verified file path)."""
    text = os.fspath(path_or_name)
    if text in CATALOG:
        return text, installed_model_path(text).resolve()
    path = Path(text).expanduser()
    if path.suffix == ".gguf" or os.sep in text:
        if not path.is_file():
            raise ModelUnavailableError(
                f"no GGUF file at {path}; give an existing .gguf path, or a catalog model "
                f"({', '.join(CATALOG)}) installed with conch models pull NAME"
            )
        return path.name, path.resolve()
    raise ConfigurationError(
        f"unknown local model {text!r}; use one of {', '.join(CATALOG)} or the path of a .gguf file"
    )
