"""Flow documents (the YAML/JSON flow file format, also the API's flow body) to and from the domain model.

Every problem in a document is reported, each naming where it is (``nodes[2].retry.max_attempts``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from crewflow.domain.agents import Agent, Crew, CrewTask, Process, ToolLimits, ToolRef
from crewflow.domain.errors import FlowFormatError, Problem
from crewflow.domain.flow import Edge, Flow, InputSpec, Node, NodeKind, RetryPolicy, Route

__all__ = ["flow_from_dict", "flow_to_dict"]

T = TypeVar("T")

_NODE_KEYS = {
    "id", "kind", "label", "agent", "crew", "tool", "task", "expected_output", "inputs", "routes",
    "default", "value", "retry", "timeout", "position",
}  # fmt: skip
_FLOW_KEYS = {
    "id", "name", "description", "version", "inputs", "agents", "crews", "tools", "nodes", "edges",
    "max_parallel", "timeout", "schema",
}  # fmt: skip


class _Reader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem("format", message, where))

    def get(self, data: Mapping[str, Any], key: str, kind: type[T] | tuple[type, ...], where: str,
            default: Any = None, required: bool = False) -> Any:  # fmt: skip
        if key not in data or data[key] is None:
            if required:
                self.problem(f"{where}.{key}".lstrip("."), "is required")
            return default
        value = data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and kind in (int, float):
            self.problem(f"{where}.{key}".lstrip("."), f"must be a {_friendly(getattr(kind, '__name__', ''))}")
            return default
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problem(f"{where}.{key}".lstrip("."), f"must be a {_friendly(names)}, got {type(value).__name__}")
            return default
        return value

    def build(self, where: str, factory: Callable[[], T]) -> T | None:
        try:
            return factory()
        except (ValueError, TypeError) as exc:
            self.problem(where, str(exc))
            return None


def _friendly(names: str) -> str:
    return names.replace("str", "string").replace("dict", "mapping").replace("list", "list").replace("int", "integer")


def _entries(reader: _Reader, data: Mapping[str, Any], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """A definitions section: a mapping id → body, or a list of bodies each with an ``id``."""
    raw = data.get(key)
    if raw is None:
        return []
    out: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(raw, Mapping):
        for ident, body in raw.items():
            if not isinstance(body, Mapping):
                reader.problem(f"{key}.{ident}", "must be a mapping")
            else:
                out.append((str(ident), body))
    elif isinstance(raw, list):
        for index, body in enumerate(raw):
            if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
                reader.problem(f"{key}[{index}]", "must be a mapping with a string 'id'")
            else:
                out.append((body["id"], body))
    else:
        reader.problem(key, "must be a mapping of id to definition, or a list")
    return out


def _strings(reader: _Reader, body: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = reader.get(body, key, list, where, default=[])
    if not all(isinstance(v, str) for v in value):
        reader.problem(f"{where}.{key}", "must be a list of strings")
        return ()
    return tuple(value)


def _agent(reader: _Reader, ident: str, body: Mapping[str, Any]) -> Agent | None:
    w = f"agents.{ident}"
    return reader.build(w, lambda: Agent(
        id=ident,
        role=reader.get(body, "role", str, w, "", required=True),
        goal=reader.get(body, "goal", str, w, "", required=True),
        backstory=reader.get(body, "backstory", str, w, ""),
        provider=reader.get(body, "provider", str, w),
        model=reader.get(body, "model", str, w),
        tools=_strings(reader, body, "tools", w),
        allow_delegation=reader.get(body, "allow_delegation", bool, w, False),
        max_iter=reader.get(body, "max_iter", int, w, 20),
        temperature=reader.get(body, "temperature", float, w),
        cache=reader.get(body, "cache", bool, w, True),
    ))  # fmt: skip


def _crew(reader: _Reader, ident: str, body: Mapping[str, Any]) -> Crew | None:
    w = f"crews.{ident}"
    tasks: list[CrewTask] = []
    for index, task in enumerate(reader.get(body, "tasks", list, w, [], required=True)):
        tw = f"{w}.tasks[{index}]"
        if not isinstance(task, Mapping):
            reader.problem(tw, "must be a mapping")
            continue
        tasks.append(CrewTask(
            name=reader.get(task, "name", str, tw, f"task_{index + 1}"),
            description=reader.get(task, "description", str, tw, "", required=True),
            expected_output=reader.get(task, "expected_output", str, tw, ""),
            agent=reader.get(task, "agent", str, tw),
            context=_strings(reader, task, "context", tw),
        ))  # fmt: skip
    process = reader.get(body, "process", str, w, "sequential")
    if process not in {p.value for p in Process}:
        reader.problem(f"{w}.process", "must be 'sequential' or 'hierarchical'")
        process = "sequential"
    return reader.build(w, lambda: Crew(
        id=ident,
        agents=_strings(reader, body, "agents", w),
        tasks=tuple(tasks),
        process=Process(process),
        description=reader.get(body, "description", str, w, ""),
        manager_provider=reader.get(body, "manager_provider", str, w),
    ))  # fmt: skip


_LIMIT_TYPES: dict[str, type] = {"timeout": float, "memory_mb": int, "cpus": float, "pids": int, "tmpfs_mb": int,
                                  "output_bytes": int}  # the fields of ``ToolLimits``


def _limits(reader: _Reader, body: Mapping[str, Any], where: str) -> ToolLimits | None:
    raw = reader.get(body, "limits", dict, where, {})
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _LIMIT_TYPES:
            reader.problem(f"{where}.limits.{key}", f"is not a tool limit (one of {', '.join(_LIMIT_TYPES)})")
        else:
            value = reader.get(raw, key, _LIMIT_TYPES[key], f"{where}.limits")
            if value is not None:
                values[key] = value
    return reader.build(f"{where}.limits", lambda: ToolLimits(**values))


def _tool(reader: _Reader, ident: str, body: Mapping[str, Any]) -> ToolRef | None:
    w = f"tools.{ident}"
    limits = _limits(reader, body, w)
    warm_pool = reader.get(body, "warm_pool", int, w, 0)
    if not 0 <= warm_pool <= 16:
        reader.problem(f"{w}.warm_pool", "must be between 0 and 16")
    script = reader.get(body, "script", str, w)
    if script is not None and not script.strip():
        reader.problem(f"{w}.script", "must not be empty")
    return reader.build(w, lambda: ToolRef(
        id=ident,
        description=reader.get(body, "description", str, w, ""),
        input_schema=reader.get(body, "input_schema", dict, w, {}),
        output_schema=reader.get(body, "output_schema", dict, w, {}),
        image=reader.get(body, "image", str, w),
        script=script,
        limits=limits or ToolLimits(),
        warm_pool=warm_pool,
    ))  # fmt: skip


def _node(reader: _Reader, index: int, body: Any) -> Node | None:
    w = f"nodes[{index}]"
    if not isinstance(body, Mapping):
        reader.problem(w, "must be a mapping")
        return None
    for key in sorted(map(str, set(body) - _NODE_KEYS)):  # str: YAML allows keys such as 1 next to "id"
        reader.problem(f"{w}.{key}", "is not a node field")
    ident = reader.get(body, "id", str, w, "", required=True)
    if ident:
        w = f"nodes[{index}] '{ident}'"
    kind = reader.get(body, "kind", str, w, "", required=True)
    if kind and kind not in {k.value for k in NodeKind}:
        reader.problem(f"{w}.kind", f"'{kind}' is not one of {', '.join(k.value for k in NodeKind)}")
        return None
    if not ident or not kind:
        return None
    inputs = reader.get(body, "inputs", dict, w, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items()):
        reader.problem(f"{w}.inputs", "must map names to template strings")
        inputs = {}
    routes: list[Route] = []
    for r_index, route in enumerate(reader.get(body, "routes", list, w, [])):
        rw = f"{w}.routes[{r_index}]"
        if not isinstance(route, Mapping):
            reader.problem(rw, "must be a mapping with 'when' and 'to'")
            continue
        when = reader.get(route, "when", str, rw, "", required=True)
        to = reader.get(route, "to", str, rw, "", required=True)
        if when and to:
            routes.append(Route(when=when, to=to))
    retry_body = reader.get(body, "retry", dict, w, {})
    retry = reader.build(f"{w}.retry", lambda: RetryPolicy(
        max_attempts=reader.get(retry_body, "max_attempts", int, f"{w}.retry", 1),
        initial_delay=reader.get(retry_body, "initial_delay", float, f"{w}.retry", 0.5),
        multiplier=reader.get(retry_body, "multiplier", float, f"{w}.retry", 2.0),
        max_delay=reader.get(retry_body, "max_delay", float, f"{w}.retry", 30.0),
        jitter=reader.get(retry_body, "jitter", float, f"{w}.retry", 0.2),
    ))  # fmt: skip
    timeout = reader.get(body, "timeout", float, w)
    if timeout is not None and not (0 < timeout < math.inf):  # also refuses YAML's .nan and .inf
        reader.problem(f"{w}.timeout", "must be positive (seconds)")
    position = reader.get(body, "position", (list, dict), w)
    pos: tuple[float, float] | None = None
    if isinstance(position, dict):
        position = [position.get("x"), position.get("y")]
    if position is not None:
        if len(position) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in position):
            pos = (float(position[0]), float(position[1]))
        else:
            reader.problem(f"{w}.position", "must be [x, y] or {x: .., y: ..}")
    return Node(
        id=ident,
        kind=NodeKind(kind),
        label=reader.get(body, "label", str, w, ""),
        agent=reader.get(body, "agent", str, w),
        crew=reader.get(body, "crew", str, w),
        tool=reader.get(body, "tool", str, w),
        task=reader.get(body, "task", str, w, ""),
        expected_output=reader.get(body, "expected_output", str, w, ""),
        inputs=dict(inputs),
        routes=tuple(routes),
        default=reader.get(body, "default", str, w),
        value=reader.get(body, "value", str, w),
        retry=retry or RetryPolicy(),
        timeout=timeout,
        position=pos,
    )


def _edge(reader: _Reader, index: int, body: Any) -> Edge | None:
    w = f"edges[{index}]"
    if isinstance(body, str):
        parts = [p.strip() for p in body.split("->")]
        if len(parts) == 2 and all(parts):
            return Edge(parts[0], parts[1])
        reader.problem(w, f"'{body}' is not 'source -> target'")
        return None
    if isinstance(body, list) and len(body) == 2 and all(isinstance(v, str) for v in body):
        return Edge(body[0], body[1])
    if isinstance(body, Mapping):
        source = body.get("from", body.get("source"))
        target = body.get("to", body.get("target"))
        if isinstance(source, str) and isinstance(target, str):
            return Edge(source, target)
    reader.problem(w, "must be 'a -> b', [a, b] or {from: a, to: b}")
    return None


def _inputs(reader: _Reader, data: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    raw = data.get("inputs")
    specs: list[InputSpec] = []
    if raw is None:
        return ()
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            if isinstance(item, str):
                specs.append(InputSpec(item, required=True))
            elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
                specs.append(_input_spec(reader, item["name"], item))
            else:
                reader.problem(f"inputs[{index}]", "must be a name or a mapping with 'name'")
    elif isinstance(raw, Mapping):
        for name, item in raw.items():
            specs.append(_input_spec(reader, str(name), item if isinstance(item, Mapping) else {"default": item}))
    else:
        reader.problem("inputs", "must be a list or a mapping")
    return tuple(specs)


def _input_spec(reader: _Reader, name: str, body: Mapping[str, Any]) -> InputSpec:
    default = body.get("default")
    return InputSpec(
        name=name,
        description=reader.get(body, "description", str, f"inputs.{name}", ""),
        default=default,
        required=reader.get(body, "required", bool, f"inputs.{name}", default is None),
    )


def flow_from_dict(data: Any, *, flow_id: str | None = None) -> Flow:
    """Read a flow document. Raises ``FlowFormatError`` listing every shape problem found."""
    reader = _Reader()
    if not isinstance(data, Mapping):
        raise FlowFormatError([Problem("format", "a flow document must be a mapping at the top level")])
    for key in sorted(map(str, set(data) - _FLOW_KEYS)):
        reader.problem(key, "is not a flow field")
    agents = {i: a for i, b in _entries(reader, data, "agents") if (a := _agent(reader, i, b))}
    crews = {i: c for i, b in _entries(reader, data, "crews") if (c := _crew(reader, i, b))}
    tools = {i: t for i, b in _entries(reader, data, "tools") if (t := _tool(reader, i, b))}
    raw_nodes = reader.get(data, "nodes", list, "", [], required=True)
    nodes = [n for i, b in enumerate(raw_nodes) if (n := _node(reader, i, b))]
    edges = [e for i, b in enumerate(reader.get(data, "edges", list, "", [])) if (e := _edge(reader, i, b))]
    name = reader.get(data, "name", str, "", "")
    ident = flow_id or reader.get(data, "id", str, "", "") or _slug(name) or "flow"
    run_timeout = reader.get(data, "timeout", float, "", None)
    if run_timeout is not None and not (0 < run_timeout < math.inf):
        reader.problem("timeout", "must be positive (seconds)")
    flow = reader.build("flow", lambda: Flow(
        id=ident,
        name=name if "name" in data and data["name"] is not None else ident,
        description=reader.get(data, "description", str, "", ""),
        version=reader.get(data, "version", int, "", 1),
        inputs=_inputs(reader, data),
        nodes=tuple(nodes),
        edges=tuple(edges),
        agents=agents,
        crews=crews,
        tools=tools,
        max_parallel=reader.get(data, "max_parallel", int, "", 8),
        timeout=run_timeout,
    ))  # fmt: skip
    if reader.problems or flow is None:
        raise FlowFormatError(reader.problems)
    return flow


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def flow_to_dict(flow: Flow) -> dict[str, Any]:
    """The canonical document of a flow (what ``flow_from_dict`` reads back to an equal flow)."""
    doc: dict[str, Any] = {"id": flow.id, "name": flow.name, "version": flow.version}
    if flow.description:
        doc["description"] = flow.description
    if flow.inputs:
        doc["inputs"] = [
            {"name": s.name, "description": s.description, "default": s.default, "required": s.required}
            for s in flow.inputs
        ]
    if flow.agents:
        doc["agents"] = {
            a.id: {
                "role": a.role, "goal": a.goal, "backstory": a.backstory, "provider": a.provider, "model": a.model,
                "tools": list(a.tools), "allow_delegation": a.allow_delegation, "max_iter": a.max_iter,
                "temperature": a.temperature, "cache": a.cache,
            }
            for a in flow.agents.values()
        }  # fmt: skip
    if flow.crews:
        doc["crews"] = {
            c.id: {
                "process": c.process.value, "agents": list(c.agents), "description": c.description,
                "manager_provider": c.manager_provider,
                "tasks": [
                    {"name": t.name, "description": t.description, "expected_output": t.expected_output,
                     "agent": t.agent, "context": list(t.context)}
                    for t in c.tasks
                ],
            }
            for c in flow.crews.values()
        }  # fmt: skip
    if flow.tools:
        doc["tools"] = {t.id: _tool_doc(t) for t in flow.tools.values()}
    doc["nodes"] = [_node_doc(n) for n in flow.nodes]
    doc["edges"] = [{"from": e.source, "to": e.target} for e in flow.edges]
    doc["max_parallel"] = flow.max_parallel
    if flow.timeout is not None:
        doc["timeout"] = flow.timeout
    return doc


def _tool_doc(tool: ToolRef) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": tool.description, "input_schema": dict(tool.input_schema),
                           "output_schema": dict(tool.output_schema), "image": tool.image}  # fmt: skip
    if tool.script is not None:
        doc["script"] = tool.script
    defaults = ToolLimits()
    limits = {k: getattr(tool.limits, k) for k in _LIMIT_TYPES if getattr(tool.limits, k) != getattr(defaults, k)}
    if limits:
        doc["limits"] = limits
    if tool.warm_pool:
        doc["warm_pool"] = tool.warm_pool
    return doc


def _node_doc(node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": node.id, "kind": node.kind.value}
    for key in ("label", "task", "expected_output"):
        if getattr(node, key):
            doc[key] = getattr(node, key)
    for key in ("agent", "crew", "tool", "default", "value", "timeout"):  # optional: "" differs from None
        if getattr(node, key) is not None:
            doc[key] = getattr(node, key)
    if node.inputs:
        doc["inputs"] = dict(node.inputs)
    if node.routes:
        doc["routes"] = [{"when": r.when, "to": r.to} for r in node.routes]
    if node.retry != RetryPolicy():
        r = node.retry
        doc["retry"] = {"max_attempts": r.max_attempts, "initial_delay": r.initial_delay,
                        "multiplier": r.multiplier, "max_delay": r.max_delay, "jitter": r.jitter}  # fmt: skip
    if node.position is not None:
        doc["position"] = list(node.position)
    return doc
