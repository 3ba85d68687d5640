"""A private Docker-compatible engine: ``podman system service`` on a unix socket of its own.

Machines without a Docker daemon often have podman, which serves the Docker Engine API. The
tests and the benchmark start one here (``PodmanService``) and point the ``docker`` backend
at it; operators can do the same by hand::

    podman --runtime runc system service --time=0 unix:///run/conch/podman.sock &
    export DOCKER_HOST=unix:///run/conch/podman.sock

The service keeps using the machine's podman storage, so an image built once
(``scripts/build-sandbox-image.sh``) is there for every later service.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conch.errors import SandboxUnavailableError

_START_TIMEOUT_S = 30.0


class PodmanService:
    """``podman system service`` on ``directory/podman.sock``, started and stopped by us."""

    def __init__(self, directory: str | os.PathLike[str], *, runtime: str | None = "runc"):
        self.directory = Path(directory)
        self.socket_path = self.directory / "podman.sock"
        self.log_path = self.directory / "podman-service.log"
        self.url = f"unix://{self.socket_path}"
        self.runtime = runtime
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> str:
        """Start the service and wait until it answers; return its ``unix://`` URL."""
        podman = shutil.which("podman")
        if podman is None:
            raise SandboxUnavailableError(
                "podman is not installed (Debian package 'podman'; scripts/install-system-deps.sh)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [podman]
        if self.runtime and shutil.which(self.runtime):
            argv += ["--runtime", self.runtime]
        argv += ["system", "service", "--time=0", self.url]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SandboxUnavailableError(
                    f"podman system service exited with status {self._process.returncode}: "
                    f"{self._log_tail()}"
                )
            if _answers(self.socket_path):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise SandboxUnavailableError(
            f"podman system service did not answer on {self.socket_path} within {timeout_s:g} s: "
            f"{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _log_tail(self, limit: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()
        except OSError:
            return "(no log)"

    def __enter__(self) -> PodmanService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _answers(path: Path) -> bool:
    """Whether an HTTP server on the unix socket answers ``GET /_ping`` with OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(2)
            client.connect(str(path))
            client.sendall(b"GET /_ping HTTP/1.1\r\nHost: podman\r\nConnection: close\r\n\r\n")
            return client.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
