"""Attachment stores: bytes a session refers to (files, images), kept outside the graph.

Attachments are content-addressed by SHA-256 within a session's own namespace: the same bytes
put twice in one session are stored once, and one session can never read another's
attachment, even by knowing its hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from conch.errors import AttachmentNotFoundError, StoreCorruptedError, StoreError
from conch.store._nodes import check_id

DEFAULT_MEDIA_TYPE = "application/octet-stream"
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """How a node payload refers to an attachment (``as_dict`` / ``from_dict`` for JSON)."""

    digest: str
    """SHA-256 of the bytes, lowercase hex."""
    size: int
    media_type: str = DEFAULT_MEDIA_TYPE

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttachmentRef:
        try:
            return cls(str(data["digest"]), int(data["size"]), str(data["media_type"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"not an attachment reference: {data!r} (needs digest, size and media_type)"
            ) from exc


@runtime_checkable
class AttachmentStore(Protocol):
    async def put(
        self, session_id: str, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE
    ) -> AttachmentRef:
        """Store ``data`` for the session; the same bytes again return the same reference."""
        ...

    async def get(self, session_id: str, ref: AttachmentRef | str) -> bytes:
        """The bytes of an attachment of this session (``AttachmentNotFoundError`` if it is
        not one, e.g. it belongs to another session)."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Forget every attachment of the session."""
        ...


def _digest_of(ref: AttachmentRef | str) -> str:
    digest = ref.digest if isinstance(ref, AttachmentRef) else ref
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise AttachmentNotFoundError(
            f"{digest!r} is not an attachment digest (64 lowercase hex digits); pass the "
            "AttachmentRef that put() returned"
        )
    return digest


def _check_data(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StoreError(f"attachment data must be bytes, got {type(data).__name__}")
    return bytes(data)


def _not_found(session_id: str, digest: str) -> AttachmentNotFoundError:
    return AttachmentNotFoundError(
        f"session {session_id!r} has no attachment {digest[:16]}…; attachments belong to the "
        "session that put them: put it again in this session"
    )


class InMemoryAttachmentStore:
    """Attachments in a dict; the default, gone when the process ends."""

    def __init__(self) -> None:
        self._by_session: dict[str, dict[str, bytes]] = {}

    async def put(
        self, session_id: str, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE
    ) -> AttachmentRef:
        check_id(session_id, "session id")
        data = _check_data(data)
        digest = hashlib.sha256(data).hexdigest()
        self._by_session.setdefault(session_id, {}).setdefault(digest, data)
        return AttachmentRef(digest, len(data), media_type)

    async def get(self, session_id: str, ref: AttachmentRef | str) -> bytes:
        digest = _digest_of(ref)
        try:
            return self._by_session[session_id][digest]
        except KeyError:
            raise _not_found(session_id, digest) from None

    async def delete_session(self, session_id: str) -> None:
        self._by_session.pop(session_id, None)


class FilesystemAttachmentStore:
    """Attachments as files under ``root``: ``root/<hash of session id>/<digest[:2]>/<digest>``.

    The session id is hashed into the directory name so no id (``..``, ``/``) can reach
    outside the session's own directory. Files are written to a temporary name and renamed,
    so a crash never leaves a partial attachment under its real name; reads verify the hash.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _session_dir(self, session_id: str) -> Path:
        check_id(session_id, "session id")
        return self.root / hashlib.sha256(session_id.encode()).hexdigest()[:32]

    def _path(self, session_id: str, digest: str) -> Path:
        return self._session_dir(session_id) / digest[:2] / digest

    async def put(
        self, session_id: str, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE
    ) -> AttachmentRef:
        data = _check_data(data)
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, self._path(session_id, digest), data)
        return AttachmentRef(digest, len(data), media_type)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return  # content-addressed: the same bytes are already there
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(
                f"cannot store an attachment under {path.parent}: {exc.strerror or exc}; check "
                "free space and permissions"
            ) from exc

    async def get(self, session_id: str, ref: AttachmentRef | str) -> bytes:
        digest = _digest_of(ref)
        path = self._path(session_id, digest)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise _not_found(session_id, digest) from None
        except OSError as exc:
            raise StoreError(f"cannot read attachment {path}: {exc.strerror or exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreCorruptedError(
                f"attachment {path} does not match its hash (the file was changed or damaged); "
                "delete it and put the attachment again"
            )
        return data

    async def delete_session(self, session_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._session_dir(session_id), True)
