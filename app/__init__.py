"""inferq: queue-driven inference workers. The core, free of HTTP and Celery."""

__version__ = "0.1.0"
