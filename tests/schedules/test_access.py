"""What a tenant's schedules may touch: inferq's own database under any spelling (by address and
by the server's word, through a port forward), registered connections, folders and symlinks."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url

from app.errors import InvalidInput
from app.schedules import access, identity, sources
from app.schedules.access import Roots
from app.schedules.config import ScheduleConfig
from app.settings import build_settings

OWN = "postgresql+psycopg://inferq@127.0.0.1:5432/inferq"
HOST = socket.gethostname()

SPELLINGS = [
    "postgresql+psycopg://inferq@127.0.0.1:5432/inferq",
    "postgresql://inferq@127.0.0.1:5432/inferq",
    "postgres://inferq@127.0.0.1/inferq",
    "postgresql+psycopg2://other:secret@localhost/inferq",
    "postgresql://u@LOCALHOST:5432/inferq",
    "postgresql://u@[::1]/inferq",
    "postgresql://u@[::1]:5432/inferq",
    "postgresql://u@[::ffff:127.0.0.1]/inferq",
    "postgresql://u@127.0.0.2/inferq",
    "postgresql://u@0.0.0.0/inferq",
    f"postgresql://u@{HOST}/inferq",
    "postgresql://u@127.0.0.1/inferq/",
    "postgresql://u@127.0.0.1/INFERQ",
    "postgresql://u@127.0.0.1:5432/?dbname=inferq",
    "postgresql://u@127.0.0.1:5433/inferq?port=5432",
    "postgresql://u@/inferq?host=localhost",
    "postgresql://u@/inferq?host=localhost:5432",
    "postgresql://u@/inferq?host=/var/run/postgresql",
    "postgresql://u@%2Fvar%2Frun%2Fpostgresql/inferq",
    "postgresql:///inferq",
    "postgresql://inferq@127.0.0.1",  # no database: the user's name
    "postgresql://u@10.255.255.1/inferq?host=127.0.0.1",  # ?host= wins over the netloc
]
OTHERS = [
    "postgresql://inferq@127.0.0.1:5432/warehouse",  # same server, another database: allowed
    "postgresql://inferq@127.0.0.1:5433/inferq",
    "postgresql://inferq@192.0.2.10/inferq",
    "postgresql://u@127.0.0.1",  # database "u"
    "mysql://inferq@127.0.0.1/inferq",
    "sqlite:///inferq.db",
]


@pytest.mark.parametrize("url", SPELLINGS)
def test_every_spelling_of_inferqs_own_database_is_refused(url: str) -> None:
    assert identity.same_address(url, OWN)
    for auth in ({"k": "t"}, {}):
        settings = build_settings(
            database_url=OWN, api_keys=auth, data_connections={"t": {"db": url}}
        )
        if auth:
            with pytest.raises(InvalidInput, match="connection 'db' leads to inferq's own"):
                access.target({"connection": "db"}, tenant="t", settings=settings, where="source")
        else:  # API keys off: the one trusted tenant may read it, never write its tables
            t = access.target({"url": url}, tenant="t", settings=settings, where="sink")
            with pytest.raises(InvalidInput, match=r"'public\.jobs' is one of inferq's own tables"):
                access.check_table(t, "public.jobs", settings)


@pytest.mark.parametrize("url", OTHERS)
def test_other_databases_are_not_inferqs_own(url: str) -> None:
    assert not identity.same_address(url, OWN)


def test_sqlite_is_compared_by_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "inferq.db"
    db.touch()
    (tmp_path / "alias.db").symlink_to(db)
    monkeypatch.chdir(tmp_path)
    own = f"sqlite:///{db}"
    for url in ("sqlite:///inferq.db", f"sqlite:///{tmp_path}/./alias.db", f"sqlite:////{db}"):
        assert identity.same_address(url, own), url
    assert not identity.same_address("sqlite://", own)
    assert not identity.same_address(f"sqlite:///{tmp_path}/other.db", own)


def test_with_api_keys_on_only_registered_connections_are_accepted() -> None:
    settings = build_settings(
        database_url=OWN,
        api_keys={"k": "t"},
        data_connections={"t": {"mine": "postgres://x@192.0.2.1/w"}, "*": {"all": "sqlite://"}},
    )
    mine = access.target({"connection": "mine"}, tenant="t", settings=settings, where="source")
    assert (mine.url, mine.own_allowed) == ("postgresql+psycopg://x@192.0.2.1/w", False)
    assert access.target({"connection": "all"}, tenant="u", settings=settings, where="sink")
    for spec, message in [
        ({"connection": "mine"}, "no connection named 'mine' is registered for you"),  # t's only
        ({"url": "postgres://x@192.0.2.1/w"}, "source.url: with API keys on, name a connection"),
        ({}, "source.connection: with API keys on, name a connection"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            access.target(spec, tenant="u", settings=settings, where="source")


class Forward:
    """A TCP port forward to Postgres: an address that names no database inferq knows."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                s.close()


@pytest.fixture
def forwarded(pg_url: str) -> Iterator[str]:
    """inferq's own database through a port forward."""
    u = make_url(pg_url)
    fwd = Forward(u.host or "127.0.0.1", u.port or 5432)
    yield u.set(port=fwd.port).render_as_string(hide_password=False)
    fwd.server.close()


def test_the_server_is_asked_too_catching_a_port_forward(
    pg_url: str, forwarded: str, warehouse: str
) -> None:
    settings = build_settings(
        database_url=pg_url,
        api_keys={"k": "t"},
        data_connections={"t": {"fwd": forwarded, "wh": warehouse}},
    )
    fwd = access.target({"connection": "fwd"}, tenant="t", settings=settings, where="source")
    with pytest.raises(InvalidInput, match="connection 'fwd' leads to inferq's own database"):
        sources.probe(fwd, settings, "SELECT id FROM predictions", None)
    engine = create_engine(forwarded)
    with engine.connect() as conn, pytest.raises(InvalidInput, match="inferq's own database"):
        access.guard(conn, fwd, settings, table="scores")
    engine.dispose()
    wh = access.target({"connection": "wh"}, tenant="t", settings=settings, where="source")
    assert sources.probe(wh, settings, "SELECT id FROM tickets", None) is None


# --- folders -------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A tenant's folder with a file, a symlinked file and a symlinked folder leading out."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    (inside / "in").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "s"}\n')
    (inside / "in" / "ok.jsonl").write_text('{"text": "ok"}\n')
    (inside / "in" / "link.jsonl").symlink_to(outside / "secret.jsonl")
    (inside / "out").symlink_to(outside, target_is_directory=True)
    return inside, outside


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside/secret.jsonl", "may not contain '..'"),
        ("in/../../outside/secret.jsonl", "may not contain '..'"),
        ("{inside}/in/../in/ok.jsonl", "may not contain '..'"),
        ("{outside}/secret.jsonl", "is outside the folders you may use"),
        ("/etc/passwd", "is outside the folders you may use"),
        ("out/secret.jsonl", "leads out of them through a symlink"),
        ("out/*.jsonl", "leads out of them through a symlink"),
        ("in/link.jsonl", "leads out of them through a symlink"),
        ("~/x.jsonl", "is outside the folders you may use"),
    ],
)
def test_paths_that_leave_the_tenants_folders_are_refused(
    tree: tuple[Path, Path], path: str, message: str
) -> None:
    inside, outside = tree
    roots = Roots((inside,))
    with pytest.raises(InvalidInput, match=message) as err:
        sources.resolve_path(
            path.format(inside=inside, outside=outside), roots, where="source.path"
        )
    assert err.value.message.startswith("source.path: ")


def test_a_glob_that_matches_a_symlink_out_reads_only_what_is_inside(
    tree: tuple[Path, Path],
) -> None:
    inside, _ = tree
    roots = Roots((inside,))
    pattern = sources.resolve_path("in/*.jsonl", roots, where="source.path")
    assert pattern == inside / "in" / "*.jsonl"
    found, refused = sources.matching_files(pattern, roots)
    assert (found, refused) == ([inside / "in" / "ok.jsonl"], [inside / "in" / "link.jsonl"])
    read = sources.read_files(found, "jsonl", roots=roots)
    assert list(read.lines) == [b'{"text": "ok"}\n']
    with pytest.raises(InvalidInput, match="is outside the folders you may use"):
        list(sources.read_files([inside / "in" / "link.jsonl"], "jsonl", roots=roots).lines)
    with pytest.raises(InvalidInput):
        access.open_inside(inside / "out" / "secret.jsonl", roots)


def test_whose_folders_apply(tmp_path: Path) -> None:
    a, shared, legacy = tmp_path / "a", tmp_path / "shared", tmp_path / "legacy"
    cfg = ScheduleConfig(source_roots=(legacy,))
    on = build_settings(api_keys={"k": "a"}, data_roots={"a": [a], "*": [shared]})
    assert access.roots_for("a", settings=on, cfg=cfg).folders == (a, shared)
    assert access.roots_for("b", settings=on, cfg=cfg).folders == (shared,)
    alone = build_settings(api_keys={"k": "a"})
    assert access.roots_for("a", settings=alone, cfg=cfg) == Roots(())
    with pytest.raises(InvalidInput, match=r"no folders are registered for you.*INFERQ_DATA_ROOTS"):
        sources.resolve_path("x.jsonl", Roots(()), where="source.path")
    off = build_settings()  # API keys off, no entry: INFERQ_SOURCE_ROOTS as before
    assert access.roots_for("default", settings=off, cfg=cfg).folders == (legacy,)
    assert access.roots_for("default", settings=off, cfg=ScheduleConfig()).anywhere


def test_provenance_never_shows_a_password() -> None:
    spec = {"type": "sql", "url": "postgresql://u:hunter2@db.example/w", "query": "SELECT 1"}
    shown = access.public_spec(spec)
    assert shown is not None and "hunter2" not in str(shown)
    assert shown["url"] == "postgresql://u:***@db.example/w"
    t = access.Target(identity.normalise(spec["url"]), None, True, "source")
    assert "hunter2" not in str(t.record())
    assert access.Target("x", "warehouse", False, "source").record() == {"connection": "warehouse"}


def test_a_sink_file_is_not_written_through_a_planted_symlink(tree: tuple[Path, Path]) -> None:
    from app.schedules import sinks

    inside, outside = tree
    roots = Roots((inside,))
    names = {"job_id": "j", "run_id": "r", "schedule_id": "s"}
    planted = inside / "res" / ".j.jsonl.r.tmp"
    planted.parent.mkdir()
    planted.symlink_to(outside / "planted.jsonl")
    settings = build_settings()
    done = sinks.write(
        {"type": "file", "path": "res/{job_id}.jsonl"},
        [b'{"index": 0}\n'],
        names=names,
        settings=settings,
        roots=roots,
        tenant="default",
    )
    assert done["rows"] == 1
    assert (inside / "res" / "j.jsonl").read_bytes() == b'{"index": 0}\n'
    assert not (outside / "planted.jsonl").exists()
    with pytest.raises(InvalidInput, match="leads out of them through a symlink"):
        sinks.write(
            {"type": "file", "path": "out/{job_id}.jsonl"},
            [],
            names=names,
            settings=settings,
            roots=roots,
            tenant="default",
        )
    assert os.listdir(outside) == ["secret.jsonl"]
