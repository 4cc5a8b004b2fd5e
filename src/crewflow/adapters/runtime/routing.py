"""Sends each agent (or crew) to the runtime its provider needs: ``scripted`` offline, anything else to the
LLM-backed runtime (CrewAI over the failover gateway), which is built lazily on first use."""

from __future__ import annotations

from collections.abc import Callable

from crewflow.domain.errors import NodeExecutionError
from crewflow.ports.runtime import AgentRuntime, AgentWork, CrewWork, NodeEmitter, NodeOutcome

__all__ = ["ProviderRoutingRuntime"]

SCRIPTED = "scripted"


class ProviderRoutingRuntime:
    def __init__(
        self,
        scripted: AgentRuntime,
        llm_runtime: Callable[[], AgentRuntime] | None = None,
        *,
        default_provider: str = SCRIPTED,
    ) -> None:
        self.scripted = scripted
        self._llm_factory = llm_runtime
        self._llm: AgentRuntime | None = None
        self.default_provider = default_provider

    def _for(self, provider: str | None) -> AgentRuntime:
        """``default_provider`` "" means: agents without a provider use the tenant's provider chain."""
        if (provider or self.default_provider) == SCRIPTED:
            return self.scripted
        if self._llm is None:
            if self._llm_factory is None:
                raise NodeExecutionError(
                    f"provider '{provider}' is not configured here (only 'scripted' runs offline)", retryable=False
                )
            self._llm = self._llm_factory()
        return self._llm

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        return await self._for(work.agent.provider).run_agent(work, emit)

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        providers = {a.provider or self.default_provider for a in work.agents.values()}
        provider = SCRIPTED if providers == {SCRIPTED} else next(p for p in sorted(providers) if p != SCRIPTED)
        return await self._for(provider or None).run_crew(work, emit)
