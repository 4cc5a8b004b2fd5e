"""What the engine asks of the things that do a node's work: agents/crews (AgentRuntime) and tools
(ToolSandbox). Adapters: ``scripted`` (offline, deterministic), CrewAI, the Docker/bubblewrap sandbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crewflow.domain.agents import Agent, Crew, ToolRef
from crewflow.domain.events import EventKind

__all__ = [
    "AgentRuntime",
    "AgentWork",
    "BuiltImage",
    "CrewWork",
    "NodeEmitter",
    "NodeOutcome",
    "ToolBuildSpec",
    "ToolBuilder",
    "ToolSandbox",
    "ToolWork",
]


@dataclass(frozen=True, slots=True)
class AgentWork:
    """One task for one agent. ``task``/``expected_output`` are already rendered; ``inputs`` holds the
    outputs of the node's parents by parent id; ``run_inputs`` the execution's inputs."""

    tenant_id: str
    execution_id: str
    node_id: str
    attempt: int
    agent: Agent
    task: str
    expected_output: str
    inputs: Mapping[str, Any]
    run_inputs: Mapping[str, Any]
    tools: Mapping[str, ToolRef] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of a resumed run, so side effects can be de-duplicated downstream."""
        return f"{self.execution_id}:{self.node_id}"


@dataclass(frozen=True, slots=True)
class CrewWork:
    """A whole crew run. ``inputs`` are the node's rendered inputs (CrewAI ``kickoff(inputs=...)``) plus the
    parents' outputs under their ids."""

    tenant_id: str
    execution_id: str
    node_id: str
    attempt: int
    crew: Crew
    agents: Mapping[str, Agent]
    inputs: Mapping[str, Any]
    tools: Mapping[str, ToolRef] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.node_id}"


@dataclass(frozen=True, slots=True)
class ToolWork:
    tenant_id: str
    execution_id: str
    node_id: str
    attempt: int
    tool: ToolRef
    payload: Mapping[str, Any]
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """A node's result. ``llm_attempts`` are the gateway's attempt records (provider, model, latency,
    tokens, cost, outcome) made while producing it."""

    output: Any
    llm_attempts: tuple[Mapping[str, Any], ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


NodeEmitter = Callable[[EventKind, Mapping[str, Any]], None]
"""Publishes an intermediate event (tokens, LLM attempts, logs) for the node being run. Safe to call from
another thread (CrewAI runs crews in worker threads): the engine hops back to its loop."""


class AgentRuntime(Protocol):
    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        """Raise ``NodeExecutionError`` (retryable or not) on failure."""
        ...

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome: ...


class ToolSandbox(Protocol):
    async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome: ...


@dataclass(frozen=True, slots=True)
class ToolBuildSpec:
    """Build one version of a tenant's tool from its Dockerfile and small context files (name -> bytes)."""

    tenant_id: str
    tool_id: str
    version: int
    dockerfile: str
    context: Mapping[str, bytes] = field(default_factory=dict)
    timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """What a build produced: ``image`` is what to run (``repo@sha256:…`` when pushed to a registry, else the
    local tag); ``digest`` the image id/digest."""

    image: str
    digest: str | None = None


class ToolBuilder(Protocol):
    async def build(self, spec: ToolBuildSpec, log: Callable[[str], None]) -> BuiltImage:
        """Build (and push, with a registry configured) the image; each build-log line goes to ``log``.
        Raise ``ToolBuildError`` (``crewflow.domain.errors``) with a readable reason on failure/timeout."""
        ...
