"""Snapshots on every backend: interpreter state, files and environment, saved and verified."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conch.errors import (
    SessionClosedError,
    SnapshotCorruptedError,
    SnapshotLimitError,
    SnapshotNameError,
    SnapshotNotFoundError,
    SnapshotSessionMismatchError,
)
from conch.sandbox import Capability, ExecutionContext

SESSION_STATE = textwrap.dedent(
    """
    import os, re, collections
    text = 'needle ' * 1000
    counter = 0
    def bump():
        global counter
        counter += 1
        return counter
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y
        def norm1(self):
            return abs(self.x) + abs(self.y)
    point = Point(3, -4)
    square = lambda v: v * v
    table = {'square': square, 'pattern': re.compile('ne+dle')}
    words = collections.Counter(text.split())
    pending = (n for n in range(3))
    os.environ['SNAPSHOT_ENV'] = 'saved'
    with open('notes.txt', 'w') as handle:
        handle.write('original notes')
    os.makedirs('nested/dir', exist_ok=True)
    open('nested/dir/data.bin', 'wb').write(bytes(range(256)))
    """
)


async def test_a_snapshot_restores_variables_code_files_and_environment(env, run, ctx):
    await run(SESSION_STATE)
    snapshot = await env.create_snapshot(ctx.session_id, "before changes")
    assert snapshot.session_id == ctx.session_id and snapshot.name == "before changes"
    assert snapshot.size > 0

    await run(
        "text = 'changed'\ndel point\ncounter = 100\nos.environ['SNAPSHOT_ENV'] = 'changed'\n"
        "open('notes.txt', 'w').write('changed')\nopen('new.txt', 'w').write('new')"
    )
    report = await env.restore_snapshot(snapshot)
    assert {"text", "bump", "Point", "point", "square", "table", "words"} <= set(report.restored)
    assert report.failed == ()

    check = await run(
        textwrap.dedent(
            """
            import os
            print(text.count('needle'), point.norm1(), table['square'](7))
            print(bump(), bump(), counter)
            print(table['pattern'].findall('neeedle'), words['needle'])
            print(os.environ['SNAPSHOT_ENV'], open('notes.txt').read(), os.path.exists('new.txt'))
            print(open('nested/dir/data.bin', 'rb').read() == bytes(range(256)))
            """
        )
    )
    assert check.stderr == ""
    assert check.stdout.splitlines() == [
        "1000 7 49",
        "1 2 2",  # functions still share the session's globals after a restore
        "['neeedle'] 1000",
        "saved original notes False",
        "True",
    ]


async def test_what_cannot_be_pickled_is_listed_never_silently_dropped(env, run, ctx):
    await run("pending = (n for n in range(3))\nkept = [1, 2]")
    snapshot = await env.create_snapshot(ctx.session_id, "s")
    if env.has_capability(Capability.VM_SNAPSHOT) and not snapshot.unpicklable:
        # A whole-memory snapshot loses nothing: the half-consumed generator comes back.
        await run("next(pending)")
        await env.restore_snapshot(snapshot)
        assert (await run("kept, next(pending)")).stdout == "([1, 2], 0)\n"
        return
    assert len(snapshot.unpicklable) == 1
    assert snapshot.unpicklable[0].startswith("pending: ")
    assert "generator" in snapshot.unpicklable[0]
    await env.restore_snapshot(snapshot)
    assert (await run("kept")).stdout == "[1, 2]\n"
    assert "NameError" in (await run("pending")).stderr


async def test_snapshots_are_listed_oldest_first_and_deleted(env, run, ctx):
    await run("x = 1")
    first = await env.create_snapshot(ctx.session_id, "one")
    second = await env.create_snapshot(ctx.session_id, "two")
    assert [s.id for s in await env.list_snapshots(ctx.session_id)] == [first.id, second.id]
    await env.delete_snapshot(first)
    assert [s.name for s in await env.list_snapshots(ctx.session_id)] == ["two"]
    await env.delete_session_snapshots(ctx.session_id)
    assert await env.list_snapshots(ctx.session_id) == []


async def test_snapshot_names_are_unique_per_session(env, run, ctx):
    await run("x = 1")
    await env.create_snapshot(ctx.session_id, "same")
    with pytest.raises(SnapshotNameError, match="already has a snapshot named 'same'"):
        await env.create_snapshot(ctx.session_id, "same")
    await env.execute_code("y = 1", ExecutionContext(session_id="other"))
    await env.create_snapshot("other", "same")  # another session may reuse the name


@pytest.mark.parametrize("name", ["", "x" * 201, "tab\tname"])
async def test_an_invalid_snapshot_name_is_refused(env, run, ctx, name):
    await run("x = 1")
    with pytest.raises(SnapshotNameError, match="invalid snapshot name"):
        await env.create_snapshot(ctx.session_id, name)


async def test_a_session_holds_at_most_its_limit_of_snapshots(make_env):
    env = await make_env(max_snapshots_per_session=2)
    await env.execute_code("x = 1", ExecutionContext(session_id="full"))
    await env.create_snapshot("full", "a")
    await env.create_snapshot("full", "b")
    with pytest.raises(SnapshotLimitError, match="limit is 2"):
        await env.create_snapshot("full", "c")
    assert len(await env.list_snapshots("full")) == 2


async def test_the_default_limit_is_ten(env, run, ctx):
    await run("x = 1")
    for index in range(10):
        await env.create_snapshot(ctx.session_id, f"snap {index}")
    with pytest.raises(SnapshotLimitError):
        await env.create_snapshot(ctx.session_id, "one too many")


async def test_a_snapshot_of_an_unknown_session_is_refused(env):
    with pytest.raises(SessionClosedError, match="no session 'nobody'"):
        await env.create_snapshot("nobody", "x")


async def test_restoring_into_another_session_is_refused_and_changes_nothing(env, run, ctx):
    await run("owner = 'first'")
    snapshot = await env.create_snapshot(ctx.session_id, "mine")
    other = ExecutionContext(session_id="second")
    await env.execute_code("owner = 'second'", other)
    with pytest.raises(SnapshotSessionMismatchError, match="belongs to session 's1'"):
        await env.restore_snapshot(snapshot, session_id="second")
    assert (await env.execute_code("owner", other)).stdout == "'second'\n"


async def test_a_deleted_snapshot_cannot_be_restored(env, run, ctx):
    await run("x = 1")
    snapshot = await env.create_snapshot(ctx.session_id, "gone")
    await env.delete_snapshot(snapshot.id)
    with pytest.raises(SnapshotNotFoundError, match="deleted or never created"):
        await env.restore_snapshot(snapshot.id)
    with pytest.raises(SnapshotNotFoundError):
        await env.restore_snapshot("not-a-snapshot-id")


def _blob_files(env) -> list[Path]:
    return sorted(p for p in (Path(env.root) / "snapshots" / "blobs").rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
async def test_a_damaged_snapshot_is_refused_and_the_session_left_as_it_was(env, run, ctx, damage):
    await run("value = 'at snapshot'\nopen('f.txt', 'w').write('at snapshot')")
    snapshot = await env.create_snapshot(ctx.session_id, "to damage")
    await run("value = 'current'\nopen('f.txt', 'w').write('current')")
    for blob in _blob_files(env):
        if damage == "delete":
            blob.unlink()
        else:
            data = bytearray(blob.read_bytes())
            data[len(data) // 2] ^= 0xFF
            blob.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptedError, match="damaged"):
        await env.restore_snapshot(snapshot)
    assert (await run("value, open('f.txt').read()")).stdout == "('current', 'current')\n"


async def test_an_edited_manifest_is_refused(env, run, ctx):
    await run("x = 1")
    snapshot = await env.create_snapshot(ctx.session_id, "m")
    (manifest,) = (Path(env.root) / "snapshots" / "manifests").rglob(f"{snapshot.id}.json")
    document = json.loads(manifest.read_text())
    document["name"] = "tampered"
    manifest.write_text(json.dumps(document))
    with pytest.raises(SnapshotCorruptedError, match="manifest"):
        await env.restore_snapshot(snapshot)


async def test_identical_data_is_stored_once(env, run, ctx):
    await run("big = 'z' * 1_000_000")
    await env.create_snapshot(ctx.session_id, "a")
    count = len(_blob_files(env))
    second = await env.create_snapshot(ctx.session_id, "b")
    images = 0
    if env.has_capability(Capability.VM_SNAPSHOT):  # each memory image is new; the rest shared
        (manifest,) = (Path(env.root) / "snapshots" / "manifests").rglob(f"{second.id}.json")
        images = len(json.loads(manifest.read_text()).get("extra_blobs", ()))
    assert len(_blob_files(env)) == count + images


async def test_end_session_deletes_its_snapshots_and_their_data(env, run, ctx):
    await run("big = 'q' * 100_000")
    await env.create_snapshot(ctx.session_id, "a")
    assert _blob_files(env)
    await env.end_session(ctx.session_id)
    assert await env.list_snapshots(ctx.session_id) == []
    assert _blob_files(env) == []


async def test_suspend_session_frees_the_worker_and_keeps_its_snapshots(env, run, ctx):
    await run("kept = [1, 2, 3]")
    snapshot = await env.create_snapshot(ctx.session_id, "a")
    await env.suspend_session(ctx.session_id)

    assert (await run("'kept' in globals()")).stdout == "False\n"  # a fresh interpreter
    assert [s.id for s in await env.list_snapshots(ctx.session_id)] == [snapshot.id]
    await env.restore_snapshot(snapshot)
    assert (await run("kept")).stdout == "[1, 2, 3]\n"


async def test_snapshots_survive_a_new_environment_on_the_same_root(make_env, tmp_path):
    first = await make_env(root=tmp_path / "durable")
    await first.execute_code("remembered = 'across processes'", ExecutionContext("keep"))
    snapshot = await first.create_snapshot("keep", "point")
    await first.cleanup()
    second = await make_env(root=tmp_path / "durable")
    await second.restore_snapshot(snapshot.id)
    result = await second.execute_code("remembered", ExecutionContext("keep"))
    assert result.stdout == "'across processes'\n"
