"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start it on loopback, delete it after.

    with running_postgres() as server:
        url = server.create_database()  # postgresql://postgres@127.0.0.1:PORT/db_xxxx

No mocks: these are the distribution's own `initdb`, `pg_ctl` and `postgres`. PostgreSQL refuses to run
as root, so under root the server runs as the `postgres` system user (created if missing) and the temp
dir is handed to it. Durability settings are off (fsync): the server is thrown away after the tests.
Missing binaries raise `PostgresNotFound`; `make test` installs them with deploy/ensure_postgres.sh.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

PG_TOOLS = ("initdb", "pg_ctl", "postgres")
SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root
SUPERUSER = "postgres"  # the database superuser initdb creates (trust auth on loopback only)
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: looked in $RCSD_PG_BINDIR, "
    "`pg_config --bindir`, /usr/lib/postgresql/*/bin and $PATH. `make test` installs them "
    "(deploy/ensure_postgres.sh, Debian package `postgresql`); or run that script yourself."
)
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}


class PostgresNotFound(RuntimeError):
    pass


def find_pg_bindir() -> Path | None:
    """The first folder holding all of `PG_TOOLS`, or None."""
    candidates: list[Path] = []
    if env_dir := os.environ.get("RCSD_PG_BINDIR"):
        candidates.append(Path(env_dir))
    if pg_config := shutil.which("pg_config"):
        # libpq-dev's pg_config names the server's bindir even when only the client is installed.
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout
            candidates.append(Path(out.strip()))
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versioned, key=lambda p: _version(p.parent.name), reverse=True))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)  # e.g. /usr/local/bin/initdb -> .../15/bin
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in PG_TOOLS):
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # temp dir: data/, sock/, server.log
    port: int
    os_user: str | None  # None: runs as the current user
    host: str = "127.0.0.1"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, n_lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n_lines:])
        return ""

    def pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one of the server's tools as the server's OS user."""
        return _run_as([str(self.bindir / args[0]), *args[1:]], self.os_user, cwd=self.root, check=check)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (its backends exit when they notice it gone)."""
        pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def restart(self, timeout_s: float = 60) -> None:
        """Start again on the same data and port after `kill`: crash recovery runs first. Retried
        while the dead server's backends still hold its shared memory."""
        deadline = time.monotonic() + timeout_s
        while True:
            started = self.pg(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start", check=False
            )  # fmt: skip
            if started.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not restart ({started.stderr}):\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.datadir.exists():
            stopped = self.pg(
                "pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop", check=False
            )
            if stopped.returncode != 0:
                self.pg("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(base_dir: str | os.PathLike[str] | None = None, *, start_tries: int = 5) -> PostgresServer:
    """initdb into a new temp dir under `base_dir` (default: the system temp dir) and start the server
    on 127.0.0.1 at a free port, its unix socket inside the temp dir. Stop it with `server.stop()`."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise PostgresNotFound(INSTALL_HINT)
    os_user = _server_os_user()
    root = Path(tempfile.mkdtemp(prefix="rcsd-pg-", dir=base_dir))
    server = PostgresServer(bindir=bindir, root=root, port=0, os_user=os_user)
    try:
        server.sockdir.mkdir()
        if os_user is not None:
            entry = pwd.getpwnam(os_user)
            for path in (root, server.sockdir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        server.pg(
            "initdb", "-D", str(server.datadir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        for attempt in range(start_tries):
            server.port = _free_port()
            _write_settings(server)
            started = server.pg(
                "pg_ctl", "-D", str(server.datadir), "-l", str(server.logfile), "-w", "-t", "60", "start",
                check=False,
            )  # fmt: skip
            if started.returncode == 0:
                return server
            # Another process may have taken the port between probing and binding: try a new one.
            if "already in use" not in server.log_tail() or attempt == start_tries - 1:
                raise RuntimeError(
                    f"postgres did not start ({started.stdout}{started.stderr}):\n{server.log_tail()}"
                )
        raise AssertionError("unreachable")
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def running_postgres(base_dir: str | os.PathLike[str] | None = None) -> Iterator[PostgresServer]:
    server = start_postgres(base_dir)
    try:
        yield server
    finally:
        server.stop()


def _write_settings(server: PostgresServer) -> None:
    # Appended to postgresql.conf: on a retry the later `port` line wins.
    lines = [f"{name} = {value}" for name, value in SETTINGS.items()]
    lines += [f"port = {server.port}", f"unix_socket_directories = '{server.sockdir}'"]
    with open(server.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write("\n# rcsd tests\n" + "\n".join(lines) + "\n")


def _server_os_user() -> str | None:
    """None when not root; otherwise the unprivileged user to run the server as (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True, capture_output=True,
        )  # fmt: skip
    return SERVER_USER


def _run_as(
    cmd: list[str], os_user: str | None, *, cwd: Path, check: bool
) -> subprocess.CompletedProcess[str]:
    as_user: dict[str, object] = {}
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    done = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        **as_user,  # type: ignore[arg-type]
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
