"""Each HTTP request in its caller's trace (W3C ``traceparent``), as pure ASGI middleware."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import tracing

log = logging.getLogger(__name__)

UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: no span, no header."""


class Tracing:
    """Run each request in a server span of the trace its ``traceparent`` header names (a new
    trace when it names none or an invalid one), so everything it logs, stores and publishes
    carries that trace id; the response's ``traceparent`` names the span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                incoming = value.decode("latin-1")
                break
        method = scope["method"]
        with tracing.span(
            method, parent=tracing.parse(incoming), root=True, kind=tracing.SERVER
        ) as span:
            header = (b"traceparent", span.context.header.encode())

            status = 500

            async def send_traced(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), header]
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                if route is not None:
                    span.rename(f"{method} {getattr(route, 'path', '')}")
                span.set("http.response.status_code", status)
                if log.isEnabledFor(logging.DEBUG):  # an access log in the trace, when asked for
                    log.debug(
                        "request",
                        extra={"method": method, "path": scope["path"], "status": status},
                    )
