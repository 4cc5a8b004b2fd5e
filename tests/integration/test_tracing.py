"""Traces: one execute request through the API (in-process queue) with an agent on a real local LLM server
is one connected trace — HTTP server span → job span → node span → LLM span, with SQL spans under the
request and the job — recorded by an in-memory exporter on crewflow's own tracer provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer as auth
from api_support import make_user
from api_support import served_client as serve
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from crewflow.adapters.telemetry import (
    configure_tracing,
    inject_trace_context,
    shutdown_tracing,
    tracer,
    tracing_enabled,
    use_tracer_provider,
)
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.entrypoints.http.observability import instrument_container
from crewflow.settings import Settings
from crewflow.testing.llm_server import LLMTestServer

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """crewflow's tracer provider with an in-memory exporter, built before CrewAI sets OTEL_SDK_DISABLED."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    use_tracer_provider(provider)
    try:
        yield memory
    finally:
        use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
async def container(tmp_path: Path, exporter: InMemorySpanExporter,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiContainer]:  # fmt: skip
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # CrewAI's own files, offline
    monkeypatch.setenv("CREWAI_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # as crewflow sets it for CrewAI: crewflow's provider exists
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    instrument_container(built)
    yield built
    await built.aclose()


async def _run_agent_flow(client: httpx.AsyncClient, token: str, llm: LLMTestServer) -> str:
    llm.provider("solo").script("Final Answer: tide mills grind grain")
    created = await client.post("/api/v1/providers", headers=auth(token), json={
        "name": "solo", "kind": "openai", "model": "solo-model", "api_key": "sk-solo-0123456789abcdef",
        "base_url": llm.openai_base_url("solo"), "priority": 1})  # fmt: skip
    assert created.status_code == 201, created.text
    agent = {"id": "researcher", "role": "Researcher", "goal": "Find facts"}
    assert (await client.post("/api/v1/agents", json=agent, headers=auth(token))).status_code == 201
    flow = {"id": "ask", "nodes": [{"id": "in", "kind": "input"},
                                   {"id": "q", "kind": "agent", "agent": "researcher", "task": "Tide mills?"},
                                   {"id": "out", "kind": "output", "value": "{{ nodes.q.output }}"}],
            "edges": ["in -> q", "q -> out"]}  # fmt: skip
    assert (await client.post("/api/v1/flows", json=flow, headers=auth(token))).status_code == 201
    response = await client.post("/api/v1/flows/ask/execute", json={}, headers=auth(token))
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["execution_id"]
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/executions/{execution_id}", headers=auth(token))).json()
        if body["status"] in TERMINAL:
            assert body["status"] == "completed", body["error"]
            return execution_id
        await asyncio.sleep(0.05)


def _one(spans: list[ReadableSpan], what: str, predicate: Any) -> ReadableSpan:
    found = [s for s in spans if predicate(s)]
    assert len(found) == 1, f"{what}: {len(found)} spans among {sorted({s.name for s in spans})}"
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain: list[ReadableSpan] = []
    parent = _parent_id(span)
    while parent is not None and parent in by_id:
        chain.append(by_id[parent])
        parent = _parent_id(by_id[parent])
    return chain


async def test_an_execute_request_is_one_trace_from_the_http_span_through_the_job_and_node_to_the_llm_call(
    container: ApiContainer, exporter: InMemorySpanExporter
) -> None:
    _, token = await make_user(container)
    async with LLMTestServer(api_key=None) as llm, serve(container) as client:
        execution_id = await _run_agent_flow(client, token, llm)
    spans = list(exporter.get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}

    http = _one(spans, "execute server span", lambda s: s.kind == SpanKind.SERVER
                and s.name == "POST /api/v1/flows/{flow_id}/execute")  # fmt: skip
    assert http.attributes is not None and http.attributes["http.route"] == "/api/v1/flows/{flow_id}/execute"
    job = _one(spans, "job span", lambda s: s.name == "execution.run")
    node = _one(spans, "node span", lambda s: s.name == "node q")
    llm_span = _one(spans, "LLM span", lambda s: s.kind == SpanKind.CLIENT and s.name == "chat solo-model")

    trace_id = http.context.trace_id
    assert {s.context.trace_id for s in (http, job, node, llm_span)} == {trace_id}
    assert _parent_id(job) == http.context.span_id
    assert _parent_id(node) == job.context.span_id
    assert _parent_id(llm_span) == node.context.span_id
    assert http.parent is None  # the client sent no traceparent: the request starts the trace

    assert job.kind == SpanKind.CONSUMER
    assert job.attributes is not None and job.attributes["crewflow.execution.id"] == execution_id
    assert node.attributes is not None and node.attributes["crewflow.node.kind"] == "agent"
    attrs = llm_span.attributes
    assert attrs is not None
    assert attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "solo-model"
    assert isinstance(attrs["gen_ai.usage.input_tokens"], int) and attrs["gen_ai.usage.input_tokens"] > 0
    assert isinstance(attrs["gen_ai.usage.output_tokens"], int) and attrs["gen_ai.usage.output_tokens"] > 0
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]  # type: ignore[arg-type]
    assert attrs["server.address"] == "127.0.0.1"

    sql = [s for s in spans if s.attributes is not None and s.attributes.get("db.system.name") == "sqlite"]
    under_job = [s for s in sql if job in _ancestors(s, by_id)]
    under_request = [s for s in sql if _ancestors(s, by_id) and _ancestors(s, by_id)[-1] is http
                     and job not in _ancestors(s, by_id)]  # fmt: skip
    assert under_job, "the job's queries (load the execution, checkpoints) are in its trace"
    assert under_request, "the request's queries (store the execution) are under its server span"
    assert all(s.context.trace_id == trace_id for s in under_job + under_request)
    assert all("sk-solo" not in str(s.attributes) for s in spans)  # no key in any attribute


async def test_a_client_traceparent_is_continued_and_unmatched_paths_get_no_raw_path_span_name(
    container: ApiContainer, exporter: InMemorySpanExporter
) -> None:
    with tracer().start_as_current_span("client"):
        carrier = inject_trace_context()
    assert carrier is not None and "traceparent" in carrier
    async with serve(container) as client:
        assert (await client.get("/healthz", headers=carrier)).status_code == 200
        assert (await client.get("/no/such/path/123")).status_code == 404
    spans = exporter.get_finished_spans()
    client_span = _one(list(spans), "client span", lambda s: s.name == "client")
    health = _one(list(spans), "healthz span", lambda s: s.name == "GET /healthz")
    assert health.context.trace_id == client_span.context.trace_id
    assert _parent_id(health) == client_span.context.span_id
    unmatched = [s for s in spans if s.kind == SpanKind.SERVER and s is not health]
    assert [s.name for s in unmatched] == ["GET"]


def test_tracing_stays_off_unless_the_environment_asks_and_refuses_unknown_exporters() -> None:
    assert configure_tracing({}) is None
    assert configure_tracing({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) is None
    assert not tracing_enabled()
    with pytest.raises(ValueError, match="zipkin"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="grpc"):
        configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not tracing_enabled()


async def test_the_otlp_endpoint_from_the_environment_receives_the_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_HEADERS / OTEL_SERVICE_NAME configure the exporter."""
    from aiohttp import web

    received: list[tuple[str, str, str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.path, request.headers.get("Content-Type", ""),
                         request.headers.get("x-team", ""), await request.read()))  # fmt: skip
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_HEADERS": "x-team=obs",
           "OTEL_SERVICE_NAME": "crewflow-test-svc"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the exporter reads the process environment
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    try:
        provider = configure_tracing(env)
        assert provider is not None and tracing_enabled()
        with tracer().start_as_current_span("exported"):
            pass
        await asyncio.to_thread(shutdown_tracing)  # flushes; the exporter posts from its own thread
    finally:
        use_tracer_provider(None)
        await runner.cleanup()
    assert not tracing_enabled()
    assert [(path, ctype, team) for path, ctype, team, _ in received] == [
        ("/v1/traces", "application/x-protobuf", "obs")]
    assert b"exported" in received[0][3] and b"crewflow-test-svc" in received[0][3]
