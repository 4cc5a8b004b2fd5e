"""Tools over the API, black box: registration with scripts, context files and limits; builds on the job queue
(202, status with the streamed log tail, 409s, rebuilds and versions, failures); test runs validated against
the input schema; roles; audit.

The builder and sandbox here are fakes of the ``ToolBuilder``/``ToolSandbox`` ports (the real ones need a
container engine or bubblewrap; tests/integration/test_tool_acceptance.py uses them): the builder holds each
build until the test lets it go, so the in-progress states can be observed without timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer, make_user, served_client

from crewflow.adapters.memory.queue import InProcessJobQueue
from crewflow.application.tools import ToolService
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.errors import NodeExecutionError, ToolBuildError
from crewflow.domain.events import EventKind
from crewflow.domain.tenancy import Role
from crewflow.ports.auth import RateDecision
from crewflow.ports.queue import RunExecution
from crewflow.ports.runtime import BuiltImage, NodeOutcome, ToolBuildSpec, ToolWork
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

API = "/api/v1"
SCHEMAS: dict[str, Any] = {
    "input_schema": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 1000}},
                     "required": ["text"], "additionalProperties": False},
    "output_schema": {"type": "object", "properties": {"words": {"type": "integer", "minimum": 0}},
                      "required": ["words"]},
}  # fmt: skip
SCRIPT_TOOL = {"name": "wc", "script": "import json, sys\nprint(json.dumps({'words': 0}))\n", **SCHEMAS}
DOCKER_TOOL = {"name": "wordcount", "dockerfile": "FROM crewflow/tool-base:bookworm\nCOPY wc.py /wc.py\n",
               "context": {"wc.py": "print('hi')\n"}, "limits": {"timeout": 5, "memory_mb": 128}, **SCHEMAS}


class Unlimited:
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        return RateDecision(allowed=True, remaining=limit)


class HeldBuilder:
    """A ``ToolBuilder`` that logs a line, then waits until ``release(ok)``; it records every spec."""

    def __init__(self) -> None:
        self.specs: list[ToolBuildSpec] = []
        self.gate: asyncio.Queue[bool] = asyncio.Queue()

    def release(self, ok: bool = True) -> None:
        self.gate.put_nowait(ok)

    async def build(self, spec: ToolBuildSpec, log: Callable[[str], None]) -> BuiltImage:
        self.specs.append(spec)
        log(f"Step 1/2 : building {spec.tool_id} v{spec.version}")
        ok = await self.gate.get()
        log("Step 2/2 : done" if ok else "Step 2/2 : RUN failed: exit status 1")
        if not ok:
            raise ToolBuildError("step 2 (RUN) failed with exit status 1")
        tag = f"crewflow-tools/{spec.tenant_id}/{spec.tool_id}:{spec.version}"
        return BuiltImage(image=f"{tag}@sha256:{spec.version:064d}", digest=f"sha256:{spec.version:064d}")


class WordSandbox:
    """A ``ToolSandbox`` that counts words (what the test tools do) and logs what it ran; text 'boom' fails the
    call and 'negative' answers an output that breaks the output schema."""

    def __init__(self) -> None:
        self.calls: list[ToolWork] = []

    async def run_tool(self, work: ToolWork, emit: Callable[[EventKind, Mapping[str, Any]], None]) -> NodeOutcome:
        self.calls.append(work)
        emit(EventKind.NODE_LOG, {"line": f"ran {work.tool.id} with timeout {work.timeout}"})
        text = str(work.payload.get("text", ""))
        if text == "boom":
            raise NodeExecutionError("the tool exited with status 3", retryable=False)
        return NodeOutcome(output={"words": -1 if text == "negative" else len(text.split())})


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    built.limiter = Unlimited()
    yield built
    await built.aclose()


@pytest.fixture
def builder() -> HeldBuilder:
    return HeldBuilder()


@pytest.fixture
def sandbox() -> WordSandbox:
    return WordSandbox()


async def _no_runs(job: RunExecution, cancel: asyncio.Event) -> None:
    raise AssertionError("this queue only builds tools")


@pytest.fixture
async def service(container: ApiContainer, builder: HeldBuilder, sandbox: WordSandbox) -> AsyncIterator[ToolService]:
    """The tool service with the fakes, its builds on an in-process queue (its own builder worker)."""
    service = ToolService(container.uow_factory, container.clock, container.ids, builder=builder, sandbox=sandbox,
                          log_flush_interval=0)  # fmt: skip
    builds = InProcessJobQueue(_no_runs, build_handler=service.run_build)
    service.builds = builds
    container.tool_service = service
    await builds.start()
    yield service
    await builds.close()


@pytest.fixture
async def client(container: ApiContainer, service: ToolService) -> AsyncIterator[httpx.AsyncClient]:
    """A real server in this event loop, like the build queue's worker (Litestar's test client would block the
    loop while the app serves a request on a thread of its own, freezing the builds)."""
    async with served_client(container) as http:
        yield http


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def problem(response: Any, status: int) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


async def until_status(client: httpx.AsyncClient, admin: dict[str, str], tool: str,
                       check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:  # fmt: skip
    """Poll the tool's status until ``check`` holds (bounded by iterations, not by time)."""
    for _ in range(2000):
        status: dict[str, Any] = ok(await client.get(f"{API}/tools/{tool}/status", headers=admin))
        if check(status):
            return status
        await asyncio.sleep(0.005)
    raise AssertionError(f"the status never got there: {status}")


async def test_a_script_tool_is_ready_at_once_and_test_runs_check_input_and_output(
    client: httpx.AsyncClient, container: ApiContainer, sandbox: WordSandbox
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    created = ok(await client.post(f"{API}/tools", json={**SCRIPT_TOOL, "limits": {"timeout": 2.5}}, headers=admin),
                 201)  # fmt: skip
    assert (created["build_status"], created["script"], created["limits"]) == ("ready", SCRIPT_TOOL["script"],
                                                                              {"timeout": 2.5})  # fmt: skip
    # a script tool needs no build: asking for one answers its (ready) status
    assert ok(await client.post(f"{API}/tools/wc/build", headers=admin), 202)["build_status"] == "ready"

    result = ok(await client.post(f"{API}/tools/wc/test", json={"input": {"text": "three small words"}},
                                  headers=admin))  # fmt: skip
    assert (result["ok"], result["output"], result["error"]) == (True, {"words": 3}, None)
    assert result["logs"] == ["ran wc with timeout 2.5"] and result["duration"] >= 0
    assert sandbox.calls[-1].tool.limits.timeout == 2.5 and sandbox.calls[-1].tool.script == SCRIPT_TOOL["script"]

    bad = problem(await client.post(f"{API}/tools/wc/test", json={"input": {"text": 7, "extra": 1}},
                                    headers=admin), 422)  # fmt: skip
    assert sorted(e["field"] for e in bad["errors"]) == ["input", "input/text"]
    assert len(sandbox.calls) == 1  # an invalid input never reaches the sandbox

    failed = ok(await client.post(f"{API}/tools/wc/test", json={"input": {"text": "boom"}}, headers=admin))
    assert (failed["ok"], failed["error"]) == (False, "the tool exited with status 3")
    wrong = ok(await client.post(f"{API}/tools/wc/test", json={"input": {"text": "negative"}}, headers=admin))
    assert wrong["ok"] is False and wrong["output"] == {"words": -1}
    assert "output/words" in wrong["error"] and "minimum" in wrong["error"]


async def test_a_dockerfile_tool_builds_on_the_queue_and_its_status_streams_the_log(
    client: httpx.AsyncClient, container: ApiContainer, builder: HeldBuilder, sandbox: WordSandbox
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    created = ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
    assert (created["build_status"], created["version"], created["image_digest"]) == ("registered", 1, None)
    problem(await client.post(f"{API}/tools/wordcount/test", json={"input": {"text": "a"}}, headers=admin), 409)

    queued = ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)
    assert (queued["build_status"], queued["version"]) == ("queued", 1)
    building = await until_status(client, admin, "wordcount",
                                  lambda s: s["build_status"] == "building" and s["log_tail"])  # fmt: skip
    assert building["log_tail"] == ["Step 1/2 : building wordcount v1"]
    spec = builder.specs[0]
    assert (spec.dockerfile, dict(spec.context), spec.version) == (DOCKER_TOOL["dockerfile"],
                                                                   {"wc.py": b"print('hi')\n"}, 1)  # fmt: skip
    again = problem(await client.post(f"{API}/tools/wordcount/build", headers=admin), 409)
    assert "already being built" in again["detail"]

    builder.release()
    ready = await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "ready")
    tag = f"crewflow-tools/{spec.tenant_id}/wordcount:1"
    assert ready["image"] == f"{tag}@sha256:{1:064d}" and ready["build_error"] is None
    assert ready["log_tail"] == ["Step 1/2 : building wordcount v1", "Step 2/2 : done"] and ready["built_at"]
    assert ok(await client.get(f"{API}/tools/wordcount/status", params={"lines": 1}, headers=admin))["log_tail"] == \
        ["Step 2/2 : done"]  # fmt: skip
    assert "already built" in problem(await client.post(f"{API}/tools/wordcount/build", headers=admin), 409)["detail"]

    # the built image is what runs, with the tool's limits
    result = ok(await client.post(f"{API}/tools/wordcount/test", json={"input": {"text": "a b"}}, headers=admin))
    assert result["output"] == {"words": 2}
    assert (sandbox.calls[-1].tool.image, sandbox.calls[-1].tool.limits.memory_mb) == (ready["image"], 128)

    # a rebuild of the unchanged tool builds the same version again
    assert ok(await client.post(f"{API}/tools/wordcount/rebuild", headers=admin), 202)["version"] == 1
    builder.release(ok=False)
    failed = await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "failed")
    assert failed["build_error"] == "step 2 (RUN) failed with exit status 1"
    assert failed["log_tail"][-1] == "Step 2/2 : RUN failed: exit status 1"
    assert failed["image"] == ready["image"]  # the last good image keeps serving

    # changing the Dockerfile makes a new version to build; a description edit does not need a build
    patched = ok(await client.patch(f"{API}/tools/wordcount", json={"dockerfile": "FROM crewflow/tool-base:bookworm\n",
                                                                    "context": {}}, headers=admin))  # fmt: skip
    assert (patched["version"], patched["build_status"]) == (2, "registered")
    assert ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)["version"] == 2
    builder.release()
    await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "ready" and s["version"] == 2)
    assert [s.version for s in builder.specs] == [1, 1, 2]
    described = ok(await client.patch(f"{API}/tools/wordcount", json={"description": "counts"}, headers=admin))
    assert (described["version"], described["build_status"]) == (3, "ready")

    actions = [e["action"] for e in ok(await client.get(f"{API}/audit-logs", headers=admin))["items"]]
    assert {"tool.register", "tool.build", "tool.rebuild", "tool.test", "tool.update"} <= set(actions)


async def test_a_build_whose_tool_changes_meanwhile_does_not_record_its_result(
    client: httpx.AsyncClient, container: ApiContainer, builder: HeldBuilder, service: ToolService
) -> None:
    tenant, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
    ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)
    await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "building")
    edited = ok(await client.patch(f"{API}/tools/wordcount", json={"dockerfile": "FROM crewflow/tool-base:bookworm\n"},
                                   headers=admin))  # fmt: skip
    assert (edited["version"], edited["build_status"]) == (2, "registered")
    builder.release()
    builds = service.builds
    assert isinstance(builds, InProcessJobQueue)
    for _ in range(2000):  # until the build job has finished (and tried to record its result)
        if not builds.holds_build(tenant, f"build:{tenant}:wordcount:1"):
            break
        await asyncio.sleep(0.005)
    assert not builds.holds_build(tenant, f"build:{tenant}:wordcount:1")
    status = ok(await client.get(f"{API}/tools/wordcount/status", headers=admin))
    assert (status["version"], status["build_status"], status["image"]) == (2, "registered", None)
    assert builder.specs[0].tenant_id == tenant


async def test_without_an_image_builder_a_build_is_refused_at_once(container: ApiContainer) -> None:
    container.tool_service = ToolService(container.uow_factory, container.clock, container.ids)
    async with served_client(container) as client:
        _, token = await make_user(container, Role.ADMIN)
        admin = bearer(token)
        ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
        refused = problem(await client.post(f"{API}/tools/wordcount/build", headers=admin), 409)
        assert "no image builder" in refused["detail"]
        assert ok(await client.get(f"{API}/tools/wordcount/status", headers=admin))["build_status"] == "registered"
        ok(await client.post(f"{API}/tools", json=SCRIPT_TOOL, headers=admin), 201)
        no_sandbox = problem(await client.post(f"{API}/tools/wc/test", json={"input": {"text": "a"}}, headers=admin),
                             409)  # fmt: skip
        assert "no tool sandbox" in no_sandbox["detail"]


async def test_registration_refuses_unsafe_context_files_unknown_limits_and_missing_sources(
    client: httpx.AsyncClient, container: ApiContainer
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    cases = [
        ({**DOCKER_TOOL, "context": {"../etc/passwd": "x"}}, "context/../etc/passwd"),
        ({**DOCKER_TOOL, "context": {"/abs": "x"}}, "context//abs"),
        ({**DOCKER_TOOL, "context": {"Dockerfile": "FROM x"}}, "context/Dockerfile"),
        ({**DOCKER_TOOL, "context": {f"f{i}": "x" for i in range(65)}}, "context"),
        ({**DOCKER_TOOL, "context": {"a": "x" * 600_000, "b": "y" * 600_000}}, "context"),
        ({**SCRIPT_TOOL, "context": {"a.py": "x"}}, "context"),
        ({**DOCKER_TOOL, "limits": {"gpus": 1}}, "limits/gpus"),
        ({**DOCKER_TOOL, "limits": {"memory_mb": 1}}, "limits"),
        ({**DOCKER_TOOL, "limits": {"pids": 8.5}}, "limits/pids"),
        ({**DOCKER_TOOL, "limits": {"timeout": "1"}}, "limits/timeout"),
        ({**SCRIPT_TOOL, "script": "   "}, "script"),
        ({"name": "nothing", **SCHEMAS}, "dockerfile"),
    ]
    for body, field in cases:
        errors = problem(await client.post(f"{API}/tools", json=body, headers=admin), 422)["errors"]
        assert field in [e["field"] for e in errors], (field, errors)
    problem(await client.post(f"{API}/tools", json={**SCRIPT_TOOL, "warm_pool": 99}, headers=admin), 422)
    assert ok(await client.get(f"{API}/tools", headers=admin))["items"] == []


async def test_members_may_test_tools_but_not_build_them_and_viewers_may_do_neither(
    client: httpx.AsyncClient, container: ApiContainer
) -> None:
    tenant, token = await make_user(container, Role.ADMIN)
    _, member_token = await make_user(container, Role.MEMBER, tenant)
    _, viewer_token = await make_user(container, Role.VIEWER, tenant)
    member, viewer = bearer(member_token), bearer(viewer_token)
    ok(await client.post(f"{API}/tools", json=SCRIPT_TOOL, headers=bearer(token)), 201)
    body = {"input": {"text": "one two"}}
    assert ok(await client.post(f"{API}/tools/wc/test", json=body, headers=member))["output"] == {"words": 2}
    for method, path in (("POST", "/tools/wc/build"), ("POST", "/tools/wc/rebuild"), ("GET", "/tools/wc/status")):
        problem(await client.request(method, API + path, headers=member), 403)
    problem(await client.post(f"{API}/tools/wc/test", json=body, headers=viewer), 403)


async def test_another_tenants_tool_is_not_found_for_build_status_and_test(
    client: httpx.AsyncClient, container: ApiContainer, sandbox: WordSandbox
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    _, other = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/tools", json=SCRIPT_TOOL, headers=bearer(token)), 201)
    for method, path, body in (("POST", "/tools/wc/build", None), ("POST", "/tools/wc/rebuild", None),
                               ("GET", "/tools/wc/status", None),
                               ("POST", "/tools/wc/test", {"input": {"text": "x"}})):  # fmt: skip
        assert problem(await client.request(method, API + path, json=body, headers=bearer(other)), 404)["detail"] == \
            "tool 'wc' not found"  # fmt: skip
    assert sandbox.calls == []


async def test_a_rebuild_asked_while_the_same_version_builds_joins_that_build(
    client: httpx.AsyncClient, container: ApiContainer, builder: HeldBuilder
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
    ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)
    await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "building")
    assert ok(await client.post(f"{API}/tools/wordcount/rebuild", headers=admin), 202)["build_status"] == "queued"
    builder.release()
    await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "ready")
    assert len(builder.specs) == 1  # not built a second time: the running build was the one asked for


async def test_an_edit_that_leaves_the_build_source_alone_keeps_the_build_in_progress(
    client: httpx.AsyncClient, container: ApiContainer, builder: HeldBuilder
) -> None:
    _, token = await make_user(container, Role.ADMIN)
    admin = bearer(token)
    ok(await client.post(f"{API}/tools", json=DOCKER_TOOL, headers=admin), 201)
    ok(await client.post(f"{API}/tools/wordcount/build", headers=admin), 202)
    await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "building")
    edited = ok(await client.patch(f"{API}/tools/wordcount", json={"description": "counts words"}, headers=admin))
    assert (edited["version"], edited["build_status"]) == (2, "building")
    builder.release()
    ready = await until_status(client, admin, "wordcount", lambda s: s["build_status"] == "ready")
    assert ready["version"] == 2 and ready["image"].startswith("crewflow-tools/")
