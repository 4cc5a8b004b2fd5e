"""A small metrics port: counters, histograms and gauges by name and labels, and the one table of every
metric crewflow records (``METRICS``). Adapters (``crewflow.adapters.metrics``): no-op, in-memory (tests,
benchmarks) and Prometheus. Calls are synchronous and must be cheap: they sit on hot paths (every LLM call).

A name that is not in ``METRICS``, a call of the wrong kind (``inc`` on a histogram) or labels other than
the declared ones are programming errors: the in-memory and Prometheus adapters raise ``UnknownMetric``
instead of silently creating a new series."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = ["METRICS", "Labels", "MetricKind", "MetricSpec", "Metrics", "UnknownMetric", "check_call"]

Labels = Mapping[str, str]


class MetricKind(StrEnum):
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # histograms: None = the adapter's default buckets


_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

_C, _H, _G = MetricKind.COUNTER, MetricKind.HISTOGRAM, MetricKind.GAUGE
_LLM = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: Every metric, declared once. Label values must stay few: route templates (never raw paths), statuses,
#: provider names, node kinds — never ids.
METRICS: Mapping[str, MetricSpec] = {
    "http_requests_total":
        MetricSpec(_C, "HTTP requests answered, by route template and status", ("method", "route", "status")),
    "http_request_duration_seconds":
        MetricSpec(_H, "HTTP request duration (to the last byte)", ("method", "route"), _LATENCY),
    "flow_executions_total": MetricSpec(_C, "Flow executions that ended, by final status", ("status",)),
    "flow_execution_duration_seconds": MetricSpec(_H, "Flow execution duration, run start to end", ("status",), _LONG),
    "node_executions_total": MetricSpec(_C, "Node attempts run by a runtime or the tool sandbox", ("kind", "status")),
    "node_execution_duration_seconds": MetricSpec(_H, "Duration of one node attempt", ("kind",), _LONG),
    "llm_api_calls_total": MetricSpec(_C, "LLM provider calls, by provider and outcome", ("provider", "status")),
    "llm_tokens_total": MetricSpec(_C, "LLM tokens, by provider and direction (in/out)", ("provider", "direction")),
    "llm_request_duration_seconds": MetricSpec(_H, "Duration of one LLM provider attempt", ("provider",), _LLM),
    "cache_hits_total": MetricSpec(_C, "Cache lookups, by cache and result (hit/miss)", ("cache", "result")),
    "docker_containers_active": MetricSpec(_G, "Tool sandbox containers running now"),
    "queue_jobs_in_progress": MetricSpec(_G, "Execution jobs this process is running now"),
}  # fmt: skip


class UnknownMetric(ValueError):
    """A metric call that does not match ``METRICS`` (name, kind or label names)."""


def check_call(name: str, kind: MetricKind, labels: Labels | None) -> MetricSpec:
    """The spec of ``name`` if the call matches it; else ``UnknownMetric``."""
    spec = METRICS.get(name)
    if spec is None:
        raise UnknownMetric(f"unknown metric {name!r} (declare it in crewflow.ports.metrics.METRICS)")
    if spec.kind != kind:
        raise UnknownMetric(f"metric {name!r} is a {spec.kind}, not a {kind}")
    given = tuple(sorted(labels)) if labels else ()
    if given != tuple(sorted(spec.labels)):
        raise UnknownMetric(f"metric {name!r} takes labels {list(spec.labels)}, got {list(given)}")
    return spec


class Metrics(Protocol):
    def inc(self, name: str, labels: Labels | None = None, value: float = 1.0) -> None:
        """Add ``value`` to the counter ``name{labels}``."""
        ...

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Record one observation of the histogram ``name{labels}``."""
        ...

    def set(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Set the gauge ``name{labels}`` to ``value``."""
        ...
