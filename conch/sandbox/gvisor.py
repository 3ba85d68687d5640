"""The ``gvisor`` backend: the worker in a gVisor (``runsc``) sandbox, with full-memory snapshots.

Each session's worker runs in its own runsc sandbox: an OCI bundle that conch writes
(``config.json``) with a read-only root holding nothing but mount points, the system directories
and the Python installation bind-mounted read-only at their host paths, the session's working
directory (``/session``), scratch directory and ``/tmp`` writable, its inputs (``/inputs``)
read-only, no network (``--network=none``: only loopback) and rlimits. The sandbox's init is the
worker's keeper, as the sandbox's root user with only CAP_SETUID and CAP_SETGID; the worker drops
to uid 1000 with no capabilities at all, so user code can neither signal the keeper (whose death
would end the sandbox) nor gain privileges (no new privileges). Code talks to gVisor's
user-space kernel, not the host's: a second boundary beyond the namespaces bubblewrap gives.

Limits: the worker sets RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_NOFILE and RLIMIT_NPROC on
itself (the same values are in the bundle's rlimits). gVisor enforces RLIMIT_NPROC for the
non-root worker, which bounds a fork bomb. On the host, runsc puts each sandbox in a cgroup of
its own; when ``max_processes`` is set, its ``pids`` limit is a generous backstop (gVisor's
ptrace platform uses several host tasks per sandboxed process, and reaching the cgroup's limit
makes the sandbox's kernel panic, so the backstop sits far above what RLIMIT_NPROC allows).

Known limit of Debian 12's runsc (20221219): its statx and fstatat refuse AT_NO_AUTOMOUNT with
EINVAL, and coreutils 9 passes it, so ``ls -l``, ``ls PATH`` and ``stat`` fail inside the sandbox
("Invalid argument"); Python's ``os.stat`` and most other tools are unaffected. Newer runsc
builds accept the flag.

The channel: the worker speaks the usual frames on its stdin and stdout, which are pipes the
host made and donated to the sandbox. A checkpoint image keeps the sandbox's whole kernel and
memory; ``runsc restore`` donates the restoring command's stdio again in place of the old one,
so a restored worker, still blocked reading its channel, reads from the new pipes: every frame
after a restore flows over pipes the host has just made. (A host unix socket cannot be used
instead: gVisor refuses to checkpoint a connection to a host socket and stops the sandbox.)

Snapshots, chosen by ``full_memory`` (constructor default ``True``, or ``False`` with
``network=True``, which gVisor cannot checkpoint; ``create_snapshot(..., full_memory=...)``
overrides it per call):

* full memory (capability ``VM_SNAPSHOT``): ``runsc checkpoint`` saves the whole sandbox (every
  object survives: generators, open files, threads, sockets inside the sandbox) and stops it;
  conch stores the image and a tar of the working directory as blobs of the content-addressed
  snapshot store, then restores the session's sandbox from that image in the background, so
  ``create_snapshot`` returns once the image is stored and the next call waits for the resumed
  sandbox. ``restore_snapshot`` hashes the image and the files again (a deleted or damaged image
  is refused and the session left as it was), unpacks the files into a staging directory,
  restores a new sandbox that mounts it, and only when that sandbox answers on its channel does
  it replace the session's sandbox and directory. An image restores only with the runsc build
  that made it (the manifest records it).
* interpreter (capability ``SNAPSHOT``, always): the shared worker's snapshot: variables pickled
  name by name, files and environment (what cannot be pickled is listed).

``restore_snapshot`` restores either kind, whatever the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conch.errors import (
    ConfigurationError,
    SandboxError,
    SandboxUnavailableError,
    SnapshotError,
)
from conch.sandbox import _files
from conch.sandbox._connection import _STREAM_LIMIT, WorkerConnection
from conch.sandbox._snapshots import Manifest
from conch.sandbox._types import BackendType, Capability, RestoreReport, SnapshotId
from conch.sandbox._worker_environment import (
    WORKER_CAPABILITIES,
    InsidePaths,
    ResourceLimits,
    SessionPaths,
    WorkerEnvironment,
    _Session,
)
from conch.sandbox.bwrap import (
    _ETC_FILES,
    DEFAULT_LIMITS,
    SANDBOX_INPUTS,
    SANDBOX_SCRATCH,
    SANDBOX_TMP,
    SANDBOX_WORK,
    SANDBOX_WORKER_DIR,
    _remove_cgroup,
)
from conch.sandbox.worker import WORKER_DIR

logger = logging.getLogger("conch.sandbox")

SANDBOX_UID = 1000
PLATFORM = "ptrace"
"""gVisor's platform. ``kvm`` hangs on this kind of machine (its /dev/kvm is PVM)."""
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_PIPE_BYTES = 1024 * 1024
_HASH_CHUNK = 1024 * 1024
_RUNSC_TIMEOUT_S = 60.0
_IMAGE_NAME = "checkpoint.img"
_CGROUP_ROOT = Path("/sys/fs/cgroup")

_CAPABILITIES = WORKER_CAPABILITIES | {
    Capability.PROCESS_ISOLATION,
    Capability.FILESYSTEM_ISOLATION,
    Capability.RESOURCE_LIMITS,
}


class GVisorEnvironment(WorkerEnvironment):
    """Sessions whose workers run in gVisor sandboxes (``runsc``, ptrace platform).

    ``full_memory`` chooses what :meth:`create_snapshot` saves by default: the whole sandbox
    (``True``, the default) or the interpreter's variables (``False``). ``network=True`` gives
    the sandbox the host's network (``--network=host``, gVisor's hostinet), which gVisor cannot
    checkpoint: such an environment takes interpreter snapshots only.
    ``runsc_flags`` are extra global runsc flags, for operators (e.g. ``--debug``).
    ``pool_size`` sandboxes are kept started ahead (after the first session starts): a new
    session takes one, its directories are renamed into place, and another is started in the
    background, so a session starts in milliseconds instead of a sandbox's boot time.
    """

    inside_paths = InsidePaths(SANDBOX_WORK, SANDBOX_SCRATCH, SANDBOX_TMP, SANDBOX_INPUTS)

    shares_session_directories = True  # bind mounts of the host's session directories

    def __init__(
        self,
        *,
        full_memory: bool | None = None,
        network: bool = False,
        runsc_path: str | None = None,
        platform: str = PLATFORM,
        runsc_flags: Sequence[str] = (),
        pool_size: int = 1,
        **options: Any,
    ) -> None:
        found = runsc_path or shutil.which("runsc")
        if not found or not os.access(found, os.X_OK):
            raise SandboxUnavailableError(
                f"gVisor's runsc is not installed{f' at {runsc_path}' if runsc_path else ''}: "
                "install the Debian package 'runsc' (scripts/install-system-deps.sh) or use "
                "the 'bwrap' backend"
            )
        if full_memory and network:
            raise ConfigurationError(
                "gVisor cannot checkpoint a sandbox that uses the host's network (hostinet): "
                "choose full_memory=True or network=True, not both"
            )
        self.runsc_path = found
        self.full_memory = not network if full_memory is None else full_memory
        self.network = network
        self.platform = platform
        self._extra_flags = tuple(runsc_flags)
        super().__init__(**options)
        self._token = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        # runsc's own state (one small file per container); outside the root so that a
        # cleanup can delete the containers after the root's sessions are gone.
        self._state_dir = Path(tempfile.mkdtemp(prefix="conch-runsc-"))
        self._rootfs = _make_rootfs(self.root / "gvisor-rootfs")
        self._resuming: dict[str, asyncio.Task[WorkerConnection]] = {}
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self.pool_size = max(0, pool_size)
        self._pool: list[tuple[_Session, WorkerConnection]] = []
        self._refill: asyncio.Task[None] | None = None
        self._closing = False

    # --- what the backend is -------------------------------------------------------------

    def default_limits(self) -> ResourceLimits:
        return DEFAULT_LIMITS

    def capabilities(self) -> frozenset[Capability]:
        caps = set(_CAPABILITIES)
        if not self.network:
            caps.add(Capability.NETWORK_ISOLATION)
        if self.full_memory:
            caps.add(Capability.VM_SNAPSHOT)
        return frozenset(caps)

    def backend_type(self) -> BackendType:
        return BackendType.GVISOR

    # --- starting a sandbox ------------------------------------------------------------

    def _global_flags(self) -> list[str]:
        network = "host" if self.network else "none"
        return [
            self.runsc_path,
            "--root",
            str(self._state_dir),
            "--platform",
            self.platform,
            "--network",
            network,
            *self._extra_flags,
        ]

    def _bundle(
        self,
        session: _Session,
        cid: str,
        argv: Sequence[str],
        work: Path,
        *,
        keeper_is_root: bool = True,
    ) -> Path:
        paths = session.paths
        for directory in (work, paths.scratch, paths.tmp):
            _give_to_sandbox_user(directory)
        spec = _oci_spec(
            rootfs=self._rootfs,
            argv=argv,
            env=self._session_env(session),
            limits=self.limits,
            keeper_is_root=keeper_is_root,
            network=self.network,
            binds=[
                (str(WORKER_DIR), SANDBOX_WORKER_DIR, True),
                (str(work), SANDBOX_WORK, False),
                (str(paths.scratch), SANDBOX_SCRATCH, False),
                (str(paths.tmp), SANDBOX_TMP, False),
                (str(paths.inputs), SANDBOX_INPUTS, True),
            ],
        )
        bundle = self._state_dir / "bundles" / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        return bundle

    async def _connect(self, session: _Session, worker_config: dict[str, Any]) -> WorkerConnection:
        connection = await self._take_pooled(session)
        if connection is None:
            connection = await self._start_sandbox(session, worker_config)
        self._schedule_refill(worker_config)
        return connection

    async def _start_sandbox(
        self, session: _Session, worker_config: dict[str, Any]
    ) -> WorkerConnection:
        cid = self._new_cid()
        # The keeper is the sandbox's init, whose death would end the worker too: it stays
        # the sandbox's root (no capabilities but setuid/setgid, nothing on the host) and
        # the worker drops to the sandbox user, so user code cannot signal the keeper.
        config = {**worker_config, "keeper": True, "user": [SANDBOX_UID, SANDBOX_UID]}
        argv = self._python_argv(f"{SANDBOX_WORKER_DIR}/agent.py", config)
        bundle = self._bundle(session, cid, argv, session.paths.work, keeper_is_root=True)
        return await self._launch(session, cid, ["run", "--bundle", str(bundle)], hello=True)

    async def _restore_container(
        self, session: _Session, image_dir: Path, work: Path
    ) -> WorkerConnection:
        """A new sandbox restored from the image in ``image_dir``, mounting ``work``."""
        cid = self._new_cid()
        # The process in the spec is not run on restore; the image holds the processes.
        bundle = self._bundle(session, cid, ["/bin/false"], work)
        command = ["restore", "--image-path", str(image_dir), "--bundle", str(bundle)]
        return await self._launch(session, cid, command, hello=False)

    def _new_cid(self) -> str:
        return f"conch-{self._token}-{next(self._counter)}"

    async def _launch(
        self, session: _Session, cid: str, command: list[str], *, hello: bool
    ) -> WorkerConnection:
        """Run ``runsc run|restore --detach`` with fresh pipes as the sandbox's stdio, then
        speak to the worker over them."""
        pid_file = self._state_dir / "bundles" / cid / "pid"
        host_in, sandbox_in = None, None
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        for fd in (stdin_write, stdout_read):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        argv = [
            *self._global_flags(),
            command[0],
            "--detach",
            "--pid-file",
            str(pid_file),
            *command[1:],
            cid,
        ]
        try:
            with open(session.paths.log, "ab") as log:
                try:
                    code, _ = await _run(
                        argv,
                        stdin=stdin_read,
                        stdout=stdout_write,
                        stderr=log,
                        timeout_s=_RUNSC_TIMEOUT_S,
                    )
                except (OSError, TimeoutError) as exc:
                    self._delete_later(cid)
                    raise SandboxError(f"runsc {command[0]} did not run: {exc}") from exc
        finally:
            os.close(stdin_read)
            os.close(stdout_write)
        sandbox: _Sandbox | None = None
        try:
            if code != 0:
                raise SandboxError(
                    f"runsc {command[0]} failed (exit code {code}). Its log says: "
                    f"{_tail(session.paths.log)}"
                )
            sandbox = _Sandbox(self, cid, int(pid_file.read_text().strip()))
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=_STREAM_LIMIT)
            host_in = os.fdopen(stdout_read, "rb", buffering=0)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), host_in)
            sandbox_in = os.fdopen(stdin_write, "wb", buffering=0)
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, sandbox_in
            )
        except BaseException:
            for handle, fd in ((host_in, stdout_read), (sandbox_in, stdin_write)):
                with contextlib.suppress(OSError):
                    handle.close() if handle is not None else os.close(fd)
            if sandbox is not None:
                sandbox.kill()
            self._delete_later(cid)  # delete --force stops whatever runsc left running
            raise
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return await WorkerConnection.attach(
            reader, writer, sandbox, keeper=True, log_path=session.paths.log, hello=hello
        )

    # --- the warm pool ------------------------------------------------------------------

    async def _take_pooled(self, session: _Session) -> WorkerConnection | None:
        """A sandbox started ahead, now serving ``session`` (None when none is ready)."""
        if not self._pool and self._refill is not None and not self._refill.done():
            # One is on its way: waiting for it is never slower than starting another.
            await asyncio.wait({self._refill})
        while self._pool:
            slot, connection = self._pool.pop(0)
            if connection.alive:
                try:
                    await asyncio.to_thread(_adopt_directories, slot.paths, session.paths)
                    return connection
                except OSError as exc:
                    logger.warning("could not hand a pooled gVisor sandbox over: %s", exc)
            await connection.kill()
            shutil.rmtree(slot.paths.root, ignore_errors=True)
        return None

    def _schedule_refill(self, worker_config: dict[str, Any]) -> None:
        if self._closing or len(self._pool) >= self.pool_size:
            return
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(
                self._fill(dict(worker_config)), name="conch-gvisor-pool"
            )

    async def _fill(self, worker_config: dict[str, Any]) -> None:
        while not self._closing and len(self._pool) < self.pool_size:
            name = f"pool-{self._token}-{next(self._counter)}"
            slot = _Session(name, SessionPaths.under(self.root / "pool" / name))
            try:
                connection = await self._start_sandbox(slot, worker_config)
            except Exception as exc:
                logger.warning("could not start a gVisor sandbox for the pool: %s", exc)
                shutil.rmtree(slot.paths.root, ignore_errors=True)
                return
            if self._closing:
                await connection.kill()
                return
            self._pool.append((slot, connection))

    async def _drain_pool(self) -> None:
        self._closing = True
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        pool, self._pool = self._pool, []
        await asyncio.gather(*(c.kill() for _, c in pool), return_exceptions=True)

    # --- containers that ended ------------------------------------------------------------

    def _delete_later(self, cid: str) -> None:
        """``runsc delete`` the container in the background (it takes about a second)."""
        if cid in self._deletions:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._delete(cid))
        except RuntimeError:  # no loop: delete synchronously
            _delete_sync(self._global_flags(), cid, self._state_dir)
            return
        self._deletions[cid] = task

    async def _delete(self, cid: str) -> None:
        try:
            await _run(
                [*self._global_flags(), "delete", "--force", cid],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout_s=30,
            )
        except (OSError, TimeoutError) as exc:
            logger.warning("could not delete gVisor container %s: %s", cid, exc)
        await asyncio.to_thread(_remove_leftover_cgroups, cid)
        shutil.rmtree(self._state_dir / "bundles" / cid, ignore_errors=True)

    async def _await_deletions(self) -> None:
        while self._deletions:
            tasks = list(self._deletions.values())
            await asyncio.gather(*tasks, return_exceptions=True)
            for cid, task in list(self._deletions.items()):
                if task.done():
                    del self._deletions[cid]

    async def upload(
        self, session_id: str, name: str, source: bytes | str | os.PathLike[str]
    ) -> str:
        path = await super().upload(session_id, name, source)
        target = self._session(session_id).paths.inputs / name
        # Owned by the sandbox user, an input is refused by its read-only mount, not by
        # permissions (gVisor checks permissions first).
        await asyncio.to_thread(_give_to_sandbox_user, target)
        return path

    # --- resuming after a checkpoint ------------------------------------------------------

    async def _settle_resume(self, session: _Session) -> None:
        """Wait for the sandbox a checkpoint is restoring, and make it the session's."""
        task = self._resuming.get(session.id)
        if task is None:
            return
        try:
            connection = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise  # our caller was cancelled; the task goes on for the next one
            connection = None
        except Exception as exc:
            logger.warning(
                "the gVisor sandbox of session %s did not resume after its checkpoint (%s); "
                "a fresh one replaces it",
                session.id,
                exc,
            )
            connection = None
        if self._resuming.get(session.id) is task:
            del self._resuming[session.id]
        if connection is None:
            session.state_lost = True
        session.connection = connection

    async def _resume(self, session: _Session, image_dir: Path) -> WorkerConnection:
        try:
            return await self._restore_container(session, image_dir, session.paths.work)
        finally:
            await asyncio.to_thread(shutil.rmtree, image_dir, True)

    async def _ensure_worker(self, session: _Session) -> WorkerConnection:
        await self._settle_resume(session)
        return await super()._ensure_worker(session)

    # --- snapshots --------------------------------------------------------------------

    async def create_snapshot(
        self, session_id: str, name: str, *, full_memory: bool | None = None
    ) -> SnapshotId:
        """Save the session under ``name``: the whole sandbox (``full_memory``, by default the
        environment's choice) or the interpreter's variables, files and environment."""
        if not (self.full_memory if full_memory is None else full_memory):
            return await super().create_snapshot(session_id, name)
        if self.network:
            raise SnapshotError(
                "gVisor cannot checkpoint a sandbox that uses the host's network (hostinet); "
                "use create_snapshot(..., full_memory=False) in this environment"
            )
        session = self._session(session_id, create=False)
        async with session.lock:
            self._snapshots.check_can_add(session_id, name)
            connection = await self._ensure_worker(session)
            names = await _user_names(connection)
            sandbox = connection.process
            assert isinstance(sandbox, _Sandbox)
            tmp = self._snapshots.root / "tmp"
            image_dir = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=tmp))
            try:
                await self._checkpoint(session, connection, sandbox, image_dir)
            except BaseException:
                shutil.rmtree(image_dir, ignore_errors=True)
                raise
            # The sandbox saved itself and stopped: its channel ends, and nothing was lost.
            await connection.kill()
            session.connection = None
            # The files as they were at the checkpoint, before the resumed sandbox runs again.
            steps = await asyncio.gather(
                asyncio.to_thread(self._pack_files, session.paths.work),
                asyncio.to_thread(_store_image, self._snapshots, image_dir / _IMAGE_NAME),
                return_exceptions=True,
            )
            self._resuming[session.id] = asyncio.create_task(
                self._resume(session, image_dir), name=f"conch-gvisor-resume-{session.id}"
            )
            failure = next((step for step in steps if isinstance(step, BaseException)), None)
            if failure is not None:
                raise SnapshotError(f"could not store the checkpoint of {session_id!r}: {failure}")
            (files_digest, files_size), (image_digest, image_size) = steps
            data = {
                "backend": str(self.backend_type()),
                "size": files_size + image_size,
                "state": {"names": [], "unpicklable": [], "env": {}, "cwd": None},
                "files": {"digest": files_digest, "size": files_size},
                "extra_blobs": [image_digest],
                "memory": {
                    "digest": image_digest,
                    "size": image_size,
                    "runsc": runsc_version(self.runsc_path),
                    "platform": self.platform,
                    "network": self.network,
                    "names": names,
                },
            }
            return self._snapshots.add(session_id, name, data)

    async def _checkpoint(
        self,
        session: _Session,
        connection: WorkerConnection,
        sandbox: _Sandbox,
        image_dir: Path,
    ) -> None:
        argv = [*self._global_flags(), "checkpoint", "--image-path", str(image_dir), sandbox.cid]
        try:
            code, err = await _run(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout_s=_RUNSC_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            code, err = None, str(exc).encode()
        if code == 0 and (image_dir / _IMAGE_NAME).is_file():
            return
        detail = err.decode("utf-8", "replace").strip()[-600:] or f"exit code {code}"
        await asyncio.sleep(0.05)
        if connection.alive:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.request({"op": "ping"}), 5)
        if connection.alive:
            raise SnapshotError(
                f"runsc could not checkpoint session {session.id!r} ({detail}); the session "
                "is unchanged. create_snapshot(..., full_memory=False) saves its variables "
                "instead"
            )
        await connection.kill()
        session.connection = None
        session.state_lost = True
        raise SnapshotError(
            f"runsc could not checkpoint session {session.id!r} and its sandbox stopped "
            f"({detail}); the session's variables were lost and the next call starts afresh"
        )

    def _unpack_files(self, work: Path, archive: Path) -> Path:
        staging = _files.unpack_beside(work, archive)
        _give_to_sandbox_user(staging, recursive=True)
        return staging

    async def _restore(self, manifest: Manifest) -> RestoreReport:
        snapshot_id = manifest.snapshot.id
        memory = manifest.data.get("memory")
        session = self._session(manifest.snapshot.session_id)
        await self._settle_resume(session)
        if memory is None:
            return await super()._restore(manifest)
        made_by, here = memory.get("runsc"), runsc_version(self.runsc_path)
        if made_by != here:
            raise SnapshotError(
                f"snapshot {snapshot_id} is a gVisor checkpoint made by runsc {made_by!r}; this "
                f"is runsc {here!r}, and an image restores only with the build that made it. "
                "The session was not changed."
            )
        if bool(memory.get("network")) != self.network:
            raise SnapshotError(
                f"snapshot {snapshot_id} is a gVisor checkpoint of a sandbox "
                f"{'with' if memory.get('network') else 'without'} the host's network; restore "
                f"it in an environment with network={bool(memory.get('network'))}. The session "
                "was not changed."
            )
        async with session.lock:
            report_names = await self._restore_memory(session, manifest)
        return RestoreReport(snapshot=manifest.snapshot, restored=tuple(report_names))

    async def _restore_memory(self, session: _Session, manifest) -> list[str]:
        snapshot_id = manifest.snapshot.id
        store = self._snapshots
        memory, files = manifest.data["memory"], manifest.data["files"]
        image_dir = Path(tempfile.mkdtemp(prefix="restore-", dir=store.root / "tmp"))
        staging: Path | None = None
        connection: WorkerConnection | None = None
        # Everything is checked before the session is touched. The image is hashed while
        # runsc loads it (it is most of the bytes): the restored sandbox is not the
        # session's until the end, so a damaged image only costs that sandbox.
        check_image = asyncio.create_task(
            asyncio.to_thread(store.verify_blob, memory["digest"], snapshot_id)
        )
        try:
            steps = await asyncio.gather(
                asyncio.to_thread(store.verify_blob, files["digest"], snapshot_id),
                asyncio.to_thread(
                    self._unpack_files, session.paths.work, store.blob_path(files["digest"])
                ),
                return_exceptions=True,
            )
            if isinstance(steps[1], Path):
                staging = steps[1]
            failure = next((step for step in steps if isinstance(step, BaseException)), None)
            if failure is not None:
                raise failure
            _link_or_copy(store.blob_path(memory["digest"]), image_dir / _IMAGE_NAME)
            connection = await self._restore_container(session, image_dir, staging)
            await check_image
            for source in session.helpers:  # helpers defined after the checkpoint, too
                await self._define(connection, source)
            names = await _user_names(connection)
        except BaseException as error:
            if connection is not None:
                await connection.kill()
            if staging is not None:
                _files.discard(staging)
            damage = await _damage_behind(check_image, error)
            if damage is not None:
                raise damage from None
            raise
        finally:
            shutil.rmtree(image_dir, ignore_errors=True)
        old = session.connection
        if old is not None:
            old.process.kill()  # at once; the rest of its teardown goes on in the background
        # The new sandbox mounts the staging directory: it becomes the session's directory.
        work = session.paths.work
        retired = work.with_name(f"{work.name}.retired-{uuid.uuid4().hex[:8]}")
        os.rename(work, retired)
        os.rename(staging, work)
        self._in_background(_retire(old, retired))
        session.connection = connection
        session.state_lost = False
        return names

    # --- lifecycle ----------------------------------------------------------------------

    async def _end(self, session_id: str, *, delete_snapshots: bool) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            with contextlib.suppress(Exception):
                await self._settle_resume(session)
        await super()._end(session_id, delete_snapshots=delete_snapshots)

    async def cleanup(self) -> None:
        if self._closed:
            return
        await self._drain_pool()
        for session in list(self._sessions.values()):
            with contextlib.suppress(Exception):
                await self._settle_resume(session)
        await super().cleanup()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._await_deletions()
        await asyncio.to_thread(shutil.rmtree, self._state_dir, True)


class _Sandbox:
    """A running runsc sandbox as a :class:`WorkerProcess`: it is not the host's child (runsc
    detaches it), so its end is watched through a pidfd, and its exit status is unknown to
    the host (the worker's keeper reports the worker's in a frame)."""

    def __init__(self, env: GVisorEnvironment, cid: str, pid: int) -> None:
        self.cid = cid
        self._env = env
        self._pid = pid
        self._returncode: int | None = None
        self._killed = False
        self._ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # already gone
            self._pidfd = None
            self._on_exit()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def end_reason(self) -> str | None:
        """Why the sandbox ended when its keeper could not say (see ``WorkerProcess``)."""
        if self._returncode is None or self._killed:
            return None
        return (
            f"the gVisor sandbox {self.cid} ended without conch stopping it (killed from "
            "outside, or runsc failed)"
        )

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._returncode is None:
            self._returncode = -signal.SIGKILL if self._killed else 0
        self._ended.set()
        self._env._delete_later(self.cid)

    async def wait(self) -> int | None:
        await self._ended.wait()
        return self._returncode

    def kill(self) -> None:
        if self._returncode is not None:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self._pid, signal.SIGKILL)
        self._env._delete_later(self.cid)


# --- the bundle -----------------------------------------------------------------------------


def _python_dirs() -> list[str]:
    dirs = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(d for d in dirs if not any(d == s or d.startswith(s + "/") for s in _SYSTEM_DIRS))


def _make_rootfs(rootfs: Path) -> Path:
    """An empty, read-only root for the sandbox: mount points, and the host's symlinks for
    /bin, /lib... (merged /usr). Everything in it is mounted from the host read-only."""
    for directory in ("proc", "dev", "sys", "etc", "tmp", "session", "inputs", "opt/conch/worker"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / SANDBOX_SCRATCH.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for directory in (*_SYSTEM_DIRS, *_python_dirs()):
        target = rootfs / directory.lstrip("/")
        if os.path.islink(directory):
            if not os.path.lexists(target):
                os.symlink(os.readlink(directory), target)
        elif os.path.isdir(directory):
            target.mkdir(parents=True, exist_ok=True)
    for path in _ETC_FILES:
        target = rootfs / path.lstrip("/")
        if os.path.isdir(path) and not os.path.islink(path):
            target.mkdir(parents=True, exist_ok=True)
        elif os.path.exists(path):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
    for directory in [rootfs, *rootfs.rglob("*")]:
        if directory.is_dir() and not directory.is_symlink():
            directory.chmod(0o755)
    return rootfs


def _system_mounts() -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"destination": "/proc", "type": "proc", "source": "proc"}]
    binds = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    binds += _python_dirs()
    binds += [p for p in _ETC_FILES if os.path.exists(p)]
    for path in binds:
        mounts.append(_bind(path, path, readonly=True))
    return mounts


def _bind(source: str, destination: str, *, readonly: bool) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "ro" if readonly else "rw", "nosuid", "nodev"],
    }


_RLIMITS = {
    "memory_bytes": "RLIMIT_AS",
    "max_processes": "RLIMIT_NPROC",
    "max_file_bytes": "RLIMIT_FSIZE",
    "cpu_seconds": "RLIMIT_CPU",
    "open_files": "RLIMIT_NOFILE",
}


def _oci_spec(
    *,
    rootfs: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    limits: ResourceLimits,
    binds: Sequence[tuple[str, str, bool]],
    keeper_is_root: bool = False,
    network: bool = False,
) -> dict[str, Any]:
    rlimits = []
    for field, name in _RLIMITS.items():
        value = getattr(limits, field)
        if value:
            rlimits.append({"type": name, "hard": int(value), "soft": int(value)})
    kinds = ("pid", "ipc", "uts", "mount") if network else ("pid", "network", "ipc", "uts", "mount")
    linux: dict[str, Any] = {"namespaces": [{"type": kind} for kind in kinds]}
    if limits.max_processes:
        # A backstop on the host only: gVisor enforces RLIMIT_NPROC inside, and its ptrace
        # platform uses several host tasks per sandboxed process (hitting this limit makes
        # the sandbox's kernel panic, so it must stay far above what NPROC allows).
        linux["resources"] = {"pids": {"limit": 32 * limits.max_processes + 1024}}
    # Without a keeper as root, nothing; with one, only what it needs to drop to the user.
    kept = ["CAP_SETUID", "CAP_SETGID"] if keeper_is_root else []
    capabilities = {
        "bounding": kept,
        "effective": kept,
        "permitted": kept,
        "inheritable": [],
        "ambient": [],
    }
    uid = 0 if keeper_is_root else SANDBOX_UID
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": uid},
            "args": list(argv),
            "env": [f"{key}={value}" for key, value in env.items()],
            "cwd": SANDBOX_WORK,
            "capabilities": capabilities,
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "conch",
        "mounts": [
            *_system_mounts(),
            *(_bind(src, dst, readonly=ro) for src, dst, ro in binds),
        ],
        "linux": linux,
    }


def _adopt_directories(slot: SessionPaths, paths: SessionPaths) -> None:
    """Give a pooled sandbox's directories to a session: what the session already holds
    (uploaded inputs, say) moves into them, then they are renamed to the session's paths.
    The sandbox's mounts follow a rename: its gofer holds the directories, not their names."""
    for name in ("work", "scratch", "tmp", "inputs"):
        source, target = getattr(slot, name), getattr(paths, name)
        for entry in list(target.iterdir()):
            os.rename(entry, source / entry.name)
        target.rmdir()
        os.rename(source, target)
    if slot.log.exists():
        os.replace(slot.log, paths.log)
    shutil.rmtree(slot.root, ignore_errors=True)


def _give_to_sandbox_user(directory: Path, *, recursive: bool = False) -> None:
    """The sandbox runs as uid 1000: let it write its session's directories."""
    if os.geteuid() != 0:
        return
    os.chown(directory, SANDBOX_UID, SANDBOX_UID)
    if recursive:
        for root, dirs, files in os.walk(directory):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), SANDBOX_UID, SANDBOX_UID)


# --- helpers ----------------------------------------------------------------------------------


async def _run(
    argv: Sequence[str],
    *,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any,
    stderr: Any,
    timeout_s: float,
) -> tuple[int | None, bytes]:
    """Run a runsc command to its end; kill it after ``timeout_s`` (raising TimeoutError)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True
    )
    try:
        if stderr is subprocess.PIPE:
            _, err = await asyncio.wait_for(process.communicate(), timeout_s)
        else:
            err = b""
            await asyncio.wait_for(process.wait(), timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(Exception):
            await process.wait()
        raise
    return process.returncode, err or b""


def _delete_sync(flags: list[str], cid: str, state_dir: Path) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [*flags, "delete", "--force", cid],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
    shutil.rmtree(state_dir / "bundles" / cid, ignore_errors=True)


def _remove_leftover_cgroups(cid: str) -> None:
    """Remove the container's cgroups if ``runsc delete`` left them: it removes them right
    after killing the gofer, and under load the gofer may not have left them yet."""
    for controller in _CGROUP_ROOT.iterdir() if _CGROUP_ROOT.is_dir() else ():
        directory = controller / cid
        if directory.is_dir():
            _remove_cgroup(directory)


async def _retire(connection: WorkerConnection | None, directory: Path) -> None:
    """Finish stopping a replaced sandbox, then delete the directory it had mounted."""
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.kill()
    await asyncio.to_thread(shutil.rmtree, directory, True)


async def _damage_behind(check: asyncio.Task[None], error: BaseException) -> BaseException | None:
    """The image check's failure, which explains ``error`` when there is one: a damaged or
    missing image can make runsc (or the link to the image) fail before the check ends."""
    if isinstance(error, asyncio.CancelledError):
        # Not waited for (the hash goes on in its thread); its outcome is read, not lost.
        check.add_done_callback(lambda done: done.cancelled() or done.exception())
        return None
    if not check.done():
        await asyncio.wait([check])
    return None if check.cancelled() else check.exception()


async def _user_names(connection: WorkerConnection) -> list[str]:
    reply, _ = await connection.request({"op": "names"})
    if "error" in reply:
        raise SandboxError(f"the worker could not list its variables: {reply['error']}")
    return list(reply.get("names", []))


def _store_image(store, image: Path) -> tuple[str, int]:
    """File the checkpoint image in the snapshot store under its SHA-256, keeping ``image``
    (a hard link to the blob, or a copy) for the sandbox that resumes from it."""
    hasher = hashlib.sha256()
    size = 0
    with open(image, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    digest = hasher.hexdigest()
    target = store.blob_path(digest)
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        staging = target.with_name(target.name + f".{uuid.uuid4().hex[:8]}.partial")
        _link_or_copy(image, staging)
        os.replace(staging, target)
    return digest, size


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


@functools.cache
def runsc_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.stdout.strip().splitlines()
    return first[0].removeprefix("runsc version ").strip() if first else "unknown"


@functools.cache
def gvisor_works() -> tuple[bool, str]:
    """Whether a runsc sandbox really starts Python here (tried once), and if not, why."""
    path = shutil.which("runsc")
    if path is None:
        return False, "gVisor's runsc is not installed (Debian package 'runsc')"
    with tempfile.TemporaryDirectory(prefix="conch-gvisor-probe-") as tmp:
        base = Path(tmp)
        rootfs = _make_rootfs(base / "rootfs")
        bundle = base / "bundle"
        bundle.mkdir()
        spec = _oci_spec(
            rootfs=rootfs,
            argv=[sys.executable, "-I", "-S", "-c", "print('ok')"],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            limits=ResourceLimits(open_files=1024),
            binds=[],
        )
        (bundle / "config.json").write_text(json.dumps(spec))
        cid = f"conch-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        flags = [path, "--root", str(base / "state"), "--platform", PLATFORM, "--network", "none"]
        try:
            result = subprocess.run(
                [*flags, "run", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            _delete_sync(flags, cid, base)
            return False, f"runsc did not finish a trivial sandbox in 30 s ({PLATFORM} platform)"
        except OSError as exc:
            return False, f"runsc did not run: {exc}"
        _delete_sync(flags, cid, base)
        if result.returncode != 0 or result.stdout.strip() != "ok":
            detail = (result.stderr.strip() or f"exit code {result.returncode}")[-300:]
            return False, f"runsc failed here: {detail}"
    return True, f"gVisor works (runsc {runsc_version(path)}, {PLATFORM} platform)"


__all__ = ["GVisorEnvironment", "gvisor_works", "runsc_version"]
