"""What the sandbox tests share: the engine (skipping, with the reason, where none answers), a probe image whose
tool runs the Python code it is given (so one image exercises every limit, cold and warm), and helpers.

The engine is the one deploy/ci/sandbox-engine.sh starts (or any Docker engine ``DOCKER_HOST`` names); the
base image ``crewflow/tool-base:bookworm`` must be there. bubblewrap tests skip only where bubblewrap cannot
run here.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import pytest

from crewflow.adapters.metrics.memory import InMemoryMetrics
from crewflow.adapters.sandbox import docker_host
from crewflow.adapters.sandbox.bubblewrap import BubblewrapSandbox, probe_bubblewrap
from crewflow.adapters.sandbox.docker import DockerConfig, DockerSandbox
from crewflow.domain.agents import ToolLimits, ToolRef
from crewflow.domain.events import EventKind
from crewflow.ports.runtime import NodeOutcome, ToolBuildSpec, ToolWork

BASE_IMAGE = "crewflow/tool-base:bookworm"
REGISTRY = "127.0.0.1:5000"
HINT = "run deploy/ci/sandbox-engine.sh (as root) to start one"
#: the probe tool: runs the "code" of its input, which prints the tool's JSON output itself
RUNNER = "import json, sys\nrequest = json.load(sys.stdin)\nexec(compile(request['code'], 'probe', 'exec'))\n"
PROBE_DOCKERFILE = (f"FROM {BASE_IMAGE}\nCOPY runner.py /opt/tool/runner.py\n"
                    'ENTRYPOINT ["/usr/bin/python3", "/opt/tool/runner.py"]\n')  # fmt: skip


def engine_url() -> str:
    """The Docker engine's URL, or skip the test with the reason."""
    url = docker_host({})
    if url is None:
        pytest.skip(f"no Docker engine answers here; {HINT}")
    return url


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def need_bubblewrap() -> None:
    problem = probe_bubblewrap()
    if problem is not None:
        pytest.skip(problem)


async def need_base_image(url: str) -> None:
    docker = aiodocker.Docker(url=url)
    try:
        await docker.images.inspect(BASE_IMAGE)
    except aiodocker.exceptions.DockerError:
        pytest.skip(f"the base image {BASE_IMAGE} is missing; {HINT}")
    finally:
        await docker.close()


async def containers_of(url: str, tenant_id: str) -> list[dict[str, Any]]:
    """Every container (running or not) labelled with this tenant."""
    docker = aiodocker.Docker(url=url)
    try:
        found = await docker.containers.list(all=True, filters=json.dumps({"label": [f"crewflow.tenant={tenant_id}"]}))
        return [c._container for c in found]
    finally:
        await docker.close()


@dataclass
class Logs:
    lines: list[str] = field(default_factory=list)

    def __call__(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        assert kind == EventKind.NODE_LOG
        self.lines.append(str(data["line"]))


@dataclass
class Probe:
    """Runs probe code in one backend: ``docker`` (one-shot containers), ``warm`` (a warm pool of one) or
    ``bubblewrap``."""

    kind: str
    sandbox: DockerSandbox | BubblewrapSandbox
    tenant_id: str
    image: str | None
    url: str | None
    metrics: InMemoryMetrics

    def tool(self, limits: ToolLimits, **schemas: Any) -> ToolRef:
        if self.kind == "bubblewrap":
            return ToolRef(id="probe", script=RUNNER, limits=limits, **schemas)
        return ToolRef(id="probe", image=self.image, limits=limits, warm_pool=1 if self.kind == "warm" else 0,
                       **schemas)  # fmt: skip

    async def run(self, code: str, limits: ToolLimits | None = None, logs: Logs | None = None) -> NodeOutcome:
        tool = self.tool(limits or ToolLimits(timeout=20))
        if self.kind == "warm":
            assert isinstance(self.sandbox, DockerSandbox)
            await self.sandbox.warm_up(tool, self.tenant_id)
        work = ToolWork(self.tenant_id, "exec-1", "node-1", 1, tool, {"code": code})
        return await self.sandbox.run_tool(work, logs if logs is not None else Logs())

    async def leftovers(self) -> list[dict[str, Any]]:
        """Containers of this probe's tenant that are not warm-pool containers (none may remain)."""
        if self.url is None:
            return []
        return [c for c in await containers_of(self.url, self.tenant_id) if c["Labels"].get("crewflow.pool") != "1"]


async def build_probe_image(sandbox: DockerSandbox, tenant_id: str) -> str:
    spec = ToolBuildSpec(tenant_id, "probe", 1, PROBE_DOCKERFILE, {"runner.py": RUNNER.encode()}, timeout=300)
    return (await sandbox.build(spec, lambda line: None)).image


def docker_sandbox(url: str, metrics: InMemoryMetrics, *, registry: str | None = None) -> DockerSandbox:
    return DockerSandbox(DockerConfig(url=url, registry=registry), metrics)
