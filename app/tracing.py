"""Tracing: one W3C trace id from the request to the webhook, in every process's logs.

A request's trace context travels as a ``traceparent`` header (W3C Trace Context, version 00):
the API reads it (or makes one), stores it with each prediction and delivery and puts it on
the broker message; workers and the dispatcher set it again around what they do for it, and
send it on every outbound request. While one is set, every log line carries its ``trace_id``
and ``span_id`` (``app.logs``).

OpenTelemetry spans are made only when the SDK is installed (``pip install inferq[otel]``) and
an exporter is configured (``INFERQ_OTEL_EXPORTER`` or ``OTEL_TRACES_EXPORTER``), or a test
``install``-ed a provider; otherwise ``span`` only makes a new span id (no allocation per
request beyond the parsed header).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

SERVER, CLIENT, CONSUMER, PRODUCER, INTERNAL = (
    "server",
    "client",
    "consumer",
    "producer",
    "internal",
)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One span's place in a trace: W3C ``trace-id``, ``parent-id`` (this span) and flags."""

    trace_id: str
    """32 lowercase hex digits, not all zero."""
    span_id: str
    """16 lowercase hex digits, not all zero."""
    flags: str = "01"
    """``01``: sampled; ``00``: not (a recording tracer then records nothing below it)."""

    @property
    def header(self) -> str:
        """The ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span of the same trace."""
        return TraceContext(self.trace_id, _span_id(), self.flags)


def _span_id() -> str:
    while True:
        n = random.getrandbits(64)
        if n:
            return f"{n:016x}"


def new_root() -> TraceContext:
    """A new trace (sampled)."""
    while True:
        n = random.getrandbits(128)
        if n:
            return TraceContext(f"{n:032x}", _span_id())


def parse(header: str | None) -> TraceContext | None:
    """The context of a ``traceparent`` header; None for a missing or invalid one (version
    ``ff``, a bad length or digit, all-zero ids): the caller then starts a new trace, never an
    error. A later version's extra fields are ignored, as the specification asks."""
    if not header or len(header) > 512:
        return None
    m = _HEADER.fullmatch(header.strip(" \t"))
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, "01" if int(flags, 16) & 1 else "00")


# --- the current context (what log lines carry) -----------------------------------------------

_current: ContextVar[TraceContext | None] = ContextVar("inferq_trace", default=None)


def current() -> TraceContext | None:
    """The trace context set on this thread or task, if any."""
    return _current.get()


def current_header() -> str | None:
    """The current context's ``traceparent``, if any (what a stored row or message carries)."""
    ctx = _current.get()
    return None if ctx is None else ctx.header


@contextmanager
def use(ctx: TraceContext | None) -> Iterator[TraceContext | None]:
    """Make ``ctx`` current inside the block (None: leave the current one)."""
    if ctx is None:
        yield _current.get()
        return
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


# --- spans ------------------------------------------------------------------------------------


class Span:
    """A span: its ``context``, and (with OpenTelemetry) the real span. As a context manager
    (what ``span`` gives) it is current inside the block and ends with it; an exception marks
    it failed."""

    __slots__ = ("_otel", "_scope", "_token", "context")

    def __init__(self, context: TraceContext, otel: Any = None) -> None:
        self.context = context
        self._otel = otel
        self._token: Any = None
        self._scope: Any = None

    def __enter__(self) -> Span:
        self._token = _current.set(self.context)
        if self._otel is not None:
            from opentelemetry import trace

            self._scope = trace.use_span(self._otel, end_on_exit=True)
            self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._scope is not None:
                self._scope.__exit__(*exc)
        finally:
            _current.reset(self._token)

    def set(self, key: str, value: Any) -> None:
        """An attribute (only recorded with OpenTelemetry)."""
        if self._otel is not None and value is not None:
            self._otel.set_attribute(key, value)

    def rename(self, name: str) -> None:
        if self._otel is not None:
            self._otel.update_name(name)

    def fail(self, message: str) -> None:
        """Mark the span as an error."""
        if self._otel is not None:
            from opentelemetry.trace import Status, StatusCode

            self._otel.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        """End a span made by ``start``."""
        if self._otel is not None:
            self._otel.end()


_tracer: Any = None
"""The OpenTelemetry tracer when spans are recorded; None: ids only."""
_provider: Any = None
_owned: Any = None
"""The provider ``configure`` made (``shutdown`` stops it, never one a test installed)."""


def enabled() -> bool:
    """True when OpenTelemetry spans are recorded."""
    return _tracer is not None


def start(
    name: str,
    *,
    parent: TraceContext | None = None,
    root: bool = False,
    kind: str = INTERNAL,
    links: Sequence[TraceContext] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """Start a span (not made current; ``end`` it). Its parent is ``parent``, else the current
    context, else (or with ``root``) it starts a new trace."""
    if parent is None and not root:
        parent = _current.get()
    if _tracer is None:
        return Span(parent.child() if parent is not None else new_root())
    return _otel_start(name, parent, kind, links, attributes)


def span(
    name: str,
    *,
    parent: TraceContext | None = None,
    root: bool = False,
    kind: str = INTERNAL,
    links: Sequence[TraceContext] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """``start`` a span, to use as ``with span(...) as s:``: current inside the block, ended
    with it, failed if the block raises."""
    return start(name, parent=parent, root=root, kind=kind, links=links, attributes=attributes)


@contextmanager
def batch_span(
    name: str, carried: Sequence[TraceContext | None], attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span for work done for several requests at once (a model batch): linked to every
    request's span; a child of theirs when they all share one trace, else a new trace."""
    traces = [c for c in carried if c is not None]
    first = traces[0] if traces else None
    if first is not None and any(c.trace_id != first.trace_id for c in traces):
        first = None
    with span(
        name,
        parent=first,
        root=first is None,
        links=traces if _tracer is not None else (),
        attributes=attributes,
    ) as s:
        yield s


def _otel_start(
    name: str,
    parent: TraceContext | None,
    kind: str,
    links: Sequence[TraceContext],
    attributes: Mapping[str, Any] | None,
) -> Span:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    ctx = (
        trace.set_span_in_context(trace.NonRecordingSpan(_otel_context(parent)))
        if parent is not None
        else otel_context.Context()  # a new trace, whatever OpenTelemetry holds as current
    )
    s = _tracer.start_span(
        name,
        context=ctx,
        kind=getattr(trace.SpanKind, kind.upper()),
        links=[trace.Link(_otel_context(c)) for c in links],
        attributes=dict(attributes) if attributes else None,
    )
    sc = s.get_span_context()
    return Span(
        TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", f"{sc.trace_flags:02x}"), s
    )


def _otel_context(c: TraceContext) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        int(c.trace_id, 16),
        int(c.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(c.flags, 16)),
    )


# --- set-up -----------------------------------------------------------------------------------


def install(provider: Any) -> None:
    """Record spans with this OpenTelemetry ``TracerProvider`` (tests pass one with an
    in-memory exporter); ``install(None)`` stops recording."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("inferq")


def configure(exporter: str, *, service: str) -> bool:
    """Record spans when an exporter is asked for: ``exporter`` (``INFERQ_OTEL_EXPORTER``), else
    ``OTEL_TRACES_EXPORTER``; ``console`` or ``otlp`` (``OTEL_EXPORTER_OTLP_*`` say where).
    Without the SDK (or the OTLP exporter package) it logs why and records nothing; the ids
    still flow. Returns True when spans are recorded."""
    name = (exporter or os.environ.get("OTEL_TRACES_EXPORTER", "")).strip().lower()
    if name in ("", "none"):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        span_exporter: Any
        if name == "console":
            span_exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
        else:
            log.warning("unknown trace exporter; no spans recorded", extra={"exporter": name})
            return False
    except ImportError as exc:
        log.warning(
            "OpenTelemetry is not installed (pip install 'inferq[otel]'); no spans recorded",
            extra={"exporter": name, "error": str(exc)},
        )
        return False
    global _owned
    shutdown()
    service_name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    install(provider)
    _owned = provider
    log.info("recording trace spans", extra={"exporter": name, "service": service_name})
    return True


def shutdown() -> None:
    """Flush and stop the provider ``configure`` made (at process exit)."""
    global _owned
    owned, _owned = _owned, None
    if owned is None:
        return
    if _provider is owned:
        install(None)
    owned.shutdown()
