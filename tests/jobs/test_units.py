"""Pure pieces of jobs: cutting records, telling formats apart, forming batches."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.jobs.lines import RecordSplitter, detect_format, split_records
from app.jobs.runner import _batches


def feed_all(fmt: str, data: bytes, step: int) -> list[bytes]:
    splitter = RecordSplitter(fmt)  # type: ignore[arg-type]
    out: list[bytes] = []
    for i in range(0, len(data), step):
        out += splitter.feed(data[i : i + step])
    return out + splitter.end()


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_records_do_not_depend_on_where_the_stream_is_cut(step: int) -> None:
    jsonl = b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"b": 2}\n{"c": 3}'
    assert feed_all("jsonl", jsonl, step) == [b'{"a": 1}\r', b'{"b": 2}', b'{"c": 3}']
    csv = b'id,text\n1,"two\nlines"\n\n2,"a ""quoted"" word"\n3,plain'
    assert feed_all("csv", csv, step) == [
        b"id,text",
        b'1,"two\nlines"',
        b'2,"a ""quoted"" word"',
        b"3,plain",
    ]


def test_a_stored_chunk_splits_back_into_its_records() -> None:
    records = [b'1,"x\ny"', b"2,z", b'3,""']
    assert split_records(b"\n".join(records), "csv") == records


def test_an_unclosed_quote_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="ends inside a quoted field"):
        feed_all("csv", b'a,b\n1,"never closed\n2,x\n', 5)


@pytest.mark.parametrize(
    ("filename", "ctype", "fmt"),
    [
        ("x.jsonl", None, "jsonl"),
        ("X.NDJSON", "text/plain", "jsonl"),
        ("data.csv", "application/octet-stream", "csv"),
        (None, "text/csv; charset=utf-8", "csv"),
        ("upload", "application/x-ndjson", "jsonl"),
    ],
)
def test_format_from_extension_then_content_type(
    filename: str | None, ctype: str | None, fmt: str
) -> None:
    assert detect_format(filename, ctype) == fmt


def test_an_unknown_format_names_what_it_saw() -> None:
    with pytest.raises(InvalidInput) as err:
        detect_format("notes.txt", "text/plain")
    assert err.value.code == "unsupported_format"
    assert "'notes.txt'" in err.value.message and "'text/plain'" in err.value.message


def test_batches_keep_padded_tokens_under_the_budget() -> None:
    lengths = [5, 5, 5, 5, 40, 40, 100, 120]
    order = list(range(8))
    got = list(_batches(order, lengths, batch=3, tokens=100))
    assert got == [[0, 1, 2], [3, 4], [5], [6], [7]]
    assert all(len(b) * max(lengths[k] for k in b) <= 100 or len(b) == 1 for b in got)
    assert list(_batches(order, lengths, batch=3, tokens=None)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
