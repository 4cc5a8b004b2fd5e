"""Agents, crews and tool references: the things flow nodes point at."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Agent", "Crew", "CrewTask", "Process", "ToolLimits", "ToolRef"]


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
class ToolLimits:
    """What one call of a tool may use. Defaults are the sandbox's safe defaults; a tool may ask for less or
    (within the platform's caps) more."""

    timeout: float = 30.0  # wall-clock seconds, then the tool is killed
    memory_mb: int = 256  # memory limit, no swap
    cpus: float = 1.0  # CPU quota in cores
    pids: int = 64  # process/thread limit (contains fork bombs)
    tmpfs_mb: int = 16  # the only writable place (/tmp)
    output_bytes: int = 1_048_576  # stdout larger than this fails the call

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= 3600:
            raise ValueError("tool timeout must be between 0 and 3600 seconds")
        if not 16 <= self.memory_mb <= 65_536:
            raise ValueError("tool memory_mb must be between 16 and 65536")
        if not 0 < self.cpus <= 64:
            raise ValueError("tool cpus must be between 0 and 64")
        if not 8 <= self.pids <= 4096:
            raise ValueError("tool pids must be between 8 and 4096")
        if not 1 <= self.tmpfs_mb <= 4096:
            raise ValueError("tool tmpfs_mb must be between 1 and 4096")
        if not 1 <= self.output_bytes <= 64 * 1_048_576:
            raise ValueError("tool output_bytes must be between 1 and 64 MiB")


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A registered tool: the sandbox runs it; its schemas describe its JSON input and output.

    ``image`` is the built image to run (a tag or ``repo@sha256:…`` digest) — the Docker sandbox needs it;
    ``script`` is Python source run as ``python3 -`` style entry point (reads JSON on stdin, writes JSON on
    stdout) — the bubblewrap sandbox runs it where no Docker engine answers. ``warm_pool`` asks for that many
    pre-started containers. ``version`` tells builds/images of the same tool apart."""

    id: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None
    script: str | None = None
    limits: ToolLimits = field(default_factory=ToolLimits)
    warm_pool: int = 0
    version: int = 1
