"""Import and export of CrewAI definitions. Pure Python and PyYAML: crewai itself is never imported here.

Two CrewAI formats are read and written:

* **A crew project** (``config/agents.yaml`` + ``config/tasks.yaml``) becomes a flow with *one crew node*
  (``input -> <crew> -> output``). One crew node, not a chain of agent nodes, because it keeps CrewAI's own
  semantics: ``{placeholders}`` are filled by CrewAI in agent role/goal/backstory as well as in tasks (agent
  nodes have fixed agents), ``context`` between tasks and the sequential default (each task sees the previous
  task's output) stay exactly as CrewAI runs them, a hierarchical process stays possible, and export gives
  back the same two files. Every ``{placeholder}`` becomes a declared, required flow input passed to the crew
  node as ``{{ inputs.<name> }}``. What the YAML does not say (``crew.py`` usually sets it) is assumed and
  reported as a note: tasks without ``agent:`` are assigned in order (task *i* → agent *i mod n*) unless
  ``assign`` maps them, and tasks without ``context`` get CrewAI's sequential default.

* **A declarative flow** (``schema: crewai.flow/v1``, the format of ``crewai.flow.flow_definition``) becomes a
  crewflow flow where representable: ``state`` (json_schema or dict) → flow inputs; a method with
  ``call: crew`` (inline ``with``) → a crew node, ``call: agent`` → an agent node; ``start: true`` → an edge
  from the input node; ``listen: <method>`` / ``listen: {and: [...]}`` → edges; ``router: true`` + ``emit`` →
  the method's node followed by a router node ``<method>__route`` whose routes compare the answer with each
  event (``listen: <event>`` and ``listen: {or: [events of one router]}``); an answer matching no listened
  event ends at an output node ``<method>__end``, as the CrewAI flow would simply stop. ``${state.x}`` →
  ``{{ inputs.x }}``, ``${outputs.m}``/``${outputs.m.raw}`` → ``{{ nodes.m.output }}``. Every other construct
  (``call: tool|code|script|expression|each``, ``from_declaration``, ``human_feedback``, ``conversational``,
  conditional ``start``, ``or`` across methods, CEL beyond plain paths, ...) is reported as an error naming
  where it is; all errors of a document are reported together.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crewflow.domain.agents import Agent, Crew, CrewTask, Process, ToolRef
from crewflow.domain.codec import flow_to_dict
from crewflow.domain.errors import DomainError
from crewflow.domain.flow import Edge, Flow, InputSpec, Node, NodeKind, Route
from crewflow.domain.templates import references
from crewflow.domain.validation import validate_flow

__all__ = [
    "FLOW_SCHEMA",
    "ExportResult",
    "ImportResult",
    "InteropError",
    "export_crewai",
    "export_crewai_flow",
    "export_crewai_project",
    "import_crewai_flow",
    "import_crewai_path",
    "import_crewai_project",
    "write_export",
]

FLOW_SCHEMA = "crewai.flow/v1"
INPUT_NODE = "inputs"
OUTPUT_NODE = "result"
ROUTE_SUFFIX = "__route"
END_SUFFIX = "__end"
SINK_SUFFIX = "__out"
EXPECTED_MARKER = "\n\nExpected output: "
DEFAULT_MAX_ITER = 20

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)}")  # CrewAI's interpolation pattern
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CEL = re.compile(r"\$\{([^}]*)}")
_PATH = re.compile(r"^(state|outputs)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)$")
_ROUTE_WHEN = re.compile(r"^strip\(str\(nodes\.([A-Za-z_][A-Za-z0-9_-]*)\.output\)\) == '([^'\\]*)'$")
_EVENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .:-]*$")
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")

# Keys whose meaning is kept. Anything else on an agent or task is reported as a note (ignored).
_AGENT_KEYS = {"role", "goal", "backstory", "llm", "tools", "allow_delegation", "max_iter", "temperature"}
_TASK_KEYS = {"description", "expected_output", "agent", "context", "name"}
# Agent keys that change what an agent is; a declarative flow using them cannot be imported faithfully.
_AGENT_UNSUPPORTED = {"from_repository", "type", "apps", "mcps", "response_format", "planning_config"}


class InteropError(DomainError):
    """A CrewAI definition cannot be imported or exported. ``problems`` names every one found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The imported flow, its document (``flow_to_dict``) and what the importer assumed or ignored."""

    flow: Flow
    notes: tuple[str, ...] = ()

    @property
    def document(self) -> dict[str, Any]:
        return flow_to_dict(self.flow)


@dataclass(frozen=True, slots=True)
class ExportResult:
    """File name → YAML text, and what could not be carried over."""

    files: Mapping[str, str]
    notes: tuple[str, ...] = ()


@dataclass
class _Problems:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def raise_if_any(self) -> None:
        if self.errors:
            raise InteropError(self.errors)


# ======================================================================================== helpers


def _text(value: Any) -> str:
    """YAML folded scalars end with a newline and ``\\n`` escapes survive as text; normalise both."""
    if value is None:
        return ""
    return str(value).replace("\\n", "\n").strip()


def _ident(text: str, fallback: str = "flow") -> str:
    """A crewflow id (letters, digits, '_' and '-', starting with a letter or '_', at most 64)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-") or fallback
    if not re.match(r"[A-Za-z_]", cleaned):
        cleaned = "_" + cleaned
    return cleaned[:64]


def _placeholders(*texts: str) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for name in _PLACEHOLDER.findall(text):
            seen.setdefault(name, None)
    return list(seen)


def _model_from_llm(llm: Any, where: str, problems: _Problems) -> str | None:
    """``openai/gpt-4o-mini`` → ``gpt-4o-mini``: providers come from the tenant's configuration."""
    if llm is None:
        return None
    if isinstance(llm, Mapping):
        llm = llm.get("model")
    if not isinstance(llm, str) or not llm.strip():
        problems.notes.append(f"{where}: llm is not a model name; ignored")
        return None
    model = llm.strip().split("/", 1)[-1] if "/" in llm else llm.strip()
    if model != llm.strip():
        problems.notes.append(f"{where}: llm '{llm}' → model '{model}' (the provider comes from the tenant's "
                              "configured providers, in priority order)")  # fmt: skip
    return model


def _agent_from(ident: str, body: Any, where: str, problems: _Problems, tools: dict[str, ToolRef], *,
                strict: bool) -> Agent | None:  # fmt: skip
    if not isinstance(body, Mapping):
        problems.errors.append(f"{where}: must be a mapping with role, goal and backstory")
        return None
    unsupported = sorted(k for k in body if k in _AGENT_UNSUPPORTED)
    if unsupported and strict:
        problems.errors.append(f"{where}: unsupported agent settings: {', '.join(unsupported)}")
    ignored = sorted(str(k) for k in body if k not in _AGENT_KEYS and k not in ("settings", "input"))
    if ignored and not (strict and unsupported):
        problems.notes.append(f"{where}: ignored CrewAI settings: {', '.join(ignored)}")
    settings = body.get("settings") if isinstance(body.get("settings"), Mapping) else {}
    llm = body.get("llm", settings.get("llm") if settings else None)
    agent_tools: list[str] = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, str):
            problems.errors.append(f"{where}: tools must be names")
            continue
        tool_id = _ident(tool, "tool")
        agent_tools.append(tool_id)
        if tool_id not in tools:
            tools[tool_id] = ToolRef(id=tool_id, description=f"CrewAI tool '{tool}' (imported by name)")
            problems.notes.append(f"tool '{tool_id}': imported by name only; register a crewflow tool with this "
                                  "id so the sandbox can run it")  # fmt: skip
    try:
        return Agent(
            id=ident,
            role=_text(body.get("role")),
            goal=_text(body.get("goal")),
            backstory=_text(body.get("backstory")),
            model=_model_from_llm(llm, where, problems),
            tools=tuple(agent_tools),
            allow_delegation=bool(body.get("allow_delegation", False)),
            max_iter=int(body.get("max_iter") or DEFAULT_MAX_ITER),
            temperature=float(body["temperature"]) if body.get("temperature") is not None else None,
        )
    except (TypeError, ValueError) as exc:
        problems.errors.append(f"{where}: {exc}")
        return None


def _task_list(raw: Any, where: str, problems: _Problems) -> list[tuple[str, Mapping[str, Any]]]:
    """Tasks as (name, body): a mapping name → body (tasks.yaml) or a list of bodies with ``name``."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(raw, Mapping):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = []
        for index, body in enumerate(raw):
            name = body.get("name") if isinstance(body, Mapping) else None
            items.append((str(name) if name else f"task_{index + 1}", body))
    else:
        problems.errors.append(f"{where}: must be a mapping of task name to task, or a list of tasks")
        return out
    for name, body in items:
        if not isinstance(body, Mapping):
            problems.errors.append(f"{where}.{name}: must be a mapping with description and expected_output")
            continue
        out.append((name, body))
    return out


def _crew_from(crew_id: str, agent_ids: Mapping[str, str], tasks: list[tuple[str, Mapping[str, Any]]],
               where: str, problems: _Problems, *, assign: Mapping[str, str] | None = None,
               process: str = "sequential", description: str = "", context_hint: str = "") -> Crew | None:  # fmt: skip
    """``agent_ids`` maps the names used in the CrewAI definition to our agent ids (in definition order)."""
    assign = dict(assign or {})
    task_names = [name for name, _ in tasks]
    for task_name, wanted in assign.items():
        if task_name not in task_names:
            problems.errors.append(f"assignment '{task_name}={wanted}': there is no task '{task_name}'")
        if wanted not in agent_ids:
            problems.errors.append(f"assignment '{task_name}={wanted}': there is no agent '{wanted}'")
    members = list(agent_ids)
    built: list[CrewTask] = []
    earlier: set[str] = set()
    unassigned: list[str] = []
    any_context = False
    for index, (name, body) in enumerate(tasks):
        tw = f"{where}.{name}"
        ignored = sorted(str(k) for k in body if k not in _TASK_KEYS)
        if ignored:
            problems.notes.append(f"{tw}: ignored CrewAI settings: {', '.join(ignored)}")
        task_text = _text(body.get("description"))
        if not task_text:
            problems.errors.append(f"{tw}: description is required")
        raw_agent = assign.get(name) or body.get("agent")
        agent_name: str | None = None
        if isinstance(raw_agent, str):
            agent_name = raw_agent
        elif raw_agent is not None:
            problems.errors.append(f"{tw}.agent: must be an agent name")
        if agent_name is None and process == Process.SEQUENTIAL.value and members:
            agent_name = members[index % len(members)]
            unassigned.append(f"{name} → {agent_name}")
        if agent_name is not None and agent_name not in agent_ids:
            problems.errors.append(f"{tw}.agent: '{agent_name}' is not one of the agents ({', '.join(members)})")
            agent_name = None
        context_raw = body.get("context") or []
        if not isinstance(context_raw, list) or not all(isinstance(c, str) for c in context_raw):
            problems.errors.append(f"{tw}.context: must be a list of task names")
            context_raw = []
        any_context = any_context or bool(context_raw)
        for ctx in context_raw:
            if ctx not in earlier:
                problems.errors.append(f"{tw}.context: '{ctx}' is not an earlier task")
        earlier.add(name)
        built.append(CrewTask(
            name=name,
            description=task_text,
            expected_output=_text(body.get("expected_output")),
            agent=agent_ids[agent_name] if agent_name is not None else None,
            context=tuple(c for c in context_raw if c in task_names),
        ))  # fmt: skip
    if unassigned:
        problems.notes.append(f"{where}: tasks without 'agent:' were assigned in order (task i → agent i "
                              f"mod {len(members)}): {', '.join(unassigned)}; use --assign TASK=AGENT to choose")
    if not any_context and len(built) > 1:
        problems.notes.append(f"{where}: no task declares 'context': each task receives the previous task's "
                              f"output (CrewAI's sequential default){context_hint}")
    if process not in (Process.SEQUENTIAL.value, Process.HIERARCHICAL.value):
        problems.errors.append(f"{where}: process '{process}' is not sequential or hierarchical")
        return None
    if not built or not members:
        problems.errors.append(f"{where}: a crew needs at least one agent and one task")
        return None
    return Crew(id=crew_id, agents=tuple(agent_ids.values()), tasks=tuple(built), process=Process(process),
                description=description)  # fmt: skip


def _check(flow: Flow, problems: _Problems) -> Flow:
    problems.errors.extend(f"imported flow is invalid: {p}" for p in validate_flow(flow))
    problems.raise_if_any()
    return flow


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InteropError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InteropError([f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None


# ======================================================================================== project import


def import_crewai_project(agents: Any, tasks: Any, *, name: str, assign: Mapping[str, str] | None = None,
                          process: str = "sequential") -> ImportResult:  # fmt: skip
    """``agents.yaml`` and ``tasks.yaml`` contents (already parsed) → a flow with one crew node."""
    problems = _Problems()
    if not isinstance(agents, Mapping) or not agents:
        problems.errors.append("agents.yaml: must map agent names to agents")
    if not isinstance(tasks, Mapping) or not tasks:
        problems.errors.append("tasks.yaml: must map task names to tasks")
    problems.raise_if_any()
    crew_id = _ident(name, "crew")
    tools: dict[str, ToolRef] = {}
    built_agents: dict[str, Agent] = {}
    for agent_name, body in agents.items():
        agent = _agent_from(_ident(str(agent_name), "agent"), body, f"agents.yaml: {agent_name}", problems, tools,
                            strict=False)  # fmt: skip
        if agent is not None:
            built_agents[str(agent_name)] = agent
    agent_ids = {n: a.id for n, a in built_agents.items()}
    task_items = _task_list(tasks, "tasks.yaml", problems)
    crew = _crew_from(crew_id, agent_ids, task_items, "tasks.yaml", problems, assign=assign, process=process,
                      context_hint="; if crew.py sets context=[...], add it to tasks.yaml")
    problems.raise_if_any()
    assert crew is not None
    texts = [t for a in built_agents.values() for t in (a.role, a.goal, a.backstory)]
    texts += [t for task in crew.tasks for t in (task.description, task.expected_output)]
    names = _placeholders(*texts)
    if names:
        problems.notes.append(f"inputs {', '.join(names)}: from {{placeholders}}; declared as required flow inputs")
    flow = Flow(
        id=_ident(name),
        name=name,
        inputs=tuple(InputSpec(n, required=True) for n in names),
        nodes=(
            Node(INPUT_NODE, NodeKind.INPUT),
            Node(crew_id, NodeKind.CREW, crew=crew_id, inputs={n: f"{{{{ inputs.{n} }}}}" for n in names}),
            Node(OUTPUT_NODE, NodeKind.OUTPUT),
        ),
        edges=(Edge(INPUT_NODE, crew_id), Edge(crew_id, OUTPUT_NODE)),
        agents={a.id: a for a in built_agents.values()},
        crews={crew_id: crew},
        tools=tools,
    )
    return ImportResult(_check(flow, problems), tuple(problems.notes))


def import_crewai_path(path: str | Path, *, assign: Mapping[str, str] | None = None) -> ImportResult:
    """A CrewAI project folder (``agents.yaml`` + ``tasks.yaml``, also under ``config/`` or
    ``src/<pkg>/config/``) or a ``crewai.flow/v1`` YAML/JSON file."""
    path = Path(path)
    if path.is_dir():
        candidates = [path, path / "config", *sorted(path.glob("src/*/config")), *sorted(path.glob("*/config"))]
        for folder in candidates:
            if (folder / "agents.yaml").is_file() and (folder / "tasks.yaml").is_file():
                name = path.resolve().name
                return import_crewai_project(_load_yaml(folder / "agents.yaml"), _load_yaml(folder / "tasks.yaml"),
                                             name=name, assign=assign)  # fmt: skip
        raise InteropError([f"{path}: no agents.yaml and tasks.yaml found (looked in {path}, {path}/config, "
                            f"{path}/src/*/config)"])  # fmt: skip
    if not path.is_file():
        raise InteropError([f"{path}: no such file or folder"])
    data = _load_yaml(path)
    if isinstance(data, Mapping) and data.get("schema") == FLOW_SCHEMA:
        if assign:
            raise InteropError(["--assign applies to agents.yaml/tasks.yaml projects, not to crewai.flow/v1 files"])
        return import_crewai_flow(data)
    raise InteropError([f"{path}: not a '{FLOW_SCHEMA}' document (expected 'schema: {FLOW_SCHEMA}'); for a crew "
                        "project pass the folder holding agents.yaml and tasks.yaml"])  # fmt: skip


# ======================================================================================== flow import


class _FlowImporter:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.p = _Problems()
        self.agents: dict[str, Agent] = {}
        self.crews: dict[str, Crew] = {}
        self.tools: dict[str, ToolRef] = {}
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.inputs: list[InputSpec] = []

    # -- expressions -------------------------------------------------------------------------------------
    def convert(self, value: Any, where: str) -> str:
        """A ``${...}`` template string → a crewflow ``{{ ... }}`` template."""
        if not isinstance(value, str):
            if isinstance(value, bool | int | float):
                return json.dumps(value)
            self.p.errors.append(f"{where}: must be text (got {type(value).__name__})")
            return ""

        def one(match: re.Match[str]) -> str:
            expression = match.group(1).strip()
            path = _PATH.match(expression)
            if path is None:
                self.p.errors.append(f"{where}: '${{{expression}}}' is not supported (only ${{state.<field>}} and "
                                     "${outputs.<method>.raw} paths; CEL operators and functions are not)")  # fmt: skip
                return ""
            parts = [s for s in path.group(2).split(".") if s]
            if path.group(1) == "state":
                if not parts:
                    self.p.errors.append(f"{where}: '${{state}}' (the whole state) is not supported; read a field")
                    return ""
                return "{{ inputs." + ".".join(parts) + " }}"
            if not parts or (len(parts) == 2 and parts[1] != "raw") or len(parts) > 2:
                self.p.errors.append(f"{where}: '${{{expression}}}' is not supported: crewflow node outputs are "
                                     "text, read them as ${outputs.<method>.raw}")  # fmt: skip
                return ""
            return "{{ nodes." + parts[0] + ".output }}"

        return _CEL.sub(one, value)

    # -- document ----------------------------------------------------------------------------------------
    def run(self) -> ImportResult:
        data, p = self.data, self.p
        known = {"schema", "name", "description", "state", "config", "persist", "conversational", "methods"}
        for key in sorted(set(map(str, data)) - known):
            p.errors.append(f"'{key}': not a {FLOW_SCHEMA} field")
        if data.get("schema") != FLOW_SCHEMA:
            p.errors.append(f"schema: must be '{FLOW_SCHEMA}'")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            p.errors.append("name: is required")
            name = "flow"
        if data.get("conversational"):
            p.errors.append("conversational: chat flows are not supported")
        if data.get("persist"):
            p.notes.append("persist: ignored; crewflow checkpoints every node's result")
        config = data.get("config") or {}
        if isinstance(config, Mapping):
            for key, value in config.items():
                p.notes.append(f"config.{key}: ignored ({key}={value!r}); crewflow streams events always and runs "
                               "each node at most once")  # fmt: skip
        self.state(data.get("state"))
        methods = data.get("methods")
        if not isinstance(methods, Mapping) or not methods:
            p.errors.append("methods: a flow needs at least one method")
            p.raise_if_any()
        assert isinstance(methods, Mapping)
        self.methods(methods)
        p.raise_if_any()
        input_node = INPUT_NODE if INPUT_NODE not in methods else "flow_inputs"
        self.nodes.insert(0, Node(input_node, NodeKind.INPUT))
        self.edges = [Edge(input_node if e.source == INPUT_NODE else e.source, e.target) for e in self.edges]
        flow = Flow(
            id=_ident(name),
            name=name,
            description=_text(data.get("description")),
            inputs=tuple(self.inputs),
            nodes=tuple(self.nodes),
            edges=tuple(self.edges),
            agents=self.agents,
            crews=self.crews,
            tools=self.tools,
        )
        return ImportResult(_check(flow, p), tuple(p.notes))

    def state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            self.p.errors.append("state: must be a mapping with 'type'")
            return
        kind = state.get("type", "dict")
        defaults = state.get("default") or {}
        schema: Mapping[str, Any] = {}
        if kind == "json_schema" or (kind == "pydantic" and state.get("json_schema")):
            schema = state.get("json_schema") or {}
            if kind == "pydantic":
                self.p.notes.append(f"state: pydantic model '{state.get('ref')}' read from its json_schema")
        elif kind == "dict":
            schema = {"properties": {k: {} for k in defaults}}
        else:
            self.p.errors.append(f"state.type '{kind}': only json_schema, dict (or pydantic with a json_schema) "
                                 "can be imported")  # fmt: skip
            return
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        for prop, body in properties.items():
            body = body if isinstance(body, Mapping) else {}
            self.inputs.append(InputSpec(
                name=str(prop),
                description=str(body.get("description") or ""),
                default=defaults.get(prop, body.get("default")),
                required=prop in required,
            ))  # fmt: skip

    def methods(self, methods: Mapping[str, Any]) -> None:
        p = self.p
        routers: dict[str, list[str]] = {}  # router method → its emitted events
        for mname, method in methods.items():
            if not isinstance(method, Mapping):
                p.errors.append(f"methods.{mname}: must be a mapping")
                continue
            if not _NAME.match(str(mname)):
                p.errors.append(f"methods.{mname}: method names must match {_NAME.pattern}")
            if method.get("router"):
                emit = method.get("emit")
                if not isinstance(emit, list) or not emit or not all(isinstance(e, str) for e in emit):
                    p.errors.append(f"methods.{mname}.emit: a router must list the events it emits")
                    continue
                for event in emit:
                    if not _EVENT.match(event):
                        p.errors.append(f"methods.{mname}.emit: event '{event}' must use letters, digits, '_', "
                                        "'-', '.', ':' or spaces")  # fmt: skip
                routers[str(mname)] = list(emit)
        event_owner = {event: router for router, events in routers.items() for event in events}
        for event, owner in event_owner.items():
            if event in methods:
                p.errors.append(f"methods.{owner}.emit: event '{event}' is also a method name (ambiguous listen)")
        listeners: dict[str, list[str]] = {}  # event → methods listening to it
        for mname, method in methods.items():
            if not isinstance(method, Mapping):
                continue
            mname = str(mname)
            where = f"methods.{mname}"
            known = {"description", "do", "start", "listen", "router", "emit", "human_feedback", "persist"}
            for key in sorted(set(map(str, method)) - known):
                p.errors.append(f"{where}.{key}: not a method field")
            if method.get("human_feedback"):
                p.errors.append(f"{where}.human_feedback: human-in-the-loop steps are not supported")
            if method.get("persist"):
                p.notes.append(f"{where}.persist: ignored; crewflow checkpoints every node's result")
            if method.get("emit") and not method.get("router"):
                p.errors.append(f"{where}.emit: only routers emit events (set router: true)")
            start, listen = method.get("start"), method.get("listen")
            if start not in (None, True, False):
                p.errors.append(f"{where}.start: conditional starts are not supported (use start: true)")
            if start is True and listen is not None:
                p.errors.append(f"{where}: a method is either a start method or a listener, not both")
            elif start is True:
                self.edges.append(Edge(INPUT_NODE, mname))
            elif listen is None:
                p.errors.append(f"{where}: neither 'start: true' nor 'listen', so it never runs")
            else:
                self.listen(mname, listen, methods, event_owner, listeners, f"{where}.listen")
            self.action(mname, method.get("do"), method.get("description"), f"{where}.do")
        for event, targets in listeners.items():
            if len(targets) > 1:
                p.errors.append(f"event '{event}' is listened to by {', '.join(targets)}: a crewflow router "
                                "takes one branch per answer; let one method listen and chain the others after it")
        for router, events in routers.items():
            route_node = router + ROUTE_SUFFIX
            end_node = router + END_SUFFIX
            for clash in (route_node, end_node):
                if clash in methods:
                    p.errors.append(f"methods.{clash}: name is reserved for router '{router}'")
            routes = []
            chosen: list[str] = []
            for event in events:
                for target in listeners.get(event, [])[:1]:
                    routes.append(Route(when=_route_when(router, event), to=target))
                    if target not in chosen:
                        chosen.append(target)
                if not listeners.get(event):
                    routes.append(Route(when=_route_when(router, event), to=end_node))
            self.nodes.append(Node(route_node, NodeKind.ROUTER, label=f"route on the answer of {router}",
                                   routes=tuple(routes), default=end_node))  # fmt: skip
            self.nodes.append(Node(end_node, NodeKind.OUTPUT,
                                   label=f"{router} answered an event no method listens to",
                                   value=f"{{{{ nodes.{router}.output }}}}"))  # fmt: skip
            self.edges.append(Edge(router, route_node))
            self.edges += [Edge(route_node, t) for t in [*chosen, end_node]]

    def listen(self, mname: str, listen: Any, methods: Mapping[str, Any], event_owner: Mapping[str, str],
               listeners: dict[str, list[str]], where: str) -> None:  # fmt: skip
        p = self.p
        if isinstance(listen, str):
            if listen in event_owner:
                listeners.setdefault(listen, []).append(mname)
            elif listen in methods:
                self.edges.append(Edge(listen, mname))
            else:
                p.errors.append(f"{where}: '{listen}' is neither a method nor an event a router emits")
            return
        if isinstance(listen, Mapping) and len(listen) == 1 and isinstance(next(iter(listen.values())), list):
            op, items = next(iter(listen.items()))
            if not all(isinstance(i, str) for i in items):
                p.errors.append(f"{where}.{op}: nested conditions are not supported")
                return
            if op == "and":
                for item in items:
                    if item in methods:
                        self.edges.append(Edge(item, mname))
                    else:
                        p.errors.append(f"{where}.and: '{item}' is not a method (events inside 'and' are not "
                                        "supported)")  # fmt: skip
                return
            if op == "or":
                owners = {event_owner.get(i) for i in items}
                if len(owners) == 1 and None not in owners:
                    for item in items:
                        listeners.setdefault(item, []).append(mname)
                    return
                p.errors.append(f"{where}.or: only events of one router can be combined with 'or' (a crewflow "
                                "node waits for all its parents)")  # fmt: skip
                return
        p.errors.append(f"{where}: must be a method or event name, or {{and: [...]}} / {{or: [...]}}")

    def action(self, mname: str, do: Any, description: Any, where: str) -> None:
        p = self.p
        label = _text(description)
        if not isinstance(do, Mapping):
            p.errors.append(f"{where}: must be one action mapping with 'call'")
            return
        call = do.get("call")
        if call == "crew":
            self.crew_action(mname, do, label, where)
        elif call == "agent":
            self.agent_action(mname, do, label, where)
        else:
            what = {
                "tool": "CrewAI tool refs are Python classes; register a crewflow tool and use a tool node",
                "code": "Python callables cannot be imported",
                "script": "inline Python scripts cannot be imported (crewflow never runs unsandboxed code)",
                "expression": "CEL expression actions are not supported",
                "each": "per-item loops are not supported (crewflow flows are acyclic graphs)",
            }.get(str(call), "unknown action")
            p.errors.append(f"{where}: call '{call}' is not supported: {what}")

    def crew_action(self, mname: str, do: Mapping[str, Any], label: str, where: str) -> None:
        p = self.p
        for key in sorted(set(map(str, do)) - {"call", "with", "inputs", "from_declaration"}):
            p.errors.append(f"{where}.{key}: not a crew action field")
        if do.get("from_declaration"):
            p.errors.append(f"{where}.from_declaration: crews in other files are not supported; inline the crew "
                            "under 'with' (or import that crew's agents.yaml/tasks.yaml separately)")  # fmt: skip
            return
        crew = do.get("with")
        if not isinstance(crew, Mapping):
            p.errors.append(f"{where}.with: must be an inline crew with agents and tasks")
            return
        cw = f"{where}.with"
        if crew.get("manager_agent"):
            p.errors.append(f"{cw}.manager_agent: custom manager agents are not supported (a hierarchical crew's "
                            "manager is an LLM chosen by provider)")  # fmt: skip
        for key in sorted(set(map(str, crew)) - {"agents", "tasks", "inputs", "process", "manager_agent", "name"}):
            p.notes.append(f"{cw}.{key}: ignored")
        raw_agents = crew.get("agents")
        if isinstance(raw_agents, list):
            converted: dict[str, Any] = {}
            for item in raw_agents:
                if isinstance(item, Mapping) and "name" in item:
                    converted[str(item["name"])] = {k: v for k, v in item.items() if k != "name"}
                elif isinstance(item, Mapping) and len(item) == 1:
                    converted.update({str(k): v for k, v in item.items()})
            raw_agents = converted
        if not isinstance(raw_agents, Mapping) or not raw_agents:
            p.errors.append(f"{cw}.agents: a crew needs inline agents")
            return
        agent_ids: dict[str, str] = {}
        for agent_name, body in raw_agents.items():
            agent = _agent_from(_ident(str(agent_name), "agent"), body, f"{cw}.agents.{agent_name}", p, self.tools,
                                strict=True)  # fmt: skip
            if agent is not None:
                agent_ids[str(agent_name)] = self.add_agent(mname, agent, f"{cw}.agents.{agent_name}").id
        tasks = _task_list(crew.get("tasks"), f"{cw}.tasks", p)
        process = str(crew.get("process") or "sequential")
        built = _crew_from(mname, agent_ids, tasks, f"{cw}.tasks", p, process=process, description=label)
        if built is None:
            return
        self.crews[mname] = built
        inputs: dict[str, str] = {}
        defaults = crew.get("inputs") or {}
        if not isinstance(defaults, Mapping):
            p.errors.append(f"{cw}.inputs: must be a mapping")
            defaults = {}
        for key, value in defaults.items():
            inputs[str(key)] = self.convert(value, f"{cw}.inputs.{key}")
        overrides = do.get("inputs") or {}
        if not isinstance(overrides, Mapping):
            p.errors.append(f"{where}.inputs: must be a mapping")
            overrides = {}
        for key, value in overrides.items():
            inputs[str(key)] = self.convert(value, f"{where}.inputs.{key}")
        self.nodes.append(Node(mname, NodeKind.CREW, label=label, crew=mname, inputs=inputs))

    def agent_action(self, mname: str, do: Mapping[str, Any], label: str, where: str) -> None:
        p = self.p
        for key in sorted(set(map(str, do)) - {"call", "with"}):
            p.errors.append(f"{where}.{key}: not an agent action field (agents take their input in with.input)")
        body = do.get("with")
        if not isinstance(body, Mapping):
            p.errors.append(f"{where}.with: must be an inline agent")
            return
        raw_input = body.get("input")
        if not isinstance(raw_input, str) or not raw_input.strip():
            p.errors.append(f"{where}.with.input: must be text (message lists are not supported)")
            return
        agent = _agent_from(_ident(mname, "agent"), body, f"{where}.with", p, self.tools, strict=True)
        if agent is None:
            return
        agent = self.add_agent(mname, agent, f"{where}.with")
        text = _text(raw_input)
        task, _, expected = text.partition(EXPECTED_MARKER)
        self.nodes.append(Node(mname, NodeKind.AGENT, label=label, agent=agent.id,
                               task=self.convert(task.strip(), f"{where}.with.input"),
                               expected_output=self.convert(expected.strip(), f"{where}.with.input")))  # fmt: skip

    def add_agent(self, mname: str, agent: Agent, where: str) -> Agent:
        """Agents are shared by id across methods; a different agent under a taken name gets the method's
        name as a prefix."""
        existing = self.agents.get(agent.id)
        if existing is not None and existing != agent:
            agent = dataclasses.replace(agent, id=_ident(f"{mname}_{agent.id}", "agent"))
            if agent.id in self.agents and self.agents[agent.id] != agent:
                self.p.errors.append(f"{where}: agent id '{agent.id}' is used twice")
        self.agents[agent.id] = agent
        return agent


def _route_when(router: str, event: str) -> str:
    """The route condition for "the router method answered ``event``" (CrewAI compares the exact string)."""
    return f"strip(str(nodes.{router}.output)) == '{event}'"


def import_crewai_flow(data: Any) -> ImportResult:
    """A parsed ``crewai.flow/v1`` document → a crewflow flow. Raises ``InteropError`` naming every
    unsupported construct."""
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise InteropError([f"not valid YAML ({exc})"]) from None
    if not isinstance(data, Mapping):
        raise InteropError(["a crewai.flow/v1 document must be a mapping"])
    return _FlowImporter(data).run()


# ======================================================================================== export


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def _agent_doc(agent: Agent, notes: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"role": agent.role, "goal": agent.goal, "backstory": agent.backstory}
    if agent.model:
        doc["llm"] = agent.model
    if agent.tools:
        doc["tools"] = list(agent.tools)
    if agent.allow_delegation:
        doc["allow_delegation"] = True
    if agent.max_iter != DEFAULT_MAX_ITER:
        doc["max_iter"] = agent.max_iter
    if agent.temperature is not None:
        doc["temperature"] = agent.temperature
    if agent.provider:
        notes.append(f"agent '{agent.id}': provider '{agent.provider}' has no CrewAI equivalent; not exported")
    if not agent.cache:
        notes.append(f"agent '{agent.id}': cache opt-out has no CrewAI equivalent; not exported")
    return doc


def _task_doc(task: CrewTask, *, with_name: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": task.name} if with_name else {}
    doc["description"] = task.description
    doc["expected_output"] = task.expected_output
    if task.agent:
        doc["agent"] = task.agent
    if task.context:
        doc["context"] = list(task.context)
    return doc


def _crew_shaped(flow: Flow) -> Crew | None:
    """The crew of a flow that is just ``input -> crew -> output`` (what the project importer makes)."""
    work = [n for n in flow.nodes if n.kind not in (NodeKind.INPUT, NodeKind.OUTPUT)]
    if len(work) != 1 or work[0].kind != NodeKind.CREW or work[0].crew not in flow.crews:
        return None
    node = work[0]
    crew = flow.crews[node.crew or ""]
    # The node's inputs must only pass flow inputs of the same name (what {placeholders} read in CrewAI).
    for key, template in node.inputs.items():
        if template.replace(" ", "") != f"{{{{inputs.{key}}}}}":
            return None
    outputs = [n for n in flow.nodes if n.kind == NodeKind.OUTPUT]
    if any(n.value is not None for n in outputs):
        return None
    return crew


def export_crewai_project(flow: Flow) -> ExportResult:
    """A flow made of one crew node → ``agents.yaml`` and ``tasks.yaml``."""
    crew = _crew_shaped(flow)
    if crew is None:
        raise InteropError([f"flow '{flow.id}' is not a single crew between an input and an output node; export "
                            f"it as a {FLOW_SCHEMA} document instead"])  # fmt: skip
    notes: list[str] = []
    agents = {a: _agent_doc(flow.agents[a], notes) for a in crew.agents if a in flow.agents}
    tasks = {t.name: _task_doc(t, with_name=False) for t in crew.tasks}
    if crew.process == Process.HIERARCHICAL:
        notes.append("process: hierarchical is set in crew.py (Process.hierarchical), not in the YAML files")
    return ExportResult({"agents.yaml": _dump(agents), "tasks.yaml": _dump(tasks)}, tuple(notes))


def _to_cel(template: str, where: str, errors: list[str]) -> str:
    def one(match: re.Match[str]) -> str:
        try:
            ref = references(match.group(0))[0]
        except DomainError as exc:
            errors.append(f"{where}: {exc}")
            return ""
        if ref.root == "inputs":
            return "${state." + ".".join(ref.path) + "}"
        if len(ref.path) == 2:
            return "${outputs." + ref.path[0] + ".raw}"
        errors.append(f"{where}: '{match.group(0)}' reads a field of a node's output; CrewAI outputs are text")
        return ""

    return _TEMPLATE.sub(one, template)


def export_crewai_flow(flow: Flow) -> ExportResult:
    """Any representable flow → one ``crewai.flow/v1`` document."""
    errors: list[str] = []
    notes: list[str] = []
    by_id = {n.id: n for n in flow.nodes}
    parents: dict[str, list[str]] = {n.id: [] for n in flow.nodes}
    for edge in flow.edges:
        parents.setdefault(edge.target, []).append(edge.source)
    # Routers: router node → (the method whose answer it tests, event per target).
    router_of: dict[str, str] = {}
    events: dict[str, dict[str, list[str]]] = {}  # method → event → targets
    for node in flow.nodes:
        if node.kind != NodeKind.ROUTER:
            continue
        sources = parents.get(node.id, [])
        answerer = sources[0] if len(sources) == 1 else None
        if answerer is None or by_id[answerer].kind not in (NodeKind.AGENT, NodeKind.CREW):
            errors.append(f"router '{node.id}': only a router right after one agent or crew node can be exported")
            continue
        table: dict[str, list[str]] = {}
        for route in node.routes:
            match = _ROUTE_WHEN.match(route.when.strip())
            if match is None or match.group(1) != answerer:
                errors.append(f"router '{node.id}': route '{route.when}' cannot be exported; CrewAI routers emit "
                              f"an event name, so routes must read strip(str(nodes.{answerer}.output)) == "
                              "'<event>'")  # fmt: skip
                continue
            table.setdefault(match.group(2), []).append(route.to)
        router_of[node.id] = answerer
        events[answerer] = table
    methods: dict[str, Any] = {}
    for node in flow.nodes:
        if node.kind in (NodeKind.INPUT, NodeKind.ROUTER):
            continue
        if node.kind == NodeKind.OUTPUT:
            if node.value is not None and not node.id.endswith(END_SUFFIX):
                notes.append(f"output node '{node.id}': not exported (a CrewAI flow's result is its last "
                             "method's output)")  # fmt: skip
            continue
        if node.kind == NodeKind.TOOL:
            errors.append(f"node '{node.id}': tool nodes cannot be exported (CrewAI tool actions are Python "
                          "classes)")  # fmt: skip
            continue
        method: dict[str, Any] = {}
        if node.label:
            method["description"] = node.label
        sources = parents.get(node.id, [])
        via_router = [s for s in sources if s in router_of]
        plain = [s for s in sources if s not in router_of and by_id[s].kind != NodeKind.INPUT]
        if via_router and plain:
            errors.append(f"node '{node.id}': listens to a router and to other nodes; CrewAI cannot express that")
        if via_router:
            owner = router_of[via_router[0]]
            hits = [e for e, targets in events.get(owner, {}).items() if node.id in targets]
            if len(via_router) > 1 or not hits:
                errors.append(f"node '{node.id}': reached from router(s) {', '.join(via_router)} in a way CrewAI "
                              "cannot express")  # fmt: skip
            method["listen"] = hits[0] if len(hits) == 1 else {"or": hits}
        elif len(plain) == 1:
            method["listen"] = plain[0]
        elif plain:
            method["listen"] = {"and": plain}
        else:
            method["start"] = True
        if node.id in events:
            method["router"] = True
            method["emit"] = list(events[node.id])
        where = f"node '{node.id}'"
        if node.kind == NodeKind.AGENT:
            agent = flow.agents.get(node.agent or "")
            if agent is None:
                errors.append(f"{where}: agent '{node.agent}' is not defined in the flow")
                continue
            body = _agent_doc(agent, notes)
            text = node.task + (EXPECTED_MARKER + node.expected_output if node.expected_output else "")
            body["input"] = _to_cel(text, f"{where}.task", errors)
            method["do"] = {"call": "agent", "with": body}
        else:
            crew = flow.crews.get(node.crew or "")
            if crew is None:
                errors.append(f"{where}: crew '{node.crew}' is not defined in the flow")
                continue
            crew_doc: dict[str, Any] = {
                "agents": {a: _agent_doc(flow.agents[a], notes) for a in crew.agents if a in flow.agents},
                "tasks": [_task_doc(t, with_name=True) for t in crew.tasks],
            }
            if crew.process == Process.HIERARCHICAL:
                crew_doc["process"] = crew.process.value
            action: dict[str, Any] = {"call": "crew", "with": crew_doc}
            if node.inputs:
                action["inputs"] = {k: _to_cel(v, f"{where}.inputs.{k}", errors) for k, v in node.inputs.items()}
            method["do"] = action
        methods[node.id] = method
    if errors:
        raise InteropError(errors)
    doc: dict[str, Any] = {"schema": FLOW_SCHEMA, "name": flow.name or flow.id}
    if flow.description:
        doc["description"] = flow.description
    if flow.inputs:
        properties = {s.name: ({"description": s.description} if s.description else {}) for s in flow.inputs}
        state: dict[str, Any] = {"type": "json_schema", "json_schema": {"type": "object", "properties": properties}}
        required = [s.name for s in flow.inputs if s.required]
        if required:
            state["json_schema"]["required"] = required
        defaults = {s.name: s.default for s in flow.inputs if s.default is not None}
        if defaults:
            state["default"] = defaults
        doc["state"] = state
    doc["methods"] = methods
    return ExportResult({f"{_ident(flow.id)}.flow.yaml": _dump(doc)}, tuple(notes))


def export_crewai(flow: Flow) -> ExportResult:
    """A single-crew flow as a CrewAI project (agents.yaml + tasks.yaml), anything else as crewai.flow/v1."""
    if _crew_shaped(flow) is not None:
        return export_crewai_project(flow)
    return export_crewai_flow(flow)


def write_export(result: ExportResult, folder: str | Path) -> list[Path]:
    """Write the exported files into ``folder`` (created if missing); returns their paths."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in result.files.items():
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
