"""Issue 8, the Docker adapter: the acceptance tool built through ``DockerSandbox.build`` (log streamed, tagged
per tenant and version) and run; schema errors; build failures; push to a registry and run by digest on an
engine that does not have the image; the orphan reaper; the containers gauge; routing."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator

import aiodocker
import pytest
from sandbox_support import (
    BASE_IMAGE,
    REGISTRY,
    Logs,
    containers_of,
    docker_sandbox,
    engine_url,
    need_base_image,
    registry_answers,
)

from crewflow.adapters.metrics.memory import InMemoryMetrics
from crewflow.adapters.sandbox import RoutingSandbox, open_sandbox
from crewflow.adapters.sandbox.docker import DockerSandbox, owner_id
from crewflow.domain.agents import ToolLimits, ToolRef
from crewflow.domain.errors import NodeExecutionError, ToolBuildError, ToolUnavailable
from crewflow.ports.runtime import ToolBuildSpec, ToolWork

pytestmark = pytest.mark.integration

WORDS = 'import json, sys\nprint(json.dumps({"words": len(str(json.load(sys.stdin)["text"]).split())}))\n'
DOCKERFILE = (f"FROM {BASE_IMAGE}\nCOPY wc.py /opt/tool/wc.py\nRUN /usr/bin/python3 -c 'print(\"compiled\")'\n"
              'ENTRYPOINT ["/usr/bin/python3", "/opt/tool/wc.py"]\n')  # fmt: skip
INPUT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
OUTPUT = {"type": "object", "properties": {"words": {"type": "integer", "minimum": 0}}, "required": ["words"]}


@pytest.fixture
async def engine() -> str:
    url = engine_url()
    await need_base_image(url)
    return url


@pytest.fixture
async def sandbox(engine: str) -> AsyncIterator[DockerSandbox]:
    made = docker_sandbox(engine, InMemoryMetrics())
    try:
        yield made
    finally:
        await made.close()


def _tenant() -> str:
    return f"Tenant_{uuid.uuid4().hex[:8]}"  # not a valid repository component as is: sanitised


async def test_the_wordcount_tool_is_built_and_counts_words(sandbox: DockerSandbox, engine: str) -> None:
    tenant = _tenant()
    lines: list[str] = []
    built = await sandbox.build(ToolBuildSpec(tenant, "wordcount", 3, DOCKERFILE, {"wc.py": WORDS.encode()}),
                                lines.append)  # fmt: skip
    assert built.image.startswith("crewflow-tool/tenant-") and built.image.endswith("/wordcount:v3"), built.image
    assert built.digest and built.digest.startswith("sha256:")
    assert any(line.startswith("Step 1/") for line in lines), lines
    assert "compiled" in lines or " ---> Using cache" in lines, lines  # the RUN step ran, or ran before
    tool = ToolRef(id="wordcount", image=built.image, input_schema=INPUT, output_schema=OUTPUT,
                   limits=ToolLimits(timeout=20, memory_mb=128))  # fmt: skip
    outcome = await sandbox.run_tool(ToolWork(tenant, "e1", "count", 1, tool, {"text": "tide mills turn"}), Logs())
    assert outcome.output == {"words": 3}
    with pytest.raises(NodeExecutionError) as refused:
        await sandbox.run_tool(ToolWork(tenant, "e1", "count", 1, tool, {"text": 7}), Logs())
    assert (
        str(refused.value) == "tool wordcount input does not match its input schema: $.text: 7 is not of type 'string'"
    )
    assert not refused.value.retryable
    strict = ToolRef(id="wordcount", image=built.image, input_schema=INPUT,
                     output_schema={**OUTPUT, "properties": {"words": {"type": "string"}}})  # fmt: skip
    with pytest.raises(NodeExecutionError) as wrong:
        await sandbox.run_tool(ToolWork(tenant, "e1", "count", 1, strict, {"text": "a b"}), Logs())
    assert (
        str(wrong.value) == "tool wordcount output does not match its output schema: $.words: 2 is not of type 'string'"
    )
    assert await containers_of(engine, tenant) == []
    assert sandbox.metrics.gauge("docker_containers_active") == 0  # type: ignore[attr-defined]


async def test_a_failing_build_step_and_a_bad_context_are_build_errors(sandbox: DockerSandbox) -> None:
    lines: list[str] = []
    failing = f"FROM {BASE_IMAGE}\nRUN /usr/bin/python3 -c 'raise SystemExit(4)'\n"
    with pytest.raises(ToolBuildError, match=r"the build failed: .*returned a non-zero code: 4"):
        await sandbox.build(ToolBuildSpec(_tenant(), "broken", 1, failing), lines.append)
    with pytest.raises(ToolBuildError, match="not allowed"):
        await sandbox.build(ToolBuildSpec(_tenant(), "escape", 1, failing, {"../etc/passwd": b"x"}), lines.append)
    with pytest.raises(ToolBuildError, match="larger than"):
        await sandbox.build(ToolBuildSpec(_tenant(), "huge", 1, failing, {"big.bin": b"x" * (6 * 1024 * 1024)}),
                            lines.append)  # fmt: skip
    network = (
        f"FROM {BASE_IMAGE}\nRUN /usr/bin/python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 3)'\n"
    )
    with pytest.raises(ToolBuildError, match="the build failed"):
        await sandbox.build(ToolBuildSpec(_tenant(), "online", 1, network), lines.append)


async def test_an_image_pushed_to_the_registry_runs_by_digest_where_it_was_not_built(engine: str) -> None:
    if not registry_answers():
        pytest.skip(f"no registry answers on {REGISTRY}; run deploy/ci/sandbox-engine.sh")
    tenant = _tenant()
    builder = docker_sandbox(engine, InMemoryMetrics(), registry=REGISTRY)
    try:
        built = await builder.build(ToolBuildSpec(tenant, "wordcount", 1, DOCKERFILE, {"wc.py": WORDS.encode()}),
                                    lambda line: None)  # fmt: skip
    finally:
        await builder.close()
    assert built.digest is not None and built.image == f"{built.image.split('@')[0]}@{built.digest}"
    assert built.image.startswith(f"{REGISTRY}/crewflow-tool/")
    docker = aiodocker.Docker(url=engine)
    try:  # forget every local copy, as on another sandbox host
        repository = built.image.split("@")[0]
        await docker.images.delete(f"{repository}:v1", force=True)
        with pytest.raises(aiodocker.exceptions.DockerError):
            await docker.images.inspect(built.image)
    finally:
        await docker.close()
    runner = docker_sandbox(engine, InMemoryMetrics())
    try:
        tool = ToolRef(id="wordcount", image=built.image, input_schema=INPUT, output_schema=OUTPUT)
        outcome = await runner.run_tool(ToolWork(tenant, "e1", "n", 1, tool, {"text": "one two"}), Logs())
    finally:
        await runner.close()
    assert outcome.output == {"words": 2}
    assert await containers_of(engine, tenant) == []


async def test_orphans_of_a_dead_process_are_reaped_and_live_ones_kept(sandbox: DockerSandbox, engine: str) -> None:
    tenant = _tenant()
    docker = aiodocker.Docker(url=engine)

    async def labelled(owner: str, pool: str) -> str:
        container = await docker.containers.create({
            "Image": BASE_IMAGE, "Cmd": ["/bin/sleep", "300"], "User": "65534:65534",
            "HostConfig": {"NetworkMode": "none"},
            "Labels": {"crewflow.tool": "t", "crewflow.tenant": tenant, "crewflow.execution": "e",
                       "crewflow.owner": owner, "crewflow.timeout": "30", "crewflow.pool": pool},
        })  # fmt: skip
        await container.start()
        return str(container.id)

    try:
        dead = await labelled(f"{socket.gethostname()}:4194300:12345", "0")  # no such pid
        reused = await labelled(owner_id().rsplit(":", 1)[0] + ":1", "0")  # this pid, another start time
        alive = await labelled(owner_id(), "1")  # a pool container of this live process
        removed = await sandbox.reap_orphans(max_age=3600)
        assert removed >= 2
        left = {c["Id"] for c in await containers_of(engine, tenant)}
        assert dead not in left and reused not in left
        assert alive in left
    finally:
        for container in await docker.containers.list(
            all=True, filters=json.dumps({"label": [f"crewflow.tenant={tenant}"]})
        ):
            await container.delete(force=True)
        await docker.close()


async def test_the_gauge_counts_warm_containers_and_close_removes_them(engine: str) -> None:
    metrics = InMemoryMetrics()
    sandbox = docker_sandbox(engine, metrics)
    tenant = _tenant()
    try:
        built = await sandbox.build(ToolBuildSpec(tenant, "wordcount", 1, DOCKERFILE, {"wc.py": WORDS.encode()}),
                                    lambda line: None)  # fmt: skip
        tool = ToolRef(id="wordcount", image=built.image, warm_pool=2)
        await sandbox.warm_up(tool, tenant)
        assert metrics.gauge("docker_containers_active") == 2
        for n in range(3):
            outcome = await sandbox.run_tool(ToolWork(tenant, "e", "n", 1, tool, {"text": "x " * n}), Logs())
            assert outcome.output == {"words": n}
        assert len(await containers_of(engine, tenant)) == 2
    finally:
        await sandbox.close()
    assert metrics.gauge("docker_containers_active") == 0
    assert await containers_of(engine, tenant) == []


async def test_open_sandbox_routes_image_tools_to_docker_and_never_runs_unsandboxed(engine: str) -> None:
    routed = open_sandbox({"CREWFLOW_DOCKER_HOST": engine, "CREWFLOW_SANDBOX_BACKENDS": "docker"})
    try:
        assert routed.docker is not None and routed.bubblewrap is None
        script = ToolRef(id="script", script="print('{}')")
        with pytest.raises(ToolUnavailable, match="tool script is a script and bubblewrap is not available here"):
            await routed.run_tool(ToolWork("t", "e", "n", 1, script, {}), Logs())
    finally:
        await routed.close()
    scripted = open_sandbox({"CREWFLOW_DOCKER_HOST": engine, "CREWFLOW_SANDBOX_BACKENDS": "docker",
                             "CREWFLOW_SANDBOX_SCRIPT_IMAGE": BASE_IMAGE})  # fmt: skip
    try:
        tool = ToolRef(id="wc", script=WORDS, input_schema=INPUT, output_schema=OUTPUT)
        outcome = await scripted.run_tool(ToolWork("t", "e", "n", 1, tool, {"text": "in docker"}), Logs())
        assert outcome.output == {"words": 2}
    finally:
        await scripted.close()
    nothing = RoutingSandbox(None, None, "no engine", "no bwrap")
    with pytest.raises(ToolUnavailable, match=r"^tool img needs a Docker engine and none answers here$"):
        await nothing.run_tool(ToolWork("t", "e", "n", 1, ToolRef(id="img", image=BASE_IMAGE), {}), Logs())


async def test_a_warm_container_that_died_is_replaced_and_the_call_runs_cold(engine: str) -> None:
    sandbox = docker_sandbox(engine, InMemoryMetrics())
    tenant = _tenant()
    try:
        built = await sandbox.build(ToolBuildSpec(tenant, "wordcount", 1, DOCKERFILE, {"wc.py": WORDS.encode()}),
                                    lambda line: None)  # fmt: skip
        tool = ToolRef(id="wordcount", image=built.image, warm_pool=1)
        await sandbox.warm_up(tool, tenant)
        docker = aiodocker.Docker(url=engine)
        try:
            (pooled,) = await containers_of(engine, tenant)
            await docker.containers.container(pooled["Id"]).delete(force=True)
        finally:
            await docker.close()
        outcome = await sandbox.run_tool(ToolWork(tenant, "e", "n", 1, tool, {"text": "still counted"}), Logs())
        assert outcome.output == {"words": 2}
        await sandbox.warm_up(tool, tenant)
        (fresh,) = await containers_of(engine, tenant)
        assert fresh["Id"] != pooled["Id"] and fresh["Labels"]["crewflow.pool"] == "1"
    finally:
        await sandbox.close()
    assert await containers_of(engine, tenant) == []
