"""The composition root: reads settings, picks adapters (embedded or production) and wires the use cases.

Plain typed functions rather than a DI container: every dependency is visible at its call site, mypy
checks the wiring, and nothing heavy is imported until the function that needs it runs (ADR 0001)."""

from __future__ import annotations

from crewflow.adapters.runtime import ProviderRoutingRuntime, ScriptedRuntime
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine
from crewflow.domain.flow import FlowLimits
from crewflow.ports.runtime import AgentRuntime, ToolSandbox
from crewflow.settings import Settings

__all__ = ["build_engine", "build_runtime"]


def build_runtime(settings: Settings) -> AgentRuntime:
    """``scripted`` agents run offline; other providers need the LLM runtime (CrewAI over the gateway)."""
    return ProviderRoutingRuntime(ScriptedRuntime(), None, default_provider=settings.default_provider)


def build_engine(
    settings: Settings | None = None,
    *,
    runtime: AgentRuntime | None = None,
    tools: ToolSandbox | None = None,
    limits: FlowLimits | None = None,
) -> Engine:
    settings = settings or Settings.from_env()
    return Engine(
        runtime or build_runtime(settings),
        clock=SystemClock(),
        ids=UuidGenerator(),
        tools=tools,
        limits=limits,
    )
