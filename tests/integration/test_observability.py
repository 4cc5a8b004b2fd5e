"""Observability through the API: JSON logs carry the request id from the request into the job that runs the
execution, with no password, key or token anywhere; Prometheus metrics count a run (HTTP by route template,
executions, nodes, LLM calls and tokens); /healthz, /readyz and /metrics; the worker's metrics server.

The containers are wired for metrics the way ADR 0013 asks the composition root to wire them (``wire``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from api_support import bearer as auth
from api_support import make_user
from api_support import served_client as serve
from prometheus_client.parser import text_string_to_metric_families

from crewflow.adapters.cache.memory import MemoryCache
from crewflow.adapters.metrics.events import count_runs
from crewflow.adapters.metrics.memory import InMemoryMetrics, NoopMetrics
from crewflow.adapters.metrics.prometheus import PrometheusMetrics, serve_metrics_from_env, start_metrics_server
from crewflow.adapters.sql.migrate import migrate
from crewflow.adapters.telemetry import check_readiness
from crewflow.application.gateway import Gateway
from crewflow.bootstrap import ApiContainer, build_api_container, build_runtime
from crewflow.entrypoints.http.observability import default_readiness_checks, instrument_container
from crewflow.entrypoints.logs import configure_logging
from crewflow.ports.metrics import METRICS, UnknownMetric
from crewflow.settings import Settings
from crewflow.testing.llm_server import LLMTestServer

pytestmark = pytest.mark.integration
TERMINAL = {"completed", "failed", "cancelled"}
PROVIDER_KEY = "sk-provider-SECRET-0a1b2c3d4e5f"
PASSWORD = "correct-horse-battery-staple-42"


def wire(container: ApiContainer) -> None:
    """What the composition root does for metrics (ADR 0013), for a container built before it did: the
    gateway and the run-counting sink report to the container's metrics, then ``instrument_container``
    decorates nodes, jobs and the queue. A container the composition root already wired is left alone."""
    if isinstance(getattr(container, "metrics", None), PrometheusMetrics):
        return
    metrics = PrometheusMetrics()
    container.metrics = metrics  # type: ignore[attr-defined]
    gateway = Gateway(container.provider_registry, cache=MemoryCache(), metrics=metrics)
    container.engine.runtime = build_runtime(container.settings, gateway)
    recorder = dataclasses.replace(container.recorder, checkpoints=count_runs(container.recorder.checkpoints, metrics))
    container.recorder = recorder
    container.queue.handler.recorder = recorder  # type: ignore[attr-defined]  # the in-process ExecutionRunner
    instrument_container(container)


@pytest.fixture
def crewai_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # CrewAI's own files, offline
    monkeypatch.setenv("CREWAI_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


async def _container(tmp_path: Path, database_url: str | None = None) -> ApiContainer:
    settings = Settings(data_dir=str(tmp_path), database_url=database_url, extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    return await build_api_container(settings, bcrypt_rounds=4)


@pytest.fixture
async def container(tmp_path: Path, crewai_offline: None) -> AsyncIterator[ApiContainer]:
    built = await _container(tmp_path)
    wire(built)
    yield built
    await built.aclose()


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Logging configured as in production (JSON to stderr); yields a function returning what was logged."""
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging(Settings(log_format="json", log_level="debug"))
    capsys.readouterr()

    def logged() -> str:
        return capsys.readouterr().err

    try:
        yield logged
    finally:
        structlog.reset_defaults()
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


async def _run_agent_flow(client: httpx.AsyncClient, token: str, llm: LLMTestServer,
                          **headers: str) -> str:  # fmt: skip
    llm.provider("solo").api_key = PROVIDER_KEY
    llm.provider("solo").script("Final Answer: tide mills grind grain")
    created = await client.post("/api/v1/providers", headers=auth(token), json={
        "name": "solo", "kind": "openai", "model": "solo-model", "api_key": PROVIDER_KEY,
        "base_url": llm.openai_base_url("solo"), "priority": 1})  # fmt: skip
    assert created.status_code == 201, created.text
    agent = {"id": "researcher", "role": "Researcher", "goal": "Find facts"}
    assert (await client.post("/api/v1/agents", json=agent, headers=auth(token))).status_code == 201
    flow = {"id": "ask", "nodes": [{"id": "in", "kind": "input"},
                                   {"id": "q", "kind": "agent", "agent": "researcher", "task": "Tide mills?"},
                                   {"id": "out", "kind": "output", "value": "{{ nodes.q.output }}"}],
            "edges": ["in -> q", "q -> out"]}  # fmt: skip
    assert (await client.post("/api/v1/flows", json=flow, headers=auth(token))).status_code == 201
    response = await client.post("/api/v1/flows/ask/execute", json={}, headers=auth(token, **headers))
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["execution_id"]
    while True:
        body: dict[str, Any] = (await client.get(f"/api/v1/executions/{execution_id}", headers=auth(token))).json()
        if body["status"] in TERMINAL:
            assert body["status"] == "completed", body["error"]
            return execution_id
        await asyncio.sleep(0.05)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# -- logs ----------------------------------------------------------------------------------------------------
async def test_logs_carry_the_request_id_into_the_job_and_never_a_password_key_or_token(
    container: ApiContainer, json_logs: Any
) -> None:
    slug = f"obs-{uuid.uuid4().hex[:8]}"
    email = f"{slug}@example.com"
    async with LLMTestServer(api_key=None) as llm, serve(container) as client:
        registered = await client.post("/api/v1/auth/register", json={
            "tenant_name": "Observed", "slug": slug, "email": email, "password": PASSWORD})  # fmt: skip
        assert registered.status_code == 201, registered.text
        wrong = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD + "-wrong"})
        assert wrong.status_code == 401
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD},
                                  headers={"X-Request-ID": "login-req-1"})  # fmt: skip
        assert login.status_code == 200, login.text
        assert login.headers["x-request-id"] == "login-req-1"
        token = login.json()["access_token"]
        execution_id = await _run_agent_flow(client, token, llm, **{"X-Request-ID": "run-req-42"})
        refused = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    text = json_logs()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text

    requests = [line for line in lines if line["event"] == "http.request"]
    execute = [line for line in requests if line["route"] == "/api/v1/flows/{flow_id}/execute"]
    assert [line["request_id"] for line in execute] == ["run-req-42"]
    assert execute[0]["status"] == 202 and execute[0]["method"] == "POST"
    assert any(line["request_id"] == "login-req-1" and line["route"] == "/api/v1/auth/login" for line in requests)
    assert all(len(line["request_id"]) >= 1 for line in requests)  # every request line has one
    # a malformed X-Request-ID is replaced by a fresh id, echoed back
    assert refused.headers["x-request-id"] != "bad id with spaces" and len(refused.headers["x-request-id"]) == 32

    job_lines = [line for line in lines if line.get("execution_id") == execution_id
                 and line["event"] in ("execution.started", "execution.finished")]  # fmt: skip
    assert {line["event"] for line in job_lines} == {"execution.started", "execution.finished"}
    assert all(line["request_id"] == "run-req-42" and line["tenant_id"] for line in job_lines)

    for secret in (PASSWORD, PROVIDER_KEY, token, token.split(".")[2]):
        assert secret not in text


# -- metrics -------------------------------------------------------------------------------------------------
async def test_a_run_through_the_api_is_counted_by_route_template_status_execution_node_and_llm(
    container: ApiContainer,
) -> None:
    _, token = await make_user(container)
    async with LLMTestServer(api_key=None) as llm, serve(container) as client:
        await _run_agent_flow(client, token, llm)
        assert (await client.get("/no/such/path/7f3a")).status_code == 404
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = _samples(scraped.text)

    execute = {"method": "POST", "route": "/api/v1/flows/{flow_id}/execute", "status": "202"}
    assert _value(samples, "http_requests_total", **execute) == 1
    assert _value(samples, "http_request_duration_seconds_count", method="POST",
                  route="/api/v1/flows/{flow_id}/execute") == 1  # fmt: skip
    assert _value(samples, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    routes = {dict(labels)["route"] for name, labels in samples if name == "http_requests_total"}
    assert "/api/v1/executions/{execution_id}" in routes
    assert not any("/ask" in route or "7f3a" in route for route in routes), routes  # never a raw path

    assert _value(samples, "flow_executions_total", status="completed") == 1
    assert _value(samples, "flow_execution_duration_seconds_count", status="completed") == 1
    assert _value(samples, "node_executions_total", kind="agent", status="completed") == 1
    assert _value(samples, "llm_api_calls_total", provider="solo", status="success") >= 1
    assert _value(samples, "llm_tokens_total", provider="solo", direction="input") > 0
    assert _value(samples, "llm_tokens_total", provider="solo", direction="output") > 0
    assert _value(samples, "llm_request_duration_seconds_count", provider="solo") >= 1
    assert _value(samples, "cache_hits_total", cache="llm", result="miss") >= 1
    assert _value(samples, "queue_jobs_in_progress") == 0


def test_unknown_metric_names_kinds_and_labels_fail_loudly_in_both_adapters() -> None:
    for metrics in (PrometheusMetrics(), InMemoryMetrics()):
        with pytest.raises(UnknownMetric, match="unknown metric"):
            metrics.inc("http_request_total", {"method": "GET", "route": "/", "status": "200"})
        with pytest.raises(UnknownMetric, match="is a histogram"):
            metrics.inc("http_request_duration_seconds", {"method": "GET", "route": "/"})
        with pytest.raises(UnknownMetric, match="takes labels"):
            metrics.inc("http_requests_total", {"method": "GET", "path": "/x", "status": "200"})
        with pytest.raises(UnknownMetric, match="takes labels"):
            metrics.set("docker_containers_active", 1, {"host": "a"})
        metrics.set("docker_containers_active", 3)
    memory = InMemoryMetrics()
    memory.set("docker_containers_active", 2)
    assert memory.gauge("docker_containers_active") == 2
    exposed = _samples(PrometheusMetrics().render().decode())
    assert all(any(name.startswith(declared) for declared in METRICS) for name, _ in exposed)


async def test_metrics_are_404_without_prometheus_metrics_and_health_answers(tmp_path: Path) -> None:
    built = await _container(tmp_path)
    built.metrics = NoopMetrics()  # type: ignore[attr-defined]
    try:
        async with serve(built) as client:
            assert (await client.get("/metrics")).status_code == 404
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
    finally:
        await built.aclose()
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_worker_serves_its_metrics_on_its_own_port() -> None:
    metrics = PrometheusMetrics()
    metrics.set("queue_jobs_in_progress", 2)
    port = _free_port()
    stop = serve_metrics_from_env({"CREWFLOW_METRICS_PORT": str(port), "CREWFLOW_METRICS_ADDR": "127.0.0.1"},
                                  metrics)  # fmt: skip
    assert stop is not None
    try:
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await asyncio.to_thread(stop)
    assert _value(_samples(scraped.text), "queue_jobs_in_progress") == 2
    assert serve_metrics_from_env({}, metrics) is None
    with pytest.raises(ValueError, match="CREWFLOW_METRICS_PORT"):
        serve_metrics_from_env({"CREWFLOW_METRICS_PORT": "ninety"}, metrics)
    other = start_metrics_server(_free_port(), metrics, "127.0.0.1")
    await asyncio.to_thread(other)


# -- readiness -----------------------------------------------------------------------------------------------
async def test_readyz_is_503_naming_the_database_when_it_is_gone(pg_url: str, tmp_path: Path) -> None:
    assert (await migrate(pg_url)).ok
    built = await _container(tmp_path, database_url=pg_url)
    name = pg_url.rsplit("/", 1)[1]
    try:
        async with serve(built) as client:
            assert (await client.get("/readyz")).status_code == 200
            admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await admin.close()
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
    finally:
        await built.aclose()
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    body = ready.json()
    assert body["status"] == 503 and body["checks"] == {"database": "unavailable"}
    assert "database" in body["detail"]
    assert "postgres" not in ready.text.replace('"database"', "")  # no URL, user or driver error text
    assert alive.status_code == 200  # liveness does not depend on the database


async def test_redis_is_probed_when_configured_and_named_when_unreachable(container: ApiContainer) -> None:
    for url, expected in (("redis://127.0.0.1:6379/0", "ok"), ("redis://127.0.0.1:1/0", "unavailable")):
        configured = dataclasses.replace(container, settings=dataclasses.replace(container.settings, redis_url=url))
        checks, closers = default_readiness_checks(configured)
        try:
            report = await check_readiness(checks)
        finally:
            for close in closers:
                await close()
        assert report.checks == {"database": "ok", "redis": expected}
        assert report.ready is (expected == "ok")
