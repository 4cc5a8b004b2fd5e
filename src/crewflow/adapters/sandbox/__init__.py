"""The tool sandbox (ADR 0014): Docker containers for image tools (with warm pools), bubblewrap for script
tools where no Docker engine answers, and a router that never runs a tool unsandboxed.

    sandbox = open_sandbox(settings.extra, metrics)   # RoutingSandbox (a ToolSandbox); close() when done
    builder = open_builder(settings.extra)            # DockerSandbox (a ToolBuilder) or None without Docker
    removed = await reap_orphans(settings.extra)      # the worker's cron: containers whose owner is gone

Settings (``CREWFLOW_*`` from ``settings.extra``; ``DOCKER_HOST`` from the environment):

- ``CREWFLOW_DOCKER_HOST`` / ``DOCKER_HOST``: the engine (``unix://…`` or ``tcp://…``); unset, the first of
  ``/var/run/docker.sock`` and ``/run/crewflow-docker.sock`` (deploy/ci/sandbox-engine.sh) that answers.
- ``CREWFLOW_SANDBOX_RUNTIME``: the OCI runtime of tool containers (``runc``; ``sysbox-runc`` with Sysbox).
- ``CREWFLOW_TOOL_REGISTRY``: push built images there and run them by digest (``host:port``).
- ``CREWFLOW_SANDBOX_SCRIPT_IMAGE``: run script tools in Docker on this image (one with ``/usr/bin/python3``,
  e.g. ``crewflow/tool-base:bookworm``) instead of bubblewrap; bubblewrap remains the fallback.
- ``CREWFLOW_SANDBOX_BACKENDS``: ``docker,bubblewrap`` (default) or a subset, to switch one off.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from crewflow.adapters.metrics.memory import NoopMetrics
from crewflow.adapters.sandbox.bubblewrap import BubblewrapSandbox, probe_bubblewrap
from crewflow.adapters.sandbox.docker import DockerConfig, DockerSandbox
from crewflow.domain.errors import ToolUnavailable
from crewflow.ports.metrics import Metrics
from crewflow.ports.runtime import NodeEmitter, NodeOutcome, ToolWork

__all__ = [
    "BubblewrapSandbox",
    "DockerSandbox",
    "RoutingSandbox",
    "docker_host",
    "open_builder",
    "open_sandbox",
    "reap_orphans",
]

DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/crewflow-docker.sock")
PROBE_TIMEOUT = 1.0


def _setting(extra: Mapping[str, str], name: str) -> str | None:
    value = extra.get(name) or os.environ.get(name)
    return value.strip() if value and value.strip() else None


def _ping(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if a Docker engine answers ``GET /_ping`` at ``url`` within ``timeout`` (blocking, short)."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        elif parts.scheme in ("tcp", "http"):
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 2375), timeout=timeout)
        else:
            return False
    except OSError:
        return False
    try:
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        answer = sock.recv(64)
    except OSError:
        return False
    finally:
        sock.close()
    return answer.startswith(b"HTTP/1.") and b" 200 " in answer[:16]


def docker_host(extra: Mapping[str, str]) -> str | None:
    """The URL of the Docker engine that answers here, else None."""
    configured = _setting(extra, "CREWFLOW_DOCKER_HOST") or _setting(extra, "DOCKER_HOST")
    if configured is not None:
        return configured if _ping(configured) else None
    for path in DEFAULT_SOCKETS:
        if os.path.exists(path) and _ping(f"unix://{path}"):
            return f"unix://{path}"
    return None


def _backends(extra: Mapping[str, str]) -> set[str]:
    raw = _setting(extra, "CREWFLOW_SANDBOX_BACKENDS") or "docker,bubblewrap"
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def _docker_config(extra: Mapping[str, str], url: str) -> DockerConfig:
    return DockerConfig(
        url=url,
        runtime=_setting(extra, "CREWFLOW_SANDBOX_RUNTIME") or "runc",
        registry=_setting(extra, "CREWFLOW_TOOL_REGISTRY"),
        script_image=_setting(extra, "CREWFLOW_SANDBOX_SCRIPT_IMAGE"),
    )


@dataclass
class RoutingSandbox:
    """Runs each tool on the backend that can: an image tool in Docker; a script tool under bubblewrap (or
    in Docker on the script image when one is configured); otherwise ``ToolUnavailable`` — never
    unsandboxed. ``docker_reason``/``bubblewrap_reason`` say why a backend is missing."""

    docker: DockerSandbox | None
    bubblewrap: BubblewrapSandbox | None
    docker_reason: str = ""
    bubblewrap_reason: str = ""

    async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome:
        tool = work.tool
        if tool.image is not None and self.docker is not None:
            return await self.docker.run_tool(work, emit)
        if tool.script is not None:
            if self.docker is not None and self.docker.config.script_image is not None:
                return await self.docker.run_tool(work, emit)
            if self.bubblewrap is not None:
                return await self.bubblewrap.run_tool(work, emit)
            if self.docker is None:
                raise ToolUnavailable(f"tool {tool.id} needs bubblewrap or a Docker engine and neither is "
                                      f"available here ({self.bubblewrap_reason}; {self.docker_reason})")  # fmt: skip
            raise ToolUnavailable(f"tool {tool.id} is a script and bubblewrap is not available here "
                                  f"({self.bubblewrap_reason}); set CREWFLOW_SANDBOX_SCRIPT_IMAGE to run "
                                  "scripts in Docker")  # fmt: skip
        if tool.image is not None:
            raise ToolUnavailable(f"tool {tool.id} needs a Docker engine and none answers here")
        raise ToolUnavailable(f"tool {tool.id} has neither an image nor a script to run")

    async def close(self) -> None:
        if self.docker is not None:
            await self.docker.close()


def open_sandbox(settings_extra: Mapping[str, str], metrics: Metrics | None = None) -> RoutingSandbox:
    """This machine's sandbox: probes the Docker engine (a short ping) and bubblewrap (one tiny sandboxed
    run). Always returns a router; a tool no backend here can run fails with ``ToolUnavailable``."""
    wanted = _backends(settings_extra)
    metrics = metrics if metrics is not None else NoopMetrics()
    docker: DockerSandbox | None = None
    docker_reason = "the Docker backend is switched off (CREWFLOW_SANDBOX_BACKENDS)"
    if "docker" in wanted:
        url = docker_host(settings_extra)
        if url is not None:
            docker = DockerSandbox(_docker_config(settings_extra, url), metrics)
        else:
            docker_reason = "no Docker engine answers (DOCKER_HOST / CREWFLOW_DOCKER_HOST)"
    bubblewrap: BubblewrapSandbox | None = None
    bubblewrap_reason = "the bubblewrap backend is switched off (CREWFLOW_SANDBOX_BACKENDS)"
    if "bubblewrap" in wanted:
        problem = probe_bubblewrap()
        if problem is None:
            bubblewrap = BubblewrapSandbox()
        else:
            bubblewrap_reason = problem
    return RoutingSandbox(docker, bubblewrap, docker_reason, bubblewrap_reason)


def open_builder(settings_extra: Mapping[str, str], metrics: Metrics | None = None) -> DockerSandbox | None:
    """The image builder (Docker) when an engine answers here, else None. ``close()`` it when done."""
    if "docker" not in _backends(settings_extra):
        return None
    url = docker_host(settings_extra)
    if url is None:
        return None
    return DockerSandbox(_docker_config(settings_extra, url), metrics if metrics is not None else NoopMetrics())


async def reap_orphans(settings_extra: Mapping[str, str], max_age: float = 3600.0) -> int:
    """Remove tool containers left behind by a dead process (or stuck past their timeout); the number
    removed. For the worker's cron; 0 where no Docker engine answers."""
    builder = open_builder(settings_extra)
    if builder is None:
        return 0
    try:
        return await builder.reap_orphans(max_age)
    finally:
        await builder.close()
