"""A real, throwaway PostgreSQL server for tests and benchmarks.

``postgres_for_tests()`` yields a ``PostgresServer``: the server named by the environment
variable ``CONCH_TEST_POSTGRES_DSN`` if it is set, otherwise a fresh cluster made with the
machine's ``initdb`` in a temporary directory, listening on 127.0.0.1 on a free port (and on
a unix socket in that directory), stopped and deleted when the block ends. When neither is
possible it raises ``PostgresUnavailable`` whose message says why, so a pytest fixture can
skip with that reason::

    @pytest.fixture(scope="session")
    def postgres_server():
        try:
            with postgres_for_tests() as server:
                yield server
        except PostgresUnavailable as exc:
            pytest.skip(f"PostgreSQL tests skipped: {exc}")

``server.create_database()`` gives a test (or suite) its own empty database and returns its
DSN (about 0.15 s); ``server.empty_database(name)`` makes an existing one empty again (a few
ms), for a suite that reuses one database from test to test. As root, the server binaries
run as the ``postgres`` system user (``initdb`` refuses root). The throwaway cluster trades
durability for speed (fsync off): it is for tests only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_DSN = "CONCH_TEST_POSTGRES_DSN"
ENV_BIN = "CONCH_TEST_POSTGRES_BIN"
_USER = "conch"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be used here; the message says why."""


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running server and a role that may create databases on it."""

    host: str
    port: int
    user: str
    dbname: str
    """The database ``dsn`` points at (used to create and drop others)."""
    password: str | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        password = f":{self.password}" if self.password else ""
        return f"postgresql://{self.user}{password}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name by default) and return its DSN."""
        name = name or f"conch_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def empty_database(self, name: str) -> None:
        """Drop everything in a database's public schema: a fresh database, faster than
        creating one (close every connection to it first)."""
        import psycopg

        with psycopg.connect(self.dsn_for(name), autocommit=True, connect_timeout=10) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    @classmethod
    def from_dsn(cls, dsn: str) -> PostgresServer:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
        return cls(
            host=str(info.get("host") or "127.0.0.1"),
            port=int(info.get("port") or 5432),
            user=str(info.get("user") or os.environ.get("USER", "postgres")),
            dbname=str(info.get("dbname") or "postgres"),
            password=str(info["password"]) if info.get("password") else None,
        )


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$CONCH_TEST_POSTGRES_BIN``, else
    Debian's newest ``/usr/lib/postgresql/<version>/bin``, else wherever PATH has them."""
    candidates: list[Path] = []
    if os.environ.get(ENV_BIN):
        candidates.append(Path(os.environ[ENV_BIN]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


@contextlib.contextmanager
def postgres_for_tests() -> Iterator[PostgresServer]:
    """The server of ``$CONCH_TEST_POSTGRES_DSN``, or a throwaway one (see the module doc)."""
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        server = PostgresServer.from_dsn(dsn)
        try:
            server._admin("SELECT 1")
        except Exception as exc:
            raise PostgresUnavailable(f"cannot connect to ${ENV_DSN}: {exc}") from exc
        yield server
        return
    with throwaway_postgres() as server:
        yield server


@contextlib.contextmanager
def throwaway_postgres(*, start_timeout_s: int = 60) -> Iterator[PostgresServer]:
    """Create, start, yield, stop and delete a private cluster (see the module doc)."""
    bindir = find_postgres_bin()
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) found; install Debian's "
            f"'postgresql' package, set ${ENV_BIN}, or point ${ENV_DSN} at a server"
        )
    run_as = _server_user()
    root = Path(tempfile.mkdtemp(prefix="conch-pg-"))
    data, log = root / "data", root / "server.log"
    try:
        if run_as is not None:
            os.chown(root, run_as.pw_uid, run_as.pw_gid)
        _run(
            run_as,
            [
                bindir / "initdb",
                "-D",
                data,
                "-U",
                _USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )
        server = _start(bindir, run_as, root, data, log, start_timeout_s)
        try:
            yield server
        finally:
            _run(
                run_as,
                [bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                what="pg_ctl stop",
                check=False,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(
    bindir: Path,
    run_as: pwd.struct_passwd | None,
    root: Path,
    data: Path,
    log: Path,
    timeout_s: int,
) -> PostgresServer:
    # A free port can be taken between probing and binding: try a few.
    failure = ""
    for _ in range(3):
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = _run(
            run_as,
            [
                bindir / "pg_ctl",
                "-D",
                data,
                "-l",
                log,
                "-w",
                "-t",
                str(timeout_s),
                "-o",
                options,
                "start",
            ],
            what="pg_ctl start",
            check=False,
        )
        if result.returncode == 0:
            return PostgresServer(host="127.0.0.1", port=port, user=_USER, dbname="postgres")
        failure = _tail(log) or result.stdout + result.stderr
    raise PostgresUnavailable(f"the PostgreSQL server did not start: {failure.strip()[-800:]}")


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, then ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and initdb refuses root, but there is no 'postgres' user to run "
            "the server as; create one or run the tests as another user"
        ) from None


def _run(
    run_as: pwd.struct_passwd | None, argv: list[Any], *, what: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if run_as is not None:
        kwargs = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C"}
    if run_as is not None:
        env["HOME"] = run_as.pw_dir
    try:
        result = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            timeout=120,
            **kwargs,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresUnavailable(f"{what} could not run: {exc}") from exc
    if check and result.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout)[-800:]}"
        )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-800:]
    except OSError:
        return ""
