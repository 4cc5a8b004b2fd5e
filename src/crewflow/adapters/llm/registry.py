"""The in-memory provider registry the composition root fills (and tests use)."""

from __future__ import annotations

from collections.abc import Iterable

from crewflow.domain.errors import NotFound
from crewflow.domain.failover import Budget
from crewflow.ports.llm import ProviderConfig, ProviderEntry, TenantLLMConfig

__all__ = ["InMemoryProviderRegistry"]


class InMemoryProviderRegistry:
    """Implements ``ProviderRegistry``: each tenant's providers sorted by priority (then name)."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantLLMConfig] = {}

    def set_tenant(self, tenant_id: str, providers: Iterable[ProviderEntry], budget: Budget | None = None) -> None:
        ordered = tuple(sorted(providers, key=lambda e: (e.config.priority, e.config.name)))
        names = [e.name for e in ordered]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant {tenant_id!r}: provider names must be unique")
        self._tenants[tenant_id] = TenantLLMConfig(ordered, budget)

    def configure(self, tenant_id: str, configs: Iterable[ProviderConfig], budget: Budget | None = None) -> None:
        """Build an adapter for each config (``build_provider``) and set them as the tenant's providers.
        Adapters of the tenant's previous configuration are not closed here (calls may still use them)."""
        from crewflow.adapters.llm import build_provider

        self.set_tenant(tenant_id, [ProviderEntry(c, build_provider(c)) for c in configs], budget)

    def remove_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)

    async def for_tenant(self, tenant_id: str) -> TenantLLMConfig:
        config = self._tenants.get(tenant_id)
        if config is None or not config.providers:
            raise NotFound("LLM providers of tenant", tenant_id)
        return config

    async def close(self) -> None:
        """Close every provider (their HTTP sessions)."""
        seen: set[int] = set()
        for config in self._tenants.values():
            for entry in config.providers:
                if id(entry.provider) not in seen:
                    seen.add(id(entry.provider))
                    await entry.provider.close()
