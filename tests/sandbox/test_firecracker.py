"""The firecracker backend, against a fake Firecracker, and for real where a VM can run.

This machine cannot run Firecracker (no binary; /dev/kvm is PVM). Every test but the last
drives the backend against ``conch.testing.fake_firecracker``: a fake of Firecracker's API
server and vsock proxy that enforces the documented request order and payloads and "boots"
the real conch worker under bubblewrap. What that does and does not show is written down in
docs/sandboxes.md. The last test runs a real VM where one can run, and is skipped here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from conch.errors import SnapshotCorruptedError, SnapshotError
from conch.sandbox import Capability, ExecutionContext
from conch.sandbox.bwrap import bwrap_works
from conch.sandbox.firecracker import (
    GUEST_INIT,
    FirecrackerAPIError,
    FirecrackerEnvironment,
    firecracker_works,
    jailer_argv,
    vsock_connect,
)
from conch.testing.fake_firecracker import check_body, fake_firecracker_argv

pytestmark = pytest.mark.skipif(
    not bwrap_works()[0],
    reason=f"the fake Firecracker's guest runs under bubblewrap: {bwrap_works()[1]}",
)


def _vm(env: FirecrackerEnvironment, session_id: str = "s1"):
    return env._sessions[session_id].connection.process.vm


CTX = ExecutionContext(session_id="s1", timeout_s=30)


async def test_a_vm_is_configured_in_the_documented_order_with_exact_payloads(make_fc):
    env = await make_fc(vcpu=2, mem_mib=8)
    assert (await env.execute_code("6 * 7", CTX)).stdout == "42\n"
    vm = _vm(env)
    assert [(method, path) for method, path, _ in vm.requests] == [
        ("PUT", "/boot-source"),
        ("PUT", "/drives/rootfs"),
        ("PUT", "/machine-config"),
        ("PUT", "/vsock"),
        ("PUT", "/actions"),
    ]
    bodies = [body for _, _, body in vm.requests]
    assert bodies[0]["kernel_image_path"] == str(env.kernel_image)
    assert "init=/opt/conch/init" in bodies[0]["boot_args"]
    assert "conch.worker=" in bodies[0]["boot_args"]
    assert bodies[1] == {
        "drive_id": "rootfs",
        "path_on_host": str(env.rootfs),
        "is_root_device": True,
        "is_read_only": True,
    }
    assert bodies[2] == {"vcpu_count": 2, "mem_size_mib": 8}
    assert bodies[3] == {"guest_cid": 3, "uds_path": "v.sock"}
    assert bodies[4] == {"action_type": "InstanceStart"}
    # Every body is valid against the API's schema (the fake checks the same at runtime).
    for schema, body in zip(
        ["BootSource", "Drive", "MachineConfiguration", "Vsock", "InstanceActionInfo"],
        bodies,
        strict=True,
    ):
        check_body(schema, body)


async def test_a_network_interface_is_configured_only_when_a_tap_device_is_given(make_fc):
    env = await make_fc(tap_devices=["conch-tap0"])
    assert Capability.NETWORK_ISOLATION not in env.capabilities()
    assert (await env.execute_code("1", CTX)).ok
    requests = _vm(env).requests
    assert (
        "PUT",
        "/network-interfaces/eth0",
        {"iface_id": "eth0", "host_dev_name": "conch-tap0"},
    ) in requests
    assert [path for _, path, _ in requests][-2:] == ["/network-interfaces/eth0", "/actions"]


async def test_the_worker_config_reaches_the_guest_on_the_kernel_command_line(make_fc):
    env = await make_fc()
    result = await env.execute_code(
        "import os\nprint(os.getcwd(), sorted(os.listdir('/conch')))", CTX
    )
    assert result.stdout == "/session ['scratch']\n"
    config = env.worker_config()
    assert config["listen"] == "vsock:5252" and config["cwd"] == "/session"


async def test_the_api_refuses_calls_out_of_order_like_firecracker(make_fc):
    env = await make_fc()
    vm = await env._spawn()
    try:
        with pytest.raises(FirecrackerAPIError, match="before starting the microVM"):
            await vm.api("PATCH", "/vm", {"state": "Paused"})
        with pytest.raises(FirecrackerAPIError, match="without kernel configuration"):
            await vm.api("PUT", "/actions", {"action_type": "InstanceStart"})
        with pytest.raises(FirecrackerAPIError, match="unknown field `kernel`") as refused:
            await vm.api("PUT", "/boot-source", {"kernel": "x"})
        assert refused.value.status == 400
        with pytest.raises(FirecrackerAPIError, match="missing field `is_root_device`"):
            await vm.api("PUT", "/drives/rootfs", {"drive_id": "rootfs"})
        with pytest.raises(FirecrackerAPIError, match="does not match the id from the body"):
            await vm.api(
                "PUT",
                "/drives/rootfs",
                {"drive_id": "other", "is_root_device": True, "path_on_host": str(env.rootfs)},
            )
        with pytest.raises(FirecrackerAPIError, match="unknown variant `Running`"):
            await vm.api("PUT", "/actions", {"action_type": "Running"})
        await vm.api("PUT", "/boot-source", {"kernel_image_path": str(env.kernel_image)})
        with pytest.raises(FirecrackerAPIError, match="snapshot not allowed after configuring"):
            await vm.api(
                "PUT",
                "/snapshot/load",
                {
                    "snapshot_path": "s",
                    "mem_backend": {"backend_type": "File", "backend_path": "m"},
                },
            )
        await vm.api("PUT", "/actions", {"action_type": "InstanceStart"})
        with pytest.raises(FirecrackerAPIError, match="after starting the microVM"):
            await vm.api("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
        with pytest.raises(FirecrackerAPIError, match="not paused"):
            await vm.api("PUT", "/snapshot/create", {"snapshot_path": "s", "mem_file_path": "m"})
        info = await vm.client.get("/")
        assert info.json()["state"] == "Running"
    finally:
        vm.kill()


async def test_vsock_connect_follows_firecrackers_handshake(make_fc):
    env = await make_fc()
    await env.execute_code("1", CTX)
    vm = _vm(env)
    with pytest.raises(ConnectionError, match="nothing listens"):
        await vsock_connect(vm.vsock_path, 6000)  # no guest listener on that port: closed
    _, writer = await vsock_connect(vm.vsock_path, 5252)  # the worker's port: "OK n"
    writer.close()


async def test_a_pool_hands_out_booted_vms(make_fc):
    env = await make_fc(pool_size=2)
    await env.warm_pool()
    assert env.pool.ready == 2
    assert (await env.execute_code("'from the pool'", CTX)).stdout == "'from the pool'\n"
    assert env.pool.hits == 1 and env.pool.cold_boots == 0
    other = ExecutionContext(session_id="s2", timeout_s=30)
    assert (await env.execute_code("2", other)).ok
    assert env.pool.cold_boots == 0
    assert _vm(env, "s1") is not _vm(env, "s2")


async def test_without_a_pool_a_vm_is_booted_on_demand(make_fc):
    env = await make_fc(pool_size=0)
    assert (await env.execute_code("1", CTX)).ok
    assert env.pool.hits == 0 and env.pool.cold_boots == 1


async def test_a_vm_snapshot_pauses_saves_resumes_and_reconnects(make_fc):
    env = await make_fc()
    assert Capability.VM_SNAPSHOT in env.capabilities()
    await env.execute_code("kept = [1, 2, 3]\nopen('notes.txt', 'w').write('saved')", CTX)
    vm = _vm(env)
    before = len(vm.requests)
    snapshot = await env.create_snapshot("s1", "vm")
    assert vm.requests[before:] == [
        ("PATCH", "/vm", {"state": "Paused"}),
        (
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": vm.requests[before + 1][2]["snapshot_path"],
                "mem_file_path": vm.requests[before + 1][2]["mem_file_path"],
            },
        ),
        ("PATCH", "/vm", {"state": "Resumed"}),
    ]
    check_body("SnapshotCreateParams", vm.requests[before + 1][2])
    # The same VM and worker go on after the snapshot (the vsock link was re-made).
    assert _vm(env) is vm
    assert (await env.execute_code("kept", CTX)).stdout == "[1, 2, 3]\n"
    manifest = _manifest(env, snapshot.id)
    assert set(manifest["machine"]["blobs"]) == {"vmstate", "memory"}
    assert snapshot.size >= 4 * 1024 * 1024  # the memory file of a 4 MiB VM is in it


async def test_a_vm_snapshot_is_loaded_into_a_fresh_firecracker_process(make_fc):
    env = await make_fc()
    await env.execute_code("kept = 'at snapshot'\nopen('notes.txt', 'w').write('saved')", CTX)
    snapshot = await env.create_snapshot("s1", "vm")
    await env.execute_code("kept = 'changed'\nopen('notes.txt', 'w').write('changed')", CTX)
    old_vm = _vm(env)
    report = await env.restore_snapshot(snapshot)
    new_vm = _vm(env)
    assert new_vm is not old_vm and old_vm.process.returncode is not None
    (load,) = new_vm.requests
    method, path, body = load
    assert (method, path) == ("PUT", "/snapshot/load")
    assert body["mem_backend"]["backend_type"] == "File" and body["resume_vm"] is True
    check_body("SnapshotLoadParams", body)
    assert "kept" in report.restored
    # The fake restores no memory, so another worker answered and the pickled state and
    # files were restored into it (with a real VM the same worker answers).
    result = await env.execute_code("print(kept, open('notes.txt').read())", CTX)
    assert result.stdout == "at snapshot saved\n"


@pytest.mark.parametrize("which", ["memory", "vmstate"])
@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
async def test_a_damaged_vm_image_is_refused_and_the_session_left_as_it_was(make_fc, which, damage):
    env = await make_fc()
    await env.execute_code("value = 'at snapshot'\nopen('f.txt', 'w').write('at snapshot')", CTX)
    snapshot = await env.create_snapshot("s1", "to damage")
    await env.execute_code("value = 'current'\nopen('f.txt', 'w').write('current')", CTX)
    vm = _vm(env)
    digest = _manifest(env, snapshot.id)["machine"]["blobs"][which]
    blob = env._snapshots.blob_path(digest)
    if damage == "delete":
        blob.unlink()
    else:
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptedError, match="damaged"):
        await env.restore_snapshot(snapshot)
    assert _vm(env) is vm  # no new VM was made
    result = await env.execute_code("value, open('f.txt').read()", CTX)
    assert result.stdout == "('current', 'current')\n"


async def test_a_vm_image_from_another_root_file_system_is_refused(make_fc, guest_files):
    env = await make_fc()
    await env.execute_code("value = 'kept'", CTX)
    snapshot = await env.create_snapshot("s1", "vm")
    await env.cleanup()
    _, rootfs = guest_files
    rootfs.write_bytes(b"another root file system")
    other = await make_fc(root=env.root)
    await other.execute_code("value = 'current'", CTX)
    with pytest.raises(SnapshotError, match="another root file system"):
        await other.restore_snapshot(snapshot.id)
    assert (await other.execute_code("value", CTX)).stdout == "'current'\n"


async def test_a_failed_vm_snapshot_leaves_the_session_running(make_fc, monkeypatch):
    monkeypatch.setenv("CONCH_FAKE_FIRECRACKER_FAIL", "PUT /snapshot/create")
    env = await make_fc()
    await env.execute_code("kept = 'still here'", CTX)
    with pytest.raises(SnapshotError, match="injected fault"):
        await env.create_snapshot("s1", "fails")
    assert [path for _, path, _ in _vm(env).requests][-3:] == [
        "/vm",
        "/snapshot/create",
        "/vm",
    ]  # paused, refused, resumed
    assert (await env.execute_code("kept", CTX)).stdout == "'still here'\n"
    assert await env.list_snapshots("s1") == []


async def test_a_refused_snapshot_load_is_an_error_and_changes_nothing(make_fc, monkeypatch):
    env = await make_fc()
    await env.execute_code("value = 'at snapshot'", CTX)
    snapshot = await env.create_snapshot("s1", "vm")
    await env.execute_code("value = 'current'", CTX)
    monkeypatch.setenv("CONCH_FAKE_FIRECRACKER_FAIL", "PUT /snapshot/load")
    with pytest.raises(SnapshotError, match="could not load snapshot"):
        await env.restore_snapshot(snapshot)
    assert (await env.execute_code("value", CTX)).stdout == "'current'\n"


async def test_without_vm_snapshots_only_the_interpreter_state_is_saved(make_fc):
    env = await make_fc(vm_snapshots=False)
    assert Capability.VM_SNAPSHOT not in env.capabilities()
    await env.execute_code("kept = 7", CTX)
    snapshot = await env.create_snapshot("s1", "plain")
    assert "machine" not in _manifest(env, snapshot.id)
    assert not any(path == "/snapshot/create" for _, path, _ in _vm(env).requests)
    await env.execute_code("kept = 0", CTX)
    await env.restore_snapshot(snapshot)
    assert (await env.execute_code("kept", CTX)).stdout == "7\n"


async def test_firecracker_dying_mid_cell_is_a_clear_error_and_the_next_call_gets_a_new_vm(
    make_fc,
):
    env = await make_fc()
    await env.execute_code("kept = 'lost'", CTX)
    vm = _vm(env)

    def kill_the_vm(_payload):
        os.kill(vm.process.pid, signal.SIGKILL)
        return "killed"

    result = await env.execute_code(
        "host_call('kill_vm')\nimport time\ntime.sleep(30)",
        ExecutionContext(session_id="s1", timeout_s=30, host_functions={"kill_vm": kill_the_vm}),
    )
    assert result.state_lost and not result.ok
    assert "Firecracker VM" in result.error and "ended" in result.error
    after = await env.execute_code("print('fresh')", CTX)
    assert after.stdout == "fresh\n" and after.state_lost
    assert _vm(env) is not vm
    assert "NameError" in (await env.execute_code("kept", CTX)).stderr


async def test_inputs_reach_the_guest_and_every_new_vm_of_the_session(make_fc):
    env = await make_fc()
    path = await env.upload("s1", "context.txt", "the context")
    assert path == "/inputs/context.txt"
    assert (await env.execute_code(f"open({path!r}).read()", CTX)).stdout == "'the context'\n"
    await env.execute_code("import os\nos._exit(3)", CTX)  # the VM ends with its worker
    assert (await env.execute_code(f"open({path!r}).read()", CTX)).stdout == "'the context'\n"


def test_the_guest_init_reads_the_worker_config_from_the_kernel_command_line():
    assert "conch\\.worker=" in GUEST_INIT and "base64 -d" in GUEST_INIT
    assert "/opt/conch/worker/agent.py" in GUEST_INIT
    assert "mount -t tmpfs" in GUEST_INIT  # session files live in memory: VM snapshots keep them


def test_the_jailer_command_line():
    from conch.sandbox.firecracker import _Jailer

    argv = jailer_argv(_Jailer("/usr/bin/jailer", 123, 456, Path("/srv/jail")), "/fc", "vm-1")
    assert argv == [
        "/usr/bin/jailer",
        "--id",
        "vm-1",
        "--exec-file",
        "/fc",
        "--uid",
        "123",
        "--gid",
        "456",
        "--chroot-base-dir",
        "/srv/jail",
        "--",
        "--api-sock",
        "/api.sock",
    ]


def test_the_probe_names_every_missing_piece():
    works, reason = firecracker_works()
    if works:
        pytest.skip("Firecracker can run on this machine")
    assert reason
    if not os.environ.get("CONCH_FIRECRACKER_KERNEL"):
        assert "CONCH_FIRECRACKER_KERNEL" in reason


def test_a_missing_kernel_or_rootfs_is_a_configuration_error(tmp_path, monkeypatch):
    from conch.errors import ConfigurationError

    monkeypatch.delenv("CONCH_FIRECRACKER_KERNEL", raising=False)
    monkeypatch.delenv("CONCH_FIRECRACKER_ROOTFS", raising=False)
    with pytest.raises(ConfigurationError, match="CONCH_FIRECRACKER_KERNEL"):
        FirecrackerEnvironment(firecracker="/bin/true", root=tmp_path)
    with pytest.raises(ConfigurationError, match="is not a file"):
        FirecrackerEnvironment(
            kernel_image=tmp_path / "nope", rootfs=tmp_path / "nope", firecracker="/bin/true"
        )


def _manifest(env: FirecrackerEnvironment, snapshot_id: str) -> dict:
    (path,) = (Path(env.root) / "snapshots" / "manifests").rglob(f"{snapshot_id}.json")
    return json.loads(path.read_text())


# --- a real VM -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_real_vm_runs_code_and_a_vm_snapshot_keeps_a_generator(tmp_path):
    works, reason = firecracker_works()
    if not works:
        pytest.skip(f"Firecracker cannot run here: {reason}")
    env = FirecrackerEnvironment(root=tmp_path / "real", pool_size=1)
    try:
        await env.warm_pool()
        assert (await env.execute_code("6 * 7", CTX)).stdout == "42\n"
        await env.execute_code("numbers = (n for n in range(10))\nnext(numbers)", CTX)
        snapshot = await env.create_snapshot("s1", "generator")
        assert snapshot.unpicklable  # no pickler keeps a generator...
        await env.execute_code("next(numbers); next(numbers)", CTX)
        report = await env.restore_snapshot(snapshot)
        assert "numbers" in report.restored  # ...the VM image does
        assert (await env.execute_code("next(numbers)", CTX)).stdout == "1\n"
        probe = await env.execute_code(
            "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
            "    print('reachable')\nexcept OSError:\n    print('refused')",
            CTX,
        )
        assert probe.stdout == "refused\n"
    finally:
        await env.cleanup()


def test_httpx_speaks_to_the_fake_over_its_unix_socket(tmp_path):
    """The fake is a standalone program, as firecracker is: start it and ask for its state."""
    import subprocess
    import time

    socket_path = tmp_path / "api.sock"
    process = subprocess.Popen(
        [*fake_firecracker_argv(), "--api-sock", str(socket_path), "--id", "probe"],
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            time.sleep(0.025)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)))
        info = client.get("http://localhost/").json()
        assert info["state"] == "Not started" and info["id"] == "probe"
        refused = client.put("http://localhost/nowhere", json={})
        assert refused.status_code == 400 and "Invalid request" in refused.json()["fault_message"]
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert sys.executable  # the fake runs on this interpreter
