"""Sources: files (JSONL, CSV, Parquet) and SQL with a watermark, read as streams."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from app.errors import InvalidInput
from app.schedules import sources
from app.schedules.access import Roots, Target
from app.settings import Settings, build_settings

OWN = Roots((Path("/"),))  # the reading tests are about formats, not folders


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jsonl_files_are_joined_hashed_and_counted(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_bytes(b'\xef\xbb\xbf{"custom_id": "a1", "text": "x"}\n\n{"text": "y"}')  # BOM, no \n
    b.write_bytes(b'\xef\xbb\xbf{"custom_id": "b1", "text": "z"}\n')
    read = sources.read_files([a, b], "jsonl", roots=OWN)
    lines = list(read.lines)
    assert read.fmt == "jsonl"
    assert [orjson.loads(x) for x in lines] == [
        {"custom_id": "a1", "text": "x"},
        {"text": "y"},
        {"custom_id": "b1", "text": "z"},
    ]
    assert all(x.endswith(b"\n") for x in lines)
    assert read.data["files"] == [
        {"path": str(a), "sha256": sha(a), "bytes": a.stat().st_size, "rows": 2},
        {"path": str(b), "sha256": sha(b), "bytes": b.stat().st_size, "rows": 1},
    ]


def test_csv_files_keep_one_header(tmp_path: Path) -> None:
    (tmp_path / "1.csv").write_text("custom_id,text\nc1,hello\n")
    (tmp_path / "2.csv").write_text("custom_id,text\r\nc2,world\r\n")
    paths = sorted(tmp_path.glob("*.csv"))
    lines = list(sources.read_files(paths, "csv", roots=OWN).lines)
    assert lines == [b"custom_id,text\n", b"c1,hello\n", b"c2,world\n"]


def test_csv_files_with_different_headers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1.csv").write_text("custom_id,text\nc1,hello\n")
    (tmp_path / "2.csv").write_text("id,text\nc2,world\n")
    with pytest.raises(InvalidInput, match="different headers"):
        sources.read_files(sorted(tmp_path.glob("*.csv")), "csv", roots=OWN)


def test_parquet_is_streamed_by_record_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "BATCH_ROWS", 3)
    path = tmp_path / "t.parquet"
    table = pa.table(
        {
            "custom_id": [f"p{i}" for i in range(7)],
            "features": [[float(i)] * 3 for i in range(7)],
        }
    )
    pq.write_table(table, path, row_group_size=4)
    read = sources.read_files([path], "parquet", roots=OWN)
    rows = list(read.lines)
    assert read.fmt == "rows"
    assert rows[0] == {"custom_id": "p0", "input": {"features": [0.0, 0.0, 0.0]}}
    assert [r["custom_id"] for r in rows] == [f"p{i}" for i in range(7)]
    assert read.data["files"] == [
        {"path": str(path), "sha256": sha(path), "bytes": path.stat().st_size, "rows": 7}
    ]


def test_format_comes_from_the_extension_or_must_be_given() -> None:
    assert sources.file_format("/d/*.ndjson", None, where="source.format") == "jsonl"
    assert sources.file_format("/d/x.PARQUET", None, where="source.format") == "parquet"
    assert sources.file_format("/d/*", "csv", where="source.format") == "csv"
    with pytest.raises(InvalidInput, match="set format to jsonl, csv or parquet"):
        sources.file_format("/d/*", None, where="source.format")


@pytest.fixture
def tickets(pg_url: str) -> Iterator[str]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS src_tickets"))
        conn.execute(
            text(
                "CREATE TABLE src_tickets (id int, body text, amount numeric, created_at timestamptz)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO src_tickets VALUES (1, 'one', 1.5, '2026-01-01T00:00:00Z'),"
                " (2, 'two', 2.5, '2026-01-02T00:00:00Z')"
            )
        )
    yield pg_url
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE src_tickets"))
    engine.dispose()


def own(url: str) -> tuple[Target, Settings]:
    """inferq's own database with API keys off: the one trusted tenant may read it."""
    return Target(url, None, True, "source"), build_settings(database_url=url)


QUERY = (
    "SELECT id AS custom_id, body AS text, created_at FROM src_tickets "
    "WHERE created_at > :watermark ORDER BY created_at"
)


def test_sql_reads_from_the_beginning_then_from_the_watermark(tickets: str) -> None:
    target, settings = own(tickets)
    oid = sources.probe(target, settings, QUERY, "created_at")
    first = sources.read_sql(
        target=target,
        settings=settings,
        query=QUERY,
        watermark_column="created_at",
        watermark=sources.lowest(oid, "c"),
    )
    rows = list(first.lines)
    assert rows == [
        {"custom_id": "1", "input": {"text": "one"}},
        {"custom_id": "2", "input": {"text": "two"}},
    ]
    assert first.data["rows"] == 2
    assert first.watermark == "2026-01-02T00:00:00+00:00"
    assert first.data["url"] == tickets
    engine = create_engine(tickets)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO src_tickets VALUES (3, 'three', 0, '2026-01-03T00:00:00Z')"))
    engine.dispose()
    second = sources.read_sql(
        target=target,
        settings=settings,
        query=QUERY,
        watermark_column="created_at",
        watermark=first.watermark,
    )
    assert [r["custom_id"] for r in second.lines] == ["3"]
    assert second.watermark == "2026-01-03T00:00:00+00:00"


def test_sql_numbers_and_integer_watermarks(tickets: str) -> None:
    query = "SELECT id AS custom_id, id, amount FROM src_tickets WHERE id > :watermark ORDER BY id"
    target, settings = own(tickets)
    start = sources.lowest(sources.probe(target, settings, query, "id"), "id")
    read = sources.read_sql(
        target=target, settings=settings, query=query, watermark_column="id", watermark=start
    )
    assert list(read.lines) == [
        {"custom_id": "1", "input": {"amount": 1.5}},
        {"custom_id": "2", "input": {"amount": 2.5}},
    ]
    assert read.watermark == 2


@pytest.mark.parametrize(
    ("query", "column", "message"),
    [
        ("SELECT * FROM no_such_table", None, "the database refused it"),
        (
            "SELECT id AS custom_id FROM src_tickets WHERE id > :watermark",
            "created_at",
            "must return the watermark column 'created_at'",
        ),
    ],
)
def test_sql_probe_names_what_is_wrong(
    tickets: str, query: str, column: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        sources.probe(*own(tickets), query, column)


def test_only_one_select_statement_is_accepted() -> None:
    assert sources.check_query(" SELECT 1; ") == "SELECT 1"
    for bad in ("DELETE FROM x", "SELECT 1; DROP TABLE x"):
        with pytest.raises(InvalidInput, match="must be one SELECT"):
            sources.check_query(bad)


def test_a_watermark_of_unknown_type_needs_initial_watermark() -> None:
    with pytest.raises(InvalidInput, match="set initial_watermark"):
        sources.lowest(2950, "uuid_col")  # uuid
