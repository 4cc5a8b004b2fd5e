"""Metrics adapters kept in the process: ``NoopMetrics`` (discards everything) and ``InMemoryMetrics``
(counters, histogram observations and gauges readable by tests and the benchmark).

``InMemoryMetrics`` checks every call against ``crewflow.ports.metrics.METRICS`` like the Prometheus
adapter does, so a misspelt name or label fails the test that makes the call."""

from __future__ import annotations

from collections import defaultdict

from crewflow.ports.metrics import Labels, MetricKind, check_call

__all__ = ["InMemoryMetrics", "NoopMetrics"]

LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Labels | None) -> LabelKey:
    if not labels:
        return ()
    return tuple(sorted(labels.items()))


class NoopMetrics:
    def inc(self, name: str, labels: Labels | None = None, value: float = 1.0) -> None:
        return None

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        return None

    def set(self, name: str, value: float, labels: Labels | None = None) -> None:
        return None


class InMemoryMetrics:
    def __init__(self) -> None:
        self._counters: defaultdict[str, defaultdict[LabelKey, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: defaultdict[str, defaultdict[LabelKey, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._gauges: defaultdict[str, dict[LabelKey, float]] = defaultdict(dict)

    def inc(self, name: str, labels: Labels | None = None, value: float = 1.0) -> None:
        check_call(name, MetricKind.COUNTER, labels)
        if value < 0:
            raise ValueError("a counter only goes up")
        self._counters[name][_key(labels)] += value

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        check_call(name, MetricKind.HISTOGRAM, labels)
        self._histograms[name][_key(labels)].append(value)

    def set(self, name: str, value: float, labels: Labels | None = None) -> None:
        check_call(name, MetricKind.GAUGE, labels)
        self._gauges[name][_key(labels)] = value

    def counter(self, name: str, **labels: str) -> float:
        """The counter's value for exactly these labels (0 if never incremented)."""
        series = self._counters.get(name)
        return series.get(_key(labels), 0.0) if series is not None else 0.0

    def counter_total(self, name: str, **labels: str) -> float:
        """Sum over every label set that includes the given labels."""
        want = set(labels.items())
        series = self._counters.get(name)
        return sum(v for k, v in series.items() if want <= set(k)) if series is not None else 0.0

    def observations(self, name: str, **labels: str) -> list[float]:
        series = self._histograms.get(name)
        return list(series.get(_key(labels), [])) if series is not None else []

    def gauge(self, name: str, **labels: str) -> float | None:
        """The gauge's last value for exactly these labels (None if never set)."""
        series = self._gauges.get(name)
        return series.get(_key(labels)) if series is not None else None

    def snapshot(self) -> dict[str, dict[LabelKey, float]]:
        return {name: dict(series) for name, series in self._counters.items()}
