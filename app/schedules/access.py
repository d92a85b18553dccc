"""What a tenant's schedules may touch: which databases and which folders. The operator decides.

- **Databases.** A SQL source or table sink names a connection (``"connection": "<name>"``)
  that the operator registered for the tenant in ``INFERQ_DATA_CONNECTIONS``. With API keys on,
  that is the only way: a free ``url`` is refused, and so is inferq's own database, whatever
  its spelling (``identity``), even when an operator registered it by mistake. With API keys
  off there is one trusted tenant, and as before a free ``url`` works and a source without one
  reads inferq's own database; a sink still never writes into one of inferq's own tables.
- **Folders.** File sources and sinks stay under the tenant's folders (``INFERQ_DATA_ROOTS``):
  no ``..``, nothing outside, no symlink out (each matched file's real path is checked, and
  again on the opened file). With API keys on, a tenant without folders may use none; with
  them off and no entry, ``INFERQ_SOURCE_ROOTS`` applies as before.

Each is checked when a schedule is created or changed, and again when it runs (the operator
may have changed the registration since), the database also on the open connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, make_url

from app.db.base import Base
from app.errors import InvalidInput
from app.schedules import identity
from app.schedules.config import ScheduleConfig
from app.settings import Settings

EVERY_TENANT = "*"


# --- folders -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Roots:
    """The folders one tenant's files may be in (real paths), or anywhere."""

    folders: tuple[Path, ...]
    anywhere: bool = False
    setting: str = "INFERQ_DATA_ROOTS"
    """Where an operator sets them, for error messages."""

    def allows(self, real: Path) -> bool:
        """Whether ``real`` (a path with its symlinks resolved) is in one of the folders."""
        return self.anywhere or any(real.is_relative_to(f) for f in self.folders)


ANYWHERE = Roots((), anywhere=True, setting="INFERQ_SOURCE_ROOTS")


def roots_for(tenant: str, *, settings: Settings, cfg: ScheduleConfig) -> Roots:
    """The tenant's folders: its ``INFERQ_DATA_ROOTS`` entry and ``"*"``'s; with API keys off
    and neither, ``INFERQ_SOURCE_ROOTS``; with them on and neither, none."""
    given = [*settings.data_roots.get(tenant, ()), *settings.data_roots.get(EVERY_TENANT, ())]
    if given:
        return Roots(tuple(_real(p) for p in given))
    if not settings.auth_enabled:
        if cfg.any_path:
            return ANYWHERE
        return Roots(tuple(_real(p) for p in cfg.source_roots), setting="INFERQ_SOURCE_ROOTS")
    return Roots(())


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def open_inside(path: Path, roots: Roots, *, where: str = "source") -> IO[bytes]:
    """``path`` opened for reading, after checking that the file opened is in ``roots``.

    The check is made on the open file (its inode against its real path's), so a symlink
    swapped in between a listing and the read is caught.

    Raises:
        InvalidInput: the file is outside the tenant's folders.
    """
    f = path.open("rb")
    try:
        real = Path(os.path.realpath(path))
        opened, named = os.fstat(f.fileno()), os.stat(real)
        if not roots.allows(real) or (opened.st_dev, opened.st_ino) != (
            named.st_dev,
            named.st_ino,
        ):
            raise InvalidInput(f"{where}: {path} is outside the folders you may use")
    except BaseException:
        f.close()
        raise
    return f


# --- databases -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A database a source reads or a sink writes, and what may be done with it."""

    url: str
    connection: str | None
    """The registered name; None for a free URL or inferq's own (API keys off)."""
    own_allowed: bool
    """API keys off: the one trusted tenant may use inferq's own database."""
    where: str

    def record(self) -> dict[str, Any]:
        """How provenance names it: the connection's name, or the URL without its password."""
        if self.connection is not None:
            return {"connection": self.connection}
        return {"url": redact(self.url)}


def target(spec: Mapping[str, Any], *, tenant: str, settings: Settings, where: str) -> Target:
    """The database a source or sink spec names, checked against the tenant's registrations.

    Raises:
        InvalidInput: a free URL or no connection with API keys on, an unknown connection, or
            (API keys on) inferq's own database however it is spelt.
    """
    name, url = spec.get("connection"), spec.get("url")
    auth = settings.auth_enabled
    if name is not None:
        registered = settings.data_connections
        found = registered.get(tenant, {}).get(name) or registered.get(EVERY_TENANT, {}).get(name)
        if found is None:
            raise InvalidInput(
                f"{where}.connection: no connection named {name!r} is registered for you "
                "(an operator registers them in INFERQ_DATA_CONNECTIONS)"
            )
        chosen = Target(identity.normalise(found), name, not auth, where)
    elif auth:
        field = "url" if url is not None else "connection"
        raise InvalidInput(
            f"{where}.{field}: with API keys on, name a connection an operator registered for "
            'you ("connection": "<name>"); a URL of your own is not accepted'
        )
    else:
        chosen = Target(identity.normalise(url or settings.database_url), None, True, where)
    if not chosen.own_allowed and _own_by_address(chosen, settings):
        raise InvalidInput(own_message(chosen))
    return chosen


def own_message(t: Target) -> str:
    what = f"connection {t.connection!r}" if t.connection else "this URL"
    return (
        f"{t.where}: {what} leads to inferq's own database, which holds every tenant's data; "
        "it is never a source or sink (ask the operator to register another database)"
    )


def _own_by_address(t: Target, settings: Settings) -> bool:
    try:
        return identity.same_address(t.url, settings.database_url)
    except Exception as exc:  # a URL that cannot be read cannot be checked: refused
        raise InvalidInput(f"{t.where}: the database URL cannot be read") from exc


OWN_TABLES = frozenset({t.name for t in Base.metadata.sorted_tables} | {"alembic_version"})


def check_table(t: Target, table: str, settings: Settings) -> None:
    """A sink never writes into one of inferq's own tables (checked by address)."""
    if table.split(".")[-1] in OWN_TABLES and _own_by_address(t, settings):
        raise InvalidInput(f"{t.where}.table: {table!r} is one of inferq's own tables")


def guard(conn: Connection, t: Target, settings: Settings, *, table: str | None = None) -> None:
    """The server on ``conn`` asked whether it serves inferq's own database, where that is
    not allowed (``table``: a sink's, refused in inferq's own database even with API keys off).

    Call it on a fresh connection, before any transaction; it leaves none open.

    Raises:
        InvalidInput: the connection reached inferq's own database.
    """
    own_table = table is not None and table.split(".")[-1] in OWN_TABLES
    if t.own_allowed and not own_table:
        return
    if identity.is_own(conn, settings.database_url):
        if t.own_allowed:
            raise InvalidInput(f"{t.where}.table: {table!r} is one of inferq's own tables")
        raise InvalidInput(own_message(t))


def redact(url: str) -> str:
    """A URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable url>"


def public_spec(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A source or sink spec as provenance shows it: a URL's password hidden."""
    if spec is None:
        return None
    out = dict(spec)
    if isinstance(out.get("url"), str):
        out["url"] = redact(out["url"])
    return out
