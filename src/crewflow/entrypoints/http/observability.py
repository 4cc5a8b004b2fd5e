"""Observability at the HTTP edge (ADR 0013): request ids and log context, HTTP metrics, server spans, and
the ``/healthz``, ``/readyz`` and ``/metrics`` routes.

Order of an HTTP request or WebSocket session, outermost first:

1. the OpenTelemetry ASGI instrumentation (only while tracing is on): the server span, continuing a
   ``traceparent`` sent by the client;
2. ``ObservabilityMiddleware``, around the whole app (so 404s for unknown paths and errors raised by any
   middleware are seen too): the request id — the caller's ``X-Request-ID`` when it is short and plain, else
   a new one — kept in the connection state for the audit log, bound to the log context of everything the
   request does, and echoed in the response; ``http_requests_total{method,route,status}`` and
   ``http_request_duration_seconds{method,route}`` labelled with the route *template*
   (``/api/v1/flows/{flow_id}``; ``unmatched`` when no route matched), never the raw path; the server span
   renamed to ``METHOD template``; one ``http.request`` log line;
3. Litestar's routing, then the route middleware: token authentication, ``IdentityLogContext`` (binds
   ``tenant_id``, ``user_id`` and the path's ``execution_id`` to the log context and the span), rate limits.

``instrument_container`` decorates a built ``ApiContainer`` for logs, metrics and traces of executions:
node wrappers around the engine's runtime and tool sandbox, the job wrapper around the in-process queue's
handler, and the queue decorator that carries the trace context into jobs.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from litestar import MediaType, Request, Response, get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from opentelemetry import trace
from structlog.contextvars import bind_contextvars, bound_contextvars

from crewflow.adapters.telemetry import (
    ReadinessCheck,
    check_readiness,
    instrument_engine,
    instrument_job_queue,
    tracer_provider,
)
from crewflow.domain.auth import Identity
from crewflow.entrypoints.http.problems import PROBLEM_JSON

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from crewflow.bootstrap import ApiContainer
    from crewflow.ports.metrics import Metrics

__all__ = [
    "REQUEST_ID_HEADER",
    "IdentityLogContext",
    "ObservabilityMiddleware",
    "bind_identity",
    "container_metrics",
    "default_readiness_checks",
    "healthz",
    "instrument_app",
    "instrument_container",
    "metrics_endpoint",
    "readyz",
    "request_id_of",
]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: logged at debug
UNMATCHED = "unmatched"
log = structlog.get_logger("crewflow.http")


def container_metrics(container: object) -> Metrics | None:
    """The container's metrics (``ApiContainer.metrics``), if it has any."""
    metrics = getattr(container, "metrics", None)
    return metrics if metrics is not None and hasattr(metrics, "inc") else None


def request_id_of(headers: list[tuple[bytes, bytes]] | Any) -> str:
    """The caller's ``X-Request-ID`` when it is well-formed (1-128 of ``A-Z a-z 0-9 . _ : -``), else a new id."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class ObservabilityMiddleware:
    """Plain ASGI middleware around the whole Litestar handler (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"].value if isinstance(scope["type"], ScopeType) else scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id  # read by request_meta (audit log)
        encoded = request_id.encode()
        server_span = trace.get_current_span()  # the instrumentation's server span, when tracing is on
        method = str(scope.get("method", "")) if kind == "http" else "WS"
        status = 500  # nothing answered: the server turns the escaping error into a 500
        started = time.perf_counter()

        def name_span() -> None:
            route = scope.get("path_template")
            if route and server_span.is_recording():
                server_span.update_name(f"{method} {route}")
                server_span.set_attribute("http.route", route)
                server_span.set_attribute("crewflow.request_id", request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", encoded)]
                name_span()
            elif message["type"] == "websocket.accept":
                name_span()
            await send(message)

        with bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if kind == "http":
                    self._record(scope, method, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, method: str, status: int, duration: float) -> None:
        route = scope.get("path_template") or UNMATCHED
        app = scope.get("litestar_app")
        metrics = container_metrics(getattr(app.state, "container", None)) if app is not None else None
        if metrics is not None:
            metrics.inc("http_requests_total", {"method": method, "route": route, "status": str(status)})
            metrics.observe("http_request_duration_seconds", duration, {"method": method, "route": route})
        emit = log.debug if route in _QUIET_ROUTES else log.info
        emit("http.request", method=method, route=route, path=scope.get("path"), status=status,
             duration_ms=round(duration * 1000, 2))  # fmt: skip


class IdentityLogContext(ASGIMiddleware):
    """After authentication: the caller's tenant and user (and the execution a path names) in the log
    context and on the server span."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        context: dict[str, str] = {}
        user = scope.get("user")
        if isinstance(user, Identity):
            context["tenant_id"] = user.tenant_id
            context["user_id"] = user.user_id
        execution_id = (scope.get("path_params") or {}).get("execution_id")
        if isinstance(execution_id, str):
            context["execution_id"] = execution_id
        if not context:
            await next_app(scope, receive, send)
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({f"crewflow.{k.removesuffix('_id')}.id": v for k, v in context.items()})
        with bound_contextvars(**context):
            await next_app(scope, receive, send)


def bind_identity(identity: Identity) -> None:
    """For handlers that authenticate themselves (WebSockets): bind the caller to the log context of the
    rest of the connection."""
    bind_contextvars(tenant_id=identity.tenant_id, user_id=identity.user_id)


def _span_details(scope: Any) -> tuple[str, dict[str, Any]]:
    """The server span's first name: the method only (renamed with the route template once routed)."""
    return (str(scope.get("method") or "HTTP") if scope.get("type") == "http" else "WS"), {}


def instrument_app(app: Litestar) -> None:
    """Put ``ObservabilityMiddleware`` (and, while tracing is on, the OpenTelemetry ASGI instrumentation)
    around the app's whole handler, outside routing and the exception handlers."""
    handler: Any = ObservabilityMiddleware(app.asgi_handler)
    provider = tracer_provider()
    if provider is not None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        handler = OpenTelemetryMiddleware(handler, default_span_details=_span_details, tracer_provider=provider,
                                          exclude_spans=["receive", "send"])  # fmt: skip
    app.asgi_handler = handler


# -- executions --------------------------------------------------------------------------------------------
def instrument_container(container: ApiContainer, metrics: Metrics | None = None) -> None:
    """Logs, metrics and traces for the executions this container runs (idempotent):

    - agent / crew / tool nodes: a span, ``node_id`` in the log context, ``node_executions_total`` and
      ``node_execution_duration_seconds`` (decorators of ``engine.runtime`` and ``engine.tools``);
    - jobs of the in-process queue: ``bind_job_context`` around its handler (log context, job span,
      ``queue_jobs_in_progress``);
    - enqueued jobs: the request's trace context and request id (``TracingJobQueue``).

    ``metrics`` defaults to ``container.metrics``."""
    if metrics is None:
        metrics = container_metrics(container)
    instrument_engine(container.engine, metrics)
    container.queue = instrument_job_queue(container.queue, metrics)


# -- health ------------------------------------------------------------------------------------------------
def _sql_check(container: ApiContainer) -> Callable[[], Awaitable[object]] | None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncEngine

    engine = getattr(getattr(container.uow_factory, "database", None), "engine", None)
    if not isinstance(engine, AsyncEngine):
        return None

    async def check() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return check


def _redis_check(url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    async def check() -> None:
        await client.ping()

    return check, client.aclose


def _ready_method(obj: object) -> Callable[[], Awaitable[object]] | None:
    ready = getattr(obj, "ready", None)
    return ready if callable(ready) else None


Closer = Callable[[], Awaitable[object]]


def default_readiness_checks(container: ApiContainer) -> tuple[list[ReadinessCheck], list[Closer]]:
    """The container's dependencies: the database (``SELECT 1``), Redis when ``CREWFLOW_REDIS_URL`` is set
    (``PING``), and the queue and event bus when they offer an ``async ready()`` that raises when they cannot
    reach their backend; then ``container.readiness`` (extra named checks) when it has any. Returns the
    checks and what closes the clients they opened."""
    checks: list[ReadinessCheck] = []
    closers: list[Closer] = []
    sql = _sql_check(container)
    if sql is not None:
        checks.append(("database", sql))
    if container.settings.redis_url:
        ping, close = _redis_check(container.settings.redis_url)
        checks.append(("redis", ping))
        closers.append(close)
    for name, obj in (("queue", container.queue), ("bus", container.bus)):
        ready = _ready_method(obj)
        if ready is not None:
            checks.append((name, ready))
    extra: list[ReadinessCheck] = list(getattr(container, "readiness", None) or ())
    names = {name for name, _ in extra}
    return [c for c in checks if c[0] not in names] + extra, closers


@get("/healthz", opt={"public": True}, include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Checks no dependency (a database outage must not restart every pod)."""
    return {"status": "ok"}


@get("/readyz", opt={"public": True}, include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Ready for traffic: every dependency answered. 503 problem details naming the failing ones
    otherwise (never why: that is in the log)."""
    checks: list[ReadinessCheck] = request.app.state.get("readiness") or []
    report = await check_readiness(checks)
    if report.ready:
        return Response({"status": "ready", "checks": dict(report.checks)})
    failing = report.failing
    body = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
            "detail": f"not ready: {', '.join(failing)} unavailable", "checks": dict(report.checks)}  # fmt: skip
    return Response(body, status_code=503, media_type=PROBLEM_JSON)


@get("/metrics", opt={"public": True}, include_in_schema=False, media_type=MediaType.TEXT)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The process's metrics in Prometheus text format; 404 when the container keeps no Prometheus metrics."""
    from crewflow.adapters.metrics.prometheus import CONTENT_TYPE, PrometheusMetrics

    metrics = container_metrics(request.app.state.container)
    if not isinstance(metrics, PrometheusMetrics):
        body = b'{"type":"about:blank","title":"Not Found","status":404,"detail":"metrics are not enabled"}'
        return Response(body, status_code=404, media_type=PROBLEM_JSON)
    return Response(metrics.render(), media_type=CONTENT_TYPE)
