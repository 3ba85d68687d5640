"""A fake Firecracker: its REST API on a unix socket, its vsock proxy, and a "guest".

Run it the way Firecracker is run (``python -m conch.testing.fake_firecracker --api-sock
PATH [--id ID]``, working directory = where relative paths land) and point the firecracker
backend at it (``FirecrackerEnvironment(firecracker=fake_firecracker_argv(), ...)``).

What it is faithful to, from Firecracker's swagger definition (src/firecracker/swagger/
firecracker.yaml) and its vsock and snapshot documents:

- the request bodies: required fields, types, enums, and no unknown fields (Firecracker's
  deserializer refuses them); the drive/interface id in the path must match the body's;
- the state rules: resources are configured before ``InstanceStart`` only; ``InstanceStart``
  needs a boot source; ``PATCH /vm`` needs a started VM; ``PUT /snapshot/create`` needs a
  paused one; ``PUT /snapshot/load`` only on a fresh process with nothing but the logger or
  metrics configured, with exactly one of ``mem_file_path`` and ``mem_backend``; a failed load
  ends the process. Refusals are HTTP 400 with ``{"fault_message": ...}`` (the wording is
  close to Firecracker's, not byte-identical);
- vsock: after start it listens on ``uds_path``; a host connection sends ``CONNECT <port>\\n``
  and gets ``OK <port>\\n`` when something in the guest listens on the port, or is closed;
  a snapshot resets every vsock connection;
- the process ends when the guest does (Firecracker exits on guest reboot), and the guest
  ends with the process.

What it fakes: there is no VM. "Booting" starts the real conch worker from
``conch.sandbox.worker`` under bubblewrap, with the paths the guest init would give it
(``/session``, ``/conch/scratch``, ``/inputs``, ``/tmp``, the worker at
``/opt/conch/worker``), configured from the ``conch.worker=`` kernel argument, and listening
on a unix socket that stands in for the guest's vsock port. "Pausing" stops those processes
(SIGSTOP). A snapshot writes a small JSON state file and a sparse memory file of the VM's
size; loading one starts a *fresh* worker, since no memory is restored: the backend sees
another incarnation and falls back to the pickled state (which is what the tests check).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from conch.sandbox.worker import WORKER_DIR

_AFTER_START = "The requested operation is not supported after starting the microVM."
_BEFORE_START = "The requested operation is not supported before starting the microVM."
_STR, _BOOL, _INT, _OBJ, _LIST = str, bool, int, dict, list

# name -> (required fields, optional fields); a field maps to its type or to its enum values.
SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "BootSource": (
        {"kernel_image_path": _STR},
        {"boot_args": _STR, "initrd_path": _STR},
    ),
    "Drive": (
        {"drive_id": _STR, "is_root_device": _BOOL},
        {
            "partuuid": _STR,
            "cache_type": ("Unsafe", "Writeback"),
            "is_read_only": _BOOL,
            "path_on_host": _STR,
            "rate_limiter": _OBJ,
            "io_engine": ("Sync", "Async"),
            "socket": _STR,
        },
    ),
    "MachineConfiguration": (
        {"mem_size_mib": _INT, "vcpu_count": _INT},
        {
            "smt": _BOOL,
            "cpu_template": ("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"),
            "track_dirty_pages": _BOOL,
            "huge_pages": ("None", "Transparent", "2M"),
        },
    ),
    "Vsock": ({"guest_cid": _INT, "uds_path": _STR}, {"vsock_id": _STR}),
    "NetworkInterface": (
        {"iface_id": _STR, "host_dev_name": _STR},
        {"guest_mac": _STR, "mtu": _INT, "rx_rate_limiter": _OBJ, "tx_rate_limiter": _OBJ},
    ),
    "InstanceActionInfo": (
        {"action_type": ("FlushMetrics", "InstanceStart", "SendCtrlAltDel")},
        {},
    ),
    "Vm": ({"state": ("Paused", "Resumed")}, {}),
    "SnapshotCreateParams": (
        {"mem_file_path": _STR, "snapshot_path": _STR},
        {"snapshot_type": ("Full", "Diff")},
    ),
    "SnapshotLoadParams": (
        {"snapshot_path": _STR},
        {
            "enable_diff_snapshots": _BOOL,
            "track_dirty_pages": _BOOL,
            "mem_file_path": _STR,
            "mem_backend": _OBJ,
            "resume_vm": _BOOL,
            "network_overrides": _LIST,
            "vsock_override": _OBJ,
            "clock_realtime": _BOOL,
        },
    ),
    "MemoryBackend": ({"backend_type": ("File", "Uffd"), "backend_path": _STR}, {}),
    "Logger": (
        {},
        {
            "level": ("Error", "Warning", "Info", "Debug", "Trace", "Off"),
            "log_path": _STR,
            "show_level": _BOOL,
            "show_log_origin": _BOOL,
            "module": _STR,
        },
    ),
    "Metrics": ({"metrics_path": _STR}, {}),
}
VMSTATE_MAGIC = "conch-fake-firecracker-vmstate"
VERSION = "1.10.1"


class Refused(Exception):
    def __init__(self, fault: str, status: int = 400) -> None:
        super().__init__(fault)
        self.fault = fault
        self.status = status


def check_body(schema: str, body: Any) -> dict[str, Any]:
    """Validate a request body the way Firecracker's deserializer does (400 on mismatch)."""
    prefix = "An error occurred when deserializing the json body of a request: "
    if not isinstance(body, dict):
        raise Refused(prefix + f"invalid type: expected struct {schema}")
    required, optional = SCHEMAS[schema]
    fields = {**required, **optional}
    for name in body:
        if name not in fields:
            expected = ", ".join(f"`{field}`" for field in fields)
            raise Refused(prefix + f"unknown field `{name}`, expected one of {expected}")
    for name in required:
        if name not in body:
            raise Refused(prefix + f"missing field `{name}`")
    for name, value in body.items():
        kind = fields[name]
        if isinstance(kind, tuple):
            if value not in kind:
                variants = ", ".join(f"`{v}`" for v in kind)
                raise Refused(prefix + f"unknown variant `{value}`, expected one of {variants}")
        elif kind is _INT:
            if not isinstance(value, int) or isinstance(value, bool):
                raise Refused(prefix + f"invalid type for `{name}`: expected an integer")
        elif not isinstance(value, kind):
            raise Refused(prefix + f"invalid type for `{name}`: expected {kind.__name__}")
    return body


class FakeFirecracker:
    def __init__(self, api_socket: Path, vm_id: str) -> None:
        self.api_socket = api_socket
        self.vm_id = vm_id
        self.state = "Not started"
        self.resources: dict[str, Any] = {"drives": {}, "network-interfaces": {}}
        self.guest: asyncio.subprocess.Process | None = None
        self.guest_root = _guest_root()
        self.vsock_server: asyncio.AbstractServer | None = None
        self.vsock_links: set[asyncio.StreamWriter] = set()
        self.next_host_port = 1073741824
        self.done = asyncio.Event()
        self.exit_code = 0

    # --- the API ---------------------------------------------------------------------

    async def serve_api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while not self.done.is_set():
                request_line = await reader.readline()
                if not request_line:
                    break
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                status, payload = await self.handle(method, target, raw)
                data = json.dumps(payload).encode() if payload is not None else b""
                reason = {200: "OK", 204: "No Content", 400: "Bad Request"}.get(status, "Error")
                head = [
                    f"HTTP/1.1 {status} {reason}",
                    "Server: Firecracker API",
                    "Connection: keep-alive",
                ]
                if data:
                    head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
                else:
                    head.append("Content-Length: 0")
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def handle(self, method: str, target: str, raw: bytes) -> tuple[int, Any]:
        path = target.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            return 400, {"fault_message": f"Invalid JSON body: {exc}"}
        try:
            if f"{method} {path}" in _injected_faults():
                raise Refused(f"injected fault (CONCH_FAKE_FIRECRACKER_FAIL): {method} {path}")
            result = await self.route(method, path, body)
        except Refused as refused:
            _log(f"refused {method} {path}: {refused.fault}")
            return refused.status, {"fault_message": refused.fault}
        _log(f"accepted {method} {path}")
        return (200, result) if result is not None else (204, None)

    async def route(self, method: str, path: str, body: Any) -> Any:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/":
            return {
                "app_name": "Firecracker",
                "id": self.vm_id,
                "state": self.state,
                "vmm_version": VERSION,
            }
        if method == "GET" and path == "/version":
            return {"firecracker_version": VERSION}
        if method == "GET" and path == "/machine-config":
            return self.resources.get("machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
        if method == "PUT" and path == "/boot-source":
            self._pre_boot()
            self.resources["boot-source"] = check_body("BootSource", body)
            return None
        if method == "PUT" and parts[0] == "drives" and len(parts) == 2:
            self._pre_boot()
            drive = check_body("Drive", body)
            if drive["drive_id"] != parts[1]:
                raise Refused("The id from the path does not match the id from the body!")
            host = drive.get("path_on_host")
            if host is None or not Path(host).is_file():
                raise Refused(
                    f"Unable to create the block device: BackingFile(Os {{ code: 2, kind: "
                    f'NotFound, message: "No such file or directory" }}, "{host}")'
                )
            self.resources["drives"][parts[1]] = drive
            return None
        if method == "PUT" and path == "/machine-config":
            self._pre_boot()
            config = check_body("MachineConfiguration", body)
            if not 1 <= config["vcpu_count"] <= 32:
                raise Refused(
                    "The vCPU number is invalid! The vCPU number can only be 1 or an "
                    "even number when SMT is enabled."
                )
            if config["mem_size_mib"] < 1:
                raise Refused("The memory size (MiB) is invalid.")
            self.resources["machine-config"] = config
            return None
        if method == "PUT" and path == "/vsock":
            self._pre_boot()
            vsock = check_body("Vsock", body)
            if vsock["guest_cid"] < 3:
                raise Refused("Invalid guest CID: it must be 3 or more")
            self.resources["vsock"] = vsock
            return None
        if method == "PUT" and parts[0] == "network-interfaces" and len(parts) == 2:
            self._pre_boot()
            interface = check_body("NetworkInterface", body)
            if interface["iface_id"] != parts[1]:
                raise Refused("The id from the path does not match the id from the body!")
            self.resources["network-interfaces"][parts[1]] = interface
            return None
        if method == "PUT" and path == "/logger":
            self._pre_boot()
            self.resources["logger"] = check_body("Logger", body)
            return None
        if method == "PUT" and path == "/metrics":
            self._pre_boot()
            self.resources["metrics"] = check_body("Metrics", body)
            return None
        if method == "PUT" and path == "/actions":
            action = check_body("InstanceActionInfo", body)["action_type"]
            if action == "InstanceStart":
                await self.instance_start()
            elif self.state == "Not started":
                raise Refused(_BEFORE_START)
            return None
        if method == "PATCH" and path == "/vm":
            state = check_body("Vm", body)["state"]
            if self.state == "Not started":
                raise Refused(_BEFORE_START)
            self._set_paused(state == "Paused")
            return None
        if method == "PUT" and path == "/snapshot/create":
            params = check_body("SnapshotCreateParams", body)
            if self.state == "Not started":
                raise Refused(_BEFORE_START)
            if self.state != "Paused":
                raise Refused("Cannot create a snapshot: the microVM is not paused.")
            await self.snapshot_create(params)
            return None
        if method == "PUT" and path == "/snapshot/load":
            params = check_body("SnapshotLoadParams", body)
            await self.snapshot_load(params)
            return None
        raise Refused(f"Invalid request method and/or path: {method} {path}.")

    def _pre_boot(self) -> None:
        if self.state != "Not started":
            raise Refused(_AFTER_START)

    # --- booting -----------------------------------------------------------------------

    async def instance_start(self) -> None:
        if self.state != "Not started":
            raise Refused(_AFTER_START)
        if "boot-source" not in self.resources:
            raise Refused("Cannot start microvm without kernel configuration.")
        kernel = self.resources["boot-source"]["kernel_image_path"]
        if not Path(kernel).is_file():
            raise Refused(f"Cannot open the kernel image: No such file or directory ({kernel})")
        await self.boot(self.resources["boot-source"].get("boot_args", ""))
        self.state = "Running"

    async def boot(self, boot_args: str) -> None:
        """Start the "guest": the conch worker under bubblewrap, as the guest init would."""
        vsock = self.resources.get("vsock")
        if vsock is not None:
            uds = Path(vsock["uds_path"])
            with contextlib.suppress(FileNotFoundError):
                uds.unlink()
            self.vsock_server = await asyncio.start_unix_server(self.serve_vsock, path=str(uds))
        config = _worker_config(boot_args)
        if config is None:
            _log("no conch.worker= in the boot arguments: the guest runs nothing")
            return
        for name in ("session", "conch/scratch", "inputs", "tmp", "v"):
            (self.guest_root / name).mkdir(parents=True, exist_ok=True)
        listen = str(config.get("listen", ""))
        if listen.startswith("vsock:"):
            config["listen"] = f"unix:/run/conch-vsock/{listen.split(':', 1)[1]}"
        argv = _guest_argv(self.guest_root, config)
        log = open(self.guest_root / "guest.log", "ab")  # noqa: SIM115
        try:
            self.guest = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.watcher = asyncio.ensure_future(self._watch_guest())

    async def _watch_guest(self) -> None:
        assert self.guest is not None
        code = await self.guest.wait()
        _log(f"the guest ended ({code}): the VM reboots, so firecracker exits")
        self.done.set()

    def _set_paused(self, paused: bool) -> None:
        if self.guest is not None and self.guest.returncode is None:
            for pid in _process_tree(self.guest.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
        self.state = "Paused" if paused else "Running"

    # --- vsock -----------------------------------------------------------------------------

    async def serve_vsock(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            words = line.decode("ascii", "replace").split()
            if len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit():
                writer.close()
                return
            port_path = self.guest_root / "v" / words[1]
            try:
                guest_reader, guest_writer = await asyncio.open_unix_connection(str(port_path))
            except OSError:
                writer.close()  # nothing listens on the port in the guest
                return
        except (TimeoutError, ConnectionError, OSError):
            writer.close()
            return
        self.next_host_port += 1
        writer.write(f"OK {self.next_host_port}\n".encode())
        self.vsock_links.update((writer, guest_writer))
        await asyncio.gather(
            _pipe(reader, guest_writer), _pipe(guest_reader, writer), return_exceptions=True
        )
        self.vsock_links.difference_update((writer, guest_writer))

    def reset_vsock(self) -> None:
        """VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: every open vsock connection is closed."""
        for writer in list(self.vsock_links):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.vsock_links.clear()

    # --- snapshots ---------------------------------------------------------------------

    async def snapshot_create(self, params: dict[str, Any]) -> None:
        if params.get("snapshot_type") == "Diff":
            config = self.resources.get("machine-config", {})
            if not config.get("track_dirty_pages"):
                raise Refused("Diff snapshots require dirty page tracking (track_dirty_pages).")
        self.reset_vsock()
        mem_mib = self.resources.get("machine-config", {}).get("mem_size_mib", 128)
        # A running guest's memory is never the same twice (clocks, caches): neither is this.
        nonce = os.urandom(8).hex()
        state = {
            "magic": VMSTATE_MAGIC,
            "nonce": nonce,
            "vm_id": self.vm_id,
            "boot_args": self.resources.get("boot-source", {}).get("boot_args", ""),
            "resources": self.resources,
            "mem_size_mib": mem_mib,
        }
        try:
            Path(params["snapshot_path"]).write_text(json.dumps(state))
            with open(params["mem_file_path"], "wb") as memory:
                memory.write(f"{VMSTATE_MAGIC} memory of {self.vm_id} {nonce}\n".encode())
                memory.truncate(mem_mib * 1024 * 1024)
        except OSError as exc:
            raise Refused(f"Cannot save the microVM state: {exc}") from None

    async def snapshot_load(self, params: dict[str, Any]) -> None:
        if self.state != "Not started":
            raise Refused(_AFTER_START)
        configured = [
            name
            for name, value in self.resources.items()
            if value and name not in ("logger", "metrics")
        ]
        if configured:
            raise Refused(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
            )
        has_file = "mem_file_path" in params
        has_backend = "mem_backend" in params
        if has_file == has_backend:
            raise Refused(
                "An error occurred when deserializing the json body of a request: missing "
                "field: either `mem_backend` or `mem_file_path` is required, not both"
            )
        memory_path = params.get("mem_file_path")
        if has_backend:
            backend = check_body("MemoryBackend", params["mem_backend"])
            if backend["backend_type"] != "File":
                raise Refused("This fake supports only the File memory backend.")
            memory_path = backend["backend_path"]
        try:
            state = json.loads(Path(params["snapshot_path"]).read_text())
            if state.get("magic") != VMSTATE_MAGIC:
                raise ValueError("not a microVM state file")
            memory_size = Path(memory_path).stat().st_size
        except (OSError, ValueError) as exc:
            self._end_after_failed_load()
            raise Refused(f"Load snapshot error: Failed to load the microVM state: {exc}") from None
        if memory_size != state["mem_size_mib"] * 1024 * 1024:
            self._end_after_failed_load()
            raise Refused(
                "Load snapshot error: the memory file's size does not match the microVM's "
                "memory size."
            )
        self.resources = state["resources"]
        if "vsock_override" in params and "vsock" in self.resources:
            self.resources["vsock"]["uds_path"] = params["vsock_override"]["uds_path"]
        await self.boot(state["boot_args"])
        self.state = "Running"
        if not params.get("resume_vm"):
            self._set_paused(True)

    def _end_after_failed_load(self) -> None:
        # "On failure: a specific error is reported and then the current Firecracker
        # process is ended (as it might be in an invalid state)."
        self.exit_code = 1
        asyncio.get_running_loop().call_later(0.05, self.done.set)

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        with contextlib.suppress(FileNotFoundError):
            self.api_socket.unlink()
        server = await asyncio.start_unix_server(self.serve_api, path=str(self.api_socket))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.done.set)
        try:
            await self.done.wait()
        finally:
            server.close()
            if self.vsock_server is not None:
                self.vsock_server.close()
            self.reset_vsock()
            if self.guest is not None and self.guest.returncode is None:
                for pid in _process_tree(self.guest.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.guest.wait(), 5)
            shutil.rmtree(self.guest_root, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.api_socket.unlink()
        return self.exit_code


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _worker_config(boot_args: str) -> dict[str, Any] | None:
    for word in boot_args.split():
        if word.startswith("conch.worker="):
            return json.loads(base64.b64decode(word.split("=", 1)[1]))
    return None


def _guest_root() -> Path:
    """The "guest's" files: in the working directory (the VM's directory, which the backend
    removes even when it kills this process), unless the vsock socket paths would be too
    long for a unix socket there."""
    here = Path.cwd() / "g"
    if len(str(here / "v" / "65535")) <= 100:
        here.mkdir(exist_ok=True)
        return here
    return Path(tempfile.mkdtemp(prefix="fake-fc-guest-"))


def _guest_argv(guest_root: Path, config: dict[str, Any]) -> list[str]:
    """The worker under bubblewrap with the guest's paths (what GUEST_INIT would set up)."""
    from conch.sandbox.bwrap import _namespace_args, _readonly_system_args

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise Refused("the fake Firecracker needs bubblewrap to stand in for a guest")
    argv = [bwrap, *_namespace_args(False), *_readonly_system_args()]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--ro-bind", str(WORKER_DIR), "/opt/conch/worker"]
    for host, guest in (
        ("session", "/session"),
        ("conch", "/conch"),
        ("inputs", "/inputs"),
        ("tmp", "/tmp"),
        ("v", "/run/conch-vsock"),
    ):
        argv += ["--bind", str(guest_root / host), guest]
    argv += ["--remount-ro", "/", "--chdir", "/session", "--clearenv"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/session", "TMPDIR": "/tmp"}
    for key, value in env.items():
        argv += ["--setenv", key, value]
    from conch.sandbox._worker_environment import _site_packages

    config = {**config, "site_packages": _site_packages()}
    return [*argv, sys.executable, "-I", "-S", "/opt/conch/worker/agent.py", json.dumps(config)]


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it (children of children...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("latin-1")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _injected_faults() -> set[str]:
    """Requests to refuse, from ``CONCH_FAKE_FIRECRACKER_FAIL`` (e.g. ``"PUT /snapshot/create"``,
    several separated by commas): for tests of the backend's error paths."""
    value = os.environ.get("CONCH_FAKE_FIRECRACKER_FAIL", "")
    return {item.strip() for item in value.split(",") if item.strip()}


def _log(text: str) -> None:
    print(f"fake-firecracker: {text}", file=sys.stderr, flush=True)


def fake_firecracker_argv() -> list[str]:
    """The command that runs this fake in place of the ``firecracker`` binary."""
    return [sys.executable, "-m", "conch.testing.fake_firecracker"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake Firecracker for conch's tests.")
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--id", default="anonymous-instance")
    args, _ = parser.parse_known_args(argv)
    fake = FakeFirecracker(Path(args.api_sock), args.id)
    return asyncio.run(fake.run())


if __name__ == "__main__":
    sys.exit(main())
