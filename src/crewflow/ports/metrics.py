"""A small metrics port: counters and histograms by name and labels. Adapters: no-op and in-memory
(``crewflow.adapters.metrics.memory``); Prometheus later. Calls are synchronous and must be cheap: they sit
on hot paths (every LLM call)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["Labels", "Metrics"]

Labels = Mapping[str, str]


class Metrics(Protocol):
    def inc(self, name: str, labels: Labels | None = None, value: float = 1.0) -> None:
        """Add ``value`` to the counter ``name{labels}``."""
        ...

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Record one observation of the histogram ``name{labels}``."""
        ...
