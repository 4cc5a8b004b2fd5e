"""The flow model: a DAG of typed nodes joined by edges that carry outputs."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from crewflow.domain.agents import Agent, Crew, ToolRef

__all__ = [
    "Edge",
    "Flow",
    "FlowLimits",
    "InputSpec",
    "Node",
    "NodeKind",
    "RetryPolicy",
    "Route",
]


class NodeKind(StrEnum):
    INPUT = "input"
    AGENT = "agent"
    CREW = "crew"
    TOOL = "tool"
    ROUTER = "router"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-node retry: ``max_attempts`` in total (1 = no retry), exponential backoff with jitter."""

    max_attempts: int = 1
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not all(map(math.isfinite, (self.initial_delay, self.multiplier, self.max_delay, self.jitter))):
            raise ValueError("retry delays, multiplier and jitter must be finite numbers")  # NaN would never wake
        if not 1 <= self.max_attempts <= 100:
            raise ValueError("retry.max_attempts must be between 1 and 100")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("retry.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry.jitter must be between 0 and 1")

    def delay(self, failed_attempt: int, rng: random.Random) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        try:
            grown = self.initial_delay * self.multiplier ** (failed_attempt - 1) if self.initial_delay else 0.0
        except OverflowError:  # e.g. multiplier 1e6 after 60 attempts: the cap applies
            grown = self.max_delay
        base = min(self.max_delay, grown)
        spread = base * self.jitter
        return max(0.0, base + rng.uniform(-spread, spread))


@dataclass(frozen=True, slots=True)
class Route:
    """A router branch: when ``when`` evaluates truthy, the edge to ``to`` is taken."""

    when: str
    to: str


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    description: str = ""
    default: Any = None
    required: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: NodeKind
    label: str = ""
    agent: str | None = None
    crew: str | None = None
    tool: str | None = None
    task: str = ""
    expected_output: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    default: str | None = None
    value: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    position: tuple[float, float] | None = None

    def text_fields(self) -> dict[str, str]:
        """Every user-written text of the node, by field name (for size limits and template checks)."""
        texts: dict[str, str] = {"label": self.label, "task": self.task, "expected_output": self.expected_output}
        if self.value is not None:
            texts["value"] = self.value
        for key, template in self.inputs.items():
            texts[f"inputs.{key}"] = template
        for index, route in enumerate(self.routes):
            texts[f"routes[{index}].when"] = route.when
        return texts


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class FlowLimits:
    max_nodes: int = 500
    max_edges: int = 2000
    max_text_bytes: int = 32 * 1024


@dataclass(frozen=True, slots=True)
class Flow:
    """A versioned flow definition. Agents, crews and tools it uses may be embedded (flow files) or live in
    the tenant's catalog (the platform); validation checks references against whichever is given."""

    id: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    name: str = ""
    description: str = ""
    version: int = 1
    inputs: tuple[InputSpec, ...] = ()
    agents: Mapping[str, Agent] = field(default_factory=dict)
    crews: Mapping[str, Crew] = field(default_factory=dict)
    tools: Mapping[str, ToolRef] = field(default_factory=dict)
    max_parallel: int = 8
    timeout: float | None = None

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def resolve_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Run inputs with declared defaults applied. Unknown keys are kept (templates may use them)."""
        resolved = {spec.name: spec.default for spec in self.inputs if spec.default is not None}
        resolved.update(given)
        return resolved

    def missing_inputs(self, given: Mapping[str, Any]) -> list[str]:
        return [s.name for s in self.inputs if s.required and s.default is None and s.name not in given]
