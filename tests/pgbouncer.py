"""A PgBouncer of the test's own in front of the test server (tests of poolers,
ADR 0017 "Connection poolers").

Found on PATH or in /usr/sbin (Debian's package: `apt-get install pgbouncer`;
.ci/run installs it). Missing, its tests are skipped with the reason shown,
unless FLOWLEDGER_REQUIRE_POSTGRES=1 (CI), which fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from flowledger.infrastructure.store_url import parse_store_url
from tests import postgres

BINARY = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.access(p, os.X_OK)),
    None)


def report() -> str:
    if BINARY is not None:
        return f"PgBouncer tests: running with {BINARY}"
    return ("PgBouncer tests: " + ("REQUIRED but" if postgres.REQUIRED else "SKIPPED,")
            + " pgbouncer is not installed (apt-get install pgbouncer)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def through(url: str, port: int) -> str:
    """`url` (a test store's) reaching its server through the pooler at `port`."""
    scheme, _, rest = url.partition("://")
    user, _, rest = rest.partition("@")
    _, _, path = rest.partition("/")
    return f"{scheme}://{user}@127.0.0.1:{port}/{path}"


@contextlib.contextmanager
def pgbouncer(mode: str, clients: int = 400) -> Iterator[int]:
    """A PgBouncer in `mode` (session, transaction, statement) forwarding every
    database to the test server, taking at most `clients` connections; yields
    its port."""
    if BINARY is None:
        if postgres.REQUIRED:
            pytest.fail("pgbouncer is required with FLOWLEDGER_REQUIRE_POSTGRES=1 but is not "
                        "installed (apt-get install pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    env = parse_store_url(postgres.URL).env
    folder = Path(tempfile.mkdtemp(prefix="fl-pgbouncer-"))
    folder.chmod(0o755)  # read by the server's user when it runs as that (below)
    port = _free_port()
    ini = folder / "pgbouncer.ini"
    (folder / "users.txt").write_text(f'"{env["POSTGRES_USER"]}" ""\n')
    ini.write_text(
        "[databases]\n"
        f"* = host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\ndefault_pool_size = 80\nmax_client_conn = {clients}\n"
        "server_login_retry = 1\nignore_startup_parameters = extra_float_digits,options\n")
    for f in folder.iterdir():
        f.chmod(0o644)
    # PgBouncer refuses to run as root: as the server's own user then.
    command = [BINARY, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(ini)]
    with open(folder / "pgbouncer.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user=env["POSTGRES_USER"],
                                dbname=env["POSTGRES_DBNAME"], connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start: "
                                       + (folder / "pgbouncer.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
