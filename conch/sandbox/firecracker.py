"""The ``firecracker`` backend: each session's worker runs inside its own Firecracker microVM.

How a VM is made (the order of Firecracker's getting-started guide, over its REST API on a
unix socket, with ``httpx``'s UDS transport)::

    PUT /boot-source        {"kernel_image_path", "boot_args"}
    PUT /drives/rootfs      {"drive_id": "rootfs", "path_on_host", "is_root_device": true,
                             "is_read_only": true}
    PUT /machine-config     {"vcpu_count", "mem_size_mib"}
    PUT /vsock              {"guest_cid", "uds_path": "v.sock"}
    PUT /network-interfaces/eth0   only when a TAP device was given (no network otherwise)
    PUT /actions            {"action_type": "InstanceStart"}

The guest. The root file system is the operator's (see ``GUEST_INIT`` and docs/sandboxes.md):
it holds python3, the conch worker at ``/opt/conch/worker`` and ``GUEST_INIT`` as the kernel's
``init``. The init mounts tmpfs on ``/session``, ``/conch``, ``/inputs`` and ``/tmp`` (so the
session's files live in guest memory and a VM snapshot keeps them: the root drive is
read-only and never changes), reads the worker's configuration from the kernel command line
(``conch.worker=<base64 JSON>``) and starts the worker listening on vsock port 5252.

The channel. Firecracker proxies guest vsock ports to a host unix socket (``uds_path``): the
host connects, sends ``CONNECT 5252\\n``, reads ``OK <host port>\\n``, and the stream is the
worker's channel. A VM snapshot resets every vsock connection, so the worker keeps its
interpreter and accepts a new connection (``"listen"`` in the worker's configuration).

Snapshots. ``create_snapshot`` saves what every backend saves (interpreter state name by name,
the files, the environment; packed by the worker, since the files are inside the VM) and,
with ``vm_snapshots`` (the default), the whole VM: close the vsock link, ``PATCH /vm
{"state": "Paused"}``, ``PUT /snapshot/create {"snapshot_type": "Full", "snapshot_path",
"mem_file_path"}``, ``PATCH /vm {"state": "Resumed"}``, reconnect. The state and memory files
go into the content-addressed snapshot store. ``restore_snapshot`` hashes every file first
(a damaged or missing one refuses the restore and leaves the session as it was), checks the
root file system is the one the VM was saved with, starts a new Firecracker process, ``PUT
/snapshot/load {"snapshot_path", "mem_backend": {"backend_type": "File", "backend_path"},
"resume_vm": true}`` and reconnects: the same worker (same incarnation) answers, with every
object it held. If another worker answers, the pickled state and files are restored into it.

The pool. ``pool_size`` VMs are booted ahead (in the background, after the first use or
:meth:`FirecrackerEnvironment.warm_pool`): a session takes one that is already running and
connected, so getting a VM costs a list pop, not a boot.

This machine cannot run Firecracker (no binary in the registries it reaches; its /dev/kvm is
PVM, where stock guest kernels hang): the backend is tested against
``conch.testing.fake_firecracker``, a fake API server. docs/sandboxes.md says exactly what was
and was not verified.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conch.errors import (
    ConfigurationError,
    SandboxError,
    SandboxUnavailableError,
    SnapshotError,
)
from conch.sandbox._connection import WorkerConnection, WorkerDied
from conch.sandbox._remote import RemoteWorkerEnvironment
from conch.sandbox._snapshots import Manifest
from conch.sandbox._types import BackendType, Capability, ExecutionContext
from conch.sandbox._worker_environment import (
    WORKER_CAPABILITIES,
    InsidePaths,
    ResourceLimits,
    _Outcome,
    _Session,
)

logger = logging.getLogger("conch.sandbox")

GUEST_WORK = "/session"
GUEST_SCRATCH = "/conch/scratch"
GUEST_TMP = "/tmp"
GUEST_INPUTS = "/inputs"
GUEST_WORKER = "/opt/conch/worker/agent.py"
GUEST_INIT_PATH = "/opt/conch/init"
WORKER_VSOCK_PORT = 5252
GUEST_CID = 3
VSOCK_UDS = "v.sock"
DEFAULT_BOOT_ARGS = f"console=ttyS0 reboot=k panic=1 pci=off init={GUEST_INIT_PATH}"
_API_TIMEOUT_S = 30.0
_SNAPSHOT_TIMEOUT_S = 300.0
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes; keep a margin

_CAPABILITIES = WORKER_CAPABILITIES | {
    Capability.PROCESS_ISOLATION,
    Capability.FILESYSTEM_ISOLATION,
    Capability.RESOURCE_LIMITS,
}

DEFAULT_LIMITS = ResourceLimits(
    max_processes=512,
    max_file_bytes=1 << 30,
    open_files=4096,
)
"""Inside a VM the machine itself bounds memory and CPUs; the worker still bounds processes,
file size and open files."""

GUEST_INIT = f"""#!/bin/sh
# conch guest init (install as {GUEST_INIT_PATH}, mode 755; the kernel runs it as PID 1).
# The session's files live in tmpfs, so a VM snapshot (memory) keeps them.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for dir in {GUEST_WORK} /conch {GUEST_INPUTS} {GUEST_TMP}; do
    mkdir -p "$dir" 2>/dev/null
    mount -t tmpfs -o mode=1777 tmpfs "$dir"
done
mkdir -p {GUEST_SCRATCH}
config=$(tr ' ' '\\n' < /proc/cmdline | sed -n 's/^conch\\.worker=//p' | base64 -d)
export PATH=/usr/local/bin:/usr/bin:/bin HOME={GUEST_WORK} TMPDIR={GUEST_TMP} LANG=C.UTF-8
cd {GUEST_WORK}
python3 -I {GUEST_WORKER} "$config"
# The worker ended: end the VM (with reboot=k Firecracker exits).
reboot -f
"""
"""The init script a conch root file system runs as PID 1 (see docs/sandboxes.md)."""


class FirecrackerAPIError(SandboxError):
    """Firecracker refused an API request; ``fault_message`` is its own words."""

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"Firecracker refused {method} {path} (HTTP {status}): {fault_message}")
        self.status = status
        self.fault_message = fault_message


@dataclass(frozen=True)
class _Jailer:
    path: str
    uid: int
    gid: int
    chroot_base: Path


class _VM:
    """One Firecracker process: its API client, its directory, its vsock socket."""

    def __init__(
        self,
        vm_id: str,
        workdir: Path,
        process: asyncio.subprocess.Process,
        api_socket: Path,
        log_path: Path,
        jailed: bool,
    ) -> None:
        self.id = vm_id
        self.workdir = workdir
        """Where Firecracker's relative paths land (its cwd, or the jail's root)."""
        self.process = process
        self.api_socket = api_socket
        self.log_path = log_path
        self.jailed = jailed
        self.tap: str | None = None
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(api_socket)),
            base_url="http://localhost",
            timeout=_API_TIMEOUT_S,
        )
        self.requests: list[tuple[str, str, Any]] = []
        """Every API request sent, in order (method, path, JSON body): for logs and tests."""
        self.on_kill: list[Any] = []
        """Called once when the VM is stopped (returns its TAP device to the free list)."""
        self._released = False

    @property
    def vsock_path(self) -> Path:
        return self.workdir / VSOCK_UDS

    def path_for_firecracker(self, host_path: Path) -> str:
        """A host path as this Firecracker process must name it (inside its jail, if any)."""
        if not self.jailed:
            return str(host_path)
        return "/" + str(host_path.relative_to(self.workdir))

    async def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout=None
    ) -> Any:
        self.requests.append((method, path, body))
        try:
            response = await self.client.request(
                method, path, json=body, timeout=timeout or _API_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise SandboxError(
                f"the Firecracker API of VM {self.id} did not answer {method} {path}: "
                f"{exc!r}{self._exit_note()}"
            ) from exc
        if response.status_code >= 400:
            try:
                fault = response.json().get("fault_message", response.text)
            except ValueError:
                fault = response.text
            raise FirecrackerAPIError(method, path, response.status_code, str(fault))
        return response.json() if response.content else None

    def _exit_note(self) -> str:
        code = self.process.returncode
        return "" if code is None else f" (firecracker exited with status {code})"

    async def wait_for_api(self, timeout_s: float) -> None:
        """Wait until Firecracker listens on its API socket."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        delay = 0.005
        while True:
            if self.process.returncode is not None:
                raise SandboxError(
                    f"firecracker exited with status {self.process.returncode} before its API "
                    f"came up: {_tail(self.log_path)}"
                )
            if self.api_socket.exists():
                with contextlib.suppress(httpx.HTTPError):
                    await self.client.get("/", timeout=2)
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise SandboxError(
                    f"firecracker's API socket {self.api_socket} did not come up in "
                    f"{timeout_s:g} s: {_tail(self.log_path)}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def connect_worker(self, timeout_s: float) -> WorkerConnection:
        """Open the vsock channel to the guest's worker (retrying while the guest boots)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        delay = 0.005
        last = "no attempt"
        while True:
            if self.process.returncode is not None:
                raise SandboxError(
                    f"the Firecracker VM {self.id} exited with status "
                    f"{self.process.returncode} while booting: {_tail(self.log_path)}"
                )
            try:
                reader, writer = await vsock_connect(self.vsock_path, WORKER_VSOCK_PORT)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                remaining = max(deadline - asyncio.get_running_loop().time(), 1.0)
                return await WorkerConnection.attach(
                    reader,
                    writer,
                    _VMProcess(self),
                    log_path=self.log_path,
                    start_timeout_s=remaining,
                )
            if asyncio.get_running_loop().time() > deadline:
                raise SandboxError(
                    f"the worker in Firecracker VM {self.id} did not accept a vsock connection "
                    f"on port {WORKER_VSOCK_PORT} within {timeout_s:g} s (last: {last}). "
                    f"Firecracker's log: {_tail(self.log_path)}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def kill(self) -> None:
        """Stop the VM at once and remove its directory (never raises)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.process.pid, signal.SIGKILL)
        if not self._released:
            self._released = True
            for callback in self.on_kill:
                callback()
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(self.client.aclose())

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class _VMProcess:
    """The :class:`WorkerProcess` behind one vsock connection to a VM's worker.

    ``detached`` turns this connection into a mere channel: killing it closes the link and
    leaves the VM running (for the reconnect around a VM snapshot)."""

    def __init__(self, vm: _VM) -> None:
        self.vm = vm
        self.detached = False

    @property
    def pid(self) -> int | None:
        return self.vm.process.pid

    @property
    def returncode(self) -> int | None:
        return self.vm.process.returncode

    async def wait(self) -> int | None:
        if self.detached:
            return self.vm.process.returncode
        code = await self.vm.process.wait()
        await asyncio.to_thread(self.vm.remove_files)
        return code

    def kill(self) -> None:
        if not self.detached:
            self.vm.kill()


async def vsock_connect(
    uds_path: Path, port: int, *, timeout_s: float = 5.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Firecracker's host-initiated vsock connection: ``CONNECT <port>\\n``, ``OK <n>\\n``.

    Firecracker closes the connection when nothing in the guest listens on the port."""
    reader, writer = await asyncio.open_unix_connection(str(uds_path), limit=16 * 1024 * 1024)
    try:
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        if not line.startswith(b"OK "):
            raise ConnectionError(
                f"vsock port {port} refused the connection ({line[:80]!r}): nothing listens"
            )
    except BaseException:
        writer.close()
        raise
    return reader, writer


class _Pool:
    """VMs booted ahead, each with its worker connected, handed out one per session."""

    def __init__(self, environment: FirecrackerEnvironment, size: int) -> None:
        self._environment = environment
        self.size = size
        self._ready: collections.deque[WorkerConnection] = collections.deque()
        self._filling: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        self.hits = 0
        """Allocations served by an already-booted VM."""
        self.cold_boots = 0
        """Allocations that had to boot a VM while the caller waited."""
        self._closed = False

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def take(self) -> WorkerConnection:
        while self._ready:
            connection = self._ready.popleft()
            if connection.alive:
                self.hits += 1
                self.refill()
                return connection
            await connection.kill()
        self.refill()
        self.cold_boots += 1
        return await self._environment._boot_vm()

    def refill(self) -> None:
        if self._closed or self.size <= 0:
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        while not self._closed and len(self._ready) < self.size:
            try:
                connection = await self._environment._boot_vm()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                logger.warning("could not boot a Firecracker VM for the pool: %s", exc)
                return
            if self._closed:
                await connection.kill()
                return
            self._ready.append(connection)

    async def fill(self) -> None:
        self.refill()
        if self._filling is not None:
            await asyncio.shield(self._filling)
        if len(self._ready) < self.size and self.last_error is not None:
            raise SandboxError(f"the VM pool could not be filled: {self.last_error}")

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None and not self._filling.done():
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        while self._ready:
            await self._ready.popleft().kill()


class FirecrackerEnvironment(RemoteWorkerEnvironment):
    """Sessions in Firecracker microVMs, booted ahead in a pool, with whole-VM snapshots.

    ``kernel_image`` and ``rootfs`` default to ``$CONCH_FIRECRACKER_KERNEL`` and
    ``$CONCH_FIRECRACKER_ROOTFS``; ``firecracker`` (a path, or an argv list) to
    ``$CONCH_FIRECRACKER_BIN`` or ``firecracker`` on PATH. ``jailer`` runs each VM under
    Firecracker's jailer (chroot, uid/gid) instead. ``tap_devices`` gives the VMs network,
    one TAP device each (none by default: the VM has no network device at all)."""

    inside_paths = InsidePaths(GUEST_WORK, GUEST_SCRATCH, GUEST_TMP, GUEST_INPUTS)

    def __init__(
        self,
        *,
        kernel_image: str | os.PathLike[str] | None = None,
        rootfs: str | os.PathLike[str] | None = None,
        firecracker: str | Sequence[str] | None = None,
        jailer: str | None = None,
        jailer_uid: int = 0,
        jailer_gid: int = 0,
        jailer_chroot_base: str | os.PathLike[str] | None = None,
        vcpu: int = 1,
        mem_mib: int = 512,
        boot_args: str = DEFAULT_BOOT_ARGS,
        pool_size: int = 2,
        vm_snapshots: bool = True,
        tap_devices: Sequence[str] = (),
        boot_timeout_s: float = 30.0,
        **options: Any,
    ) -> None:
        kernel = kernel_image or os.environ.get("CONCH_FIRECRACKER_KERNEL")
        root_fs = rootfs or os.environ.get("CONCH_FIRECRACKER_ROOTFS")
        if not kernel or not root_fs:
            raise ConfigurationError(
                "the firecracker backend needs a guest kernel and a root file system: pass "
                "kernel_image= and rootfs= or set CONCH_FIRECRACKER_KERNEL and "
                "CONCH_FIRECRACKER_ROOTFS (docs/sandboxes.md says how to build them)"
            )
        self.kernel_image = Path(kernel).resolve()
        self.rootfs = Path(root_fs).resolve()
        for what, path in (("kernel image", self.kernel_image), ("rootfs", self.rootfs)):
            if not path.is_file():
                raise ConfigurationError(f"the Firecracker {what} {path} is not a file")
        self.firecracker_argv = _firecracker_argv(firecracker)
        if not 1 <= vcpu <= 32:
            raise ConfigurationError(f"vcpu must be between 1 and 32, not {vcpu}")
        if mem_mib < 1:
            raise ConfigurationError(f"mem_mib must be positive, not {mem_mib}")
        if pool_size < 0:
            raise ConfigurationError(f"pool_size must be >= 0, not {pool_size}")
        self.vcpu = vcpu
        self.mem_mib = mem_mib
        self.boot_args = boot_args
        self.vm_snapshots = vm_snapshots
        self.boot_timeout_s = boot_timeout_s
        self._free_taps = list(tap_devices)
        self.network = bool(tap_devices)
        self._jailer = None
        if jailer:
            base = Path(jailer_chroot_base or "/srv/jailer")
            self._jailer = _Jailer(jailer, jailer_uid, jailer_gid, base)
        super().__init__(**options)
        self._runtime = _short_directory(self.root / "vms")
        self._vm_counter = 0
        self._pool = _Pool(self, pool_size)
        self._rootfs_digest: str | None = None

    # --- what the contract asks -------------------------------------------------------

    def default_limits(self) -> ResourceLimits:
        return DEFAULT_LIMITS

    def capabilities(self) -> frozenset[Capability]:
        caps = set(_CAPABILITIES)
        if not self.network:
            caps.add(Capability.NETWORK_ISOLATION)
        if self.vm_snapshots and not self.network:
            caps.add(Capability.VM_SNAPSHOT)
        return frozenset(caps)

    def backend_type(self) -> BackendType:
        return BackendType.FIRECRACKER

    # --- the pool -------------------------------------------------------------------------

    @property
    def pool(self) -> _Pool:
        return self._pool

    async def warm_pool(self) -> None:
        """Boot VMs until the pool holds ``pool_size`` of them (raises if one fails)."""
        await self._pool.fill()

    async def _connect(self, session: _Session, worker_config: dict[str, Any]) -> WorkerConnection:
        return await self._pool.take()

    # --- booting -----------------------------------------------------------------------------

    def worker_config(self) -> dict[str, Any]:
        """What the guest's worker is started with (the kernel command line carries it)."""
        return {
            "cwd": GUEST_WORK,
            "scratch": GUEST_SCRATCH,
            "limits": self.limits.to_worker(),
            "max_spill_bytes": self._max_spill_bytes,
            "listen": f"vsock:{WORKER_VSOCK_PORT}",
        }

    def full_boot_args(self) -> str:
        encoded = base64.b64encode(
            json.dumps(self.worker_config(), separators=(",", ":")).encode()
        ).decode()
        return f"{self.boot_args} conch.worker={encoded}"

    async def _spawn(self) -> _VM:
        """Start a Firecracker process with nothing configured; wait for its API."""
        self._vm_counter += 1
        vm_id = f"conch-{os.getpid()}-{self._vm_counter}-{uuid.uuid4().hex[:6]}"
        if self._jailer is None:
            workdir = self._runtime / f"vm{self._vm_counter}"
            workdir.mkdir(parents=True)
            api_socket = workdir / "api.sock"
            argv = [*self.firecracker_argv, "--api-sock", str(api_socket), "--id", vm_id]
        else:
            exec_name = Path(self.firecracker_argv[0]).name
            workdir = self._jailer.chroot_base / exec_name / vm_id / "root"
            api_socket = workdir / "api.sock"
            argv = jailer_argv(self._jailer, self.firecracker_argv[0], vm_id)
        log_path = self._runtime / f"vm{self._vm_counter}.log"
        with open(log_path, "ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=str(workdir) if self._jailer is None else None,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SandboxUnavailableError(
                    f"cannot start firecracker ({argv[0]}): {exc}"
                ) from exc
        vm = _VM(vm_id, workdir, process, api_socket, log_path, self._jailer is not None)
        try:
            await vm.wait_for_api(self.boot_timeout_s)
        except BaseException:
            vm.kill()
            raise
        return vm

    def _jail_file(self, vm: _VM, source: Path, name: str) -> str:
        """Hard-link a host file into the VM's jail (the jailer's chroot); its inner path."""
        target = vm.workdir / name
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return "/" + name

    async def _boot_vm(self) -> WorkerConnection:
        """Configure and start a fresh VM in the documented order; connect to its worker."""
        vm = await self._spawn()
        try:
            kernel = str(self.kernel_image)
            rootfs = str(self.rootfs)
            if vm.jailed:
                kernel = self._jail_file(vm, self.kernel_image, "vmlinux")
                rootfs = self._jail_file(vm, self.rootfs, "rootfs.ext4")
            await vm.api(
                "PUT",
                "/boot-source",
                {"kernel_image_path": kernel, "boot_args": self.full_boot_args()},
            )
            await vm.api(
                "PUT",
                "/drives/rootfs",
                {
                    "drive_id": "rootfs",
                    "path_on_host": rootfs,
                    "is_root_device": True,
                    "is_read_only": True,
                },
            )
            await vm.api(
                "PUT",
                "/machine-config",
                {"vcpu_count": self.vcpu, "mem_size_mib": self.mem_mib},
            )
            await vm.api("PUT", "/vsock", {"guest_cid": GUEST_CID, "uds_path": VSOCK_UDS})
            if self.network:
                if not self._free_taps:
                    raise SandboxError(
                        "every TAP device given in tap_devices is in use: give more, or "
                        "lower pool_size"
                    )
                tap = vm.tap = self._free_taps.pop(0)
                vm.on_kill.append(lambda: self._free_taps.append(tap))
                await vm.api(
                    "PUT",
                    "/network-interfaces/eth0",
                    {"iface_id": "eth0", "host_dev_name": vm.tap},
                )
            await vm.api("PUT", "/actions", {"action_type": "InstanceStart"})
            return await vm.connect_worker(self.boot_timeout_s)
        except BaseException:
            vm.kill()
            raise

    # --- faults: name the VM ---------------------------------------------------------------

    async def _await_reply(
        self,
        session: _Session,
        connection: WorkerConnection,
        message: dict[str, Any],
        ctx: ExecutionContext,
        spill,
    ) -> _Outcome:
        outcome = await super()._await_reply(session, connection, message, ctx, spill)
        process = connection.process
        if outcome.died is not None and isinstance(process, _VMProcess):
            died = outcome.died
            vm = process.vm
            if died.exit_code is not None:
                what = (
                    f"the Firecracker VM {vm.id} ended (firecracker exit status {died.exit_code})"
                )
            else:
                what = f"the vsock link to the worker of Firecracker VM {vm.id} broke"
            # The worker's own exit status dies with the guest: Firecracker's is no stand-in.
            outcome.died = WorkerDied(f"{what}: {died.reason}", None)
        return outcome

    # --- VM snapshots ----------------------------------------------------------------------

    async def _save_machine(self, session: _Session) -> dict[str, Any] | None:
        connection = session.connection
        if not self.vm_snapshots or connection is None:
            return None
        process = connection.process
        if not isinstance(process, _VMProcess):
            return None
        vm = process.vm
        if vm.tap is not None:
            logger.info("VM %s has a network device: saving interpreter state only", vm.id)
            return None
        staging = vm.workdir / f"snapshot-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        # Firecracker resets vsock connections at a snapshot: close ours first, so the
        # worker is idle in accept() while the VM is saved, then reconnect.
        process.detached = True
        session.connection = None
        await connection.kill()
        failure: BaseException | None = None
        paused = False
        try:
            await vm.api("PATCH", "/vm", {"state": "Paused"})
            paused = True
            await vm.api(
                "PUT",
                "/snapshot/create",
                {
                    "snapshot_type": "Full",
                    "snapshot_path": vm.path_for_firecracker(staging / "vmstate"),
                    "mem_file_path": vm.path_for_firecracker(staging / "memory"),
                },
                timeout=_SNAPSHOT_TIMEOUT_S,
            )
        except (SandboxError, OSError) as exc:
            failure = exc
        try:
            if paused:
                await vm.api("PATCH", "/vm", {"state": "Resumed"})
            session.connection = await vm.connect_worker(self.boot_timeout_s)
        except BaseException as exc:
            vm.kill()
            session.state_lost = True
            shutil.rmtree(staging, ignore_errors=True)
            raise SnapshotError(
                f"the Firecracker VM {vm.id} did not come back after its snapshot ({exc}); "
                "the session's variables were lost and the next call boots a fresh VM"
            ) from exc
        if failure is not None:
            shutil.rmtree(staging, ignore_errors=True)
            raise SnapshotError(f"Firecracker could not snapshot VM {vm.id}: {failure}")
        try:
            return await asyncio.to_thread(self._store_vm_files, staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    def _store_vm_files(self, staging: Path) -> dict[str, Any]:
        blobs, size = {}, 0
        for name in ("vmstate", "memory"):
            writer = self._snapshots.new_blob()
            try:
                with open(staging / name, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        writer.write(chunk)
            except BaseException:
                writer.discard()
                raise
            size += writer.size
            blobs[name] = writer.commit()
        return {
            "kind": "firecracker",
            "blobs": blobs,
            "size": size,
            "rootfs": {"path": str(self.rootfs), "sha256": self._rootfs_sha256()},
            "vcpu": self.vcpu,
            "mem_mib": self.mem_mib,
        }

    def _rootfs_sha256(self) -> str:
        """The root file system's hash (once per environment): a VM image only loads on the
        very disk it was saved with."""
        if self._rootfs_digest is None:
            self._rootfs_digest = _file_sha256(self.rootfs)
        return self._rootfs_digest

    def _verify_machine(self, manifest: Manifest) -> None:
        super()._verify_machine(manifest)
        machine = manifest.data["machine"]
        if machine.get("kind") != "firecracker":
            raise SnapshotError(f"snapshot {manifest.snapshot.id} holds no Firecracker VM image")
        saved = machine.get("rootfs", {}).get("sha256")
        if saved != self._rootfs_sha256():
            raise SnapshotError(
                f"snapshot {manifest.snapshot.id} was saved with another root file system "
                f"({machine.get('rootfs', {}).get('path')}); its VM cannot run on {self.rootfs}. "
                "The session was not changed."
            )

    async def _load_machine(self, session: _Session, manifest: Manifest) -> WorkerConnection | None:
        machine = manifest.data["machine"]
        vm = await self._spawn()
        try:
            paths = {}
            for name, digest in machine["blobs"].items():
                target = vm.workdir / name
                await asyncio.to_thread(_link_or_copy, self._snapshots.blob_path(digest), target)
                paths[name] = vm.path_for_firecracker(target)
            await vm.api(
                "PUT",
                "/snapshot/load",
                {
                    "snapshot_path": paths["vmstate"],
                    "mem_backend": {"backend_type": "File", "backend_path": paths["memory"]},
                    "resume_vm": True,
                },
                timeout=_SNAPSHOT_TIMEOUT_S,
            )
            return await vm.connect_worker(self.boot_timeout_s)
        except FirecrackerAPIError as exc:
            vm.kill()
            raise SnapshotError(
                f"Firecracker could not load snapshot {manifest.snapshot.id}: "
                f"{exc.fault_message}. The session was not changed."
            ) from exc
        except BaseException:
            vm.kill()
            raise

    # --- lifecycle -------------------------------------------------------------------------

    async def health_check(self) -> bool:
        if self._pool.ready:
            return True
        return await super().health_check()

    async def cleanup(self) -> None:
        if self._closed:
            return
        await self._pool.close()
        await super().cleanup()
        shutil.rmtree(self._runtime, ignore_errors=True)


def jailer_argv(jailer: _Jailer, firecracker: str, vm_id: str) -> list[str]:
    """The jailer's command line: it chroots, drops to uid/gid and execs firecracker."""
    return [
        jailer.path,
        "--id",
        vm_id,
        "--exec-file",
        firecracker,
        "--uid",
        str(jailer.uid),
        "--gid",
        str(jailer.gid),
        "--chroot-base-dir",
        str(jailer.chroot_base),
        "--",
        "--api-sock",
        "/api.sock",
    ]


def _firecracker_argv(firecracker: str | Sequence[str] | None) -> list[str]:
    if firecracker is None:
        firecracker = os.environ.get("CONCH_FIRECRACKER_BIN") or shutil.which("firecracker")
    if not firecracker:
        raise SandboxUnavailableError(
            "no firecracker binary: put it on PATH or set CONCH_FIRECRACKER_BIN (Firecracker "
            "is released on GitHub; Debian and PyPI do not package it)"
        )
    return [firecracker] if isinstance(firecracker, str) else list(firecracker)


def _short_directory(preferred: Path) -> Path:
    """A directory for the VMs' unix sockets, whose paths must stay under 108 bytes."""
    if len(str(preferred / "vm9999" / "api.sock")) <= _MAX_UNIX_PATH:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="conch-fc-"))


def _link_or_copy(source: Path, target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return "(no log)"
    return data.decode("utf-8", "replace").strip() or "(empty log)"


KVM_DEVICE = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")


def firecracker_works(
    kernel_image: str | os.PathLike[str] | None = None,
    rootfs: str | os.PathLike[str] | None = None,
    firecracker: str | Sequence[str] | None = None,
) -> tuple[bool, str]:
    """Whether Firecracker VMs can run here, and if not, every reason why (boots nothing)."""
    if firecracker is not None and not isinstance(firecracker, str):
        firecracker = tuple(firecracker)
    return _firecracker_works(
        str(kernel_image or os.environ.get("CONCH_FIRECRACKER_KERNEL") or ""),
        str(rootfs or os.environ.get("CONCH_FIRECRACKER_ROOTFS") or ""),
        firecracker or os.environ.get("CONCH_FIRECRACKER_BIN") or shutil.which("firecracker"),
    )


@functools.cache
def _firecracker_works(
    kernel_image: str, rootfs: str, firecracker: str | tuple[str, ...] | None
) -> tuple[bool, str]:
    reasons = []
    if not firecracker:
        reasons.append(
            "no firecracker binary (not on PATH, CONCH_FIRECRACKER_BIN unset; Debian and "
            "PyPI do not package it)"
        )
    if not KVM_DEVICE.exists():
        reasons.append("/dev/kvm does not exist (no KVM)")
    elif not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        reasons.append("/dev/kvm is not readable and writable by this user")
    elif PVM_MODULE.exists():
        reasons.append("/dev/kvm is PVM (kvm_pvm module): stock guest kernels hang under it")
    for value, variable, what in (
        (kernel_image, "CONCH_FIRECRACKER_KERNEL", "guest kernel"),
        (rootfs, "CONCH_FIRECRACKER_ROOTFS", "root file system"),
    ):
        if not value:
            reasons.append(f"no {what} given ({variable} is not set)")
        elif not os.path.isfile(value):
            reasons.append(f"the {what} {value} is not a file")
    if reasons:
        return False, "; ".join(reasons)
    return True, "firecracker, KVM, a kernel and a rootfs are present (not booted by this probe)"
