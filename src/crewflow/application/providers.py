"""LLM provider use cases (create, update, delete, reorder) and the provider registry the gateway reads.

Keys are write-only: they are sealed with ``seal_provider_key`` on the way in and only the registry opens
them (for the gateway); everything shown to people is the masked hint stored next to the sealed key.
Every write invalidates the tenant's entry in the registry's cache, so the next LLM call sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from crewflow.application.keys import open_provider_key, seal_provider_key
from crewflow.domain.errors import NotFound
from crewflow.domain.execution import LLMProviderConfig
from crewflow.domain.failover import Price
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.llm import LLMProvider, ProviderConfig, ProviderEntry, TenantLLMConfig
from crewflow.ports.secrets import DecryptionFailed, SecretCipher, mask
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = [
    "KEY_HINT",
    "NewProvider",
    "ProviderCache",
    "ProviderDeps",
    "RepositoryProviderRegistry",
    "create_provider",
    "delete_provider",
    "key_hint",
    "reorder_providers",
    "update_provider",
]

KEY_HINT = "key_hint"  # in ``config``: the masked key (``sk-…abcd``), the only form of a key ever shown
_RUNTIME_KEYS = ("timeout", "connect_timeout", "max_connections", "api_version")
_PAGE = 100
log = structlog.get_logger(__name__)


class ProviderCache(Protocol):
    def invalidate(self, tenant_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ProviderDeps:
    uow_factory: UnitOfWorkFactory
    cipher: SecretCipher
    clock: Clock
    ids: IdGenerator
    cache: ProviderCache | None = None


@dataclass(frozen=True, slots=True)
class NewProvider:
    name: str
    provider_type: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    priority: int = 100
    price_input_per_1k: float = 0.0
    price_output_per_1k: float = 0.0
    budget: float | None = None
    is_active: bool = True
    config: Mapping[str, Any] = field(default_factory=dict)  # timeout, connect_timeout, max_connections, ...


def key_hint(provider: LLMProviderConfig) -> str | None:
    """The masked key of a provider (``None`` when it has no key)."""
    if not provider.has_key:
        return None
    hint = provider.config.get(KEY_HINT)
    return hint if isinstance(hint, str) and hint else "…"


def _with_key(deps: ProviderDeps, tenant_id: str, provider: LLMProviderConfig,
              api_key: str | None) -> LLMProviderConfig:  # fmt: skip
    config = {k: v for k, v in provider.config.items() if k != KEY_HINT}
    if api_key is None:  # keep the stored key (and its hint)
        if provider.has_key:
            config[KEY_HINT] = provider.config.get(KEY_HINT, "…")
        return dataclasses.replace(provider, config=config)
    if api_key == "":  # an empty key removes it
        return dataclasses.replace(provider, config=config, encrypted_key=None, key_id=None)
    sealed = seal_provider_key(deps.cipher, tenant_id, provider, api_key)
    return dataclasses.replace(sealed, config={**config, KEY_HINT: mask(api_key)})


def _invalidate(deps: ProviderDeps, tenant_id: str) -> None:
    if deps.cache is not None:
        deps.cache.invalidate(tenant_id)


async def create_provider(deps: ProviderDeps, tenant_id: str, new: NewProvider) -> LLMProviderConfig:
    """Raises ``Conflict`` when the name is taken, ``ValueError`` for values the domain refuses."""
    now = deps.clock.now()
    provider = LLMProviderConfig(
        id=deps.ids.new_id(), name=new.name, provider_type=new.provider_type, model=new.model, created_at=now,
        updated_at=now, base_url=new.base_url, config=dict(new.config), priority=new.priority,
        price_input_per_1k=new.price_input_per_1k, price_output_per_1k=new.price_output_per_1k,
        budget=new.budget, is_active=new.is_active,
    )  # fmt: skip
    provider = _with_key(deps, tenant_id, provider, new.api_key)
    async with deps.uow_factory.for_tenant(tenant_id) as uow:
        await uow.providers.add(provider)
        await uow.commit()
    _invalidate(deps, tenant_id)
    return provider


async def update_provider(deps: ProviderDeps, tenant_id: str, provider_id: str, changes: Mapping[str, Any],
                          api_key: str | None = None) -> LLMProviderConfig:  # fmt: skip
    """Apply ``changes`` (field → value, ``LLMProviderConfig`` fields but the key, id and times); the key is
    replaced only when ``api_key`` is given (``""`` removes it). Raises ``NotFound``, ``Conflict``."""
    forbidden = {"id", "created_at", "updated_at", "encrypted_key", "key_id"} & set(changes)
    if forbidden:
        raise ValueError(f"cannot change {', '.join(sorted(forbidden))}")
    async with deps.uow_factory.for_tenant(tenant_id) as uow:
        current = await uow.providers.get(provider_id)
        fields = dict(changes)
        if "config" in fields:  # the hint is managed here, never taken from a request
            fields["config"] = {k: v for k, v in fields["config"].items() if k != KEY_HINT}
            if current.has_key:
                fields["config"][KEY_HINT] = current.config.get(KEY_HINT, "…")
        updated = dataclasses.replace(current, **fields, updated_at=deps.clock.now())
        updated = _with_key(deps, tenant_id, updated, api_key)
        await uow.providers.update(updated)
        await uow.commit()
    _invalidate(deps, tenant_id)
    return updated


async def delete_provider(deps: ProviderDeps, tenant_id: str, provider_id: str) -> None:
    async with deps.uow_factory.for_tenant(tenant_id) as uow:
        await uow.providers.delete(provider_id)
        await uow.commit()
    _invalidate(deps, tenant_id)


async def _all_providers(deps: ProviderDeps, tenant_id: str) -> list[LLMProviderConfig]:
    async with deps.uow_factory.for_tenant(tenant_id) as uow:
        return await _list_all(uow.providers.list)


async def _list_all(fetch: Any) -> list[LLMProviderConfig]:
    items: list[LLMProviderConfig] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor, _PAGE)
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return items


async def reorder_providers(deps: ProviderDeps, tenant_id: str, order: Sequence[str]) -> list[LLMProviderConfig]:
    """Failover order: the providers listed in ``order`` first, in that order, then the others in their
    current order; priorities become 10, 20, 30… Raises ``NotFound`` for an id the tenant does not have,
    ``ValueError`` for a repeated id. Returns every provider in the new order."""
    if len(set(order)) != len(order):
        raise ValueError("each provider may appear only once in the order")
    now = deps.clock.now()
    async with deps.uow_factory.for_tenant(tenant_id) as uow:
        current = await _list_all(uow.providers.list)
        by_id = {p.id: p for p in current}
        for provider_id in order:
            if provider_id not in by_id:
                raise NotFound("provider", provider_id)
        listed = set(order)
        ordered = [by_id[i] for i in order] + [p for p in current if p.id not in listed]
        result: list[LLMProviderConfig] = []
        for rank, provider in enumerate(ordered, start=1):
            changed = provider if provider.priority == rank * 10 else dataclasses.replace(
                provider, priority=rank * 10, updated_at=now)  # fmt: skip
            if changed is not provider:
                await uow.providers.update(changed)
            result.append(changed)
        await uow.commit()
    _invalidate(deps, tenant_id)
    return result


# -- the registry the gateway reads ------------------------------------------------------------------------
def _config_of(provider: LLMProviderConfig, api_key: str | None) -> ProviderConfig:
    extra = {k: provider.config[k] for k in _RUNTIME_KEYS if provider.config.get(k) is not None}
    return ProviderConfig(
        name=provider.name, kind=provider.provider_type, model=provider.model, base_url=provider.base_url or "",
        api_key=api_key or "", priority=provider.priority,
        price=Price(provider.price_input_per_1k, provider.price_output_per_1k), **extra,
    )  # fmt: skip


def _adapter_key(config: ProviderConfig) -> tuple[Any, ...]:
    """What an adapter is built from (priority and price live in the entry's config, not the adapter)."""
    return (config.name, config.kind, config.model, config.base_url, config.api_key, config.timeout,
            config.connect_timeout, config.max_connections, config.api_version)  # fmt: skip


class RepositoryProviderRegistry:
    """Implements ``ProviderRegistry`` from the tenants' ``llm_providers`` (active ones, keys opened with
    ``open_provider_key``), cached per tenant.

    Writes through this process's use cases ``invalidate`` the tenant at once; ``ttl`` seconds bound how
    long another process's edit can go unseen. Adapters are built by the injected ``build`` (e.g.
    ``crewflow.adapters.llm.build_provider``) and reused while their config is unchanged; replaced ones are
    closed by ``close`` (calls in flight may still use them until then). A provider whose key cannot be
    opened is left out (logged with its id, never the key)."""

    def __init__(self, uow_factory: UnitOfWorkFactory, cipher: SecretCipher,
                 build: Callable[[ProviderConfig], LLMProvider], clock: Clock, *,
                 ttl: float = 30.0) -> None:  # fmt: skip
        self._uow_factory = uow_factory
        self._cipher = cipher
        self._build = build
        self._clock = clock
        self._ttl = ttl
        self._cached: dict[str, tuple[float, TenantLLMConfig]] = {}
        self._adapters: dict[str, dict[tuple[Any, ...], LLMProvider]] = {}
        self._retired: list[LLMProvider] = []
        self._locks: dict[str, asyncio.Lock] = {}

    def invalidate(self, tenant_id: str) -> None:
        self._cached.pop(tenant_id, None)

    async def for_tenant(self, tenant_id: str) -> TenantLLMConfig:
        hit = self._cached.get(tenant_id)
        if hit is not None and self._clock.now() < hit[0]:
            return hit[1]
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:
            hit = self._cached.get(tenant_id)
            if hit is not None and self._clock.now() < hit[0]:
                return hit[1]
            config = await self._load(tenant_id)
            self._cached[tenant_id] = (self._clock.now() + self._ttl, config)
        if not config.providers:
            raise NotFound("LLM providers of tenant", tenant_id)
        return config

    async def _load(self, tenant_id: str) -> TenantLLMConfig:
        async with self._uow_factory.for_tenant(tenant_id) as uow:
            stored = [p for p in await _list_all(uow.providers.list) if p.is_active]
        previous = self._adapters.get(tenant_id, {})
        adapters: dict[tuple[Any, ...], LLMProvider] = {}
        entries: list[ProviderEntry] = []
        for provider in stored:  # already in failover order (priority, then id)
            try:
                config = _config_of(provider, open_provider_key(self._cipher, tenant_id, provider))
            except DecryptionFailed:
                log.warning("provider.key_unreadable", tenant_id=tenant_id, provider_id=provider.id)
                continue
            key = _adapter_key(config)
            adapter = previous.get(key) or adapters.get(key) or self._build(config)
            adapters[key] = adapter
            entries.append(ProviderEntry(config, adapter))
        kept = {id(a) for a in adapters.values()}
        self._retired.extend(a for a in previous.values() if id(a) not in kept)
        self._adapters[tenant_id] = adapters
        return TenantLLMConfig(tuple(entries))

    async def close(self) -> None:
        """Close every adapter built (their HTTP sessions)."""
        adapters = [a for by_config in self._adapters.values() for a in by_config.values()] + self._retired
        self._adapters.clear()
        self._retired.clear()
        self._cached.clear()
        closed: set[int] = set()
        for adapter in adapters:
            if id(adapter) not in closed:
                closed.add(id(adapter))
                await adapter.close()
