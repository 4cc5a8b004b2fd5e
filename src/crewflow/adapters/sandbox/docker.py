"""Tools in Docker containers (ADR 0014): ``DockerSandbox`` is the ``ToolSandbox`` and the ``ToolBuilder``.

Every container: no network (``NetworkMode: none``, ``NetworkDisabled``), read-only root, a size-limited
``/tmp`` tmpfs (nosuid, nodev, noexec) as the only writable place, no ``/dev/shm`` (``IpcMode: none``),
every capability dropped, ``no-new-privileges``, uid/gid 65534, a pids limit, memory without swap
(``MemorySwap = Memory``), a CPU quota, no log driver, the configured OCI runtime (runc; sysbox-runc under
Sysbox) and labels naming the tool, tenant, execution and this process (``crewflow.owner``) so
``reap_orphans`` finds what a dead process left behind.

Cold call: create → attach stdin/stdout/stderr → start → write the input and half-close stdin → read
stdout (capped) and stderr (log lines) → wait → (on failure) inspect for ``OOMKilled`` → remove, always.
Past the timeout the container is killed. A missing image is pulled first (by digest when built into a
registry).

Warm pool (``ToolRef.warm_pool`` > 0): that many pre-started containers per tenant, image and limits, each
running the supervisor (``supervisor.py``) that spawns a fresh tool process per call and wipes everything
the call left; a container is retired (and replaced in the background) after a timeout, a dirty wipe or
``POOL_MAX_CALLS`` calls. A call finding no idle container runs cold instead of waiting.

Build: the Dockerfile and context files as a tar (``context_limit``, 5 MiB by default), built with
``networkmode=none`` (the daemon has no bridge; RUN steps get no network either way) under a timeout,
log lines streamed, tagged ``crewflow-tool/<tenant>/<tool>:v<version>``; with a registry configured the image
is pushed and ``<registry>/crewflow-tool/<tenant>/<tool>@sha256:…`` returned, so every sandbox host pulls the
exact build.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import socket
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError
from aiodocker.stream import Stream

from crewflow.adapters.sandbox.io import (
    RawRun,
    StderrLog,
    StdoutBuffer,
    call_timeout,
    encode_input,
    engine_error,
    outcome_of,
    validate_input,
)
from crewflow.adapters.sandbox.supervisor import SUPERVISOR
from crewflow.domain.agents import ToolLimits, ToolRef
from crewflow.domain.errors import NodeExecutionError, ToolBuildError, ToolUnavailable
from crewflow.ports.metrics import Metrics
from crewflow.ports.runtime import BuiltImage, NodeEmitter, NodeOutcome, ToolBuildSpec, ToolWork

__all__ = ["DockerConfig", "DockerSandbox", "image_repository", "owner_id"]

USER = "65534:65534"
PYTHON = "/usr/bin/python3"
POOL_MAX_CALLS = 500
REAP_GRACE = 60.0
#: runs a script tool in the script image: the script arrives first on stdin, after its length
SCRIPT_BOOT = ("import sys\nn = int(sys.stdin.buffer.readline())\nsrc = sys.stdin.buffer.read(n)\n"
               "exec(compile(src, 'tool.py', 'exec'), {'__name__': '__main__'})\n")  # fmt: skip
_COMPONENT = re.compile(r"[^a-z0-9]+")
pool_closing: set[asyncio.Task[None]] = set()  # keeps retiring pools' close tasks alive


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_id(pid: int | None = None) -> str:
    """``host:pid:start-time`` of a process: what ``crewflow.owner`` labels carry (pid reuse is detected)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is another host's (cannot be told from here)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    now = _start_time(int(pid_text))
    return now is not None and (started == "?" or now == started)


def _component(text: str) -> str:
    """A valid, collision-free repository path component for an id (tenant or tool)."""
    clean = _COMPONENT.sub("-", text.lower()).strip("-")[:48] or "x"
    if clean != text:
        clean = f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return clean


def image_repository(tenant_id: str, tool_id: str, registry: str | None = None) -> str:
    repo = f"crewflow-tool/{_component(tenant_id)}/{_component(tool_id)}"
    return f"{registry.rstrip('/')}/{repo}" if registry else repo


@dataclass(frozen=True, slots=True)
class DockerConfig:
    url: str
    runtime: str = "runc"
    registry: str | None = None
    script_image: str | None = None
    context_limit: int = 5 * 1024 * 1024
    owner: str = field(default_factory=owner_id)


def _limits_host_config(limits: ToolLimits, runtime: str) -> dict[str, Any]:
    memory = limits.memory_mb * 1024 * 1024
    return {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_mb}m,mode=1777"},  # noqa: S108
        "IpcMode": "none",
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "PidsLimit": limits.pids,
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": int(limits.cpus * 1e9),
        "OomKillDisable": False,
        "LogConfig": {"Type": "none", "Config": {}},
        "Runtime": runtime,
        "Ulimits": [{"Name": "core", "Soft": 0, "Hard": 0}, {"Name": "nofile", "Soft": 1024, "Hard": 1024}],
    }


def _close_stdin(stream: Stream) -> None:
    """Half-close the attach connection: the container's stdin ends, stdout keeps flowing (``Stream.close``
    would close the whole connection — field notes)."""
    resp = stream._resp
    if resp is not None and resp.connection is not None and resp.connection.transport is not None:
        transport = resp.connection.transport
        if transport.can_write_eof():
            transport.write_eof()


class _Warm:
    """One pre-started pool container with its supervisor and attach stream."""

    def __init__(self, container: Any, stream: Stream) -> None:
        self.container = container
        self.stream = stream
        self.buffer = bytearray()
        self.calls = 0

    async def _fill(self) -> None:
        while True:
            msg = await self.stream.read_out()
            if msg is None:
                raise ConnectionError("the warm container's supervisor ended")
            if msg.stream == 1:
                self.buffer.extend(msg.data)
                return

    async def read_line(self) -> bytes:
        while (cut := self.buffer.find(b"\n")) < 0:
            await self._fill()
        line = bytes(self.buffer[:cut])
        del self.buffer[: cut + 1]
        return line

    async def read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class _Pool:
    """The warm containers of one tenant's image with one set of limits."""

    def __init__(self, sandbox: DockerSandbox, tool: ToolRef, tenant_id: str, image: str, size: int) -> None:
        self.sandbox = sandbox
        self.tool = tool
        self.tenant_id = tenant_id
        self.image = image
        self.size = size
        self.idle: list[_Warm] = []
        self.starting = 0
        self.in_use = 0
        self.broken: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def take(self) -> _Warm | None:
        """An idle container (counted as in use until given back), or None: the caller runs cold."""
        self.refill()
        if not self.idle:
            return None
        self.in_use += 1
        return self.idle.pop(0)  # first in, first out: the longest-idle container has its next process ready

    def refill(self) -> None:
        if self.broken is not None or self.sandbox.closed:
            return
        while len(self.idle) + self.in_use + self.starting < self.size:
            self.starting += 1
            task = asyncio.ensure_future(self._start_one())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _start_one(self) -> None:
        try:
            warm = await self.sandbox._start_warm(self.tool, self.tenant_id, self.image)
        except Exception as exc:  # the pool degrades to cold calls, with the reason kept
            self.broken = str(exc)[:300] or type(exc).__name__
            return
        finally:
            self.starting -= 1
        if self.sandbox.closed:
            await self.sandbox._remove(warm.container, warm.stream)
        else:
            self.idle.append(warm)

    def give_back(self, warm: _Warm, healthy: bool) -> None:
        self.in_use -= 1
        if healthy and warm.calls < POOL_MAX_CALLS and not self.sandbox.closed:
            self.idle.append(warm)
            return
        task = asyncio.ensure_future(self.sandbox._remove(warm.container, warm.stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.refill()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.idle) < self.size and self.broken is None:
                self.refill()
                await asyncio.sleep(0.02)
        if self.broken is not None:
            raise RuntimeError(f"warm pool of {self.tool.id} cannot start: {self.broken}")

    async def close(self) -> None:
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
        idle, self.idle = self.idle, []
        for warm in idle:
            await self.sandbox._remove(warm.container, warm.stream)


class DockerSandbox:
    """``ToolSandbox`` and ``ToolBuilder`` over one Docker engine. Create it anywhere; the aiodocker client
    opens on first use, in the running loop. ``close()`` removes the warm pools and closes the client."""

    def __init__(self, config: DockerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._docker: aiodocker.Docker | None = None
        self._pools: dict[tuple[Any, ...], _Pool] = {}
        self._active = 0
        self.closed = False

    # -- plumbing -------------------------------------------------------------------------------------
    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.config.url)
        return self._docker

    def _count(self, delta: int) -> None:
        self._active += delta
        self.metrics.set("docker_containers_active", float(self._active))

    async def close(self) -> None:
        self.closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    def _labels(self, tool: ToolRef, tenant_id: str, execution_id: str, pool: bool) -> dict[str, str]:
        return {
            "crewflow.tool": tool.id,
            "crewflow.tenant": tenant_id,
            "crewflow.execution": execution_id,
            "crewflow.owner": self.config.owner,
            "crewflow.timeout": f"{tool.limits.timeout:g}",
            "crewflow.pool": "1" if pool else "0",
        }

    def _config(self, tool: ToolRef, image: str, labels: Mapping[str, str], *, entrypoint: list[str] | None,
                cmd: list[str] | None, stdin_once: bool) -> dict[str, Any]:  # fmt: skip
        config: dict[str, Any] = {
            "Image": image,
            "User": USER,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": True,
            "StdinOnce": stdin_once,
            "Tty": False,
            "NetworkDisabled": True,
            "Env": [],
            "Labels": dict(labels),
            "HostConfig": _limits_host_config(tool.limits, self.config.runtime),
        }
        if entrypoint is not None:
            config["Entrypoint"] = entrypoint
        if cmd is not None:
            config["Cmd"] = cmd
        return config

    def _name(self, tool: ToolRef, tenant_id: str) -> str:
        return f"crewflow-tool-{_component(tenant_id)[:20]}-{_component(tool.id)[:20]}-{uuid.uuid4().hex[:10]}"

    async def _create(self, tool: ToolRef, tenant_id: str, config: dict[str, Any]) -> Any:
        docker = self._client()
        try:
            return await docker.containers.create(config, name=self._name(tool, tenant_id))
        except DockerError as exc:
            if exc.status != 404:
                raise
        try:  # the image is not here yet: pull it (by digest when it names one)
            await docker.images.pull(config["Image"])
        except DockerError as exc:
            raise NodeExecutionError(f"tool {tool.id}: its image {config['Image']} cannot be pulled: "
                                     f"{exc.message}", retryable=True) from None  # fmt: skip
        return await docker.containers.create(config, name=self._name(tool, tenant_id))

    async def _remove(self, container: Any, stream: Stream | None = None) -> None:
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()
        try:
            with contextlib.suppress(DockerError):
                await asyncio.shield(container.delete(force=True))
        finally:
            self._count(-1)

    # -- running tools --------------------------------------------------------------------------------
    def _what_to_run(self, tool: ToolRef, data: bytes) -> tuple[str, list[str] | None, list[str] | None, bytes]:
        if tool.image is not None:
            return tool.image, None, None, data
        if tool.script is not None and self.config.script_image is not None:
            script = tool.script.encode()
            return (self.config.script_image, [PYTHON, "-I", "-c", SCRIPT_BOOT], [],
                    f"{len(script)}\n".encode() + script + data)  # fmt: skip
        raise ToolUnavailable(f"tool {tool.id} has no image to run in Docker")

    async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome:
        tool = work.tool
        validate_input(tool, work.payload)
        data = encode_input(tool, work.payload)
        timeout = call_timeout(work)
        image, entrypoint, cmd, stdin = self._what_to_run(tool, data)
        try:
            if tool.warm_pool > 0 and tool.image is not None:
                pool = self._pool(tool, work.tenant_id, image)
                warm = pool.take()
                if warm is not None:
                    warm_raw: RawRun | None = None
                    try:
                        warm_raw = await self._run_warm(pool, warm, work, emit, stdin, timeout)
                    except Exception:  # a broken container (gone, closed stream): retired; this call runs cold
                        warm_raw = None
                    if warm_raw is not None:
                        return outcome_of(tool, warm_raw, timeout)
            raw = await self._run_cold(work, emit, image, entrypoint, cmd, stdin, timeout)
        except (DockerError, OSError, aiohttp.ClientError) as exc:
            raise engine_error(tool, "the Docker engine failed", exc) from None
        return outcome_of(tool, raw, timeout)

    async def _run_cold(self, work: ToolWork, emit: NodeEmitter, image: str, entrypoint: list[str] | None,
                        cmd: list[str] | None, stdin: bytes, timeout: float) -> RawRun:  # fmt: skip
        tool = work.tool
        labels = self._labels(tool, work.tenant_id, work.execution_id, pool=False)
        container = await self._create(tool, work.tenant_id,
                                       self._config(tool, image, labels, entrypoint=entrypoint, cmd=cmd,
                                                    stdin_once=True))  # fmt: skip
        self._count(1)
        out = StdoutBuffer(tool.limits.output_bytes)
        log = StderrLog(tool, emit)
        stream: Stream | None = None
        timed_out = False
        status: int | None = None
        oom = False
        try:
            stream = container.attach(stdin=True, stdout=True, stderr=True)
            try:
                async with asyncio.timeout(timeout):
                    await stream.__aenter__()
                    await container.start()
                    await stream.write_in(stdin)
                    _close_stdin(stream)
                    while (msg := await stream.read_out()) is not None:
                        if msg.stream == 2:
                            log.feed(msg.data)
                        elif not out.feed(msg.data):
                            with contextlib.suppress(DockerError):
                                await container.kill()
                            break
                    status = int((await container.wait()).get("StatusCode", -1))
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(DockerError):
                    await container.kill()
            if not timed_out and status != 0:
                state = (await container.show()).get("State", {})
                oom = bool(state.get("OOMKilled"))
        finally:
            await self._remove(container, stream)
        log.close()
        return RawRun(exit_code=status, stdout=out.value(), stdout_overflow=out.overflow, timed_out=timed_out,
                      oom_killed=oom, last_stderr=log.last_line)  # fmt: skip

    def _pool(self, tool: ToolRef, tenant_id: str, image: str) -> _Pool:
        key = (tenant_id, image, tool.limits, self.config.runtime)
        pool = self._pools.get(key)
        if pool is None:
            for old_key, old in list(self._pools.items()):  # a new build or new limits: retire the old pool
                if old_key[0] == tenant_id and old.tool.id == tool.id:
                    del self._pools[old_key]
                    task = asyncio.ensure_future(old.close())
                    pool_closing.add(task)
                    task.add_done_callback(pool_closing.discard)
            pool = self._pools[key] = _Pool(self, tool, tenant_id, image, tool.warm_pool)
        pool.size = tool.warm_pool
        return pool

    async def warm_up(self, tool: ToolRef, tenant_id: str, timeout: float = 60.0) -> None:
        """Start ``tool``'s warm pool now and wait until it is full (benchmarks, deploy hooks)."""
        if tool.image is None or tool.warm_pool <= 0:
            return
        await self._pool(tool, tenant_id, tool.image).wait_ready(timeout)

    async def _start_warm(self, tool: ToolRef, tenant_id: str, image: str) -> _Warm:
        docker = self._client()
        try:
            spec = (await docker.images.inspect(image)).get("Config") or {}
        except DockerError as exc:
            if exc.status != 404:
                raise
            await docker.images.pull(image)
            spec = (await docker.images.inspect(image)).get("Config") or {}
        argv = list(spec.get("Entrypoint") or []) + list(spec.get("Cmd") or [])
        if not argv:
            raise RuntimeError(f"image {image} has no entrypoint or cmd")
        labels = self._labels(tool, tenant_id, "warm-pool", pool=True)
        config = self._config(tool, image, labels, entrypoint=[PYTHON, "-I", "-c", SUPERVISOR],
                              cmd=[json.dumps(argv), str(spec.get("WorkingDir") or "")], stdin_once=False)  # fmt: skip
        container = await self._create(tool, tenant_id, config)
        self._count(1)
        stream = container.attach(stdin=True, stdout=True, stderr=True)
        try:
            await stream.__aenter__()
            await container.start()
        except BaseException:
            await self._remove(container, stream)
            raise
        return _Warm(container, stream)

    async def _run_warm(self, pool: _Pool, warm: _Warm, work: ToolWork, emit: NodeEmitter, stdin: bytes,
                        timeout: float) -> RawRun:  # fmt: skip
        tool = work.tool
        warm.calls += 1
        try:
            async with asyncio.timeout(timeout):
                request = json.dumps({"size": len(stdin), "out": tool.limits.output_bytes}).encode() + b"\n"
                await warm.stream.write_in(request + stdin)
                head = json.loads(await warm.read_line())
                out = await warm.read_exact(int(head["out"]))
                err = await warm.read_exact(int(head["err"]))
        except TimeoutError:
            pool.give_back(warm, False)  # the tool may still run: retire (remove) the whole container
            return RawRun(exit_code=None, stdout=b"", timed_out=True)
        except BaseException:
            pool.give_back(warm, False)
            raise
        # a dirty wipe, a killed or out-of-memory call retires the container; the pool refills
        pool.give_back(warm, bool(head.get("clean")) and head.get("signal") is None and not head.get("oom"))
        log = StderrLog(tool, emit)
        log.feed(err)
        log.close()
        signal = head.get("signal") if not head.get("oom") and not head.get("overflow") else None
        return RawRun(
            exit_code=head.get("exit"),
            stdout=out,
            stdout_overflow=bool(head.get("overflow")),
            oom_killed=bool(head.get("oom")),
            last_stderr=log.last_line,
            killed_by_signal=signal,
        )

    # -- building -------------------------------------------------------------------------------------
    def _context_tar(self, spec: ToolBuildSpec) -> bytes:
        files: dict[str, bytes] = {"Dockerfile": spec.dockerfile.encode()}
        total = len(files["Dockerfile"])
        for name, content in spec.context.items():
            clean = os.path.normpath(name)
            if clean.startswith(("/", "..")) or clean in (".", "Dockerfile") or "\x00" in clean:
                raise ToolBuildError(f"context file name {name!r} is not allowed")
            files[clean] = content
            total += len(content)
            if total > self.config.context_limit:
                raise ToolBuildError(f"the build context is larger than {self.config.context_limit} bytes")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, content in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    async def _stream_json(self, response: Any) -> AsyncIterator[dict[str, Any]]:
        async for raw in response.content:
            line = raw.strip()
            if line:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    async def build(self, spec: ToolBuildSpec, log: Callable[[str], None]) -> BuiltImage:
        context = self._context_tar(spec)
        repository = image_repository(spec.tenant_id, spec.tool_id, self.config.registry)
        tag = f"v{spec.version}"
        labels = {"crewflow.tenant": spec.tenant_id, "crewflow.tool": spec.tool_id,
                  "crewflow.version": str(spec.version)}  # fmt: skip
        params = {"t": f"{repository}:{tag}", "rm": "1", "forcerm": "1", "networkmode": "none",
                  "labels": json.dumps(labels)}  # fmt: skip
        docker = self._client()
        image_id: str | None = None
        try:
            async with asyncio.timeout(spec.timeout):
                async with docker._query("build", "POST", params=params, data=context,
                                         headers={"content-type": "application/x-tar"}) as response:  # fmt: skip
                    async for item in self._stream_json(response):
                        if "error" in item or "errorDetail" in item:
                            detail = item.get("error") or (item.get("errorDetail") or {}).get("message")
                            raise ToolBuildError(f"the build failed: {str(detail).strip()[:500]}")
                        if isinstance(item.get("stream"), str):
                            for line in item["stream"].splitlines():
                                if line.strip():
                                    log(line.rstrip())
                        aux = item.get("aux")
                        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                            image_id = aux["ID"]
                if image_id is None:
                    image_id = (await docker.images.inspect(f"{repository}:{tag}"))["Id"]
                if self.config.registry is None:
                    return BuiltImage(image=f"{repository}:{tag}", digest=image_id)
                digest = await self._push(repository, tag, log)
                return BuiltImage(image=f"{repository}@{digest}", digest=digest)
        except TimeoutError:
            raise ToolBuildError(f"the build timed out after {spec.timeout:g}s") from None
        except DockerError as exc:
            raise ToolBuildError(f"the Docker engine refused the build: {exc.message}") from None

    async def _push(self, repository: str, tag: str, log: Callable[[str], None]) -> str:
        digest: str | None = None
        async for item in self._client().images.push(repository, tag=tag, stream=True):
            if "error" in item:
                raise ToolBuildError(f"pushing the image failed: {str(item['error'])[:500]}")
            aux = item.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                digest = aux["Digest"]
            status = item.get("status")
            if isinstance(status, str) and "progress" not in item:
                log(f"push: {status}" + (f" {item['id']}" if item.get("id") else ""))
        if digest is None:
            raise ToolBuildError("the registry did not report the pushed image's digest")
        return digest

    # -- orphans --------------------------------------------------------------------------------------
    async def reap_orphans(self, max_age: float = 3600.0) -> int:
        """Remove tool containers whose owner process (on this host) is gone, one-shot containers past their
        timeout (+ a minute), and other hosts' pool containers older than ``max_age``. The number removed."""
        docker = self._client()
        found = await docker.containers.list(all=True, filters=json.dumps({"label": ["crewflow.owner"]}))
        now = time.time()
        removed = 0
        for container in found:
            info = container._container
            labels = info.get("Labels") or {}
            age = now - float(info.get("Created") or now)
            alive = _owner_alive(labels.get("crewflow.owner", ""))
            pool = labels.get("crewflow.pool") == "1"
            try:
                limit = float(labels.get("crewflow.timeout") or 0) + REAP_GRACE
            except ValueError:
                limit = REAP_GRACE
            if alive is False or (not pool and age > limit) or (pool and alive is None and age > max_age):
                with contextlib.suppress(DockerError):
                    await container.delete(force=True)
                    removed += 1
        return removed
