"""W3C ``traceparent`` parsing, the current trace context, log lines and the API middleware."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.tracing import Tracing
from app import tracing
from app.logs import JsonFormatter

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADER = f"00-{TRACE}-{PARENT}-01"


def test_a_valid_header_is_parsed() -> None:
    ctx = tracing.parse(HEADER)
    assert ctx == tracing.TraceContext(TRACE, PARENT, "01")
    assert ctx.header == HEADER
    assert tracing.parse(f"00-{TRACE}-{PARENT}-00") == tracing.TraceContext(TRACE, PARENT, "00")
    assert tracing.parse(f" {HEADER}\t") == ctx  # optional whitespace around the value


def test_a_later_version_is_read_as_far_as_version_00_goes() -> None:
    assert tracing.parse(f"01-{TRACE}-{PARENT}-03-what-comes-next") == tracing.TraceContext(
        TRACE, PARENT, "01"
    )


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE}-{PARENT}",  # no flags
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case hex
        f"00-{TRACE[:-1]}g-{PARENT}-01",
        f"00-{TRACE}1-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        "x" * 10_000,
    ],
)
def test_an_invalid_header_is_ignored(header: str | None) -> None:
    assert tracing.parse(header) is None


def test_new_ids_are_well_formed_and_children_keep_the_trace() -> None:
    root = tracing.new_root()
    assert tracing.parse(root.header) == root
    child = root.child()
    assert child.trace_id == root.trace_id and child.span_id != root.span_id
    assert len({tracing.new_root().trace_id for _ in range(100)}) == 100


def test_span_without_opentelemetry_continues_the_parent_or_starts_a_trace() -> None:
    assert not tracing.enabled()
    parent = tracing.TraceContext(TRACE, PARENT)
    assert tracing.current() is None
    with tracing.span("outer", parent=parent) as outer:
        assert outer.context.trace_id == TRACE and outer.context.span_id != PARENT
        assert tracing.current() == outer.context
        with tracing.span("inner") as inner:  # the current context is the parent
            assert inner.context.trace_id == TRACE
            assert tracing.current_header() == inner.context.header
        with tracing.span("new", root=True) as new:
            assert new.context.trace_id != TRACE
        assert tracing.current() == outer.context
    assert tracing.current() is None


def test_a_batch_of_one_trace_is_in_it_and_a_mixed_batch_starts_its_own() -> None:
    a = tracing.TraceContext(TRACE, PARENT)
    b = tracing.new_root()
    with tracing.batch_span("batch", [a, a.child(), None]) as one:
        assert one.context.trace_id == TRACE
    with tracing.batch_span("batch", [a, b]) as mixed:
        assert mixed.context.trace_id not in (TRACE, b.trace_id)


def test_log_lines_carry_the_current_trace() -> None:
    fmt = JsonFormatter()
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    assert "trace_id" not in fmt.format(record)
    ctx = tracing.TraceContext(TRACE, PARENT)
    with tracing.use(ctx):
        line = fmt.format(record)
    assert f'"trace_id":"{TRACE}"' in line and f'"span_id":"{PARENT}"' in line


def _app() -> Tracing:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"current": tracing.current_header()})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"current": tracing.current_header()})

    return Tracing(Starlette(routes=[Route("/x", echo), Route("/healthz", health)]))


def test_the_middleware_continues_the_callers_trace_and_answers_with_its_span() -> None:
    with TestClient(_app()) as client:
        r = client.get("/x", headers={"traceparent": HEADER})
        current = tracing.parse(r.json()["current"])
        assert current is not None and current.trace_id == TRACE and current.span_id != PARENT
        assert r.headers["traceparent"] == current.header

        for bad in ("nonsense", f"00-{'0' * 32}-{PARENT}-01"):  # a new trace, never an error
            r = client.get("/x", headers={"traceparent": bad})
            assert r.status_code == 200
            fresh = tracing.parse(r.headers["traceparent"])
            assert fresh is not None and fresh.trace_id != TRACE

        r = client.get("/healthz", headers={"traceparent": HEADER})
        assert r.json() == {"current": None} and "traceparent" not in r.headers
