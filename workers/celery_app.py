"""The Celery application, built from inferq's settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.settings import Settings, get_settings
from workers import redis_client
from workers.beat import retention_entries, schedule_entries

redis_client.install()  # one Redis client per kombu channel (workers/redis_client.py)


def queue_name(settings: Settings, model: str) -> str:
    return f"{settings.queue_prefix}.{model}"


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL Celery gets and its transport options.

    ``filesystem://<dir>`` (the embedded default) becomes kombu's filesystem transport with
    its folders under ``<dir>``. Redis keeps its ``visibility_timeout`` of an hour: a message held
    by a killed worker comes back late, which is why Postgres leases and the sweeper exist.
    """
    url = settings.broker_url
    if url.startswith("filesystem://"):
        from pathlib import Path

        root = Path(url[len("filesystem://") :] or "var/broker")
        for sub in ("queue", "processed", "control"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "processed_folder": str(root / "processed"),
            "store_processed": False,
            "control_folder": str(root / "control"),
        }
    # A publisher that cannot reach the broker gives up at once: the request is already in
    # Postgres and the sweeper publishes it later. (kombu's default retries the connection for
    # as long as ``broker_connection_timeout`` with growing sleeps: seconds per POST.) Workers'
    # consumers reconnect on their own terms (``broker_connection_max_retries``).
    fail_fast = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    if url.startswith(("redis://", "rediss://")):
        return url, {
            "visibility_timeout": 3600,
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
            **fail_fast,
        }
    return url, fail_fast


def task_modules() -> list[str]:
    """``workers.tasks`` and every ``workers/tasks_*.py`` (jobs, integrations, …)."""
    from pathlib import Path

    here = Path(__file__).parent
    return ["workers.tasks", *sorted(f"workers.{p.stem}" for p in here.glob("tasks_*.py"))]


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker, transport_options = broker_options(settings)
    app = Celery("inferq", broker=broker, include=task_modules())
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_default_queue=f"{settings.queue_prefix}.default",
        # one retry, at once, on a new connection: a pooled connection the broker closed (it
        # restarted) is otherwise reused, and fails, for every publish after it is back (beat's
        # sweeps included); a broker that is down still fails the publish in milliseconds
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        worker_prefetch_multiplier=4,
        # reconnect within a second of the broker's return, not after Celery's 2, 4, 6 … 30 s
        worker_consumer="workers.broker_watch:FastReconnectConsumer",
        # Celery 5.5+ lowers the prefetch after a reconnect to the tasks still running and
        # raises it as they finish; tasks that finished on the lost connection never count, and
        # the consumer was seen to stop taking messages (tests/e2e/test_broker_restart.py, one
        # RabbitMQ restart in three). A message taken twice costs a claim that finds nothing.
        worker_enable_prefetch_count_reduction=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_enable_remote_control=not broker.startswith("filesystem"),
        beat_schedule={
            "inferq-sweep": {
                "task": "inferq.sweep",
                "schedule": settings.sweep_interval_seconds,
                "options": {"queue": f"{settings.queue_prefix}.maintenance", "expires": 60},
            },
            **schedule_entries(settings),
            **retention_entries(settings),
        },
    )
    app.conf.inferq_settings = settings
    return app


celery_app = create_celery()
