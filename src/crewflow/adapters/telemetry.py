"""Traces, job context and readiness: everything observability needs outside the HTTP app (ADR 0013).

Tracing is off by default. ``configure_tracing()`` turns it on when the environment asks for it
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set, or ``OTEL_TRACES_EXPORTER``
= ``otlp`` | ``console``); the standard ``OTEL_*`` variables configure the exporter (endpoint, headers,
timeout, compression), the sampler, the batch processor and the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``). crewflow keeps its tracer provider to itself (it does not replace the global
one): CrewAI's own telemetry and tracing never write into crewflow's traces, and crewflow's spans never go
to CrewAI's exporters.

``OTEL_SDK_DISABLED``: crewflow sets it to ``true`` in the process when it imports CrewAI (CrewAI's
telemetry opt-out, ``crewflow.adapters.crewai.llm.CREWAI_ENV``). The SDK reads it once, when a provider is
built, so crewflow builds its provider at start-up (``configure_tracing`` in the entrypoints), before any
CrewAI import, and it keeps recording afterwards. Set by the operator before start-up it turns crewflow's
tracing off too, as the OpenTelemetry specification says (a warning is logged).

Spans:

- HTTP server spans: the ASGI instrumentation around the app (``crewflow.entrypoints.http.observability``),
  named ``METHOD /route/{template}``;
- a job span (``execution.run``, kind consumer) per queued execution, child of the span that enqueued it:
  ``TracingJobQueue`` puts the W3C ``traceparent`` into ``RunExecution.trace_context``, ``bind_job_context``
  continues it in the worker;
- a span per agent / crew / tool node attempt (``InstrumentedRuntime``, ``InstrumentedToolSandbox``), child of
  the job span: it wraps the runtime call inside the node's own asyncio task, so everything the node does
  (LLM calls, queries) nests under it — contextvars reach CrewAI's worker thread (``asyncio.to_thread``) and
  come back with the gateway coroutine (``run_coroutine_threadsafe`` copies the thread's context);
- an LLM span per provider call (``llm_call_span``, GenAI semantic conventions), made by the provider
  adapters;
- a span per SQL statement (``instrument_sqlalchemy``: listeners on SQLAlchemy's ``Engine`` class, so the
  per-tenant SQLite engines created later are covered too).

Logs: ``bind_job_context`` and the node wrappers bind ``request_id``, ``tenant_id``, ``execution_id`` and
``node_id`` to structlog's context variables, which every log line of the job then carries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from structlog.contextvars import bound_contextvars, get_contextvars

from crewflow.domain.failover import ProviderError
from crewflow.ports.llm import ChatRequest, ChatResponse
from crewflow.ports.metrics import Metrics
from crewflow.ports.queue import JobQueue, RunExecution
from crewflow.ports.runtime import AgentRuntime, AgentWork, CrewWork, NodeEmitter, NodeOutcome, ToolSandbox, ToolWork

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "InstrumentedRuntime",
    "InstrumentedToolSandbox",
    "JobHandler",
    "ReadinessCheck",
    "ReadinessReport",
    "TracingJobQueue",
    "bind_job_context",
    "check_readiness",
    "configure_tracing",
    "inject_trace_context",
    "instrument_engine",
    "instrument_job_queue",
    "instrument_sqlalchemy",
    "llm_call_span",
    "shutdown_tracing",
    "tracer",
    "tracer_provider",
    "tracing_enabled",
    "tracing_requested",
    "use_tracer_provider",
]

log = structlog.get_logger("crewflow.telemetry")
JobHandler = Callable[[RunExecution, asyncio.Event], Awaitable[None]]
INSTRUMENTATION = "crewflow"


# -- the tracer provider --------------------------------------------------------------------------------
@dataclass(slots=True)
class _Tracing:
    provider: TracerProvider | None = None
    tracer: Tracer = dataclasses.field(default_factory=trace.NoOpTracer)
    enabled: bool = False  # read on hot paths: one attribute, no call


_tracing = _Tracing()


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, or an explicit traces exporter)."""
    exporter = (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                        or "http/protobuf").strip().lower()  # fmt: skip
            if protocol != "http/protobuf":
                raise ValueError(f"OTLP protocol {protocol!r} is not supported (crewflow exports http/protobuf)")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER {name!r} is not supported (otlp, console or none)")
    return exporters


def configure_tracing(env: Mapping[str, str] | None = None, *, service_name: str = "crewflow",
                      exporter: SpanExporter | None = None) -> TracerProvider | None:  # fmt: skip
    """Build and install crewflow's tracer provider when ``env`` asks for traces (or ``exporter`` is given:
    tests, embedding); None when tracing stays off. Call it once at process start, before CrewAI is
    imported. Calling it again returns the provider already installed."""
    env = os.environ if env is None else env
    if _tracing.provider is not None:
        return _tracing.provider
    if exporter is None and not tracing_requested(env):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        log.warning("telemetry.tracing_disabled_by_env", reason="OTEL_SDK_DISABLED=true (crewflow sets it for "
                    "CrewAI on its own; unset it to get crewflow's traces)")  # fmt: skip
    # Resource.create merges OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over these defaults.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for each in _exporters(env):
            provider.add_span_processor(BatchSpanProcessor(each))
    use_tracer_provider(provider)
    return provider


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Install ``provider`` as crewflow's (None: tracing off). Tests install one with an in-memory exporter."""
    _tracing.provider = provider
    _tracing.tracer = provider.get_tracer(INSTRUMENTATION) if provider is not None else trace.NoOpTracer()
    _tracing.enabled = provider is not None
    if provider is not None:
        instrument_sqlalchemy()


def shutdown_tracing() -> None:
    """Flush and stop the installed provider (at process exit)."""
    provider = _tracing.provider
    use_tracer_provider(None)
    if provider is not None:
        provider.shutdown()


def tracer_provider() -> TracerProvider | None:
    return _tracing.provider


def tracing_enabled() -> bool:
    return _tracing.enabled


def tracer() -> Tracer:
    """crewflow's tracer (a no-op one while tracing is off)."""
    return _tracing.tracer


# -- across the queue ------------------------------------------------------------------------------------
def inject_trace_context() -> dict[str, str] | None:
    """The current span's W3C trace context (``traceparent``, ``tracestate``), or None when tracing is off."""
    if not _tracing.enabled:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def _extract(carrier: Mapping[str, str] | None) -> Context | None:
    if not carrier:
        return None
    return propagate.extract(dict(carrier))


class TracingJobQueue:
    """A ``JobQueue`` decorator for the producer side: each job leaves with the enqueuer's trace context and
    request id (from the request's structlog context when the caller did not set it). Everything else is
    the wrapped queue's."""

    def __init__(self, inner: JobQueue) -> None:
        self.inner = inner

    async def enqueue(self, job: RunExecution) -> None:
        request_id = job.request_id
        if request_id is None:
            bound = get_contextvars().get("request_id")
            request_id = bound if isinstance(bound, str) else None
        trace_context = job.trace_context if job.trace_context is not None else inject_trace_context()
        if request_id != job.request_id or trace_context is not job.trace_context:
            job = dataclasses.replace(job, request_id=request_id, trace_context=trace_context)
        await self.inner.enqueue(job)

    async def cancel(self, tenant_id: str, execution_id: str) -> bool:
        return await self.inner.cancel(tenant_id, execution_id)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # the wrapped queue's other methods (``holds``, ``ready``, ...)
        return getattr(self.inner, name)


def bind_job_context(handler: JobHandler, *, metrics: Metrics | None = None) -> JobHandler:
    """Wrap a queue's job handler (``ExecutionRunner``): each job runs with its ``request_id``, ``tenant_id``
    and ``execution_id`` bound to the log context, inside an ``execution.run`` span continuing the trace
    the job was enqueued in, and counted in ``queue_jobs_in_progress``."""
    running = 0

    async def run(job: RunExecution, cancel: asyncio.Event) -> None:
        nonlocal running
        context: dict[str, Any] = {"tenant_id": job.tenant_id, "execution_id": job.execution_id}
        if job.request_id is not None:
            context["request_id"] = job.request_id
        attributes: dict[str, Any] = {
            "crewflow.tenant.id": job.tenant_id, "crewflow.execution.id": job.execution_id,
            "messaging.operation.type": "process", "messaging.system": "crewflow",
        }  # fmt: skip
        if job.request_id is not None:
            attributes["crewflow.request_id"] = job.request_id
        with bound_contextvars(**context), tracer().start_as_current_span(
            "execution.run", context=_extract(job.trace_context), kind=SpanKind.CONSUMER, attributes=attributes
        ):
            running += 1
            if metrics is not None:
                metrics.set("queue_jobs_in_progress", running)
            try:
                await handler(job, cancel)
            finally:
                running -= 1
                if metrics is not None:
                    metrics.set("queue_jobs_in_progress", running)

    return run


# -- nodes -----------------------------------------------------------------------------------------------
async def _node(kind: str, work: AgentWork | CrewWork | ToolWork, metrics: Metrics | None,
                call: Callable[[], Awaitable[NodeOutcome]]) -> NodeOutcome:  # fmt: skip
    attributes: dict[str, Any] = {"crewflow.node.id": work.node_id, "crewflow.node.kind": kind,
                                  "crewflow.node.attempt": work.attempt, "crewflow.execution.id": work.execution_id,
                                  "crewflow.tenant.id": work.tenant_id}  # fmt: skip
    status = "failed"
    started = time.perf_counter()
    with bound_contextvars(node_id=work.node_id, tenant_id=work.tenant_id, execution_id=work.execution_id), \
            tracer().start_as_current_span(f"node {work.node_id}", attributes=attributes) as span:  # fmt: skip
        try:
            outcome = await call()
            status = "completed"
            if span.is_recording() and (outcome.input_tokens or outcome.output_tokens):
                span.set_attributes({"gen_ai.usage.input_tokens": outcome.input_tokens,
                                     "gen_ai.usage.output_tokens": outcome.output_tokens})  # fmt: skip
            return outcome
        except asyncio.CancelledError:
            status = "cancelled"
            span.set_attribute("crewflow.node.cancelled", True)
            raise
        finally:
            if metrics is not None:
                metrics.inc("node_executions_total", {"kind": kind, "status": status})
                metrics.observe("node_execution_duration_seconds", time.perf_counter() - started, {"kind": kind})


class InstrumentedRuntime:
    """An ``AgentRuntime`` decorator: a span, log context and metrics per agent / crew node attempt."""

    def __init__(self, inner: AgentRuntime, metrics: Metrics | None = None) -> None:
        self.inner = inner
        self.metrics = metrics

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        return await _node("agent", work, self.metrics, lambda: self.inner.run_agent(work, emit))

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        return await _node("crew", work, self.metrics, lambda: self.inner.run_crew(work, emit))


class InstrumentedToolSandbox:
    """A ``ToolSandbox`` decorator: a span, log context and metrics per tool node attempt."""

    def __init__(self, inner: ToolSandbox, metrics: Metrics | None = None) -> None:
        self.inner = inner
        self.metrics = metrics

    async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome:
        return await _node("tool", work, self.metrics, lambda: self.inner.run_tool(work, emit))

    def __getattr__(self, name: str) -> Any:  # the sandbox's other methods (builds, clean-up, ...)
        return getattr(self.inner, name)


class _Engine(Protocol):
    """What ``instrument_engine`` needs of ``crewflow.application.engine.Engine``."""

    runtime: AgentRuntime
    tools: ToolSandbox | None


def instrument_engine(engine: _Engine, metrics: Metrics | None = None) -> None:
    """Decorate the engine's agent runtime and tool sandbox with the node wrappers (idempotent)."""
    if not isinstance(engine.runtime, InstrumentedRuntime):
        engine.runtime = InstrumentedRuntime(engine.runtime, metrics)
    if engine.tools is not None and not isinstance(engine.tools, InstrumentedToolSandbox):
        engine.tools = InstrumentedToolSandbox(engine.tools, metrics)


def instrument_job_queue(queue: JobQueue, metrics: Metrics | None = None) -> JobQueue:
    """``queue`` for producers that carry the trace context (``TracingJobQueue``); a queue that runs its jobs in
    this process (a ``handler`` attribute, like ``InProcessJobQueue``) also gets ``bind_job_context`` around
    its handler. Idempotent."""
    if isinstance(queue, TracingJobQueue):
        return queue
    handler = getattr(queue, "handler", None)
    if callable(handler):
        queue.handler = bind_job_context(handler, metrics=metrics)  # type: ignore[attr-defined]
    return TracingJobQueue(queue)


# -- LLM calls -------------------------------------------------------------------------------------------
_GEN_AI_SYSTEM = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic", "vllm": "openai",
                  "lmstudio": "openai", "ollama": "openai"}  # fmt: skip


def _identity(response: ChatResponse) -> ChatResponse:
    return response


@contextmanager
def llm_call_span(*, kind: str, provider: str, model: str, request: ChatRequest,
                  server_address: str | None = None) -> Iterator[Callable[[ChatResponse], ChatResponse]]:  # fmt: skip
    """A client span around one provider call (GenAI semantic conventions); yields ``done(response)``, which
    records the answer's model, usage and finish reason and returns the response. Message contents are
    never recorded. Free while tracing is off."""
    if not _tracing.enabled:
        yield _identity
        return
    system = _GEN_AI_SYSTEM.get(kind.lower(), kind.lower())
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.system": system,
                                  "gen_ai.provider.name": system, "gen_ai.request.model": model,
                                  "crewflow.llm.provider": provider, "crewflow.llm.stream": request.stream}  # fmt: skip
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if server_address:
        attributes["server.address"] = server_address
    span_name = f"chat {model}"
    with _tracing.tracer.start_as_current_span(span_name, kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:

        def done(response: ChatResponse) -> ChatResponse:
            span.set_attributes({"gen_ai.response.model": response.model,
                                 "gen_ai.usage.input_tokens": response.usage.input_tokens,
                                 "gen_ai.usage.output_tokens": response.usage.output_tokens})  # fmt: skip
            if response.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
            return response

        try:
            yield done
        except ProviderError as exc:  # the message is already redacted of the provider's credentials
            span.set_attribute("error.type", exc.kind.value)
            span.set_status(Status(StatusCode.ERROR, exc.kind.value))
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise


# -- SQL -------------------------------------------------------------------------------------------------
_SQL_SPAN = "_crewflow_span"
_sql_listening = False
_MAX_QUERY_TEXT = 2000


def _before_cursor_execute(conn: Any, _cursor: Any, statement: str, _params: Any, context: Any,
                           _many: bool) -> None:  # fmt: skip
    if not _tracing.enabled or context is None:
        return
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    dialect = conn.dialect.name
    attributes: dict[str, Any] = {"db.system.name": "postgresql" if dialect == "postgresql" else dialect,
                                  "db.operation.name": operation,
                                  "db.query.text": statement[:_MAX_QUERY_TEXT]}  # parameters are never recorded
    host = conn.engine.url.host
    if host:
        attributes["server.address"] = host
    span = _tracing.tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
    setattr(context, _SQL_SPAN, span)


def _after_cursor_execute(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any,
                          _many: bool) -> None:  # fmt: skip
    span = getattr(context, _SQL_SPAN, None)
    if span is not None:
        span.end()
        setattr(context, _SQL_SPAN, None)


def _handle_error(exception_context: Any) -> None:
    span = getattr(exception_context.execution_context, _SQL_SPAN, None)
    if span is not None:
        error = type(exception_context.original_exception).__qualname__
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        setattr(exception_context.execution_context, _SQL_SPAN, None)


def instrument_sqlalchemy() -> None:
    """A client span per SQL statement of every SQLAlchemy engine, created before or after this call
    (listeners on the ``Engine`` class; async engines run them in their greenlet, which carries the calling
    task's context). Idempotent; the listeners do nothing while tracing is off."""
    global _sql_listening
    if _sql_listening:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
    event.listen(Engine, "handle_error", _handle_error)
    _sql_listening = True


# -- readiness -------------------------------------------------------------------------------------------
ReadinessCheck = tuple[str, Callable[[], Awaitable[object]]]
"""A dependency's name and an async probe that raises (or times out) when the dependency is unreachable."""


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    checks: Mapping[str, str]  # name -> "ok" | "unavailable"

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.checks.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, v in self.checks.items() if v != "ok"]


async def check_readiness(checks: Sequence[ReadinessCheck], timeout: float = 2.0) -> ReadinessReport:
    """Run every probe at once, each bounded by ``timeout`` seconds. A failure is logged with the error's
    type only (no message: it could carry a URL with credentials)."""

    async def probe(name: str, check: Callable[[], Awaitable[object]]) -> str:
        try:
            await asyncio.wait_for(check(), timeout)
        except Exception as exc:
            log.warning("readiness.unavailable", dependency=name, error_type=type(exc).__name__)
            return "unavailable"
        return "ok"

    results = await asyncio.gather(*(probe(name, check) for name, check in checks))
    return ReadinessReport(dict(zip([name for name, _ in checks], results, strict=True)))
