"""``PrometheusMetrics``: the metrics port over prometheus-client, one collector per entry of
``crewflow.ports.metrics.METRICS``, in a registry of its own (not the library's global one, so tests and
embedded apps can hold several).

Where the numbers are read:

- the API process: ``GET /metrics`` renders the container's registry (text exposition format);
- a worker process (``crewflow worker``, no HTTP server of its own): ``start_metrics_server(port, metrics)``
  serves the same format on ``CREWFLOW_METRICS_PORT`` (``serve_metrics_from_env``). Every process is a
  scrape target of its own; there is no shared multiprocess directory to clean up (ADR 0013).

Unknown names, a call of the wrong kind and wrong label names raise ``UnknownMetric``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from crewflow.ports.metrics import METRICS, Labels, MetricKind, MetricSpec, check_call

__all__ = ["CONTENT_TYPE", "PrometheusMetrics", "serve_metrics_from_env", "start_metrics_server"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_Collector = Counter | Histogram | Gauge


def _collector(name: str, spec: MetricSpec, registry: CollectorRegistry) -> _Collector:
    if spec.kind == MetricKind.COUNTER:
        return Counter(name, spec.help, spec.labels, registry=registry)
    if spec.kind == MetricKind.HISTOGRAM:
        if spec.buckets is not None:
            return Histogram(name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)
        return Histogram(name, spec.help, spec.labels, registry=registry)
    return Gauge(name, spec.help, spec.labels, registry=registry)


class PrometheusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._collectors: dict[str, _Collector] = {
            name: _collector(name, spec, self.registry) for name, spec in METRICS.items()
        }
        # (name, kind, label names in the caller's order) already checked against METRICS: the hot path is
        # one dict lookup, not a sort and a comparison per call.
        self._checked: set[tuple[str, MetricKind, tuple[str, ...]]] = set()

    def _series(self, name: str, kind: MetricKind, labels: Labels | None) -> Any:
        names = tuple(labels) if labels else ()
        if (name, kind, names) not in self._checked:
            check_call(name, kind, labels)
            self._checked.add((name, kind, names))
        collector = self._collectors[name]
        return collector.labels(**labels) if labels else collector

    def inc(self, name: str, labels: Labels | None = None, value: float = 1.0) -> None:
        self._series(name, MetricKind.COUNTER, labels).inc(value)

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        self._series(name, MetricKind.HISTOGRAM, labels).observe(value)

    def set(self, name: str, value: float, labels: Labels | None = None) -> None:
        self._series(name, MetricKind.GAUGE, labels).set(value)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


def start_metrics_server(port: int, metrics: PrometheusMetrics, addr: str = "0.0.0.0") -> Callable[[], None]:  # noqa: S104
    """Serve ``metrics`` on ``http://addr:port/`` (any path) from a daemon thread; returns a function that
    stops the server. All interfaces by default: the scraper reaches a worker container from outside."""
    server, thread = start_http_server(port, addr=addr, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


def serve_metrics_from_env(env: Mapping[str, str], metrics: PrometheusMetrics) -> Callable[[], None] | None:
    """For worker entrypoints: start the metrics server on ``CREWFLOW_METRICS_PORT`` (and
    ``CREWFLOW_METRICS_ADDR``, default all interfaces) when it is set; None (nothing served) otherwise."""
    raw = env.get("CREWFLOW_METRICS_PORT")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"CREWFLOW_METRICS_PORT must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ValueError("CREWFLOW_METRICS_PORT must be between 1 and 65535")
    return start_metrics_server(port, metrics, env.get("CREWFLOW_METRICS_ADDR") or "0.0.0.0")  # noqa: S104
