"""Attachment stores: content-addressed bytes, one namespace per session."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from conch.errors import AttachmentNotFoundError, StoreCorruptedError, StoreError
from conch.store import (
    AttachmentRef,
    AttachmentStore,
    FilesystemAttachmentStore,
    InMemoryAttachmentStore,
)


@pytest.fixture(params=["memory", "filesystem"])
def attachments(request: pytest.FixtureRequest, tmp_path: Path) -> AttachmentStore:
    if request.param == "memory":
        return InMemoryAttachmentStore()
    return FilesystemAttachmentStore(tmp_path / "attachments")


async def test_an_attachment_reads_back_by_its_reference(attachments: AttachmentStore) -> None:
    ref = await attachments.put("s1", b"%PDF-1.7 ...", "application/pdf")

    assert ref == AttachmentRef(hashlib.sha256(b"%PDF-1.7 ...").hexdigest(), 12, "application/pdf")
    assert await attachments.get("s1", ref) == b"%PDF-1.7 ..."
    assert await attachments.get("s1", ref.digest) == b"%PDF-1.7 ..."
    assert AttachmentRef.from_dict(ref.as_dict()) == ref


async def test_the_same_bytes_twice_give_the_same_reference(attachments: AttachmentStore) -> None:
    assert await attachments.put("s1", b"same") == await attachments.put("s1", b"same")


async def test_a_session_cannot_read_another_sessions_attachment(
    attachments: AttachmentStore,
) -> None:
    ref = await attachments.put("s1", b"secret of s1")

    with pytest.raises(AttachmentNotFoundError, match="session 's2' has no attachment"):
        await attachments.get("s2", ref)
    # Even holding the very same bytes does not open s1's copy to s2: s2 gets its own.
    await attachments.put("s2", b"secret of s1")
    await attachments.delete_session("s2")
    assert await attachments.get("s1", ref) == b"secret of s1"


async def test_deleting_a_session_forgets_its_attachments(attachments: AttachmentStore) -> None:
    ref = await attachments.put("s1", b"data")
    await attachments.delete_session("s1")

    with pytest.raises(AttachmentNotFoundError):
        await attachments.get("s1", ref)
    await attachments.delete_session("s1")  # again: nothing to do


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ab" * 31, "AB" * 32, ""])
async def test_a_reference_that_is_not_a_digest_is_refused(
    attachments: AttachmentStore, digest: str
) -> None:
    with pytest.raises(AttachmentNotFoundError, match="not an attachment digest"):
        await attachments.get("s1", digest)


@pytest.mark.parametrize("data", ["text", None, 42], ids=["str", "none", "int"])
async def test_data_that_is_not_bytes_is_refused(attachments: AttachmentStore, data) -> None:
    with pytest.raises(StoreError, match="must be bytes"):
        await attachments.put("s1", data)


@pytest.mark.parametrize("session_id", ["../escape", "/abs/path", "a/../../b"])
async def test_filesystem_session_ids_cannot_leave_the_root(
    tmp_path: Path, session_id: str
) -> None:
    root = tmp_path / "attachments"
    store = FilesystemAttachmentStore(root)
    ref = await store.put(session_id, b"payload")

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(root in p.parents for p in written)
    assert await store.get(session_id, ref) == b"payload"


async def test_filesystem_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = FilesystemAttachmentStore(tmp_path)
    for i in range(5):
        await store.put("s1", f"attachment {i}".encode())

    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(names) == 5
    assert not [n for n in names if n.startswith(".tmp")]


async def test_a_damaged_attachment_file_is_reported_not_returned(tmp_path: Path) -> None:
    store = FilesystemAttachmentStore(tmp_path)
    ref = await store.put("s1", b"original")
    (file,) = [p for p in tmp_path.rglob(ref.digest)]
    file.write_bytes(b"tampered")

    with pytest.raises(StoreCorruptedError, match="does not match its hash"):
        await store.get("s1", ref)


@pytest.mark.parametrize(
    "make", [InMemoryAttachmentStore, lambda: FilesystemAttachmentStore("/nonexistent")]
)
def test_both_attachment_stores_keep_the_protocol(make: Callable[[], object]) -> None:
    assert isinstance(make(), AttachmentStore)
