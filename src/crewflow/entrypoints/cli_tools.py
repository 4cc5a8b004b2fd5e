"""``crewflow tools build`` and ``crewflow tools run``: build a tool's image and run a tool once, locally.

A tool directory holds ``tool.yaml`` (or ``tool.yml``/``tool.json``)::

    name: wordcount
    description: Count the words of a text
    input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
    output_schema: {type: object, properties: {words: {type: integer}}}
    script: wc.py            # optional: a Python file of the directory, run as the tool (no build needed)
    limits: {timeout: 10}    # optional: the sandbox limits (docs/flow-format.md)

plus, for an image tool, a ``Dockerfile`` and the files it copies (every other file of the directory is the
build context). ``PATH_OR_NAME`` that is not a directory names a tool registered in the tenant's database
(``--tenant``, ``--database-url``): ``build`` builds it (the build runs here, not on a worker) and ``run``
test-runs it like ``POST /api/v1/tools/{id}/test``.

Exit codes: 0 success; 1 the build or the tool failed (one line on stderr: the reason); 2 invalid input
(unreadable tool directory, bad JSON, an input the tool's schema refuses, no sandbox/builder here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crewflow.domain.errors import Conflict, DomainError, NodeExecutionError, NotFound, ToolBuildError
from crewflow.domain.events import EventKind
from crewflow.ports.runtime import BuiltImage, ToolBuilder, ToolBuildSpec, ToolSandbox

if TYPE_CHECKING:
    from crewflow.application.tools import ToolDraft  # imported when a tool directory is read: CLI start-up stays light

__all__ = ["LocalTools", "cmd_build", "cmd_run", "load_tool_dir", "open_local_tools", "register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MANIFESTS = ("tool.yaml", "tool.yml", "tool.json")
LOCAL_TENANT = "local"


class ToolDirError(Exception):
    """The tool directory cannot be read (reported as one line, exit 2)."""


@dataclass
class LocalTools:
    """The sandbox and image builder of this machine (``builder`` None: no Docker engine answers here)."""

    sandbox: ToolSandbox
    builder: ToolBuilder | None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()


@asynccontextmanager
async def open_local_tools(extra: Mapping[str, str]) -> AsyncIterator[LocalTools]:
    """This machine's sandbox (Docker if an engine answers, bubblewrap for script tools) and builder (Docker
    only). The sandbox adapters are imported here, not at module level: aiodocker is heavy."""
    from crewflow.adapters.metrics.memory import NoopMetrics
    from crewflow.adapters.sandbox import open_sandbox

    sandbox = await asyncio.to_thread(open_sandbox, extra, NoopMetrics())
    local = LocalTools(sandbox, sandbox.docker, [sandbox.close])  # its Docker engine builds (closed with it)
    try:
        yield local
    finally:
        await local.aclose()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tools = subparsers.add_parser("tools", help="build and try tools (a tool directory or a registered tool)")
    commands = tools.add_subparsers(dest="tools_command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tenant", help="tenant id of a registered tool (default: $CREWFLOW_TENANT or local)")
    common.add_argument("--database-url", help="database of registered tools (default: $CREWFLOW_DATABASE_URL, "
                        "else the embedded SQLite file)")  # fmt: skip
    build = commands.add_parser("build", parents=[common], help="build a tool's image; prints the image",
                                description="Build the image of a tool directory (its Dockerfile and the other "
                                "files as context) or of a registered tool, showing the build log on stderr.")
    build.add_argument("tool", metavar="PATH_OR_NAME")
    build.add_argument("--quiet", "-q", action="store_true", help="no build log")
    build.set_defaults(func=cmd_build)
    run = commands.add_parser("run", parents=[common], help="run a tool once in the sandbox; prints its output",
                              description="Run a tool once in the local sandbox with its limits and print its JSON "
                              "output (a Dockerfile tool directory is built first).")
    run.add_argument("tool", metavar="NAME_OR_DIR")
    run.add_argument("--input", "-i", required=True, metavar="JSON", help="the input document (JSON)")
    run.set_defaults(func=cmd_run)


# -- reading a tool directory ------------------------------------------------------------------------------
def load_tool_dir(path: Path) -> ToolDraft:
    """Read a tool directory; raises ``ToolDirError`` naming what is wrong."""
    import yaml

    manifest = next((path / m for m in MANIFESTS if (path / m).is_file()), None)
    if manifest is None:
        raise ToolDirError(f"{path}: no {' / '.join(MANIFESTS)} in the directory")
    try:
        raw = manifest.read_text()
        data = json.loads(raw) if manifest.suffix == ".json" else yaml.safe_load(raw)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ToolDirError(f"{manifest}: cannot be read ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ToolDirError(f"{manifest}: must be a mapping")
    unknown = sorted(set(data) - {"name", "description", "input_schema", "output_schema", "script", "limits"})
    if unknown:
        raise ToolDirError(f"{manifest}: unknown field(s) {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ToolDirError(f"{manifest}: 'name' is required")
    for key in ("input_schema", "output_schema", "limits"):
        if not isinstance(data.get(key, {}), dict):
            raise ToolDirError(f"{manifest}: '{key}' must be a mapping")
    script = None
    if data.get("script") is not None:
        script_path = path / str(data["script"])
        if not script_path.is_file() or path.resolve() not in script_path.resolve().parents:
            raise ToolDirError(f"{manifest}: script '{data['script']}' is not a file of the tool directory")
        script = script_path.read_text()
    dockerfile_path = path / "Dockerfile"
    dockerfile = dockerfile_path.read_text() if dockerfile_path.is_file() else None
    if dockerfile is None and script is None:
        raise ToolDirError(f"{path}: needs a Dockerfile or a script")
    context: dict[str, str] = {}
    if dockerfile is not None:
        skip = {manifest.name, "Dockerfile"}
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path).as_posix()
            if relative in skip or any(part.startswith(".") for part in file.relative_to(path).parts):
                continue
            try:
                context[relative] = file.read_text()
            except UnicodeDecodeError:
                raise ToolDirError(f"{file}: build context files must be text") from None
    from crewflow.application.tools import ToolDraft

    return ToolDraft(name=name, input_schema=data.get("input_schema") or {}, output_schema=data.get("output_schema")
                   or {}, description=str(data.get("description") or ""), script=script, dockerfile=dockerfile,
                   context=context, limits=data.get("limits") or {})  # fmt: skip


def _check_tool_dir(tool: ToolDraft) -> None:
    from crewflow.application.tools import check_tool
    from crewflow.domain.execution import ToolRecord

    record = ToolRecord(id=tool.name, name=tool.name, created_at=0.0, updated_at=0.0, description=tool.description,
                        input_schema=tool.input_schema, output_schema=tool.output_schema, dockerfile=tool.dockerfile,
                        script=tool.script, context=tool.context, limits=tool.limits)  # fmt: skip
    problems = check_tool(record)
    if problems:
        raise ToolDirError("; ".join(str(p) for p in problems))


# -- commands ----------------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    return _main(lambda: _build(args, _tool_dir(args.tool)))


def cmd_run(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.input)
    except json.JSONDecodeError as exc:
        return _fail(EXIT_USAGE, f"--input is not valid JSON ({exc.msg})")
    return _main(lambda: _run(args, _tool_dir(args.tool), payload))


def _tool_dir(argument: str) -> ToolDraft | None:
    """The tool directory ``argument`` names, checked; None when it names no directory (a registered tool)."""
    path = Path(argument)
    if not path.is_dir():
        return None
    tool = load_tool_dir(path)
    _check_tool_dir(tool)
    return tool


def _main(work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from crewflow.application.executions import InvalidArguments

    try:
        return asyncio.run(work())
    except ToolDirError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except InvalidArguments as exc:
        return _fail(EXIT_USAGE, "the input does not match the tool's input schema: " + "; ".join(
            str(p) for p in exc.problems))  # fmt: skip
    except (Conflict, NotFound) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except ToolBuildError as exc:
        return _fail(EXIT_FAILED, f"build failed: {exc}")
    except (NodeExecutionError, DomainError) as exc:
        return _fail(EXIT_FAILED, str(exc))


def _fail(code: int, message: str) -> int:
    print(f"crewflow tools: {_first_line(message)}", file=sys.stderr)
    return code


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(text).__name__


def _log_line(quiet: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not quiet:
            print(line.rstrip("\n"), file=sys.stderr)

    return log


async def _build(args: argparse.Namespace, tool: ToolDraft | None) -> int:
    from crewflow.settings import Settings

    settings = Settings.from_env()
    async with open_local_tools(settings.extra) as local:
        if tool is None:
            return await _build_registered(args, settings, local)
        if tool.dockerfile is None:
            print(f"{tool.name}: a script tool, nothing to build", file=sys.stderr)
            return EXIT_OK
        built = await _build_dir(tool, local, _log_line(args.quiet))
        print(built.image)
        return EXIT_OK


async def _build_dir(tool: ToolDraft, local: LocalTools, log: Callable[[str], None]) -> BuiltImage:
    if local.builder is None:
        raise Conflict("no image builder is available here (no Docker engine answers)")
    assert tool.dockerfile is not None
    spec = ToolBuildSpec(LOCAL_TENANT, tool.name, 1, tool.dockerfile,
                         {name: text.encode() for name, text in tool.context.items()})  # fmt: skip
    return await local.builder.build(spec, log)


async def _run(args: argparse.Namespace, tool: ToolDraft | None, payload: Any) -> int:
    from crewflow.settings import Settings

    settings = Settings.from_env()
    async with open_local_tools(settings.extra) as local:
        if tool is None:
            return await _run_registered(args, settings, local, payload)
        image = None
        if tool.dockerfile is not None:
            built = await _build_dir(tool, local, _log_line(quiet=True))
            image = built.image
        return await _run_dir(tool, image, local, payload)


async def _run_dir(tool: ToolDraft, image: str | None, local: LocalTools, payload: Any) -> int:
    from crewflow.application.catalog import tool_limits
    from crewflow.application.executions import InvalidArguments
    from crewflow.application.tools import validate_document
    from crewflow.domain.agents import ToolRef
    from crewflow.ports.runtime import ToolWork

    problems = validate_document(tool.input_schema, payload, "input")
    if problems:
        raise InvalidArguments(problems)
    ref = ToolRef(id=tool.name, description=tool.description, input_schema=tool.input_schema,
                  output_schema=tool.output_schema, image=image, script=tool.script,
                  limits=tool_limits(tool.limits))  # fmt: skip

    def emit(kind: EventKind, data: Mapping[str, Any]) -> None:
        if kind == EventKind.NODE_LOG:
            print(f"[{tool.name}] {data.get('line', data.get('text', dict(data)))}", file=sys.stderr)

    work = ToolWork(LOCAL_TENANT, f"cli:{tool.name}", tool.name, 1, ref, payload, ref.limits.timeout)
    outcome = await local.sandbox.run_tool(work, emit)
    print(json.dumps(outcome.output, ensure_ascii=False))
    return EXIT_OK


# -- registered tools --------------------------------------------------------------------------------------
@asynccontextmanager
async def _service(args: argparse.Namespace, settings: Any, local: LocalTools) -> AsyncIterator[Any]:
    from crewflow.adapters.sql.uow import build_uow_factory
    from crewflow.adapters.system import SystemClock, UuidGenerator
    from crewflow.application.tools import ToolService
    from crewflow.ports.queue import BuildTool

    factory = build_uow_factory(args.database_url or settings.effective_database_url, pool_size=2)
    service = ToolService(factory, SystemClock(), UuidGenerator(), builder=local.builder, sandbox=local.sandbox)

    class _Here:
        """Builds run in this process, at once (a ``ToolBuildQueue`` whose worker is the caller)."""

        async def enqueue_build(self, job: BuildTool) -> None:
            await service.run_build(job)

    service.builds = _Here()
    try:
        yield service
    finally:
        await factory.close()


async def _build_registered(args: argparse.Namespace, settings: Any, local: LocalTools) -> int:
    tenant = args.tenant or settings.tenant
    async with _service(args, settings, local) as service:
        await service.request_build(tenant, args.tool, rebuild=True)
        tool = await service.get(tenant, args.tool)
    if not args.quiet and tool.build_log:
        print(tool.build_log, file=sys.stderr)
    if tool.build_status != "ready":
        return _fail(EXIT_FAILED, f"build failed: {tool.build_error}")
    print(tool.image_digest or tool.docker_image or f"{tool.name}: nothing to build")
    return EXIT_OK


async def _run_registered(args: argparse.Namespace, settings: Any, local: LocalTools, payload: Any) -> int:
    tenant = args.tenant or settings.tenant
    async with _service(args, settings, local) as service:
        result = await service.test_run(tenant, args.tool, payload)
    for line in result.logs:
        print(f"[{args.tool}] {line}", file=sys.stderr)
    if not result.ok:
        return _fail(EXIT_FAILED, result.error or "the tool failed")
    print(json.dumps(result.output, ensure_ascii=False))
    return EXIT_OK
