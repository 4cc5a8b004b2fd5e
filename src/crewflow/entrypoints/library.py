"""The embeddable Python API: build or load a flow and run it in-process, no server needed.

    import crewflow
    flow = crewflow.load_flow("examples/research_write.yaml")
    result = crewflow.run(flow, inputs={"topic": "solar power"})
    print(result.status, result.outputs)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from crewflow.application.engine import Engine
from crewflow.application.results import RunResult
from crewflow.domain.codec import flow_from_dict
from crewflow.domain.errors import FlowFormatError, Problem
from crewflow.domain.events import ExecutionEvent
from crewflow.domain.flow import Flow, NodeKind
from crewflow.ports.runtime import AgentRuntime, ToolSandbox

__all__ = ["FlowSource", "arun", "load_flow", "run", "stream"]

FlowSource = Flow | Mapping[str, Any] | str | Path


def load_flow(source: FlowSource) -> Flow:
    """A ``Flow`` from a Flow, a mapping, a path to a YAML/JSON file, or YAML/JSON text."""
    if isinstance(source, Flow):
        return source
    if isinstance(source, Mapping):
        return flow_from_dict(source)
    text: str
    if isinstance(source, Path) or ("\n" not in source and not source.lstrip().startswith("{")):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FlowFormatError([Problem("file", f"no such file: {path}")]) from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise FlowFormatError([Problem("file", f"cannot read {path}: {exc}")]) from None
        if path.suffix == ".json":
            return flow_from_dict(_parse_json(text))
    else:
        text = source
    return flow_from_dict(_parse_yaml(text))


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlowFormatError([Problem("json", f"line {exc.lineno} column {exc.colno}: {exc.msg}")]) from None


def _parse_yaml(text: str) -> Any:
    import yaml  # imported here: only flow files need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise FlowFormatError([Problem("yaml", f"{where}{getattr(exc, 'problem', None) or exc}")]) from None


def _engine(runtime: AgentRuntime | None, tools: ToolSandbox | None) -> Engine:
    from crewflow.bootstrap import build_engine

    return build_engine(runtime=runtime, tools=tools)


async def _sandbox_for(flow: Flow, tools: ToolSandbox | None, stack: AsyncExitStack) -> ToolSandbox | None:
    """``tools`` if given; else, for a flow with tool nodes or agents with tools, this machine's sandbox
    (Docker or bubblewrap, released with ``stack``). Tools never run unsandboxed."""
    needs = any(n.kind == NodeKind.TOOL for n in flow.nodes) or any(a.tools for a in flow.agents.values())
    if tools is not None or not needs:
        return tools
    from crewflow.entrypoints.cli_tools import open_local_tools
    from crewflow.settings import Settings

    local = await stack.enter_async_context(open_local_tools(Settings.from_env().extra))
    return local.sandbox


async def arun(
    flow: FlowSource,
    inputs: Mapping[str, Any] | None = None,
    *,
    runtime: AgentRuntime | None = None,
    tools: ToolSandbox | None = None,
    on_event: Callable[[ExecutionEvent], None] | None = None,
    max_parallel: int | None = None,
    timeout: float | None = None,
    execution_id: str | None = None,
    seed: int | None = None,
) -> RunResult:
    """Run a flow to its end on the current event loop. Raises ``FlowInvalid`` for an invalid flow. Tool
    nodes run in ``tools`` or, by default, in this machine's sandbox."""
    loaded = load_flow(flow)
    async with AsyncExitStack() as stack:
        sandbox = await _sandbox_for(loaded, tools, stack)
        return await _engine(runtime, sandbox).run(
            loaded, inputs, listeners=(on_event,) if on_event else (), max_parallel=max_parallel,
            timeout=timeout, execution_id=execution_id, seed=seed,
        )  # fmt: skip


def run(flow: FlowSource, inputs: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
    """Blocking ``arun`` for scripts. Use ``await arun(...)`` inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(flow, inputs, **options))
    raise RuntimeError("crewflow.run() was called inside a running event loop; use 'await crewflow.arun(...)'")


async def stream(
    flow: FlowSource,
    inputs: Mapping[str, Any] | None = None,
    *,
    runtime: AgentRuntime | None = None,
    tools: ToolSandbox | None = None,
    max_parallel: int | None = None,
    timeout: float | None = None,
) -> AsyncIterator[ExecutionEvent]:
    """Run a flow and yield its events live, ending with the run's terminal event."""
    loaded = load_flow(flow)
    async with AsyncExitStack() as stack:
        sandbox = await _sandbox_for(loaded, tools, stack)
        handle = _engine(runtime, sandbox).start(loaded, inputs, max_parallel=max_parallel, timeout=timeout)
        try:
            async for event in handle.events():
                yield event
        finally:
            handle.cancel("stream closed")
            await handle.result()
