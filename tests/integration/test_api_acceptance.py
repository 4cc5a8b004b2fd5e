"""The acceptance test of the HTTP API issue, against a real ``crewflow serve`` process:

register → login (session cookie) → create an agent and a flow → execute → the WebSocket shows every event
→ ``GET /executions/{id}`` shows the outputs.

The server runs on embedded defaults (SQLite in a temporary ``CREWFLOW_DATA_DIR``); the agent uses the
offline ``scripted`` provider. The session cookie is ``Secure``, which an HTTP client does not send back
over plain http, so the test carries it in a ``Cookie`` header as the browser would over https."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crewflow.entrypoints.http.security import SESSION_COOKIE

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    env = {**os.environ, "CREWFLOW_DATA_DIR": str(tmp_path / "data"), "CREWAI_DISABLE_TELEMETRY": "true",
           "OTEL_SDK_DISABLED": "true", "XDG_DATA_HOME": str(tmp_path / "xdg")}  # fmt: skip
    env.pop("CREWFLOW_DATABASE_URL", None)
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "crewflow.entrypoints.cli", "serve", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, log


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    """``crewflow serve`` in a subprocess; yields ``host:port`` once it answers /healthz."""
    port = _free_port()
    process, log = _start_server(tmp_path, port)
    base = f"127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=f"http://{base}") as client:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"crewflow serve exited with {process.returncode}: "
                                f"{(tmp_path / 'server.log').read_text()[-2000:]}")  # fmt: skip
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _session_cookie(response: httpx.Response) -> str:
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == SESSION_COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {SESSION_COOKIE} cookie in {response.headers.get_list('set-cookie')}")


FLOW: dict[str, Any] = {
    "id": "brief",
    "name": "Research brief",
    "inputs": {"topic": {"required": True}},
    "nodes": [
        {"id": "start", "kind": "input"},
        {"id": "research", "kind": "agent", "agent": "researcher", "task": "Research {{ inputs.topic }}"},
        {"id": "summary", "kind": "agent", "agent": "researcher",
         "task": "Summarise: {{ nodes.research.output }}"},
        {"id": "brief", "kind": "output", "value": "{{ nodes.summary.output }}"},
    ],
    "edges": ["start -> research", "research -> summary", "summary -> brief"],
}  # fmt: skip


async def test_register_login_create_execute_watch_and_read_the_outputs(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as client:
        registered = await client.post("/api/v1/auth/register", json={
            "tenant_name": "Acme", "slug": "acme", "email": "admin@acme.example",
            "password": "a-long-and-unusual-passphrase-42"})  # fmt: skip
        assert registered.status_code == 201, registered.text
        login = await client.post("/api/v1/auth/login", json={"email": "admin@acme.example",
                                                               "password": "a-long-and-unusual-passphrase-42"})
        assert login.status_code == 200, login.text
        session = {"Cookie": f"{SESSION_COOKIE}={_session_cookie(login)}", "Origin": f"http://{server}"}

        agent = await client.post("/api/v1/agents", headers=session, json={
            "id": "researcher", "role": "Researcher", "goal": "Find facts", "provider": "scripted"})  # fmt: skip
        assert agent.status_code == 201, agent.text
        flow = await client.post("/api/v1/flows", headers=session, json=FLOW)
        assert flow.status_code == 201, flow.text

        started = await client.post("/api/v1/flows/brief/execute", headers=session,
                                    json={"inputs": {"topic": "tide mills"}})  # fmt: skip
        assert started.status_code == 202, started.text
        execution_id = started.json()["execution_id"]
        assert started.headers["location"] == f"/api/v1/executions/{execution_id}"

        events: list[dict[str, Any]] = []
        async with connect(f"ws://{server}/api/v1/ws/executions/{execution_id}",
                           additional_headers={"Cookie": session["Cookie"]}, origin=session["Origin"]) as ws:
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except ConnectionClosed:
                pass
            assert ws.close_code == 1000

        execution = await client.get(f"/api/v1/executions/{execution_id}", headers=session)
        assert execution.status_code == 200, execution.text
        logged = await client.get(f"/api/v1/executions/{execution_id}/logs", params={"limit": 100},
                                  headers=session)  # fmt: skip

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # every event, once, in order
    assert events == logged.json()["items"]
    assert events[0]["kind"] == "run.started"
    assert events[-1]["kind"] == "run.completed"
    completed = [e["node_id"] for e in events if e["kind"] == "node.completed"]
    assert completed == ["start", "research", "summary", "brief"]
    body = execution.json()
    assert body["status"] == "completed"
    assert body["outputs"] == events[-1]["data"]["outputs"]
    assert body["outputs"] == {"brief": "[Researcher] Summarise: [Researcher] Research tide mills"}
    assert {n["node_id"]: n["status"] for n in body["nodes"]} == dict.fromkeys(completed, "completed")
