"""Flow validation: every problem found, each naming the node, edge or field it concerns."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from crewflow.domain.errors import ExpressionError, FlowInvalid, Problem, TemplateError
from crewflow.domain.expressions import compile_expression
from crewflow.domain.flow import Flow, FlowLimits, Node, NodeKind
from crewflow.domain.graph import Graph, find_cycles
from crewflow.domain.templates import references

__all__ = ["BUILTIN_PROVIDERS", "Catalog", "ensure_valid", "validate_flow"]

NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
BUILTIN_PROVIDERS = frozenset({"scripted"})


@dataclass(frozen=True, slots=True)
class Catalog:
    """Ids known outside the flow (the tenant's saved agents, crews, tools, providers).

    ``None`` for a kind means "not checked here" (for example providers of a flow file run offline)."""

    agents: Collection[str] = ()
    crews: Collection[str] = ()
    tools: Collection[str] = ()
    providers: Collection[str] | None = None


def ensure_valid(flow: Flow, limits: FlowLimits | None = None, catalog: Catalog | None = None) -> Graph:
    """Validate and return the flow's graph; raise ``FlowInvalid`` listing every problem."""
    validator = _Validator(flow, limits or FlowLimits(), catalog or Catalog())
    problems = validator.run()
    if problems or validator.graph is None:
        raise FlowInvalid(problems)
    return validator.graph


def validate_flow(flow: Flow, limits: FlowLimits | None = None, catalog: Catalog | None = None) -> list[Problem]:
    return _Validator(flow, limits or FlowLimits(), catalog or Catalog()).run()


class _Validator:
    def __init__(self, flow: Flow, limits: FlowLimits, catalog: Catalog) -> None:
        self.flow = flow
        self.limits = limits
        self.catalog = catalog
        self.problems: list[Problem] = []
        self.graph: Graph | None = None
        self._known_ids: dict[str, set[str]] = {}

    def add(self, code: str, message: str, *, node: str | None = None, edge: tuple[str, str] | None = None,
            nodes: tuple[str, ...] = ()) -> None:  # fmt: skip
        if node is not None:
            where, node_ids = f"node '{node}'", (node, *nodes)
        elif edge is not None:
            where, node_ids = f"edge '{edge[0]}' -> '{edge[1]}'", nodes
        else:
            where, node_ids = "flow", nodes
        self.problems.append(Problem(code, message, where, node_ids, edge))

    def run(self) -> list[Problem]:
        flow = self.flow
        if not flow.nodes:
            self.add("empty", "a flow needs at least one node")
            return self.problems
        if len(flow.nodes) > self.limits.max_nodes:
            self.add("too_many_nodes", f"{len(flow.nodes)} nodes; the limit is {self.limits.max_nodes}")
        if len(flow.edges) > self.limits.max_edges:
            self.add("too_many_edges", f"{len(flow.edges)} edges; the limit is {self.limits.max_edges}")
        if not 1 <= flow.max_parallel <= 256:
            self.add("max_parallel", "max_parallel must be between 1 and 256")
        if flow.timeout is not None and not 0 < flow.timeout < math.inf:
            self.add("bad_timeout", f"timeout must be a positive number of seconds, not {flow.timeout}")
        for node in flow.nodes:
            if node.timeout is not None and not 0 < node.timeout < math.inf:
                self.add("bad_timeout", f"timeout must be a positive number of seconds, not {node.timeout}",
                         node=node.id)  # fmt: skip
        ids = [n.id for n in flow.nodes]
        for node_id, count in Counter(ids).items():
            if count > 1:
                self.add("duplicate_id", f"id is used by {count} nodes", node=node_id)
        for node in flow.nodes:
            if not NODE_ID.fullmatch(node.id):  # fullmatch: "$" would accept a trailing newline
                self.add("bad_id", "ids start with a letter or '_' and use letters, digits, '_' or '-' "
                         "(at most 64)", node=node.id)  # fmt: skip
        known = set(ids)
        edges: list[tuple[str, str]] = []
        for pair, count in Counter((e.source, e.target) for e in flow.edges).items():
            if count > 1:
                self.add("duplicate_edge", f"edge appears {count} times", edge=pair)
        for edge in flow.edges:
            pair = (edge.source, edge.target)
            missing = [end for end in pair if end not in known]
            if missing:
                self.add("dangling_edge", "points to no node: " + ", ".join(f"'{m}'" for m in missing), edge=pair)
            elif edge.source == edge.target:
                self.add("cycle", f"cycle: {edge.source} -> {edge.source}", edge=pair, nodes=(edge.source,))
            else:
                edges.append(pair)
        graph: Graph | None = None
        try:  # a topological sort succeeds exactly when there is no cycle: search cycles only when it fails
            graph = Graph.build(ids, edges)
        except ValueError:
            for cycle in find_cycles(ids, edges):
                if len(cycle) > 1:
                    self.add("cycle", "cycle: " + " -> ".join([*cycle, cycle[0]]), nodes=tuple(cycle))
        if any(p.code == "cycle" for p in self.problems):
            graph = None
        self.graph = graph
        self._definitions()
        for node in flow.nodes:
            self._node(node, graph, known)
        if graph is not None:
            self._reachability(graph)
        return self.problems

    # -- references -------------------------------------------------------------------------------------
    def _known(self, kind: str) -> set[str]:
        cached = self._known_ids.get(kind)
        if cached is None:  # asked once per node: build each kind's set once per validation
            if kind == "agent":
                cached = set(self.flow.agents) | set(self.catalog.agents)
            elif kind == "crew":
                cached = set(self.flow.crews) | set(self.catalog.crews)
            else:
                cached = set(self.flow.tools) | set(self.catalog.tools)
            self._known_ids[kind] = cached
        return cached

    def _provider_known(self, provider: str | None) -> bool:
        if provider is None or self.catalog.providers is None:
            return True
        return provider in BUILTIN_PROVIDERS or provider in self.catalog.providers

    def _text_limit(self, owner: str, texts: dict[str, str]) -> None:
        for field_name, text in texts.items():
            size = len(text.encode())
            if size > self.limits.max_text_bytes:
                self.add("text_too_long", f"{owner} {field_name} is {size} bytes; the limit is "
                         f"{self.limits.max_text_bytes}")  # fmt: skip

    def _definitions(self) -> None:
        # the 32 KB limit holds for every text field, not only the nodes' own
        self._text_limit("flow", {"description": self.flow.description})
        for spec in self.flow.inputs:
            self._text_limit(f"input '{spec.name}'", {"description": spec.description})
        for agent in self.flow.agents.values():
            self._text_limit(f"agent '{agent.id}'", {"role": agent.role, "goal": agent.goal,
                                                     "backstory": agent.backstory})  # fmt: skip
        for crew in self.flow.crews.values():
            self._text_limit(f"crew '{crew.id}'", {"description": crew.description})
            for task in crew.tasks:
                self._text_limit(f"crew '{crew.id}' task '{task.name}'", {
                    "description": task.description, "expected_output": task.expected_output})  # fmt: skip
        for tool_ref in self.flow.tools.values():
            self._text_limit(f"tool '{tool_ref.id}'", {"description": tool_ref.description})
        tools, agents = self._known("tool"), self._known("agent")
        for agent in self.flow.agents.values():
            for tool in agent.tools:
                if tool not in tools:
                    self.add("unknown_tool", f"agent '{agent.id}' uses unknown tool '{tool}'")
            if not self._provider_known(agent.provider):
                self.add("unknown_provider", f"agent '{agent.id}' uses unknown provider '{agent.provider}'")
        for crew in self.flow.crews.values():
            for member in crew.agents:
                if member not in agents:
                    self.add("unknown_agent", f"crew '{crew.id}' lists unknown agent '{member}'")
            earlier: set[str] = set()
            for task in crew.tasks:
                if task.agent is not None and task.agent not in crew.agents:
                    self.add("unknown_agent", f"crew '{crew.id}' task '{task.name}' is assigned to "
                             f"'{task.agent}', who is not in the crew")  # fmt: skip
                for ctx in task.context:
                    if ctx not in earlier:
                        self.add("bad_context", f"crew '{crew.id}' task '{task.name}' takes context from "
                                 f"'{ctx}', which is not an earlier task")  # fmt: skip
                earlier.add(task.name)

    def _node(self, node: Node, graph: Graph | None, known: set[str]) -> None:
        texts = node.text_fields()
        for field_name, text in texts.items():
            size = len(text) if len(text) * 4 <= self.limits.max_text_bytes else len(text.encode())
            if size > self.limits.max_text_bytes:
                self.add("text_too_long", f"{field_name} is {size} bytes; the limit is "
                         f"{self.limits.max_text_bytes}", node=node.id)  # fmt: skip
        kind = node.kind
        target_field = {NodeKind.AGENT: "agent", NodeKind.CREW: "crew", NodeKind.TOOL: "tool"}.get(kind)
        if target_field is not None:
            ref = getattr(node, target_field)
            if not ref:
                self.add(f"missing_{target_field}", f"{kind} node needs '{target_field}'", node=node.id)
            elif ref not in self._known(target_field):
                self.add(f"unknown_{target_field}", f"unknown {target_field} '{ref}'", node=node.id)
        if kind == NodeKind.AGENT and not node.task.strip():
            self.add("missing_task", "agent node needs a task description", node=node.id)
        incoming = graph.parents[node.id] if graph else ()
        outgoing = graph.children[node.id] if graph else ()
        if kind == NodeKind.INPUT and incoming:
            self.add("input_has_parents", "input nodes take no incoming edges", node=node.id)
        if kind == NodeKind.OUTPUT and outgoing:
            self.add("output_has_children", "output nodes have no outgoing edges", node=node.id)
        # Ancestors cost O(graph) per node: compute them only for nodes that read other nodes' outputs.
        reads_nodes = any("nodes." in text for text in texts.values())
        ancestors = graph.ancestors(node.id) if graph and (node.routes or reads_nodes) else None
        if kind == NodeKind.ROUTER:
            self._router(node, outgoing if graph else None, ancestors, known)
        for field_name, text in texts.items():
            if field_name.startswith("routes[") or "{{" not in text:
                continue
            try:
                refs = references(text)
            except TemplateError as exc:
                self.add("bad_template", f"{field_name}: {exc}", node=node.id)
                continue
            for ref in refs:
                self._reference(node, field_name, ref.root, ref.node_id, ref.path, ancestors, known)

    def _reference(self, node: Node, field_name: str, root: str, ref_node: str | None,
                   path: tuple[str, ...], ancestors: set[str] | None, known: set[str]) -> None:  # fmt: skip
        if root == "inputs":
            declared = {spec.name for spec in self.flow.inputs}
            if declared and path[0] not in declared:
                self.add("unknown_input", f"{field_name} reads input '{path[0]}', which the flow does not "
                         "declare", node=node.id)  # fmt: skip
            return
        if ref_node is None:
            return
        if ref_node not in known:
            self.add("unknown_reference", f"{field_name} reads node '{ref_node}', which does not exist",
                     node=node.id)  # fmt: skip
        elif ancestors is not None and ref_node not in ancestors:
            self.add("not_an_ancestor", f"{field_name} reads node '{ref_node}', which does not run before "
                     "this node (not an ancestor)", node=node.id, nodes=(ref_node,))  # fmt: skip

    def _router(self, node: Node, outgoing: tuple[str, ...] | None, ancestors: set[str] | None,
                known: set[str]) -> None:  # fmt: skip
        if not node.routes:
            self.add("router_without_branches", "router needs at least one route", node=node.id)
        if not node.default:  # None, or "" from a document
            self.add("router_without_default", "router needs a default branch", node=node.id)
        targets = [r.to for r in node.routes] + ([node.default] if node.default else [])
        for target in targets:
            if target not in known:
                self.add("unknown_branch", f"routes to '{target}', which does not exist", node=node.id)
            elif outgoing is not None and target not in outgoing:
                self.add("branch_without_edge", f"routes to '{target}' but has no edge to it", node=node.id)
        if outgoing is not None:
            for child in outgoing:
                if child not in targets:
                    self.add("edge_not_a_branch", f"edge to '{child}' is neither a route nor the default",
                             edge=(node.id, child))  # fmt: skip
        for index, route in enumerate(node.routes):
            try:
                expression = compile_expression(route.when)
            except ExpressionError as exc:
                self.add("bad_expression", f"routes[{index}].when: {exc}", node=node.id)
                continue
            for ref_node in sorted(expression.node_references()):
                self._reference(node, f"routes[{index}].when", "nodes", ref_node, (ref_node,), ancestors, known)
            for name in sorted(expression.input_references()):
                self._reference(node, f"routes[{index}].when", "inputs", None, (name,), ancestors, known)

    def _reachability(self, graph: Graph) -> None:
        inputs = [n.id for n in self.flow.nodes if n.kind == NodeKind.INPUT]
        if not inputs:
            return
        reachable = graph.descendants_of(inputs)
        for node in self.flow.nodes:
            if node.id not in reachable:
                self.add("unreachable", "not reachable from any input node", node=node.id)
