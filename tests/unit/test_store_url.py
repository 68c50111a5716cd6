"""PostgreSQL store URLs: as messages show them (`store_url.shown`), whatever the
password and wherever the URL is refused, the password is not in what is said;
and as libpq is given them (several hosts)."""

from __future__ import annotations

import re
import shlex
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.errors import ConfigurationError
from flowledger.infrastructure.store_url import (
    DEFAULT_STORE,
    STORE_ENV,
    cli_command,
    parse_store_url,
    shown,
)

passwords = st.text(min_size=1, max_size=30).map(lambda rest: "PW" + rest)
# Typed as a user would: percent-encoded, or as it is (an @, / or ? in it then
# makes a URL that parses badly, and must still not be shown).
written = st.one_of(passwords.map(lambda p: (p, quote(p, safe=""))),
                    passwords.map(lambda p: (p, p)))

REFUSED_TAILS = ["/db?sslmod=require", "/db?host=elsewhere", "/db?schema=no-dashes",
                 "/db?password=again", ":notaport/db"]


@given(written, st.sampled_from(["postgresql", "postgres", "postgresq"]))
def test_a_shown_url_holds_no_password(pw: tuple[str, str], scheme: str) -> None:
    _, typed = pw
    url = f"{scheme}://alice:{typed}@db.example.com:5432/app?schema=s"
    said = shown(url)
    assert "PW" not in said
    assert said.startswith(f"{scheme}://alice:***@")


@given(written, st.sampled_from(REFUSED_TAILS))
def test_a_refused_url_is_said_without_its_password(pw: tuple[str, str], tail: str) -> None:
    _, typed = pw
    url = f"postgresql://alice:{quote(typed, safe='')}@db.example.com{tail}"
    with pytest.raises(ConfigurationError) as caught:
        parse_store_url(url)
    assert "PW" not in str(caught.value)
    assert "alice:***@" in str(caught.value)


@given(written)
def test_a_url_mistyped_past_parsing_is_said_without_its_password(pw: tuple[str, str]) -> None:
    for url in (f"postgresql:/alice:{pw[1]}@db/app", f"alice:{pw[1]}@db/app"):
        with pytest.raises(ConfigurationError) as caught:
            parse_store_url(url)
        assert "PW" not in str(caught.value)


# A password typed as it is, with characters a URL gives meaning to.
raw_passwords = st.lists(st.tuples(st.sampled_from([*"/?#@:&=% ,[]", ""]),
                                   st.sampled_from(["PW", "PWx"])), min_size=1, max_size=6
                         ).map(lambda parts: "".join(sep + pw for sep, pw in parts))


@given(raw_passwords, st.sampled_from(["/db?schema=s", "/db", "", "/db?sslmod=x", ":99999/db"]))
def test_a_password_typed_unencoded_is_taken_whole_or_refused_unsaid(password: str,
                                                                     tail: str) -> None:
    """Typed raw, a password with /, ? or # in it is refused with how to write
    it, and none of it is said (a ? once cut the URL there, and the rest of
    the password was said back as an unknown parameter); one with only @ or
    : in it is taken whole."""
    url = f"postgresql://alice:{password}@db.example.com{tail}"
    try:
        config = parse_store_url(url)
    except ConfigurationError as e:
        said = str(e)
        assert "PW" not in said
        if any(c in password for c in "/?#"):
            assert "Percent-encode /, ?, # and @ in a password" in said
        return
    assert not any(c in password for c in "/?#")
    assert config.libpq()["password"] == password and config.env["POSTGRES_USER"] == "alice"
    assert config.env["POSTGRES_HOST"] == "db.example.com"


@pytest.mark.parametrize(("url", "password", "host", "connect"), [
    ("postgresql://u:x@127.0.0.1/db?application_name=a@b", "x", "127.0.0.1",
     {"application_name": "a@b"}),
    ("postgresql://db/app?application_name=svc@web1", None, "db",
     {"application_name": "svc@web1"}),
    ("postgresql://db.internal:5432?application_name=billing@web1", None, "db.internal",
     {"application_name": "billing@web1"}),
    ("postgresql://[::1]:5432,[fe80::1]?application_name=a@b", None, "::1,fe80::1",
     {"application_name": "a@b"}),
    ("postgresql://u:p@ss@host/db?sslrootcert=/etc/ca.pem", "p@ss", "host",
     {"sslrootcert": "/etc/ca.pem"}),
])
def test_an_at_in_a_parameter_value_is_the_values(url: str, password: str | None, host: str,
                                                  connect: dict[str, str]) -> None:
    """After a path, or after plain hosts with no user part, an @ in a value is
    the value's (reviews found such URLs refused, or read with the password
    running to the value's @ and the value's tail taken for the host)."""
    config = parse_store_url(url)
    assert config.libpq().get("password") == password
    assert config.libpq()["host"] == host and config.connect == connect


@pytest.mark.parametrize("url", [
    "postgresql://u:PWx@127.0.0.1?application_name=a@b",  # or password "PWx@127.0.0.1?..."
    "postgresql://app:PWx@PWy?k=PWz@db.example.com",
    "postgresql://app:PWx?tail@db", "postgresql://u:PW#x@host/db", "postgresql://u:PW/x@host/db",
])
def test_a_url_that_reads_two_ways_is_refused_with_how_to_write_it(url: str) -> None:
    assert "Percent-encode /, ?, # and @ in a password" in _refused_unsaid(url)


@pytest.mark.parametrize(("schema", "said"), [
    ("pg_foo", "is reserved for PostgreSQL's own schemas"),
    ("pg_catalog", "is reserved for PostgreSQL's own schemas"),
    ("information_schema", "is reserved for PostgreSQL's own schemas"),
    ("a" * 64, "is 64 bytes long; PostgreSQL keeps only the first 63 bytes of a name"),
    ("\u00e9" * 32, "is 64 bytes long"),
    ("s&schema=t", "schema= is given 2 times; give it once"),
])
def test_a_schema_postgresql_would_take_otherwise_is_refused(schema: str, said: str) -> None:
    assert said in _refused_unsaid(f"postgresql://alice:PWx@db/app?schema={schema}")


def test_schemas_postgresql_keeps_as_they_are_are_taken() -> None:
    for schema in ["a" * 63, "\u00e9" * 31, "PG_upper", "Tenant_1", "s&schema=s"]:
        config = parse_store_url(f"postgresql://alice@db/app?schema={schema}")
        assert config.env["POSTGRES_SCHEMA"] == schema.partition("&")[0]


@pytest.mark.parametrize("secret", ["sslpassword", "SSLPassword", "oauth_client_secret"])
def test_secret_parameters_in_the_query_are_not_shown(secret: str) -> None:
    said = shown(f"postgresql://alice@db/app?sslmode=require&{secret}=PWkey&x=1")
    assert "PWkey" not in said and f"{secret}=***" in said and "sslmode=require" in said


def test_what_is_not_quite_a_url_hides_its_password_too() -> None:
    assert shown("postgresql://alice:PWx/app") == "postgresql://alice:***/app"  # no host
    assert shown("postgresql://db/app?ssl%70assword=PWx") == (
        "postgresql://db/app?ssl%70assword=***")  # an escaped name
    assert shown(b"postgresql://alice:PWx@db") == "<a bytes, not a URL>"  # type: ignore[arg-type]


def test_urls_without_credentials_are_shown_as_they_are() -> None:
    for url in ["sqlite:///data/a:b@c.db", "memory://", "postgresql://alice@db:5432/app",
                "sqlite:/tour.db", "sqlite:tour.db",  # not URLs, but no password either
                "postgresql://db/app?schema=s", "postgresql://[::1]:5432/app"]:
        assert shown(url) == url


@pytest.mark.parametrize(("hosts", "host", "port"), [
    ("primary:5432,standby:5433", "primary,standby", "5432,5433"),
    ("primary,standby", "primary,standby", "5432,5432"),
    ("[::1]:6000,[fe80::1]", "::1,fe80::1", "6000,5432"),
    ("db1,[::1]", "db1,::1", "5432,5432"),  # a list the standard library's parser refuses
    ("%2Fvar%2Frun%2Fpostgresql", "/var/run/postgresql", "5432"),  # a socket directory
    ("", "127.0.0.1", "5432"),
])
def test_several_hosts_go_to_libpq_as_lists(hosts: str, host: str, port: str) -> None:
    config = parse_store_url(f"postgresql://alice@{hosts}/app?target_session_attrs=read-write")
    settings = config.libpq()
    assert (settings["host"], settings["port"]) == (host, port)
    assert settings["target_session_attrs"] == "read-write" and "password" not in settings


@pytest.mark.parametrize(("hosts", "said"), [
    ("db1,", "an empty host in its list of hosts"),
    (",db2", "an empty host in its list of hosts"),
    ("db:70000", "a port is not a number from 1 to 65535"),
    ("db:0", "a port is not a number from 1 to 65535"),
    ("db:\u0665\u0664", "a port is not a number from 1 to 65535"),
    ("a%2Cb", "a host name holds a comma"),
])
def test_a_host_list_libpq_would_read_otherwise_is_refused(hosts: str, said: str) -> None:
    assert said in _refused_unsaid(f"postgresql://alice:PWx@{hosts}/app")


def test_a_host_list_without_a_user_is_shown_as_it_is() -> None:
    assert shown("postgresql://db1:5432,db2:5433/app") == "postgresql://db1:5432,db2:5433/app"



def _refused_unsaid(url: str) -> str:
    """What refusing `url` says, which holds no word of its password (PW...)."""
    with pytest.raises(ConfigurationError) as caught:
        parse_store_url(url)
    said = str(caught.value)
    assert "PW" not in said
    return said


def test_a_suggested_command_names_the_store_unless_it_is_the_commands_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert cli_command(DEFAULT_STORE, "blocked") == "flowledger blocked"
    assert (cli_command("sqlite:///my flows.db", "resume", "wf")
            == "flowledger --store 'sqlite:///my flows.db' resume wf")
    monkeypatch.setenv(STORE_ENV, "sqlite:///mine.db")
    assert cli_command("sqlite:///mine.db", "blocked") == "flowledger blocked"
    assert cli_command(DEFAULT_STORE, "blocked") == f"flowledger --store {DEFAULT_STORE} blocked"


@given(written)
def test_a_suggested_command_never_shows_a_password(password: tuple[str, str]) -> None:
    plain, typed = password
    said = cli_command(f"postgresql://app:{typed}@db.internal:5432/flows", "blocked")
    assert plain not in said and typed not in said
    assert "app@db.internal" in said or "***" in said  # left out, else hidden


def test_a_suggested_command_quotes_each_word_and_drops_what_would_refuse_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    said = cli_command("sqlite:///flows.db", "resume", "nightly report")
    assert shlex.split(said)[-2:] == ["resume", "nightly report"]
    # A command that writes is not sent to a store opened read-only; one that reads is.
    assert cli_command("sqlite:///flows.db?mode=ro", "resume", "wf") == (
        "flowledger --store sqlite:///flows.db resume wf")
    assert "mode=ro" in cli_command("sqlite:///flows.db?mode=ro", "blocked", writes=False)
    monkeypatch.setenv(STORE_ENV, "sqlite:///flows.db?mode=ro")
    assert cli_command("sqlite:///flows.db?mode=ro", "blocked", writes=False) == (
        "flowledger blocked")
    assert "--store sqlite:///flows.db resume" in cli_command("sqlite:///flows.db?mode=ro",
                                                              "resume", "wf")
    # No password, not even ***: libpq then takes it from PGPASSWORD or ~/.pgpass.
    said = cli_command("postgresql://app:s3cret@db:5432/flows?sslmode=require&sslpassword=x",
                       "blocked")
    assert said == "flowledger --store 'postgresql://app@db:5432/flows?sslmode=require' blocked"


@pytest.mark.parametrize(("query", "said"), [
    ("sslmode=require&sslmode=disable", "sslmode= is given 2 times, with 'require', "
                                        "'disable'; give it once"),
    ("sslpassword=one&sslpassword=two", "sslpassword= is given 2 times, with different "
                                        "values; give it once"),
    ("schema=", "schema= is empty"),
])
def test_a_parameter_libpq_would_take_otherwise_than_it_reads_is_refused(query: str,
                                                                          said: str) -> None:
    """libpq takes the last of a parameter given twice: a URL asking TLS and
    then none would connect in clear without a word. An empty schema= would
    be the public schema."""
    with pytest.raises(ConfigurationError, match=re.escape(said)) as refused:
        parse_store_url(f"postgresql://alice@db.example.com/flows?{query}")
    assert "one" not in str(refused.value) and "two" not in str(refused.value)
    assert parse_store_url("postgresql://alice@db/flows?sslmode=require&sslmode=require")


def test_what_a_url_leaves_out_is_what_libpqs_variables_say(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """postgresql:///flows with PGUSER and PGHOST set connects as libpq would:
    it used to connect as postgres to 127.0.0.1 whatever they said."""
    for name in ("PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    plain = parse_store_url("postgresql:///").libpq()
    assert (plain["user"], plain["host"], plain["port"], plain["dbname"]) == (
        "postgres", "127.0.0.1", "5432", "postgres")
    monkeypatch.setenv("PGUSER", "viewer")
    monkeypatch.setenv("PGHOST", "/var/run/postgresql")
    monkeypatch.setenv("PGPORT", "5433")
    monkeypatch.setenv("PGDATABASE", "flows")
    given = parse_store_url("postgresql:///").libpq()
    assert (given["user"], given["host"], given["port"], given["dbname"]) == (
        "viewer", "/var/run/postgresql", "5433", "flows")
    named = parse_store_url("postgresql://app@db.internal/other").libpq()  # the URL wins
    assert (named["user"], named["host"], named["port"], named["dbname"]) == (
        "app", "db.internal", "5433", "other")


def test_hosts_from_pghost_get_a_port_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """PGHOST naming several hosts with one PGPORT (as libpq takes it) gives
    each host that port: a list of hosts with one port made the error said
    for an unreachable server a traceback."""
    monkeypatch.setenv("PGHOST", "db1,db2")
    monkeypatch.setenv("PGPORT", "5999")
    settings = parse_store_url("postgresql:///").libpq()
    assert (settings["host"], settings["port"]) == ("db1,db2", "5999,5999")


@pytest.mark.parametrize(("url", "host", "port"), [
    # As PostgreSQL's own documentation writes a Unix socket's directory.
    ("postgresql:///flows?host=/var/run/postgresql", "/var/run/postgresql", "5432"),
    ("postgresql://app@/flows?host=/tmp&port=5433", "/tmp", "5433"),
    ("postgresql:///flows?host=db1,db2&port=5433", "db1,db2", "5433,5433"),
    ("postgresql:///flows?host=db1,db2&port=5433,5434", "db1,db2", "5433,5434"),
    ("postgresql:///flows?port=6000", "127.0.0.1", "6000"),
])
def test_a_url_that_leaves_its_host_out_may_give_it_in_the_query(
        monkeypatch: pytest.MonkeyPatch, url: str, host: str, port: str) -> None:
    """It was refused ("say it in the host of the URL"), which for a socket
    directory meant percent-encoding every slash of it."""
    for name in ("PGHOST", "PGPORT"):
        monkeypatch.delenv(name, raising=False)
    settings = parse_store_url(url).libpq()
    assert (settings["host"], settings["port"]) == (host, port)


@pytest.mark.parametrize(("tail", "said"), [
    ("db/flows?host=/var/run/postgresql", "host= cannot be given in the query; say it in "
                                          "the host of the URL, or leave the URL's host out"),
    ("db:5432/flows?port=5433", "port= cannot be given in the query"),
    ("/flows?host=/tmp&host=/var/run/postgresql", "host= is given 2 times, with '/tmp', "
                                                  "'/var/run/postgresql'; give it once"),
    ("/flows?host=/tmp&port=99999", "a port is not a number from 1 to 65535"),
])
def test_a_host_in_the_query_that_says_something_twice_is_refused(tail: str, said: str) -> None:
    assert said in _refused_unsaid(f"postgresql://alice:PWx@{tail}")
