"""The dynamic batcher: items in, futures out. No broker, no HTTP."""

from app.batching.batcher import BatchItem, DynamicBatcher, Outcome

__all__ = ["BatchItem", "DynamicBatcher", "Outcome"]
