"""Execution events: every state change of a run, numbered per execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["EventKind", "ExecutionEvent", "Sequencer"]


class EventKind(StrEnum):
    RUN_STARTED = "run.started"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    NODE_STARTED = "node.started"
    NODE_COMPLETED = "node.completed"
    NODE_FAILED = "node.failed"
    NODE_RETRYING = "node.retrying"
    NODE_SKIPPED = "node.skipped"
    NODE_CANCELLED = "node.cancelled"
    NODE_TOKEN = "node.token"
    NODE_LOG = "node.log"
    LLM_ATTEMPT = "llm.attempt"

    @property
    def is_terminal_run(self) -> bool:
        return self in (EventKind.RUN_COMPLETED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED)


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    execution_id: str
    seq: int
    kind: EventKind
    at: float
    node_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "seq": self.seq,
            "kind": str(self.kind),
            "at": self.at,
            "node_id": self.node_id,
            "data": dict(self.data),
        }


class Sequencer:
    """Hands out strictly increasing sequence numbers for one execution (continuing after ``last_seq``)."""

    __slots__ = ("execution_id", "last_seq")

    def __init__(self, execution_id: str, last_seq: int = 0) -> None:
        self.execution_id = execution_id
        self.last_seq = last_seq

    def event(self, kind: EventKind, at: float, node_id: str | None = None,
              data: Mapping[str, Any] | None = None) -> ExecutionEvent:  # fmt: skip
        self.last_seq += 1
        return ExecutionEvent(self.execution_id, self.last_seq, kind, at, node_id, data or {})
