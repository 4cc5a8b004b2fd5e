"""Metrics adapters: no-op, in-memory and Prometheus (``crewflow.adapters.metrics.prometheus``, imported on
demand), and the event sink that counts runs (``crewflow.adapters.metrics.events``)."""

from crewflow.adapters.metrics.memory import InMemoryMetrics, NoopMetrics

__all__ = ["InMemoryMetrics", "NoopMetrics"]
