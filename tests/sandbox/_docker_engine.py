"""A Docker-compatible engine for the ``docker`` backend's tests: podman's API service.

The session fixture starts ``podman system service`` on a private socket under a temporary
directory, points ``DOCKER_HOST`` at it for the whole run (so ``sandbox.create("docker")``
and the registry's probe find it), makes sure the sandbox image exists (building it once
per machine with ``scripts/build-sandbox-image.sh``, about two minutes from Debian's
mirror), and stops the service afterwards. Where any of that cannot be done, every docker
test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conch.errors import SandboxUnavailableError
from tests._required import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-sandbox-image.sh"
_BUILD_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a private podman API service with the sandbox image; skips if impossible."""
    try:
        import docker  # noqa: F401
    except ImportError as exc:
        skip_or_fail(
            "docker", f"the docker SDK is not installed (pip install 'conch[docker]'): {exc}"
        )
    from conch.sandbox._podman import PodmanService
    from conch.sandbox.docker import DEFAULT_IMAGE, IMAGE_ENV, docker_works

    if shutil.which("podman") is None:
        skip_or_fail("docker", "podman is not installed: run scripts/install-system-deps.sh")
    service = PodmanService(tmp_path_factory.mktemp("podman"))
    try:
        url = service.start()
    except SandboxUnavailableError as exc:
        skip_or_fail("docker", f"podman's API service cannot start here: {exc}")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        image = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
        works, reason = docker_works()
        if not works and "has no image" in reason:
            works, reason = _build_image(image)
        if not works:
            skip_or_fail("docker", f"the docker backend cannot run on podman here: {reason}")
        yield url
    finally:
        _remove_leftovers()
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        service.stop()


def _build_image(image: str) -> tuple[bool, str]:
    from conch.sandbox.docker import docker_works

    try:
        built = subprocess.run(
            ["bash", str(BUILD_SCRIPT), image],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"building the sandbox image failed: {exc}"
    if built.returncode != 0:
        return False, f"building the sandbox image failed: {built.stderr.strip()[-800:]}"
    return docker_works()


def _remove_leftovers() -> None:
    """Remove containers a failed test may have left (every conch container is labelled)."""
    import docker

    from conch.sandbox.docker import LABEL

    try:
        client = docker.from_env(timeout=30)
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
        client.close()
    except Exception:
        pass
