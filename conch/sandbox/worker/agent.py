"""The conch worker: a persistent Python REPL that runs inside every sandbox backend.

Stdlib only (dill is used for snapshots when it can be imported). Started as
``python -I agent.py CONFIG_JSON``; speaks ``protocol.py`` frames on its stdin/stdout,
which it moves to private descriptors at start-up so user code can neither read nor
corrupt the channel: fd 0 becomes /dev/null, and fds 1 and 2 point at per-execution
capture files, so output of C extensions and child processes is captured too.

Two config options change only the transport, never the protocol: ``"listen"``
(``"vsock:PORT"`` or ``"unix:PATH"``) makes the channel a socket the host connects to, and a
new connection is served with a new hello when one ends (the interpreter stays), which is how
a VM's worker outlives the vsock reset of a snapshot; ``"channel": "text"`` sends frames as
base64 lines for transports that carry text only (see ``protocol.TEXT_FRAME_PREFIX``).

Snapshot state (the pickled names, one after another) is the body of the ``snapshot`` reply
and of the ``restore`` request, unless the request names a ``state_path``: a file in a session
directory the host shares, which the worker then writes (replying ``"state_file": true`` and no
body) or reads. When that file cannot be written or read (the file-size limit, a full disk),
the reply says why in ``state_file_error`` and the state goes over the channel as before.

Threads: the main thread runs requests one at a time (user code runs there, so it can be
interrupted with SIGINT); a reader thread receives frames, hands requests to the main thread,
delivers callback replies, and turns an ``interrupt`` frame into SIGINT for the main thread.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import io
import json
import linecache
import mmap
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
import types

if __package__:
    from . import protocol
else:  # run as a script inside a sandbox: load the sibling module by path
    _spec = importlib.util.spec_from_file_location(
        "_conch_protocol", os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
    )
    protocol = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(protocol)

CHUNK = 1024 * 1024
_AGENT_FILE = os.path.abspath(__file__)


class HostCallError(Exception):
    """A host function called through ``host_call`` failed; the message says why."""


class _NeedsDill(pickle.PicklingError):
    """Raised by the fast pickler for objects only dill pickles by value."""


class Channel:
    """Frames in and out on two private file descriptors; sends are serialized."""

    def __init__(self, read_fd: int, write_fd: int, *, text: bool = False, sock=None) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.text = text
        """Send frames as base64 lines (``protocol.encode_text_frame``); receive binary."""
        self.sock = sock
        """The connected socket when the channel is one (listen mode), kept open here."""
        self._reader = open(read_fd, "rb", buffering=256 * 1024, closefd=False)  # noqa: SIM115
        self._send_lock = threading.Lock()
        self.closed = False

    def send(self, message: dict, body_parts: tuple = ()) -> None:
        length = sum(len(part) for part in body_parts)
        header = protocol.encode_header(message, length)
        with self._send_lock:
            if self.closed:
                raise OSError("the host channel is closed in this process")
            if self.text:
                self._write(protocol.encode_text_frame(b"".join((header, *body_parts))))
                return
            self._write(header)
            for part in body_parts:
                self._write(part)

    def close(self) -> None:
        """Close a socket channel for good (its peer went away): later sends fail."""
        if self.sock is None:
            return
        try:
            self.sock.shutdown(2)  # a send blocked on the old peer fails now
        except OSError:
            pass
        with self._send_lock:
            self.closed = True
            self.sock.close()

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view[: 4 * CHUNK])
            view = view[written:]

    def receive(self) -> tuple[dict, bytes] | None:
        header = self._reader.read(protocol.HEADER_SIZE)
        if not header:
            return None
        json_length, body_length = protocol.decode_header(header)
        message = protocol.decode_message(self._read_exactly(json_length))
        body = self._read_exactly(body_length) if body_length else b""
        return message, body

    def _read_exactly(self, n: int) -> bytes:
        data = self._reader.read(n)
        if len(data) != n:
            raise protocol.FrameError(f"channel closed mid-frame ({len(data)} of {n} bytes)")
        return data

    def close_in_child(self) -> None:
        # After fork, the child must never speak on the parent's channel.
        self.closed = True
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Worker:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.pid = os.getpid()
        self.cwd = config.get("cwd") or os.getcwd()
        self.scratch = config.get("scratch") or self.cwd
        self.max_spill = int(config.get("max_spill_bytes", 1 << 30))
        self.requests: queue.Queue = queue.Queue()
        self.executing = False
        self.current_request = None
        self.call_lock = threading.Lock()
        self.next_call_id = 0
        self.pending_calls: dict[int, list] = {}
        self.main_thread_id = threading.get_ident()
        self.cell_counter = 0

        # The user namespace is a real module installed as __main__, so functions and
        # classes defined by user code resolve their globals through it; dill relies on
        # that to pickle them by value while re-linking them to the live namespace.
        self.user_builtins = dict(builtins.__dict__)
        self.user_builtins["host_call"] = self.host_call
        self.user_builtins["HostCallError"] = HostCallError
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = self.user_builtins
        sys.modules["__main__"] = self.main_module
        self.namespace = self.main_module.__dict__
        self.helper_names: set[str] = set()
        # Random per worker process: a host that reconnects (after a VM snapshot was
        # loaded, say) can tell whether it reached the same interpreter.
        self.incarnation = os.urandom(16).hex()
        self.text_frames = config.get("channel") == "text"
        self.listener = _listen(config.get("listen"))

        self.channel = self._take_over_stdio()

    # --- set-up --------------------------------------------------------------------

    def _take_over_stdio(self) -> Channel:
        if self.listener is not None:  # listen mode: the channel is a socket the host opens
            channel = self._accept()
        else:
            read_fd = os.dup(0)  # non-inheritable: child processes never see the channel
            write_fd = os.dup(1)
            channel = Channel(read_fd, write_fd, text=self.text_frames)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(self.devnull, 0)
        os.dup2(self.devnull, 1)
        sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
        return channel

    def _accept(self) -> Channel:
        while True:
            try:
                sock, _ = self.listener.accept()
                break
            except InterruptedError:
                continue
        return Channel(sock.fileno(), sock.fileno(), text=self.text_frames, sock=sock)

    def _reconnect(self) -> None:
        """Listen mode: the host's connection ended (a VM snapshot resets vsock links, or
        the host reconnects); keep the interpreter and serve the next connection."""
        self.channel.close()
        with self.call_lock:  # callbacks waiting on the old connection get no reply
            for slot in self.pending_calls.values():
                slot[2] = "the connection to the host was reset during the call"
                slot[0].set()
        self.channel = self._accept()
        self._send_hello()

    def _send_hello(self) -> None:
        self.channel.send(
            {
                "op": "hello",
                "pid": self.pid,
                "python": sys.version.split()[0],
                "protocol": protocol.VERSION,
                "incarnation": self.incarnation,
            }
        )

    def apply_limits(self) -> None:
        import resource

        limits = self.config.get("limits") or {}
        names = {
            "address_space": resource.RLIMIT_AS,
            "processes": resource.RLIMIT_NPROC,
            "file_size": resource.RLIMIT_FSIZE,
            "cpu_seconds": resource.RLIMIT_CPU,
            "open_files": resource.RLIMIT_NOFILE,
        }
        for key, which in names.items():
            value = limits.get(key)
            if value:
                _, hard = resource.getrlimit(which)
                value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
                resource.setrlimit(which, (value, value))
        # A write past RLIMIT_FSIZE should fail with an error, not kill the worker.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def install_signal_handlers(self) -> None:
        def on_sigint(signum, frame):
            # Only user code is interruptible; the worker's own bookkeeping is not.
            if self.executing:
                raise KeyboardInterrupt("execution interrupted by the host (timeout)")

        signal.signal(signal.SIGINT, on_sigint)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self.channel.close_in_child()
        if self.listener is not None:
            self.listener.close()

    # --- threads ---------------------------------------------------------------------

    def reader_loop(self) -> None:
        while True:
            self._read_channel()
            if self.listener is None:
                # The host is gone or spoke garbage: nothing more can be reported to anyone.
                os._exit(0)
            try:
                self._reconnect()
            except OSError as exc:
                self._log(f"cannot accept a new host connection: {exc}")
                os._exit(0)

    def _read_channel(self) -> None:
        try:
            while True:
                received = self.channel.receive()
                if received is None:
                    return
                message, body = received
                op = message["op"]
                if op == "ret":
                    self._deliver_call_reply(message)
                elif op == "interrupt":
                    if self.executing and message.get("target") == self.current_request:
                        signal.pthread_kill(self.main_thread_id, signal.SIGINT)
                else:
                    self.requests.put((message, body))
        except protocol.FrameError as exc:
            self._log(f"protocol error from host: {exc}")
        except OSError:
            pass

    def _log(self, text: str) -> None:
        try:
            os.write(self.log_fd, (text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    def serve(self) -> None:
        self.log_fd = os.dup(2)
        os.dup2(self.devnull, 2)
        threading.Thread(target=self.reader_loop, name="conch-reader", daemon=True).start()
        self._send_hello()
        handlers = {
            "exec": self.do_exec,
            "command": self.do_command,
            "snapshot": self.do_snapshot,
            "restore": self.do_restore,
            "define": self.do_define,
            "ping": self.do_ping,
            "names": self.do_names,
            "pack_files": self.do_pack_files,
            "unpack_files": self.do_unpack_files,
            "put_file": self.do_put_file,
        }
        while True:
            try:
                message, body = self.requests.get()
            except KeyboardInterrupt:  # a late interrupt that found no running code
                continue
            op = message["op"]
            self.current_request = message.get("id")
            if op == "shutdown":
                self.channel.send({"op": "res", "id": message.get("id")})
                os._exit(0)
            handler = handlers.get(op)
            try:
                if handler is None:
                    reply, parts = {"error": f"unknown request op {op!r}"}, ()
                else:
                    reply, parts = handler(message, body)
            except KeyboardInterrupt:
                reply, parts = {"error": "interrupted outside user code"}, ()
            except Exception as exc:  # a bug in the worker: report it, keep serving
                reply, parts = {"error": f"worker error: {type(exc).__name__}: {exc}"}, ()
            if os.getpid() != self.pid:
                os._exit(0)
            reply["op"] = "res"
            reply["id"] = message.get("id")
            self.channel.send(reply, parts)

    # --- host callbacks -----------------------------------------------------------------

    def host_call(self, name: str, payload=None):
        """Call the host function ``name`` with a JSON-serialisable payload; return its reply."""
        if os.getpid() != self.pid:
            raise HostCallError("host_call is not available in a forked child process")
        if not isinstance(name, str):
            raise TypeError("host_call(name, payload): name must be a str")
        done = threading.Event()
        with self.call_lock:
            self.next_call_id += 1
            call_id = self.next_call_id
            slot = [done, None, None]
            self.pending_calls[call_id] = slot
        try:
            try:  # encoding happens before any byte is written: a failure sends nothing
                self.channel.send({"op": "call", "id": call_id, "name": name, "payload": payload})
            except (TypeError, ValueError) as exc:
                raise TypeError(f"host_call payload must be JSON-serialisable: {exc}") from None
            done.wait()
        finally:
            with self.call_lock:
                self.pending_calls.pop(call_id, None)
        if slot[2] is not None:
            raise HostCallError(slot[2])
        return slot[1]

    def _deliver_call_reply(self, message: dict) -> None:
        with self.call_lock:
            slot = self.pending_calls.get(message.get("id"))
        if slot is None:
            return
        slot[1] = message.get("value")
        slot[2] = message.get("error")
        slot[0].set()

    # --- output capture ---------------------------------------------------------------

    def _open_capture(self) -> tuple[int, int]:
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        out_fd = os.open(os.path.join(self.scratch, ".conch-stdout"), flags, 0o600)
        err_fd = os.open(os.path.join(self.scratch, ".conch-stderr"), flags, 0o600)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=False,
            write_through=False,
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=False,
            write_through=True,
        )
        return out_fd, err_fd

    def _close_capture(self, request_id, out_fd: int, err_fd: int, max_inline: int):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # closed or replaced by user code
                pass
        sys.stdout = sys.__stdout__ = _NullWriter()
        sys.stderr = sys.__stderr__ = _NullWriter()
        os.dup2(self.devnull, 1)
        os.dup2(self.devnull, 2)
        reply: dict = {}
        parts = []
        for name, fd in (("stdout", out_fd), ("stderr", err_fd)):
            size = os.fstat(fd).st_size
            head = os.pread(fd, min(size, max_inline), 0) if size else b""
            reply[f"{name}_bytes"] = size
            reply[f"{name}_inline"] = len(head)
            parts.append(head)
            if size > max_inline:
                reply[f"{name}_streamed"] = self._stream_output(request_id, name, fd, size)
            os.close(fd)
        return reply, tuple(parts)

    def _stream_output(self, request_id, stream: str, fd: int, size: int) -> int:
        """Send a large output to the host in chunks, before the reply; return bytes sent."""
        sent = 0
        limit = min(size, self.max_spill)
        while sent < limit:
            chunk = os.pread(fd, min(CHUNK, limit - sent), sent)
            if not chunk:
                break
            self.channel.send({"op": "out", "id": request_id, "stream": stream}, (chunk,))
            sent += len(chunk)
        return sent

    # --- requests -------------------------------------------------------------------------

    def do_ping(self, message: dict, body: bytes):
        return {"pong": True, "pid": self.pid, "incarnation": self.incarnation}, ()

    def do_names(self, message: dict, body: bytes):
        """The user's variable names (what a whole-memory snapshot kept), without pickling."""
        names = [n for n in self.namespace if not (n.startswith("__") and n.endswith("__"))]
        return {"names": sorted(names)}, ()

    # --- files, for backends whose session directory is not on the host ---------------

    def do_pack_files(self, message: dict, body: bytes):
        """The session directory as an uncompressed tar (symlinks stay links)."""
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            for entry in sorted(os.listdir(self.cwd)):
                archive.add(os.path.join(self.cwd, entry), arcname=entry, recursive=True)
        return {"size": buffer.tell()}, (buffer.getbuffer(),)

    def do_unpack_files(self, message: dict, body: bytes):
        """Make the session directory hold exactly the tar in ``body``.

        It is unpacked into a staging directory inside the session directory first (the
        same file system, which may be a mount of its own), so a damaged archive changes
        nothing; then the old entries are removed and the new ones renamed in."""
        import shutil
        import tarfile

        staging_name = f".conch-restoring-{os.getpid()}"
        staging = os.path.join(self.cwd, staging_name)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
                if hasattr(tarfile, "data_filter"):  # refuses absolute paths, '..', bad links
                    archive.extractall(staging, filter="data")
                else:  # Python < 3.11.4 in the sandbox: the archive is the host's own
                    archive.extractall(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for entry in os.listdir(self.cwd):
            if entry == staging_name:
                continue
            path = os.path.join(self.cwd, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        entries = os.listdir(staging)
        for entry in entries:
            os.rename(os.path.join(staging, entry), os.path.join(self.cwd, entry))
        os.rmdir(staging)
        return {"entries": len(entries)}, ()

    def do_put_file(self, message: dict, body: bytes):
        """Write ``body`` to ``path`` atomically (an input the host puts in the session).

        A large file comes in pieces: each names its ``offset``, and the one with ``last``
        false is followed by more; the file appears under its name after the last piece."""
        path = message["path"]
        staging = path + ".partial"
        offset = int(message.get("offset", 0))
        if offset == 0:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(staging, "wb" if offset == 0 else "r+b") as handle:
            handle.seek(offset)
            handle.write(body)
        if not message.get("last", True):
            return {"size": offset + len(body)}, ()
        if message.get("mode") is not None:
            os.chmod(staging, int(message["mode"]))
        os.replace(staging, path)
        return {"size": offset + len(body)}, ()

    def do_exec(self, message: dict, body: bytes):
        self.cell_counter += 1
        filename = f"<cell-{message.get('cell', self.cell_counter)}>"
        code_text = message["code"]
        max_inline = int(message.get("max_inline", 65536))
        restore_env = self._push_env(message.get("env") or {})
        out_fd, err_fd = self._open_capture()
        exit_code, interrupted = 0, False
        try:
            exit_code, interrupted = self._run_source(code_text, filename)
        finally:
            if os.getpid() != self.pid:  # a forked child finished the cell: never reply
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(0)
            restore_env()
            reply, parts = self._close_capture(message.get("id"), out_fd, err_fd, max_inline)
        reply.update(exit_code=exit_code, interrupted=interrupted)
        return reply, parts

    def _run_source(self, code_text: str, filename: str) -> tuple[int, bool]:
        linecache.cache[filename] = (len(code_text), None, code_text.splitlines(True), filename)
        try:
            tree = ast.parse(code_text, filename, "exec")
            last_expression = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last_expression = ast.Expression(tree.body.pop().value)
            body_code = compile(tree, filename, "exec")
            expr_code = compile(last_expression, filename, "eval") if last_expression else None
        except (SyntaxError, ValueError, OverflowError, MemoryError) as exc:
            sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
            return 1, False
        try:
            self.executing = True
            try:
                exec(body_code, self.namespace)
                if expr_code is not None:
                    value = eval(expr_code, self.namespace)
                    if value is not None:
                        print(repr(value))
            finally:
                self.executing = False
            return 0, False
        except SystemExit as exc:
            code = exc.code
            if code is None:
                return 0, False
            if isinstance(code, int):
                return code, False
            print(code, file=sys.stderr)
            return 1, False
        except KeyboardInterrupt as exc:
            self._print_user_traceback(exc, filename)
            return 130, True
        except BaseException as exc:
            self._print_user_traceback(exc, filename)
            return 1, False

    def _print_user_traceback(self, exc: BaseException, filename: str) -> None:
        tb = exc.__traceback__
        # Drop the worker's own frames: show the user's code from the cell down, and not
        # the signal handler that turned the host's interrupt into KeyboardInterrupt.
        while tb is not None and tb.tb_frame.f_code.co_filename != filename:
            tb = tb.tb_next
        try:
            report = traceback.TracebackException(type(exc), exc, tb)
            report.stack = traceback.StackSummary.from_list(
                [frame for frame in report.stack if frame.filename != _AGENT_FILE]
            )
            text = "".join(report.format())
        except Exception:
            text = f"{type(exc).__name__}: <unprintable exception>\n"
        try:
            sys.stderr.write(text)
        except Exception:  # user code closed sys.stderr: write to the capture fd directly
            os.write(2, text.encode("utf-8", "backslashreplace"))

    def _push_env(self, overrides: dict):
        saved = {key: os.environ.get(key) for key in overrides}
        os.environ.update({str(k): str(v) for k, v in overrides.items()})

        def restore():
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

        return restore

    def do_command(self, message: dict, body: bytes):
        max_inline = int(message.get("max_inline", 65536))
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
        out_fd, err_fd = self._open_capture()
        exit_code, interrupted = 0, False
        try:
            try:
                process = subprocess.Popen(
                    [message.get("shell") or "/bin/bash", "-c", message["command"]],
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=err_fd,
                    start_new_session=True,
                )
            except OSError as exc:
                os.write(err_fd, f"cannot start the shell: {exc}\n".encode())
                exit_code = 127
            else:
                try:
                    self.executing = True
                    try:
                        exit_code = process.wait()
                    finally:
                        self.executing = False
                except KeyboardInterrupt:
                    interrupted = True
                    _kill_group(process.pid)
                    process.wait()
                    exit_code = 130
                if exit_code < 0:
                    exit_code = 128 - exit_code
        finally:
            reply, parts = self._close_capture(message.get("id"), out_fd, err_fd, max_inline)
        reply.update(exit_code=exit_code, interrupted=interrupted)
        return reply, parts

    def do_define(self, message: dict, body: bytes):
        """Run host-supplied helper source; its public names become builtins of user code."""
        helper_globals = {"__name__": "__conch_helpers__", "__builtins__": self.user_builtins}
        exec(compile(message["source"], "<conch-helpers>", "exec"), helper_globals)
        defined = []
        for name, value in helper_globals.items():
            if not name.startswith("_"):
                self.user_builtins[name] = value
                self.helper_names.add(name)
                defined.append(name)
        return {"defined": sorted(defined)}, ()

    # --- snapshots ------------------------------------------------------------------------

    def do_snapshot(self, message: dict, body: bytes):
        entries, parts, unpicklable = [], [], []
        for name, value in list(self.namespace.items()):
            if name.startswith("__") and name.endswith("__"):
                continue  # module machinery (__builtins__, __spec__, ...), not user state
            try:
                fmt, data = _dumps(value, self.main_module)
            except Exception as exc:
                unpicklable.append([name, f"{type(exc).__name__}: {exc}"[:500]])
                continue
            entries.append([name, fmt, len(data)])
            parts.append(data)
        reply = {
            "names": entries,
            "unpicklable": unpicklable,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
        }
        path = message.get("state_path")
        if path:
            try:
                _save_state(path, parts)
            except OSError as exc:  # the file-size limit, a full disk: the channel still works
                reply["state_file_error"] = f"{type(exc).__name__}: {exc}"[:500]
            else:
                reply["state_file"] = True
                return reply, ()
        return reply, tuple(parts)

    def do_restore(self, message: dict, body: bytes):
        names = message.get("names", [])
        path = message.get("state_path")
        if path:
            try:
                body = _load_state(path, sum(entry[2] for entry in names))
            except OSError as exc:  # nothing was touched: the host sends the state instead
                return {"state_file_error": f"{type(exc).__name__}: {exc}"[:500]}, ()
        for name in [n for n in self.namespace if n != "__builtins__"]:
            del self.namespace[name]
        self.namespace["__name__"] = "__main__"
        restored, failed, offset = [], [], 0
        view = memoryview(body)
        for name, fmt, length, *_ in names:
            data = view[offset : offset + length]
            offset += length
            try:
                self.namespace[name] = _loads(fmt, data, self.main_module)
                restored.append(name)
            except Exception as exc:
                failed.append([name, f"{type(exc).__name__}: {exc}"[:500]])
        env = message.get("env")
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        cwd = message.get("cwd")
        if cwd:
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir(self.cwd)
        return {"restored": restored, "failed": failed}, ()


def _save_state(path: str, parts) -> None:
    """Write the pickles, one after another, to a new file ``path`` (named by the host in a
    directory it shares with the sandbox); a partial file is removed before the error rises."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view[: 4 * CHUNK]) :]
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def _load_state(path: str, length: int):
    """The ``length`` bytes of state the host put in the file ``path``, all of them: mapped
    (far cheaper than reading 50 MB into new memory) where the file system allows. Nothing
    in the sandbox can shrink the file while it is mapped: the host made it, read-only."""
    with open(path, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size != length:
            raise OSError(f"the state file {path} does not hold the {length} bytes named")
        if not length:
            return b""
        try:
            return mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            pass
        data = bytearray(length)
        view = memoryview(data)
        done = 0
        while done < length:
            count = handle.readinto(view[done:])
            if not count:
                break
            done += count
        if done != length or handle.read(1):
            raise OSError(f"the state file {path} does not hold the {length} bytes named")
    return data


class _NullWriter(io.TextIOBase):
    """Where print() goes between executions: nowhere."""

    def write(self, text: str) -> int:
        return len(text)


class _FastPickler(pickle.Pickler):
    """The C pickler, refusing what only dill pickles right: code defined in __main__."""

    def reducer_override(self, obj):
        if (
            isinstance(obj, (types.FunctionType, type))
            and getattr(obj, "__module__", None) == "__main__"
        ):
            raise _NeedsDill
        if isinstance(obj, types.ModuleType):
            raise _NeedsDill
        return NotImplemented


def _dumps(value, main_module) -> tuple[str, bytes]:
    """Pickle one value: the C pickler when it can, dill for code defined in the session."""
    buffer = io.BytesIO()
    try:
        _FastPickler(buffer, protocol=5).dump(value)
        return "pickle", buffer.getvalue()
    except (_NeedsDill, pickle.PicklingError, TypeError, AttributeError):
        if not _have_dill():
            raise
    buffer = io.BytesIO()
    pickler = _dill_pickler_class()(buffer, protocol=5, recurse=False, byref=False)
    pickler._main = main_module
    pickler.dump(value)
    return "dill", buffer.getvalue()


_DILL_PICKLER: list[type] = []


def _dill_pickler_class() -> type:
    """dill's pickler, minus its file-handle support.

    dill saves an open file as its path and mode and opens it again on load: a file that
    was open for writing would be truncated by a restore. Open files are refused instead
    and listed among the names that could not be saved.
    """
    if not _DILL_PICKLER:
        import dill

        def refuse(pickler, obj):
            raise pickle.PicklingError(
                f"open file objects are not saved ({type(obj).__name__}); open the file again "
                "after restoring"
            )

        dispatch = dill._dill.MetaCatchingDict(dill.Pickler.dispatch)
        for kind in list(dispatch):
            if isinstance(kind, type) and issubclass(kind, io.IOBase):
                dispatch[kind] = refuse
        _DILL_PICKLER.append(type("SnapshotPickler", (dill.Pickler,), {"dispatch": dispatch}))
    return _DILL_PICKLER[0]


def _loads(fmt: str, data, main_module):
    if fmt == "pickle":
        return pickle.loads(data)
    if fmt == "dill":
        import dill

        unpickler = dill.Unpickler(io.BytesIO(bytes(data)))
        unpickler._main = main_module
        return unpickler.load()
    raise ValueError(f"unknown snapshot format {fmt!r}")


_DILL_FOUND: list[bool] = []


def _have_dill() -> bool:
    if not _DILL_FOUND:
        _DILL_FOUND.append(importlib.util.find_spec("dill") is not None)
    return _DILL_FOUND[0]


def _listen(address):
    """A listening socket for ``"vsock:PORT"`` (inside a VM: the host reaches it through
    the hypervisor's vsock device) or ``"unix:PATH"``; ``None`` when not listening."""
    if not address:
        return None
    import socket

    kind, _, where = str(address).partition(":")
    if kind == "vsock":
        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        listener.bind((socket.VMADDR_CID_ANY, int(where)))
    elif kind == "unix":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(where)
        except FileNotFoundError:
            pass
        listener.bind(where)
    else:
        raise ValueError(f"cannot listen on {address!r}: use vsock:PORT or unix:PATH")
    listener.listen(4)
    return listener


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _run_keeper() -> None:
    """Fork: the child becomes the worker, this process reports how it ended.

    The worker's parent is then this keeper, not the host, so ``os.kill(os.getppid(), 9)``
    in user code cannot kill the host; and the host still learns the worker's exit status.
    """
    pid = os.fork()
    if pid == 0:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: report it the shell's way (128 + N), as bwrap does
        code = 128 - code
    try:
        os.write(1, protocol.encode_frame({"op": "exit", "code": code}))
    except OSError:
        pass
    os._exit(code & 0xFF)


def _become(uid: int, gid: int) -> None:
    """Drop to ``uid``/``gid`` (the keeper stays who it was, so user code cannot signal it).

    Used where the keeper is the sandbox's init, whose death ends every process in it."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # from root to another user: every capability is dropped with it


def main(argv: list[str]) -> None:
    config = json.loads(argv[1]) if len(argv) > 1 else {}
    for path in config.get("site_packages") or ():
        if path not in sys.path:
            sys.path.append(path)
    if config.get("keeper"):
        _run_keeper()
    if config.get("user"):
        _become(*config["user"])
    if config.get("cwd"):
        os.chdir(config["cwd"])
    worker = Worker(config)
    worker.apply_limits()
    worker.install_signal_handlers()
    worker.serve()


if __name__ == "__main__":
    main(sys.argv)
