"""Each worker process serves its Prometheus metrics (``app.metrics``) on a port of its own.

Why a port per process and not prometheus_client's multiprocess mode: workers run Celery's
``--pool threads``, one process per worker, so each process owns its registry whole and can
serve it; multiprocess mode exists to merge prefork children behind one port, and costs a
shared folder of mmap files that must be wiped at every restart and leaves out info metrics
and custom collectors. Several workers on one host take consecutive ports: the first free one
of ``INFERQ_WORKER_METRICS_PORT`` and the ``PORTS - 1`` after it.

(Named ``tasks_*`` so that ``workers.celery_app`` imports it with the task modules.)
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_shutdown
from prometheus_client import REGISTRY, start_http_server

from workers.celery_app import celery_app

log = logging.getLogger(__name__)

PORTS = 16
"""How many ports from ``INFERQ_WORKER_METRICS_PORT`` on a worker process may take."""

_server: Any = None


def serve(first: int, tries: int = PORTS) -> tuple[Any, int]:
    """Serve ``/metrics`` on the first free port of ``first`` … ``first + tries - 1``."""
    for port in range(first, first + tries):
        try:
            server, _thread = start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
        except OSError:
            continue
        return server, port
    raise OSError(f"no free port for worker metrics in {first}..{first + tries - 1}")


@worker_init.connect
def _start(**_: Any) -> None:
    global _server
    first = celery_app.conf.inferq_settings.worker_metrics_port
    if not first or _server is not None:
        return
    try:
        _server, port = serve(first)
    except OSError as exc:
        log.error("worker metrics not served", extra={"error": str(exc)})
        return
    log.info("worker metrics served", extra={"port": port})


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
