"""The hottest route without the framework's per-request machinery.

Under load the API process spends most of its CPU in FastAPI and Starlette around a handler
that does its own parsing: route matching over every route, dependency solving, the exception
and exit-stack middlewares, and the send wrappers each of them adds. ``POST /v1/predictions``
(submit, and with ``Prefer: wait`` the whole round trip) needs none of it: it reads its own body
and headers (``api.routes.predictions.create_prediction``). ``InferqAPI`` hands that one route
straight to its handler, wrapped in the same pure-ASGI middlewares as every other route
(tracing, the body limit, the latency histogram) and answered with the same exception handlers,
so what a caller sees, logs, traces and metrics are the same; every other request goes through
FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[ASGIApp], ASGIApp]


class InferqAPI(FastAPI):
    """FastAPI, with ``fast_routes`` (``(method, path)`` -> endpoint) served directly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast: dict[tuple[str, str], ASGIApp] = {}

    def serve_directly(
        self, router: APIRouter, method: str, path: str, endpoint: Endpoint, wrap: Wrap
    ) -> None:
        """Serve ``method path`` with ``endpoint`` (which must read its own request: no
        dependencies, no body model), inside the middlewares ``wrap`` applies. The route must
        be declared on ``router`` (included in this app) too: for the OpenAPI document, the
        metrics label, and the other methods of its path."""
        route = _declared(router, method, path)
        self._fast[(method, path)] = _ServerErrors(self, wrap(_Direct(self, route, endpoint)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._fast:
            direct = self._fast.get((scope["method"], scope["path"]))
            if direct is not None:
                await direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _Direct:
    """One route's endpoint as an ASGI app, with the application's exception handlers."""

    def __init__(self, app: FastAPI, route: BaseRoute, endpoint: Endpoint) -> None:
        self.app = app
        self.route = route
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app  # what Starlette sets: ``request.app`` and ``url_for`` need it
        scope["route"] = self.route  # the route label of the latency histogram
        request = Request(scope, receive, send)
        try:
            request._body = await read_body(receive)  # what ``Request.body()`` caches
            response = await self.endpoint(request)
        except Exception as exc:
            handler = _handler_for(self.app, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


class _ServerErrors:
    """Outermost, as Starlette's ``ServerErrorMiddleware``: what no handler took (an unexpected
    error) becomes the application's 500 answer, after the middlewares inside saw it raise."""

    def __init__(self, app: FastAPI, inner: ASGIApp) -> None:
        self.app = app
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.inner(scope, receive, tracked)
        except Exception as exc:
            handlers = self.app.exception_handlers
            handler: Any = handlers.get(Exception) or handlers.get(500)
            if started or handler is None:
                raise
            response = await handler(Request(scope, receive, send), exc)
            await response(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """The whole request body (without ``Request.stream``'s async generator per request)."""
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _declared(router: APIRouter, method: str, path: str) -> BaseRoute:
    for route in router.routes:
        if getattr(route, "path", None) == path and method in getattr(route, "methods", ()):
            return route
    raise LookupError(f"{method} {path} is not a route of the router given")


def _handler_for(app: FastAPI, exc: Exception) -> Any:
    """The exception handler Starlette's ``ExceptionMiddleware`` would pick: the nearest class
    in ``exc``'s MRO, short of ``Exception`` (that one is ``_ServerErrors``'s, outside the
    middlewares: an exception a middleware raises through the endpoint, the body limit's,
    must reach it)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
