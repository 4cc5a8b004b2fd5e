"""The composition root: reads settings, picks adapters (embedded or production) and wires the use cases.

Plain typed functions rather than a DI container: every dependency is visible at its call site, mypy
checks the wiring, and nothing heavy is imported until the function that needs it runs (ADR 0001)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crewflow.adapters.runtime import ProviderRoutingRuntime, ScriptedRuntime
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine
from crewflow.domain.failover import Budget
from crewflow.domain.flow import FlowLimits
from crewflow.ports.llm import LLMGateway, ProviderConfig
from crewflow.ports.runtime import AgentRuntime, ToolSandbox
from crewflow.settings import Settings

__all__ = ["LocalLLM", "build_engine", "build_local_llm", "build_runtime"]


@dataclass(frozen=True, slots=True)
class LocalLLM:
    """A gateway over providers configured for one tenant (the CLI and library's providers file), with the
    hook to close their HTTP sessions."""

    gateway: LLMGateway
    registry: object

    async def aclose(self) -> None:
        from crewflow.adapters.llm.registry import InMemoryProviderRegistry

        if isinstance(self.registry, InMemoryProviderRegistry):
            await self.registry.close()


def build_local_llm(tenant_id: str, providers: Sequence[ProviderConfig], budget: Budget | None = None) -> LocalLLM:
    from crewflow.adapters.cache.memory import MemoryCache
    from crewflow.adapters.llm import build_provider
    from crewflow.adapters.llm.registry import InMemoryProviderRegistry
    from crewflow.application.gateway import Gateway
    from crewflow.ports.llm import ProviderEntry

    registry = InMemoryProviderRegistry()
    registry.set_tenant(tenant_id, [ProviderEntry(c, build_provider(c)) for c in providers], budget)
    return LocalLLM(Gateway(registry, cache=MemoryCache()), registry)


def build_runtime(settings: Settings, gateway: LLMGateway | None = None,
                  tools: ToolSandbox | None = None) -> AgentRuntime:  # fmt: skip
    """``scripted`` agents run offline; other providers run on CrewAI over ``gateway`` (built lazily, so
    CrewAI is imported only when such an agent runs). With a gateway configured and no explicit
    ``CREWFLOW_DEFAULT_PROVIDER``, agents without a provider use the tenant's provider chain."""

    def crewai_runtime() -> AgentRuntime:
        from crewflow.adapters.crewai.runtime import CrewAIRuntime

        assert gateway is not None
        return CrewAIRuntime(gateway, tools=tools)

    default = settings.default_provider
    if gateway is not None and "CREWFLOW_DEFAULT_PROVIDER" not in settings.extra:
        default = ""
    return ProviderRoutingRuntime(ScriptedRuntime(), crewai_runtime if gateway is not None else None,
                                  default_provider=default)  # fmt: skip


def build_engine(
    settings: Settings | None = None,
    *,
    runtime: AgentRuntime | None = None,
    gateway: LLMGateway | None = None,
    tools: ToolSandbox | None = None,
    limits: FlowLimits | None = None,
) -> Engine:
    settings = settings or Settings.from_env()
    return Engine(
        runtime or build_runtime(settings, gateway, tools),
        clock=SystemClock(),
        ids=UuidGenerator(),
        tools=tools,
        limits=limits,
    )
