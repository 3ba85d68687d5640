"""Backends whose worker's files live inside the sandbox, not on the host (a VM, a cloud box).

The host cannot read or write such a session directory, so the worker itself packs it into a
tar (``pack_files``), unpacks a tar into it (``unpack_files``) and writes inputs into it
(``put_file``), all over the one channel. Snapshots keep the same manifest as every other
backend (interpreter state name by name, a tar of the files, the environment), verified by
hash before anything is touched, so they restore on any backend of the same kind.

A backend that can also save the whole machine (Firecracker's VM snapshot, E2B's sandbox
snapshot) adds it through :meth:`RemoteWorkerEnvironment._save_machine` and
:meth:`RemoteWorkerEnvironment._load_machine`. A restore then loads the machine and asks the
worker for its incarnation (a random token each worker process draws at start): the same
token means the very interpreter that was saved is back, with every object, including those
no pickler keeps; a different one (the image could not be loaded here, or the machine booted
afresh) falls back to the pickled state and the files, and the restore says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from conch.errors import (
    SandboxError,
    SnapshotError,
)
from conch.sandbox._connection import WorkerConnection
from conch.sandbox._snapshots import Manifest
from conch.sandbox._types import RestoreReport, SnapshotId
from conch.sandbox._worker_environment import (
    WorkerEnvironment,
    _Session,
)

logger = logging.getLogger("conch.sandbox")

_PUT_PIECE_BYTES = 8 * 1024 * 1024
"""How much of an input file goes to a remote worker per request."""


class RemoteWorkerEnvironment(WorkerEnvironment):
    """A :class:`WorkerEnvironment` whose session directory is reached through the worker."""

    shares_session_directories = False  # the host cannot see them: state goes by the channel

    # --- what a machine-snapshotting backend adds ----------------------------------------

    async def _save_machine(self, session: _Session) -> dict[str, Any] | None:
        """Save the session's whole machine; return the manifest's ``machine`` entry.

        The entry may name blobs of the snapshot store under ``"blobs"`` (name -> digest);
        they are kept as long as the snapshot. It may replace ``session.connection`` (a VM
        snapshot resets the vsock link). ``None``: this backend saves no machine."""
        return None

    async def _load_machine(self, session: _Session, manifest: Manifest) -> WorkerConnection | None:
        """Start a machine from the snapshot's saved image and connect to its worker.

        Called only after every blob was verified. Must not touch the session: the caller
        installs the connection once everything succeeded. ``None``: no image to load."""
        return None

    def _verify_machine(self, manifest: Manifest) -> None:
        """Check the machine image's blobs by hash (runs in a thread)."""
        machine = manifest.data.get("machine") or {}
        for digest in (machine.get("blobs") or {}).values():
            self._snapshots.verify_blob(digest, manifest.snapshot.id)

    # --- inputs ---------------------------------------------------------------------------

    async def upload(
        self, session_id: str, name: str, source: bytes | str | os.PathLike[str]
    ) -> str:
        """Put a file into the session's inputs; return its path inside the sandbox.

        The host keeps a copy (``inputs`` of the session on the host), which every new
        worker of the session receives too, so inputs survive a replaced VM or sandbox."""
        inside = await super().upload(session_id, name, source)
        session = self._session(session_id)
        async with session.lock:
            connection = session.connection
            if connection is not None and connection.alive:
                await self._put_input(session, connection, session.paths.inputs / name)
        return inside

    async def _put_input(
        self, session: _Session, connection: WorkerConnection, host_path: Path
    ) -> None:
        """Send an input file in pieces, so a 1 GB context never sits whole in host memory."""
        target = f"{self._inputs_path(session)}/{host_path.name}"
        with open(host_path, "rb") as handle:
            offset = 0
            while True:
                piece = await asyncio.to_thread(handle.read, _PUT_PIECE_BYTES)
                last = len(piece) < _PUT_PIECE_BYTES
                message = {"op": "put_file", "path": target, "mode": 0o444}
                message.update(offset=offset, last=last)
                reply, _ = await connection.request(message, piece)
                if "error" in reply:
                    raise SandboxError(
                        f"could not put input {host_path.name!r} into the sandbox: {reply['error']}"
                    )
                if last:
                    return
                offset += len(piece)

    async def _push_inputs(self, session: _Session, connection: WorkerConnection) -> None:
        for path in sorted(session.paths.inputs.iterdir()):
            if path.is_file() and not path.name.endswith(".partial"):
                await self._put_input(session, connection, path)

    async def _start_worker(self, session: _Session) -> WorkerConnection:
        connection = await super()._start_worker(session)
        try:
            await self._push_inputs(session, connection)
        except BaseException:
            await connection.kill()
            raise
        return connection

    # --- snapshots ------------------------------------------------------------------------

    async def create_snapshot(self, session_id: str, name: str) -> SnapshotId:
        session = self._session(session_id, create=False)
        async with session.lock:
            self._snapshots.check_can_add(session_id, name)
            connection = await self._ensure_worker(session)
            ping, _ = await connection.request({"op": "ping"})
            reply, state = await connection.request({"op": "snapshot"})
            if "error" in reply:
                raise SnapshotError(f"the worker could not save its state: {reply['error']}")
            packed, files = await connection.request({"op": "pack_files"})
            if "error" in packed:
                raise SnapshotError(f"the worker could not pack its files: {packed['error']}")
            machine = await self._save_machine(session)
            data = await asyncio.to_thread(self._store, reply, state, files, machine)
            data["state"]["incarnation"] = ping.get("incarnation")
            return self._snapshots.add(session_id, name, data)

    def _store(
        self, reply: dict, state: bytes, files: bytes, machine: dict[str, Any] | None
    ) -> dict[str, Any]:
        # The worker packed its files itself: they arrive as one blob, not a host directory.
        data = self._manifest_data(reply, state, self._snapshots.put_blob(files), len(files))
        if machine is not None:
            blobs = machine.get("blobs") or {}
            data["machine"] = machine
            data["extra_blobs"] = sorted(blobs.values())
            data["size"] += int(machine.get("size", 0))
        return data

    async def _restore(self, manifest: Manifest) -> RestoreReport:
        snapshot_id = manifest.snapshot.id
        session = self._session(manifest.snapshot.session_id)
        async with session.lock:
            # Everything is read and checked first; the session is touched only at the end.
            state = await asyncio.to_thread(self._load_verified, manifest)
            files = await asyncio.to_thread(
                self._snapshots.read_verified_blob, manifest.data["files"]["digest"], snapshot_id
            )
            connection: WorkerConnection | None = None
            try:
                whole = False
                if manifest.data.get("machine"):
                    await asyncio.to_thread(self._verify_machine, manifest)
                    connection = await self._load_machine(session, manifest)
                if connection is not None:
                    ping, _ = await connection.request({"op": "ping"})
                    saved = manifest.data["state"].get("incarnation")
                    whole = saved is not None and ping.get("incarnation") == saved
                    if not whole:
                        logger.warning(
                            "snapshot %s: the loaded machine runs another worker than the "
                            "saved one; restoring the pickled state and files instead",
                            snapshot_id,
                        )
                    await self._push_inputs(session, connection)
                else:
                    connection = await self._start_worker(session)
                if whole:
                    reply: dict[str, Any] = {
                        "restored": [entry[0] for entry in manifest.data["state"]["names"]]
                        + [entry[0] for entry in manifest.data["state"].get("unpicklable", [])]
                    }
                else:
                    reply = await self._restore_into(connection, manifest, state, files)
            except BaseException:
                if connection is not None:
                    await connection.kill()
                raise
            if session.connection is not None:
                await session.connection.kill()
            session.connection = connection
            session.state_lost = False
        return RestoreReport(
            snapshot=manifest.snapshot,
            restored=tuple(reply.get("restored", ())),
            failed=tuple(f"{name}: {why}" for name, why in reply.get("failed", ())),
        )

    async def _restore_into(
        self, connection: WorkerConnection, manifest: Manifest, state: bytes, files: bytes
    ) -> dict[str, Any]:
        unpacked, _ = await connection.request({"op": "unpack_files"}, files)
        if "error" in unpacked:
            raise SnapshotError(
                f"the worker could not unpack snapshot {manifest.snapshot.id}'s files: "
                f"{unpacked['error']}"
            )
        reply, _ = await connection.request(
            {
                "op": "restore",
                "names": [entry[:3] for entry in manifest.data["state"]["names"]],
                "env": manifest.data["state"].get("env"),
                "cwd": manifest.data["state"].get("cwd"),
            },
            state,
        )
        if "error" in reply:
            raise SnapshotError(
                f"the worker could not load snapshot {manifest.snapshot.id}: {reply['error']}"
            )
        return reply
