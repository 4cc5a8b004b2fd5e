"""What a run returns to its caller: status, outputs, per-node results with timings and LLM attempts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crewflow.domain.events import ExecutionEvent
from crewflow.domain.scheduler import NodeStatus, RunStatus

__all__ = ["NodeResult", "RunResult"]


@dataclass(frozen=True, slots=True)
class NodeResult:
    node_id: str
    status: NodeStatus
    output: Any = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    llm_attempts: tuple[Mapping[str, Any], ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "status": str(self.status),
            "output": self.output,
            "error": self.error,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "llm_attempts": [dict(a) for a in self.llm_attempts],
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    execution_id: str
    flow_id: str
    status: RunStatus
    outputs: Mapping[str, Any]
    nodes: Mapping[str, NodeResult]
    started_at: float | None
    finished_at: float | None
    error: str | None = None
    events: tuple[ExecutionEvent, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.COMPLETED

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def cost(self) -> float:
        return sum(n.cost for n in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "flow_id": self.flow_id,
            "status": str(self.status),
            "outputs": dict(self.outputs),
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "cost": self.cost,
            "nodes": {k: v.to_dict() for k, v in self.nodes.items()},
        }
