"""Host-side snapshot storage: content-addressed blobs and per-session manifests.

Layout under the store's root::

    blobs/ab/abcdef…        one file per distinct piece of data (a pickled variable, a tar
                            of the session's files), named by its SHA-256
    manifests/<session>/<snapshot id>.json
                            what one snapshot holds; the id is the manifest's own SHA-256,
                            so a changed manifest no longer matches its id

A snapshot becomes visible only when its manifest is renamed into place, after every blob it
names is on disk: a crash leaves unreferenced blobs (collected later), never half a snapshot.
Before a restore every blob is hashed again; any mismatch refuses the restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conch.errors import (
    SnapshotCorruptedError,
    SnapshotLimitError,
    SnapshotNameError,
    SnapshotNotFoundError,
)
from conch.sandbox._types import SnapshotId

MANIFEST_VERSION = 1
DEFAULT_MAX_SNAPSHOTS_PER_SESSION = 10
_ID_PATTERN = re.compile(r"^snap-[0-9a-f]{32}$")
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    snapshot: SnapshotId
    data: dict[str, Any]
    """The manifest as stored: ``state`` (names, env, cwd), ``files`` (tar blob), backend."""


class BlobWriter:
    """Streams bytes into the store while hashing them; ``commit`` files them by digest."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self.size = 0
        fd, name = tempfile.mkstemp(dir=store.root / "tmp", prefix="blob-")
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> str:
        self._file.close()
        digest = self._hash.hexdigest()
        target = self._store.blob_path(digest)
        if target.exists():
            self._path.unlink()
        else:
            target.parent.mkdir(exist_ok=True)
            os.replace(self._path, target)
        return digest

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class SnapshotStore:
    def __init__(
        self, root: Path, *, max_per_session: int = DEFAULT_MAX_SNAPSHOTS_PER_SESSION
    ) -> None:
        if max_per_session < 1:
            raise ValueError("max_per_session must be at least 1")
        self.root = Path(root)
        self.max_per_session = max_per_session
        for sub in ("blobs", "manifests", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- blobs ----------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def put_blob(self, data: bytes | memoryview) -> str:
        writer = BlobWriter(self)
        try:
            writer.write(data)
        except BaseException:
            writer.discard()
            raise
        return writer.commit()

    def new_blob(self) -> BlobWriter:
        return BlobWriter(self)

    def verify_blob(self, digest: str, snapshot_id: str) -> None:
        """Hash a blob on disk in chunks (for blobs too large to hold, like file archives)."""
        hasher = hashlib.sha256()
        try:
            with open(self.blob_path(digest), "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            raise self._damaged(snapshot_id, f"its data blob {digest[:12]}… is missing") from None
        if hasher.hexdigest() != digest:
            raise self._damaged(snapshot_id, f"blob {digest[:12]}… does not match its hash")

    def read_verified_blob(self, digest: str, snapshot_id: str) -> bytes:
        """The blob's bytes, read and hashed in one pass."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise self._damaged(snapshot_id, f"its data blob {digest[:12]}… is missing") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise self._damaged(snapshot_id, f"blob {digest[:12]}… does not match its hash")
        return data

    def _damaged(self, snapshot_id: str, what: str) -> SnapshotCorruptedError:
        return SnapshotCorruptedError(
            f"snapshot {snapshot_id} is damaged: {what} (store {self.root}). Delete the "
            "snapshot; the session was not changed."
        )

    # --- manifests ------------------------------------------------------------------

    def check_can_add(self, session_id: str, name: str) -> None:
        """Refuse early, before any work, a name that is taken or a session that is full."""
        if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise SnapshotNameError(
                f"invalid snapshot name {name!r}: use 1 to 200 printable characters"
            )
        existing = self.list(session_id)
        if any(s.name == name for s in existing):
            raise SnapshotNameError(
                f"session {session_id!r} already has a snapshot named {name!r}: "
                "choose another name or delete that snapshot first"
            )
        if len(existing) >= self.max_per_session:
            raise SnapshotLimitError(
                f"session {session_id!r} already holds {len(existing)} snapshots (the limit "
                f"is {self.max_per_session}): delete one with delete_snapshot() or raise "
                "max_snapshots_per_session"
            )

    def add(self, session_id: str, name: str, data: dict[str, Any]) -> SnapshotId:
        """Write a manifest for blobs already stored; it becomes visible atomically."""
        self.check_can_add(session_id, name)
        created = datetime.now(UTC)
        document = {
            "version": MANIFEST_VERSION,
            "session_id": session_id,
            "name": name,
            "created": created.isoformat(),
            **data,
        }
        raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        snapshot_id = "snap-" + hashlib.sha256(raw).hexdigest()[:32]
        directory = self._session_dir(session_id)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix="manifest-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / f"{snapshot_id}.json")
        return self._snapshot_id(snapshot_id, document)

    def load(self, snapshot_id: str) -> Manifest:
        if not _ID_PATTERN.match(snapshot_id):
            raise SnapshotNotFoundError(f"{snapshot_id!r} is not a snapshot id (snap-<32 hex>)")
        matches = list((self.root / "manifests").glob(f"*/{snapshot_id}.json"))
        if not matches:
            raise SnapshotNotFoundError(
                f"no snapshot {snapshot_id}: it was deleted or never created here "
                f"({self.root}); list_snapshots() shows what exists"
            )
        raw = matches[0].read_bytes()
        if "snap-" + hashlib.sha256(raw).hexdigest()[:32] != snapshot_id:
            raise SnapshotCorruptedError(
                f"snapshot {snapshot_id} is damaged: its manifest {matches[0]} does not match "
                "its id. Delete the snapshot; the session was not changed."
            )
        document = json.loads(raw)
        return Manifest(self._snapshot_id(snapshot_id, document), document)

    def list(self, session_id: str) -> list[SnapshotId]:
        directory = self._session_dir(session_id)
        snapshots = []
        for path in directory.glob("snap-*.json") if directory.exists() else ():
            try:
                document = json.loads(path.read_bytes())
                snapshots.append(self._snapshot_id(path.stem, document))
            except (OSError, ValueError, KeyError):
                continue  # a damaged manifest is reported when it is loaded
        return sorted(snapshots, key=lambda s: (s.created, s.id))

    def delete(self, snapshot_id: str) -> None:
        manifest_paths = list((self.root / "manifests").glob(f"*/{snapshot_id}.json"))
        if not manifest_paths or not _ID_PATTERN.match(snapshot_id):
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id} to delete")
        for path in manifest_paths:
            path.unlink()
        self.collect_garbage()

    def delete_session(self, session_id: str) -> None:
        directory = self._session_dir(session_id)
        if directory.exists():
            for path in directory.glob("*.json"):
                path.unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()
        self.collect_garbage()

    def collect_garbage(self) -> int:
        """Delete blobs no manifest names; return how many were deleted."""
        referenced: set[str] = set()
        for path in (self.root / "manifests").glob("*/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                referenced.update(_digests_of(json.loads(path.read_bytes())))
        deleted = 0
        for blob in _walk_blobs(self.root / "blobs"):
            if blob.name not in referenced:
                blob.unlink()
                deleted += 1
        return deleted

    # --- helpers --------------------------------------------------------------------

    def _session_dir(self, session_id: str) -> Path:
        return self.root / "manifests" / session_id

    @staticmethod
    def _snapshot_id(snapshot_id: str, document: dict[str, Any]) -> SnapshotId:
        unpicklable = tuple(f"{n}: {why}" for n, why in document["state"].get("unpicklable", []))
        return SnapshotId(
            id=snapshot_id,
            session_id=document["session_id"],
            name=document["name"],
            created=datetime.fromisoformat(document["created"]),
            size=int(document.get("size", 0)),
            unpicklable=unpicklable,
        )


def _digests_of(document: dict[str, Any]) -> Iterable[str]:
    for entry in document["state"]["names"]:
        yield entry[3]
    if document.get("files"):
        yield document["files"]["digest"]
    # Blobs a backend adds of its own (a VM's memory and state files, say).
    yield from document.get("extra_blobs", ())


def _walk_blobs(root: Path) -> Iterator[Path]:
    for shard in root.iterdir():
        if shard.is_dir():
            yield from shard.iterdir()
