"""Agents, crews and tool references: the things flow nodes point at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Agent", "Crew", "CrewTask", "Process", "ToolRef"]


class Process(StrEnum):
    SEQUENTIAL = "sequential"
    HIERARCHICAL = "hierarchical"


@dataclass(frozen=True, slots=True)
class Agent:
    """A CrewAI-style agent. ``provider`` names an LLM provider (or ``scripted`` offline)."""

    id: str
    role: str
    goal: str
    backstory: str = ""
    provider: str | None = None
    model: str | None = None
    tools: tuple[str, ...] = ()
    allow_delegation: bool = False
    max_iter: int = 20
    temperature: float | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        if not self.role.strip():
            raise ValueError(f"agent {self.id!r}: role must not be empty")
        if not self.goal.strip():
            raise ValueError(f"agent {self.id!r}: goal must not be empty")
        if not 1 <= self.max_iter <= 1000:
            raise ValueError(f"agent {self.id!r}: max_iter must be between 1 and 1000")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"agent {self.id!r}: temperature must be between 0 and 2")


@dataclass(frozen=True, slots=True)
class CrewTask:
    """One task of a crew. ``context`` lists names of earlier tasks whose output this task receives."""

    name: str
    description: str
    expected_output: str = ""
    agent: str | None = None
    context: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Crew:
    id: str
    agents: tuple[str, ...]
    tasks: tuple[CrewTask, ...]
    process: Process = Process.SEQUENTIAL
    description: str = ""
    manager_provider: str | None = None

    def __post_init__(self) -> None:
        if not self.agents:
            raise ValueError(f"crew {self.id!r}: needs at least one agent")
        if not self.tasks:
            raise ValueError(f"crew {self.id!r}: needs at least one task")


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A registered tool: the sandbox runs it; its schemas describe its JSON input and output."""

    id: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None
