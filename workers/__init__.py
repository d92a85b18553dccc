"""The Celery adapter: tasks, queues, beat, worker start-up. Logic lives in ``app/``."""
