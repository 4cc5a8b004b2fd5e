"""Records the platform stores per tenant: executions and their node checkpoints, flow versions, LLM providers
and tools. Times are epoch seconds, like ``Clock.now()`` and the execution events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crewflow.domain.scheduler import NodeStatus, RunStatus

__all__ = [
    "Execution",
    "FlowRecord",
    "FlowVersion",
    "IdempotencyRecord",
    "LLMProviderConfig",
    "NodeRun",
    "ToolRecord",
]


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of one version of a flow. ``last_seq`` is the last execution event checkpointed for it;
    ``worker_id``/``lease_expires_at`` are the lease of the worker running it (distributed workers)."""

    id: str
    flow_id: str
    flow_version: int
    created_at: float
    status: RunStatus = RunStatus.PENDING
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_seq: int = 0
    worker_id: str | None = None
    lease_expires_at: float | None = None

    def __post_init__(self) -> None:
        if self.flow_version < 1:
            raise ValueError("flow_version must be at least 1")
        if self.last_seq < 0:
            raise ValueError("last_seq must not be negative")


@dataclass(frozen=True, slots=True)
class NodeRun:
    """The checkpoint of one node of one execution: written when it starts and when it ends, so a resumed
    run never re-runs a completed node. ``branches`` are the children a router chose."""

    execution_id: str
    node_id: str
    status: NodeStatus
    attempt: int = 0
    output: Any = None
    branches: tuple[str, ...] | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def __post_init__(self) -> None:
        if self.attempt < 0 or self.input_tokens < 0 or self.output_tokens < 0 or self.cost < 0:
            raise ValueError("attempt, tokens and cost must not be negative")


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """A stored flow: its catalog entry. Its definitions are immutable ``FlowVersion``s; editing a flow
    adds version ``current_version + 1``."""

    id: str
    name: str
    created_at: float
    updated_at: float
    description: str = ""
    current_version: int = 1
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class FlowVersion:
    """One immutable definition of a flow (the flow document, see ``crewflow.domain.codec``)."""

    flow_id: str
    version: int
    definition: Mapping[str, Any]
    created_at: float
    created_by: str | None = None

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("flow version must be at least 1")


@dataclass(frozen=True, slots=True)
class LLMProviderConfig:
    """An LLM provider of a tenant. ``encrypted_key`` is an opaque blob sealed by the secret cipher under
    ``key_id``; it is never shown (excluded from ``repr``) and only the gateway asks for it to be opened."""

    id: str
    name: str
    provider_type: str  # openai | anthropic | ollama | scripted | ...
    model: str
    created_at: float
    updated_at: float
    base_url: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 100  # lower is tried first
    price_input_per_1k: float = 0.0
    price_output_per_1k: float = 0.0
    budget: float | None = None
    is_active: bool = True
    encrypted_key: bytes | None = field(default=None, repr=False)
    key_id: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("provider name must not be empty")
        if self.price_input_per_1k < 0 or self.price_output_per_1k < 0:
            raise ValueError("provider prices must not be negative")
        if self.budget is not None and self.budget < 0:
            raise ValueError("provider budget must not be negative")

    @property
    def has_key(self) -> bool:
        return self.encrypted_key is not None


@dataclass(frozen=True, slots=True)
class ToolRecord:
    """A registered tool: the sandbox runs ``docker_image`` (built from ``dockerfile`` when given)."""

    id: str
    name: str
    created_at: float
    updated_at: float
    description: str = ""
    docker_image: str | None = None
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] = field(default_factory=dict)
    dockerfile: str | None = None
    build_status: str = "none"  # none | registered | queued | building | ready | failed
    is_active: bool = True
    version: int = 1
    script: str | None = None  # Python entry point (reads JSON on stdin): runs under bubblewrap without Docker
    context: Mapping[str, str] = field(default_factory=dict)  # small build-context files: name -> text
    image_digest: str | None = None  # what the last successful build produced (tag or repo@sha256:…)
    build_error: str | None = None
    build_log: str | None = None  # tail of the last build's log
    built_at: float | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)  # ToolLimits fields that differ from defaults
    warm_pool: int = 0


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The stored answer to a request sent with an ``Idempotency-Key``; ``request_hash`` tells a replay of
    the same request from a different request reusing the key."""

    key: str
    request_hash: str
    created_at: float
    response: Mapping[str, Any] | None = None
