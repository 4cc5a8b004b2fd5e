"""Tool use cases: register and edit a tenant's tools, build their images on the job queue, watch a build,
and run a tool once to try it.

Lifecycle (``ToolRecord.build_status``):

- A tool with a ``dockerfile`` is ``registered`` until built; ``request_build`` makes it ``queued`` and puts a
  ``BuildTool`` job for its current ``version`` on the queue; the job (``run_build``, in a worker) makes it
  ``building``, then ``ready`` (``image_digest``, ``built_at``) or ``failed`` (``build_error``). The build log
  is kept as a bounded tail in ``build_log``, written while the build runs, so a client watches it by
  polling the tool's status.
- A tool with only a ``script`` (run by the sandbox's bubblewrap backend, or in the base image) or only a
  prebuilt ``docker_image`` needs no build: it is ``ready`` as soon as it is registered.
- Every edit adds a version; an edit of the build source (Dockerfile, context files) makes the tool
  ``registered`` again, so "rebuild after a change" builds a new version, and a rebuild of an unchanged tool
  rebuilds the same version. The last good image keeps serving until a new build succeeds. A build's result
  is recorded only if the tool's build source is still the one built (other edits meanwhile do not matter).

Without an image builder (no Docker engine answers) a build request is refused at once (``Conflict``,
HTTP 409) rather than queued to fail later. Every function takes the tenant id from its caller and opens a
unit of work for that tenant only, so another tenant's tool is ``NotFound`` like a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from crewflow.application.catalog import tool_limits, tool_ref
from crewflow.application.executions import InvalidArguments
from crewflow.domain.agents import ToolLimits
from crewflow.domain.errors import Conflict, NodeExecutionError, NotFound, Problem, ToolBuildError
from crewflow.domain.events import EventKind
from crewflow.domain.execution import ToolRecord
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.queue import BuildTool, ToolBuildQueue
from crewflow.ports.runtime import ToolBuilder, ToolBuildSpec, ToolSandbox, ToolWork
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = [
    "BUILDING",
    "FAILED",
    "MAX_CONTEXT_BYTES",
    "MAX_CONTEXT_FILES",
    "MAX_LOG_BYTES",
    "MAX_SCRIPT_BYTES",
    "MAX_WARM_POOL",
    "QUEUED",
    "READY",
    "REGISTERED",
    "ToolDraft",
    "ToolService",
    "ToolTestResult",
    "check_tool",
    "schema_problems",
    "validate_document",
]

REGISTERED, QUEUED, BUILDING, READY, FAILED = "registered", "queued", "building", "ready", "failed"
IN_PROGRESS = frozenset({QUEUED, BUILDING})
MAX_CONTEXT_FILES = 64
MAX_CONTEXT_BYTES = 1_048_576  # all context files together (the request body limit is 2 MiB)
MAX_SCRIPT_BYTES = 262_144
MAX_LOG_BYTES = 65_536  # the tail of a build log kept in ``build_log``
MAX_WARM_POOL = 16
# A context file is a relative path of plain name segments (no '..', no absolute path, no backslash).
CONTEXT_NAME = re.compile(r"^(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9._-]{1,100}(?:/[A-Za-z0-9._-]{1,100}){0,7}$")
_LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(ToolLimits)}
_SOURCE_FIELDS = ("dockerfile", "context")
_EDITABLE = frozenset({"description", "input_schema", "output_schema", "dockerfile", "docker_image", "script",
                       "context", "limits", "warm_pool", "is_active"})  # fmt: skip
log = structlog.get_logger("crewflow.tools")


@dataclass(frozen=True, slots=True)
class ToolDraft:
    """What registering a tool takes (the tool's name is its id)."""

    name: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    description: str = ""
    dockerfile: str | None = None
    docker_image: str | None = None
    script: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, Any] = field(default_factory=dict)
    warm_pool: int = 0


@dataclass(frozen=True, slots=True)
class ToolTestResult:
    """One try of a tool: ``ok`` with its ``output``, or the ``error`` that stopped it; ``logs`` are what the
    sandbox reported while it ran (stderr lines and the like); ``duration`` in seconds."""

    ok: bool
    output: Any
    error: str | None
    logs: tuple[str, ...]
    duration: float


# -- validation --------------------------------------------------------------------------------------------
def schema_problems(field_name: str, schema: Mapping[str, Any]) -> list[Problem]:
    """What is wrong with ``schema`` as a JSON Schema (by the metaschema its ``$schema`` names, 2020-12 by
    default), each problem naming where in it (``input_schema/properties/n/type``)."""
    import jsonschema

    if not isinstance(schema.get("$schema", ""), str):
        return [Problem("bad_schema", "must be a URI naming a JSON Schema dialect", f"{field_name}/$schema")]
    try:
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        validator.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return [Problem("bad_schema", f"not a valid JSON Schema: {exc.message}",
                        f"{field_name}/{where}" if where else field_name)]  # fmt: skip
    except (jsonschema.exceptions.UnknownType, RecursionError):
        return [Problem("bad_schema", "not a valid JSON Schema", field_name)]
    return []


def validate_document(schema: Mapping[str, Any], document: Any, field_name: str) -> list[Problem]:
    """Every place where ``document`` breaks ``schema``, as ``field_name/<JSON pointer>``: message."""
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = validator_class(schema)
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]):
        pointer = "/".join(str(p) for p in error.absolute_path)
        problems.append(Problem("schema", error.message, f"{field_name}/{pointer}" if pointer else field_name))
    return problems


def _limits_problems(limits: Mapping[str, Any]) -> list[Problem]:
    problems = [Problem("unknown_limit", f"'{k}' is not a tool limit (one of {', '.join(_LIMIT_FIELDS)})",
                        f"limits/{k}") for k in limits if k not in _LIMIT_FIELDS]  # fmt: skip
    for key, value in limits.items():
        if key in _LIMIT_FIELDS and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(Problem("bad_limit", "must be a number", f"limits/{key}"))
        elif key in _LIMIT_FIELDS and _LIMIT_FIELDS[key] in (int, "int") and not float(value).is_integer():
            problems.append(Problem("bad_limit", "must be a whole number", f"limits/{key}"))
    if not problems:
        try:
            tool_limits(limits)
        except ValueError as exc:
            problems.append(Problem("bad_limit", str(exc), "limits"))
    return problems


def check_tool(tool: ToolRecord) -> list[Problem]:
    """What is wrong with a tool about to be saved (beyond the types the edge already checked)."""
    problems = schema_problems("input_schema", tool.input_schema) + schema_problems("output_schema",
                                                                                       tool.output_schema)
    if tool.dockerfile is None and tool.docker_image is None and tool.script is None:
        problems.append(Problem("no_source", "give a Dockerfile, a docker_image or a script", "dockerfile"))
    if tool.context and tool.dockerfile is None:
        problems.append(Problem("context_without_dockerfile", "context files are only used by a Dockerfile build",
                                "context"))  # fmt: skip
    if len(tool.context) > MAX_CONTEXT_FILES:
        problems.append(Problem("too_many_files", f"at most {MAX_CONTEXT_FILES} context files", "context"))
    total = 0
    for name, text in tool.context.items():
        if not CONTEXT_NAME.fullmatch(name) or name == "Dockerfile":
            problems.append(Problem("bad_file_name", "must be a relative path of letters, digits, '.', '_', '-' "
                                    "segments (no '..'), and not 'Dockerfile'", f"context/{name}"))  # fmt: skip
        total += len(text.encode())
    if total > MAX_CONTEXT_BYTES:
        problems.append(Problem("context_too_large", f"the context files hold {total} bytes; the limit is "
                                f"{MAX_CONTEXT_BYTES}", "context"))  # fmt: skip
    if tool.script is not None and len(tool.script.encode()) > MAX_SCRIPT_BYTES:
        problems.append(Problem("script_too_large", f"the script is over {MAX_SCRIPT_BYTES} bytes", "script"))
    if tool.script is not None and not tool.script.strip():
        problems.append(Problem("empty_script", "must not be empty", "script"))
    problems += _limits_problems(tool.limits)
    if not 0 <= tool.warm_pool <= MAX_WARM_POOL:
        problems.append(Problem("bad_warm_pool", f"must be between 0 and {MAX_WARM_POOL}", "warm_pool"))
    return problems


def _needs_build(tool: ToolRecord) -> bool:
    return tool.dockerfile is not None


_Source = tuple[str | None, dict[str, str]]


def _source(tool: ToolRecord) -> _Source:
    """What a build of the tool is made from."""
    return tool.dockerfile, dict(tool.context)


class _LogTail:
    """The last ``MAX_LOG_BYTES`` of a build log, fed line by line from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = False
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self._loop = loop
        self._thread = threading.get_ident()

    def add(self, line: str) -> None:
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.add, line)
            return
        line = line.rstrip("\n").replace("\x00", "")[:MAX_LOG_BYTES]
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > MAX_LOG_BYTES and len(self.lines) > 1:
            self.size -= len(self.lines.popleft()) + 1
            self.dropped = True
        self.changed.set()

    def text(self) -> str:
        body = "\n".join(self.lines)
        return f"…\n{body}" if self.dropped else body


# -- the use cases ---------------------------------------------------------------------------------------
class ToolService:
    """Tool use cases over the tenant stores, the build queue, the image builder and the sandbox.

    ``builds`` is where build jobs go (``None``: this process cannot queue builds); ``builder`` builds images
    (``None``: no Docker engine here — build requests are refused); ``sandbox`` runs tools for ``test_run``
    (``None``: test runs are refused). ``log_flush_interval``: at most one write of the build-log tail per
    interval while a build runs."""

    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock, ids: IdGenerator, *,
                 builds: ToolBuildQueue | None = None, builder: ToolBuilder | None = None,
                 sandbox: ToolSandbox | None = None, build_timeout: float = 600.0,
                 log_flush_interval: float = 0.5) -> None:  # fmt: skip
        self.uow_factory = uow_factory
        self.clock = clock
        self.ids = ids
        self.builds = builds
        self.builder = builder
        self.sandbox = sandbox
        self.build_timeout = build_timeout
        self.log_flush_interval = log_flush_interval

    # -- registration ------------------------------------------------------------------------------------
    async def register(self, tenant_id: str, draft: ToolDraft) -> ToolRecord:
        """Raises ``InvalidArguments`` listing every problem, ``Conflict`` when the name is taken."""
        now = self.clock.now()
        tool = ToolRecord(id=draft.name, name=draft.name, created_at=now, updated_at=now,
                          description=draft.description, docker_image=draft.docker_image,
                          input_schema=dict(draft.input_schema), output_schema=dict(draft.output_schema),
                          dockerfile=draft.dockerfile, script=draft.script, context=dict(draft.context),
                          limits=dict(draft.limits), warm_pool=draft.warm_pool)  # fmt: skip
        problems = check_tool(tool)
        if problems:
            raise InvalidArguments(problems)
        tool = dataclasses.replace(tool, build_status=REGISTERED if _needs_build(tool) else READY)
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            await uow.tools.add(tool)
            await uow.commit()
        return tool

    async def update(self, tenant_id: str, tool_id: str, changes: Mapping[str, Any]) -> ToolRecord:
        """A new version with ``changes`` (fields of ``ToolDraft`` and ``is_active``). Changing the build
        source (Dockerfile, context) makes a Dockerfile tool ``registered`` again; a tool left without a
        Dockerfile is ``ready``. Raises ``NotFound`` first, then ``InvalidArguments``."""
        unknown = set(changes) - _EDITABLE
        if unknown:
            raise InvalidArguments([Problem("not_editable", "cannot be changed", k) for k in sorted(unknown)])
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            current = await uow.tools.get(tool_id)
            updated = dataclasses.replace(current, **changes, version=current.version + 1,
                                          updated_at=self.clock.now())  # fmt: skip
            problems = check_tool(updated)
            if problems:
                raise InvalidArguments(problems)
            if not _needs_build(updated):
                updated = dataclasses.replace(updated, build_status=READY)
            elif any(getattr(updated, f) != getattr(current, f) for f in _SOURCE_FIELDS) or current.dockerfile is None:
                updated = dataclasses.replace(updated, build_status=REGISTERED, build_error=None)
            await uow.tools.update(updated)
            await uow.commit()
        return updated

    async def delete(self, tenant_id: str, tool_id: str) -> None:
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            await uow.tools.delete(tool_id)
            await uow.commit()

    async def get(self, tenant_id: str, tool_id: str) -> ToolRecord:
        """The tool as stored: its build status, image, error and build-log tail."""
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            return await uow.tools.get(tool_id)

    # -- builds ------------------------------------------------------------------------------------------
    async def request_build(self, tenant_id: str, tool_id: str, *, rebuild: bool = False,
                            request_id: str | None = None) -> ToolRecord:  # fmt: skip
        """Queue a build of the tool's current version; the tool comes back ``queued`` (or ``ready`` for a
        tool that needs no build). ``rebuild`` builds again a tool that is already built (or whose build is
        stuck); without it, a built tool or one whose build is in progress is a ``Conflict``. Refused with
        ``Conflict`` when no image builder is available here."""
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            tool = await uow.tools.get(tool_id)
            if not _needs_build(tool):
                if tool.build_status != READY:
                    tool = dataclasses.replace(tool, build_status=READY)
                    await uow.tools.update(tool)
                    await uow.commit()
                return tool
            if not tool.is_active:
                raise Conflict(f"tool '{tool_id}' is deactivated; activate it before building it")
            if self.builder is None:
                raise Conflict("no image builder is available here (no Docker engine answers), so tools with a "
                               "Dockerfile cannot be built; tools with only a script run without a build")
            if self.builds is None:
                raise Conflict("tool builds cannot be queued here (no build queue is configured)")
            if not rebuild and tool.build_status in IN_PROGRESS:
                raise Conflict(f"version {tool.version} of tool '{tool_id}' is already being built")
            if not rebuild and tool.build_status == READY:
                raise Conflict(f"version {tool.version} of tool '{tool_id}' is already built; ask for a rebuild "
                               "to build it again")  # fmt: skip
            tool = dataclasses.replace(tool, build_status=QUEUED, build_error=None, build_log=None)
            await uow.tools.update(tool)
            await uow.commit()
        try:
            await self.builds.enqueue_build(BuildTool(tenant_id, tool_id, tool.version, request_id=request_id))
        except Exception as exc:
            log.exception("tool.build_enqueue_failed", tenant_id=tenant_id, tool_id=tool_id)
            await self._finish(tenant_id, tool_id, _source(tool), status=FAILED,
                               error=f"the build could not be queued: {type(exc).__name__}")  # fmt: skip
            raise
        log.info("tool.build_queued", tenant_id=tenant_id, tool_id=tool_id, version=tool.version)
        return tool

    async def run_build(self, job: BuildTool) -> None:
        """The build job: ``building`` → the builder (its log lines kept as the status's tail while it
        runs) → ``ready`` with the image, or ``failed`` with a readable reason. The build is of the tool's
        source (Dockerfile, context) when the job starts; its result is recorded only while that is still the
        tool's source (an edit of the source meanwhile asks for a new build). A job whose tool is gone, or no
        longer waits for a build (its source was edited since the request), does nothing."""
        async with self.uow_factory.for_tenant(job.tenant_id) as uow:
            try:
                tool = await uow.tools.get(job.tool_id)
            except NotFound:
                log.info("tool.build_skipped", tenant_id=job.tenant_id, tool_id=job.tool_id, reason="deleted")
                return
            if tool.build_status not in IN_PROGRESS or tool.dockerfile is None:
                log.info("tool.build_skipped", tenant_id=job.tenant_id, tool_id=job.tool_id, version=job.version,
                         reason="stale")  # fmt: skip
                return
            tool = dataclasses.replace(tool, build_status=BUILDING, build_error=None, build_log="")
            await uow.tools.update(tool)
            await uow.commit()
        source = _source(tool)
        if self.builder is None:
            await self._finish(job.tenant_id, job.tool_id, source, status=FAILED,
                               error="no image builder is available on this worker (no Docker engine answers)")
            return
        assert tool.dockerfile is not None
        spec = ToolBuildSpec(job.tenant_id, job.tool_id, tool.version, tool.dockerfile,
                             {name: text.encode() for name, text in tool.context.items()},
                             timeout=self.build_timeout)  # fmt: skip
        tail = _LogTail(asyncio.get_running_loop())
        flusher = asyncio.create_task(self._flush_log(job, source, tail))
        log.info("tool.build_started", tenant_id=job.tenant_id, tool_id=job.tool_id, version=job.version)
        try:
            built = await self.builder.build(spec, tail.add)
        except ToolBuildError as exc:
            await self._stop(tail, flusher)
            await self._finish(job.tenant_id, job.tool_id, source, status=FAILED, error=str(exc),
                               log_text=tail.text())  # fmt: skip
            log.info("tool.build_failed", tenant_id=job.tenant_id, tool_id=job.tool_id, version=job.version)
            return
        except asyncio.CancelledError:
            await self._stop(tail, flusher)
            await asyncio.shield(self._finish(job.tenant_id, job.tool_id, source, status=FAILED,
                                              error="the build was interrupted (the worker stopped)",
                                              log_text=tail.text()))  # fmt: skip
            raise
        except Exception as exc:  # a bug or an engine error the builder did not classify: recorded, not hidden
            await self._stop(tail, flusher)
            log.exception("tool.build_error", tenant_id=job.tenant_id, tool_id=job.tool_id, version=job.version)
            await self._finish(job.tenant_id, job.tool_id, source, status=FAILED,
                               error=f"the build failed unexpectedly ({type(exc).__name__})", log_text=tail.text())
            return
        await self._stop(tail, flusher)
        await self._finish(job.tenant_id, job.tool_id, source, status=READY, image=built.image,
                           log_text=tail.text())  # fmt: skip
        log.info("tool.build_ready", tenant_id=job.tenant_id, tool_id=job.tool_id, version=job.version,
                 image=built.image)  # fmt: skip

    async def _flush_log(self, job: BuildTool, source: _Source, tail: _LogTail) -> None:
        """Write the log tail whenever lines arrived, at most once per ``log_flush_interval``, until the tail is
        closed. It is stopped by closing the tail, never cancelled: a write cut off halfway could leave its
        connection inside a transaction."""
        while True:
            await tail.changed.wait()
            if tail.closed.is_set():
                return
            tail.changed.clear()
            await self._write(job.tenant_id, job.tool_id, source, build_log=tail.text())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tail.closed.wait(), self.log_flush_interval)

    @staticmethod
    async def _stop(tail: _LogTail, task: asyncio.Task[None]) -> None:
        tail.closed.set()
        tail.changed.set()
        await asyncio.shield(task)

    async def _finish(self, tenant_id: str, tool_id: str, source: _Source, *, status: str, error: str | None = None,
                      image: str | None = None, log_text: str | None = None) -> None:  # fmt: skip
        changes: dict[str, Any] = {"build_status": status, "build_error": error}
        if log_text is not None:
            changes["build_log"] = log_text
        if status == READY:
            changes |= {"image_digest": image, "built_at": self.clock.now()}
        await self._write(tenant_id, tool_id, source, **changes)

    async def _write(self, tenant_id: str, tool_id: str, source: _Source, **changes: Any) -> None:
        """Set build fields of the tool while ``source`` is still its build source; nothing when the source
        was edited meanwhile (the tool waits for a new build) or the tool was deleted."""
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            try:
                tool = await uow.tools.get(tool_id)
            except NotFound:
                return
            if _source(tool) != source:
                return
            await uow.tools.update(dataclasses.replace(tool, **changes))
            await uow.commit()

    # -- trying a tool -----------------------------------------------------------------------------------
    async def test_run(self, tenant_id: str, tool_id: str, payload: Any) -> ToolTestResult:
        """Run the tool once in the sandbox with its limits. ``payload`` must match the tool's input schema
        (``InvalidArguments`` naming each JSON path otherwise). A tool that cannot run yet (not built, a
        build in progress, deactivated) or no sandbox here is a ``Conflict``; the tool failing (exit
        status, timeout, output that breaks its output schema) is a result with ``ok`` false."""
        tool = await self.get(tenant_id, tool_id)
        problems = validate_document(tool.input_schema, payload, "input")
        if problems:
            raise InvalidArguments(problems)
        if not tool.is_active:
            raise Conflict(f"tool '{tool_id}' is deactivated")
        ref = tool_ref(tool)
        if ref.image is None and ref.script is None:
            state = "is being built" if tool.build_status in IN_PROGRESS else "has not been built"
            raise Conflict(f"tool '{tool_id}' {state}; it can run once its build is ready")
        if self.sandbox is None:
            raise Conflict("no tool sandbox is available here (no Docker engine and no bubblewrap)")
        logs: list[str] = []
        emit = _log_collector(logs)
        work = ToolWork(tenant_id, f"test:{tool_id}:{self.ids.new_id()}", "test", 1, ref, payload,
                        ref.limits.timeout)  # fmt: skip
        started = self.clock.now()
        try:
            outcome = await self.sandbox.run_tool(work, emit)
        except NodeExecutionError as exc:
            return ToolTestResult(False, None, str(exc), tuple(logs), max(0.0, self.clock.now() - started))
        duration = max(0.0, self.clock.now() - started)
        wrong = validate_document(tool.output_schema, outcome.output, "output")
        if wrong:
            return ToolTestResult(False, outcome.output, "the output does not match the output schema: "
                                  + "; ".join(str(p) for p in wrong[:5]), tuple(logs), duration)  # fmt: skip
        return ToolTestResult(True, outcome.output, None, tuple(logs), duration)


def _log_collector(logs: list[str]) -> Callable[[EventKind, Mapping[str, Any]], None]:
    lock = threading.Lock()

    def emit(kind: EventKind, data: Mapping[str, Any]) -> None:
        if kind != EventKind.NODE_LOG:
            return
        text = data.get("line", data.get("text", data.get("message")))
        line = str(text) if text is not None else " ".join(f"{k}={v}" for k, v in data.items())
        with lock:
            if len(logs) < 1000:
                logs.append(line[:4000])

    return emit
