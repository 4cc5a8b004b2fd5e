"""Acceptance, issue 8: a tool registered over the API, built by the server, used by a flow that runs offline.

1. Docker: a tool from a Dockerfile (``FROM crewflow/tool-base:bookworm``, the base image
   deploy's sandbox-engine script imports) that reads ``{"text": ...}`` and answers ``{"words": n}`` is
   registered and built through the API (202, then its status turns ``ready`` with an image); a flow whose agent
   (offline, ``scripted``) writes a text and whose tool node counts its words (input templated from the
   agent's output) runs through the API, and the execution shows the tool's output.
2. bubblewrap: the same with a ``script`` tool, which needs no build and runs without Docker.

Both use this machine's real sandbox and builder (``crewflow.adapters.sandbox``); each is skipped, with the
reason, where its backend is not available here.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer, make_user, served_client

from crewflow.adapters.memory.queue import InProcessJobQueue
from crewflow.application.tools import ToolService
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.tenancy import Role
from crewflow.entrypoints.cli_tools import LocalTools, open_local_tools
from crewflow.ports.auth import RateDecision
from crewflow.ports.queue import RunExecution
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

API = "/api/v1"
TERMINAL = {"completed", "failed", "cancelled"}
WORDS = 'import json, sys\nprint(json.dumps({"words": len(str(json.load(sys.stdin)["text"]).split())}))\n'
SCHEMAS: dict[str, Any] = {
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "output_schema": {"type": "object", "properties": {"words": {"type": "integer", "minimum": 0}},
                      "required": ["words"]},
}  # fmt: skip
DOCKER_TOOL = {
    "name": "wordcount", "description": "Count the words of a text", **SCHEMAS,
    "dockerfile": "FROM crewflow/tool-base:bookworm\nCOPY wc.py /opt/tool/wc.py\n"
                  'ENTRYPOINT ["/usr/bin/python3", "/opt/tool/wc.py"]\n',
    "context": {"wc.py": WORDS},
    "limits": {"timeout": 20, "memory_mb": 128},
}  # fmt: skip
SCRIPT_TOOL = {"name": "wordcount", "description": "Count the words of a text", **SCHEMAS, "script": WORDS,
               "limits": {"timeout": 20}}  # fmt: skip
FLOW: dict[str, Any] = {
    "id": "write-and-count",
    "name": "Write and count",
    "inputs": {"topic": {"default": "tide mills"}},
    "agents": {"writer": {"role": "Writer", "goal": "Write a short note", "provider": "scripted"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "write", "kind": "agent", "agent": "writer", "task": "Write a note about {{ inputs.topic }}"},
        {"id": "count", "kind": "tool", "tool": "wordcount", "inputs": {"text": "{{ nodes.write.output }}"}},
        {"id": "out", "kind": "output", "value": "{{ nodes.count.output.words }}"},
    ],
    "edges": ["in -> write", "write -> count", "count -> out"],
}


class Unlimited:
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        return RateDecision(allowed=True, remaining=limit)


async def _no_runs(job: RunExecution, cancel: asyncio.Event) -> None:
    raise AssertionError("this queue only builds tools")


@pytest.fixture
def backends() -> str:
    """The sandbox backends a test uses (``CREWFLOW_SANDBOX_BACKENDS``); tests parametrize it."""
    return "docker,bubblewrap"


@pytest.fixture
async def local(backends: str) -> AsyncIterator[LocalTools]:
    extra = {**Settings.from_env().extra, "CREWFLOW_SANDBOX_BACKENDS": backends}  # other CREWFLOW_* settings apply
    async with open_local_tools(extra) as parts:
        yield parts


@pytest.fixture
async def container(tmp_path: Path, local: LocalTools) -> AsyncIterator[ApiContainer]:
    """The API container with this machine's sandbox in its engine, and a tool service that builds with this
    machine's builder on an in-process build queue."""
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    built.limiter = Unlimited()
    built.engine.tools = local.sandbox
    service = ToolService(built.uow_factory, built.clock, built.ids, builder=local.builder, sandbox=local.sandbox)
    builds = InProcessJobQueue(_no_runs, build_handler=service.run_build)
    service.builds = builds
    built.tool_service = service
    await builds.start()
    yield built
    await builds.close()
    await built.aclose()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def poll(client: httpx.AsyncClient, path: str, headers: dict[str, str], done: Any) -> dict[str, Any]:
    """GET ``path`` until ``done(body)``; bounded by iterations (a Docker build may take a while)."""
    for _ in range(6000):
        body: dict[str, Any] = ok(await client.get(API + path, headers=headers))
        if done(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never got there: {body}")


async def run_flow_counting_the_agents_words(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """Store the flow, run it through the API and check the tool counted the words the agent wrote."""
    ok(await client.post(f"{API}/flows", json=FLOW, headers=admin), 201)
    started = ok(await client.post(f"{API}/flows/write-and-count/execute", json={}, headers=admin), 202)
    execution = await poll(client, f"/executions/{started['execution_id']}", admin,
                           lambda body: body["status"] in TERMINAL)  # fmt: skip
    nodes = {n["node_id"]: n for n in execution["nodes"]}
    assert execution["status"] == "completed", (execution["error"], {k: n["error"] for k, n in nodes.items()})
    written = nodes["write"]["output"]
    assert isinstance(written, str) and written.split()
    assert nodes["count"]["output"] == {"words": len(written.split())}
    assert execution["outputs"] == {"out": len(written.split())}


@pytest.mark.parametrize("backends", ["docker"])
async def test_a_dockerfile_tool_built_through_the_api_runs_in_a_flow(
    container: ApiContainer, local: LocalTools
) -> None:
    if local.builder is None or local.sandbox is None:
        pytest.skip("no Docker engine answers here (or the sandbox adapters are not installed): the tool image "
                    "cannot be built; run deploy/ci/sandbox-engine.sh (as root) to start one")
    from sandbox_support import engine_url, need_base_image

    await need_base_image(engine_url())
    async with served_client(container) as client:
        _, token = await make_user(container, Role.ADMIN)
        admin = bearer(token)
        ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
        assert ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)["build_status"] == "queued"
        status = await poll(client, "/tools/wordcount/status", admin,
                            lambda body: body["build_status"] in ("ready", "failed"))  # fmt: skip
        assert status["build_status"] == "ready", (status["build_error"], status["log_tail"])
        assert status["image"] and status["log_tail"]
        tried = ok(await client.post(f"{API}/tools/wordcount/test", json={"input": {"text": "a b c"}},
                                     headers=admin))  # fmt: skip
        assert (tried["ok"], tried["output"]) == (True, {"words": 3}), tried
        await run_flow_counting_the_agents_words(client, admin)


@pytest.mark.parametrize("backends", ["bubblewrap"])  # Docker switched off: bubblewrap alone runs the script
async def test_a_script_tool_runs_in_a_flow_under_bubblewrap_without_docker(container: ApiContainer,
                                                                           local: LocalTools) -> None:  # fmt: skip
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install -y bubblewrap)")
    if local.sandbox is None:
        pytest.skip("no tool sandbox here: the sandbox adapters (crewflow.adapters.sandbox) are not installed")
    from sandbox_support import need_bubblewrap

    need_bubblewrap()
    assert local.builder is None  # no Docker here
    async with served_client(container) as client:
        _, token = await make_user(container, Role.ADMIN)
        admin = bearer(token)
        assert ok(await client.post(f"{API}/tools", json=SCRIPT_TOOL, headers=admin), 201)["build_status"] == "ready"
        tried = ok(await client.post(f"{API}/tools/wordcount/test", json={"input": {"text": "a b c"}},
                                     headers=admin))  # fmt: skip
        assert (tried["ok"], tried["output"]) == (True, {"words": 3}), tried
        await run_flow_counting_the_agents_words(client, admin)
