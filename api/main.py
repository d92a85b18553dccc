"""The FastAPI application factory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, openapi
from api.coalesce import Coalescer
from api.deps import Runtime
from api.fastpath import InferqAPI
from api.metrics import HTTP_LATENCY
from api.responses import JSON
from api.routes import health, models, predictions
from api.tracing import Tracing
from app import __version__, clock, tracing
from app.db.engine import make_engine, make_sessionmaker
from app.logs import configure_logging
from app.notify import CompletionHub
from app.openai_compat import wire
from app.predictions import service
from app.predictions.admission import Admission
from app.queue_stats import QUEUES
from app.registry import Registry
from app.settings import Settings, get_settings


def extra_routers() -> list[Any]:
    """The ``router`` of every ``api/routes/*.py`` besides the core ones (jobs, hooks, …)."""
    import importlib
    from pathlib import Path

    core = {"__init__", "health", "models", "predictions"}
    names = sorted(p.stem for p in (Path(__file__).parent / "routes").glob("*.py"))
    return [importlib.import_module(f"api.routes.{n}").router for n in names if n not in core]


STREAMED_PATHS: set[str] = set()
"""Paths whose routes stream their body and enforce their own limit (job uploads)."""
OPENAI_PATHS = ("/v1/embeddings", "/v1/batches", "/v1/files")
"""Paths of the OpenAI-compatible routes, which answer errors in OpenAI's shape."""


class BodyLimit:
    """Answer 413 to a body over ``limit`` bytes, by Content-Length or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in STREAMED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(scope, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        message = f"the request body is over the limit of {self.limit} bytes"
        if scope["path"].startswith(OPENAI_PATHS):
            resp = JSON(wire.error_body(message, "invalid_request_error", None), status_code=413)
        else:
            resp = errors.error_body("payload_too_large", message, 413)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(resp.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": resp.body})


class _TooLarge(Exception):
    pass


class Timing:
    """Request latency by route into Prometheus (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            HTTP_LATENCY.labels(
                scope["method"], getattr(route, "path", "unmatched"), str(status)
            ).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None, *, publisher: Any = None) -> FastAPI:
    """Build the API. ``publisher`` defaults to Celery on ``settings.broker_url``."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, json=settings.log_json)
        tracing.configure(settings.otel_exporter, service="inferq-api")
        engine = make_engine(settings, pool_size=20)
        clock.keep_synced(engine)  # stamp on the database's clock, whatever this host's says
        pub = publisher
        if pub is None:
            from workers.celery_app import create_celery
            from workers.context import CeleryPublisher

            pub = CeleryPublisher(create_celery(settings), settings)
        hub = CompletionHub(settings.database_url)
        hub.start()
        rt = Runtime(
            settings, engine, make_sessionmaker(engine), Registry(settings.models_dir), pub, hub
        )
        rt.admission = Admission(settings)
        rt.submitter = Coalescer(
            lambda subs: service.store_and_publish(
                subs, sessions=rt.sessions, publisher=rt.publisher, admission=rt.admission
            )
        )
        rt.loader = Coalescer(lambda ids: predictions.load_many(rt, ids), max_items=500)
        app.state.runtime = rt
        QUEUES.attach(rt.sessions, settings.queue_metrics_ttl_seconds, rt.registry.names())
        for startup in STARTUP_HOOKS:
            await startup(app, rt)
        try:
            yield
        finally:
            for shutdown in SHUTDOWN_HOOKS:
                await shutdown(app, rt)
            QUEUES.detach()
            hub.stop()
            await rt.submitter.close()
            await rt.loader.close()
            engine.dispose()
            tracing.shutdown()

    app = InferqAPI(
        title="inferq",
        version=__version__,
        description="Queue-driven inference: submit, poll or get a signed webhook.",
        lifespan=lifespan,
        default_response_class=JSON,
    )
    errors.install(app)
    openapi.install(app, auth=bool(settings.api_keys))
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(predictions.router)
    for router in extra_routers():
        app.include_router(router)
    app.add_middleware(Timing)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Tracing)  # outermost: a 413 is in the caller's trace too
    # the hottest route, past FastAPI's routing and dependency solving (api/fastpath.py)
    app.serve_directly(
        predictions.router,
        "POST",
        "/v1/predictions",
        predictions.create_prediction,
        wrap=lambda inner: Tracing(BodyLimit(Timing(inner), limit=settings.max_body_bytes)),
    )
    return app


Hook = Callable[[FastAPI, Runtime], Awaitable[None]]
STARTUP_HOOKS: list[Hook] = []
SHUTDOWN_HOOKS: list[Hook] = []
