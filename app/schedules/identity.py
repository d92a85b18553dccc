"""Whether a database URL, or an open connection, is inferq's own database.

inferq's own database holds every tenant's predictions, jobs and schedules, so a tenant's SQL
source or table sink must never reach it, however its URL is spelt. Two checks, because each
alone can be fooled:

- **By address**, before connecting (``same_address``): the server a URL names, its host
  resolved to IP addresses (loopback, unspecified, this machine's own addresses and Unix
  sockets all count as "this machine"), its port (libpq's ``PGPORT`` or 5432 when left out)
  and its database (the user's name when left out, as libpq does), compared with those of
  inferq's own URL. ``localhost`` / ``127.0.0.1`` / ``[::1]`` / the host name, ``postgres://``
  / ``postgresql+psycopg://``, ``?host=``, ``?port=``, ``?dbname=``, a trailing slash or another
  letter case of the database name all compare equal.
- **By the server's word**, on the open connection (``is_own``): the cluster's system
  identifier (when the role may call ``pg_control_system()``; a streaming replica shares it),
  else its postmaster start time and port, and the current database, compared with what
  inferq's own database says. This catches what addresses cannot: DNS aliases, port forwards,
  proxies, service files.

For SQLite, the database file's real path (and inode).
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from sqlalchemy import URL, Connection, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

DEFAULT_PORT = 5432


@dataclass(frozen=True, slots=True)
class Address:
    """Where a URL leads: its backend, the (host, port) pairs it may reach, its databases."""

    backend: str
    endpoints: frozenset[tuple[str, int]]
    """``("local", port)`` for this machine, ``("ip:<addr>", port)`` for another."""
    databases: frozenset[str]
    """Casefolded; for SQLite the file's real path."""


def normalise(url: str) -> str:
    """``postgres://`` and ``postgresql://`` as ``postgresql+psycopg://`` (as inferq connects)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def address(url: str) -> Address:
    """The server and database ``url`` names, resolved (DNS is asked for host names)."""
    parsed = make_url(normalise(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database or ""
        real = "" if path in ("", ":memory:") else os.path.realpath(path)
        return Address("sqlite", frozenset(), frozenset({real} if real else ()))
    if backend != "postgresql":  # never inferq's own (Postgres or SQLite)
        return Address(backend, frozenset(), frozenset())
    return Address(backend, _pg_endpoints(parsed), _pg_databases(parsed))


def same_address(url: str, own: str) -> bool:
    """Whether ``url`` names the same database as ``own``, by address (see the module)."""
    a, b = address(url), address(own)
    if a.backend != b.backend:
        return False
    if a.backend == "sqlite":
        return bool(a.databases & b.databases) or any(
            os.path.exists(x) and os.path.exists(y) and os.path.samefile(x, y)
            for x in a.databases
            for y in b.databases
        )
    return bool(a.databases & b.databases and a.endpoints & b.endpoints)


def _query(parsed: URL, key: str) -> list[str]:
    raw = parsed.query.get(key)
    values = [raw] if isinstance(raw, str) else list(raw or ())
    return [part for v in values for part in v.split(",") if part]


def _pg_endpoints(parsed: URL) -> frozenset[tuple[str, int]]:
    hosts = _query(parsed, "host") + _query(parsed, "hostaddr")
    if not hosts:
        hosts = [parsed.host] if parsed.host else (os.environ.get("PGHOST") or "").split(",")
    ports = [int(p) for p in _query(parsed, "port")] or [
        parsed.port or int(os.environ.get("PGPORT") or DEFAULT_PORT)
    ]
    found: set[tuple[str, int]] = set()
    for i, raw in enumerate(hosts or [""]):
        host, port = _split_port(unquote(raw.strip()), ports[min(i, len(ports) - 1)])
        for where in _places(host):
            found.add((where, port))
    return frozenset(found)


def _split_port(host: str, port: int) -> tuple[str, int]:
    """``h:5433`` and ``[::1]:5433`` (as SQLAlchemy's ``?host=`` allows) split; else as is."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else port
    if host.count(":") == 1:
        name, _, p = host.partition(":")
        if p.isdigit():
            return name, int(p)
    return host, port


def _places(host: str) -> set[str]:
    """``local`` for this machine (a socket folder, loopback, ...), else each IP address."""
    if not host or host.startswith(("/", "@")):
        return {"local"}
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return {f"name:{host.lower().rstrip('.')}"}
    return {_place(str(info[4][0])) for info in infos}


def _place(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified or str(ip) in _own_ips():
        return "local"
    return f"ip:{ip}"


@lru_cache(maxsize=1)
def _own_ips() -> frozenset[str]:
    """This machine's addresses, as its host names resolve."""
    found: set[str] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        with contextlib.suppress(OSError):
            found.update(str(i[4][0]).split("%")[0] for i in socket.getaddrinfo(name, None))
    return frozenset(found)


def _pg_databases(parsed: URL) -> frozenset[str]:
    names = _query(parsed, "dbname") + ([parsed.database] if parsed.database else [])
    if not names and os.environ.get("PGDATABASE"):
        names = [os.environ["PGDATABASE"]]
    if not names:  # libpq's default: the user's name
        user = parsed.username or os.environ.get("PGUSER") or getpass.getuser()
        names = _query(parsed, "user") or [user]
    return frozenset(unquote(n).strip().strip("/").casefold() for n in names)


# --- the server's word ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Said:
    """What a server says about itself: which cluster, which database."""

    backend: str
    database: str
    cluster: tuple[str, str] = ("", "")
    """Postmaster start time and port."""
    system: str | None = None
    """``pg_control_system().system_identifier``, when the role may read it."""

    def same(self, other: Said) -> bool:
        if self.backend != other.backend or self.database != other.database:
            return False
        if self.backend != "postgresql":
            return bool(self.database)
        if self.system is not None and other.system is not None:
            return self.system == other.system
        return self.cluster == other.cluster


def says(conn: Connection) -> Said:
    """Ask the server on ``conn`` (no transaction open; none is left open)."""
    try:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(text("PRAGMA database_list")).all()
            file = next((str(r[2]) for r in rows if r[1] == "main"), "")
            return Said("sqlite", os.path.realpath(file) if file else "")
        if conn.dialect.name != "postgresql":
            return Said(conn.dialect.name, "")
        row = conn.execute(
            text("SELECT current_database(), pg_postmaster_start_time(), current_setting('port')")
        ).one()
        system: Any = None
        try:
            with conn.begin_nested():
                system = conn.execute(
                    text("SELECT system_identifier FROM pg_control_system()")
                ).scalar()
        except DBAPIError:  # not permitted to this role: start time and port must do
            system = None
        return Said(
            "postgresql",
            str(row[0]).casefold(),
            (str(row[1]), str(row[2])),
            None if system is None else str(system),
        )
    finally:
        conn.rollback()


def is_own(conn: Connection, own_url: str) -> bool:
    """Whether the server on ``conn`` is serving inferq's own database (asked, not guessed)."""
    said = says(conn)
    if said.backend != make_url(normalise(own_url)).get_backend_name():
        return False
    engine = create_engine(normalise(own_url), poolclass=NullPool)
    try:
        with engine.connect() as own:
            return said.same(says(own))
    finally:
        engine.dispose()
