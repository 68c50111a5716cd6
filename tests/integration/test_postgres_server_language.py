"""A server that speaks another language (its lc_messages) is understood: a
login it refused is a refusal, said at once, and a server shutting down is
one to wait for, whatever words it says them in. The engine read the server's
English words: a Russian server's refusal (`ВАЖНО:`, no `FATAL:`) was taken
for a server that did not answer, which a worker waits for forever; a German
one's shutting down (`FATAL:`, other words) for a refusal, which stops it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest

import flowledger as fl
from flowledger.infrastructure.store_check import cannot_connect_now
from flowledger.infrastructure.store_url import parse_store_url
from tests import postgres
from tests.integration.test_postgres_failover import Clusters, clusters  # noqa: F401

pytestmark = pytest.mark.postgres

RUSSIAN, GERMAN = "ru_RU.UTF-8", "de_DE.UTF-8"


@pytest.fixture(autouse=True)
def _locales_installed() -> None:
    """The server takes an lc_messages only in a locale the system has
    (.ci/run makes these two with localedef)."""
    try:
        found = subprocess.run(["locale", "-a"], capture_output=True, text=True,
                               check=True).stdout.lower().replace("-", "").split()
    except (OSError, subprocess.CalledProcessError):
        found = []
    missing = [name for name in (RUSSIAN, GERMAN)
               if name.lower().replace("-", "") not in found]
    if missing:
        why = (f"locales {missing} are not installed (localedef -i ru_RU -c -f UTF-8 "
               "ru_RU.UTF-8, and de_DE likewise)")
        if postgres.REQUIRED:
            pytest.fail(why)
        pytest.skip(why)


def _failed_connection(conninfo: dict[str, Any]) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as failed:
        psycopg.connect(**conninfo)
    return failed.value


def test_a_login_refused_in_russian_is_a_refusal(clusters: Clusters) -> None:  # noqa: F811
    clusters.primary("a", f"-c lc_messages={RUSSIAN}")
    url = clusters.url("a").replace("postgres@", "nobody@")

    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(url)
    assert not isinstance(refused.value, fl.StoreUnreachable)
    assert 'роль "nobody" не существует' in str(refused.value)
    assert "check the URL against what the server says" in str(refused.value)

    conninfo = parse_store_url(url).libpq()
    said = _failed_connection(conninfo)
    assert "FATAL" not in str(said)
    assert not cannot_connect_now(str(said), conninfo)


def test_a_server_shutting_down_in_german_is_waited_for(clusters: Clusters) -> None:  # noqa: F811
    clusters.primary("a", f"-c lc_messages={GERMAN}")
    url = clusters.url("a")
    with clusters.connect("a"):  # a smart shutdown waits for it: the server stays stopping
        clusters.run("pg_ctl", "-D", str(clusters.root / "a"), "-m", "smart", "-W", "stop")
        conninfo = parse_store_url(url).libpq()
        said = _failed_connection(conninfo)
        assert "FATAL:  das Datenbanksystem" in str(said)
        assert cannot_connect_now(str(said), conninfo)

        with pytest.raises(fl.StoreUnreachable) as unreachable:
            fl.Engine(url)
        assert "das Datenbanksystem" in str(unreachable.value)

    stopped = time.monotonic() + 30
    while (clusters.root / "a" / "postmaster.pid").exists():
        assert time.monotonic() < stopped, "the server did not stop"
        time.sleep(0.05)
    # Taking connections again, it refuses a login, in German, as a refusal.
    clusters.start("a", f"-c lc_messages={GERMAN}")
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(url.replace("postgres@", "nobody@"))
    assert not isinstance(refused.value, fl.StoreUnreachable)
    assert 'Rolle »nobody« existiert nicht' in str(refused.value)


def test_the_server_that_answered_is_asked_alone_and_without_a_password(
        clusters: Clusters) -> None:  # noqa: F811
    """Asking again (libpq's ping) went to every host of the URL, a silent
    one too, for its whole connect_timeout, while the binary driver held every
    thread of the process; and with the password, a second failed login on
    the server's count (lockouts count them). It asks the host that answered,
    as nobody."""
    clusters.primary("a", f"-c lc_messages={RUSSIAN} -c log_line_prefix='%e ' "
                          "-c log_error_verbosity=terse")
    with clusters.connect("a") as admin:
        admin.execute("CREATE ROLE app LOGIN PASSWORD 'right'")
    hba = clusters.root / "a" / "pg_hba.conf"
    hba.write_text("host all app 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    clusters.run("pg_ctl", "-D", str(clusters.root / "a"), "reload")
    time.sleep(0.5)  # the postmaster reads it again

    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers
    accepted: list[socket.socket] = []
    silent.settimeout(0.2)

    def listen() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(silent.accept()[0])

    stop = threading.Event()
    listener = threading.Thread(target=listen)
    listener.start()
    try:
        url = (f"postgresql://app:wrong@127.0.0.1:{silent.getsockname()[1]},"
               f"127.0.0.1:{clusters.ports['a']}/postgres?connect_timeout=2")
        with pytest.raises(fl.ConfigurationError) as refused:
            fl.Engine(url)
        assert not isinstance(refused.value, fl.StoreUnreachable)
    finally:
        stop.set()
        listener.join()
        silent.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) == 1  # libpq's own try, not a ping's
    log = (clusters.root / "a.log").read_text()
    assert log.count("\n28P01 ") == 1  # invalid_password: the login's own, once
