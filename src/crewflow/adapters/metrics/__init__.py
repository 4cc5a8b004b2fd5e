"""Metrics adapters."""

from crewflow.adapters.metrics.memory import InMemoryMetrics, NoopMetrics

__all__ = ["InMemoryMetrics", "NoopMetrics"]
