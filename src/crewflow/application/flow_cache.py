"""Flow definitions cached aside of the database: ``resolve_flow`` with its version lookups served from the
``Cache`` port (Redis in production, shared by every API instance and worker; in memory when embedded).

Two kinds of entries, in the tenant's namespace (the tenant id):

- ``flow:{id}:v{n}`` — a stored version (its document). Versions are immutable, so these never go stale;
  they expire after ``ttl`` only to bound memory. Each names the flow's *incarnation* (its creation time): a
  flow deleted and created again under the same id does not see the old flow's versions.
- ``flow:{id}:current`` — the flow's current version number and incarnation, the pointer every lookup
  follows and the proof that the flow still exists. ``invalidate`` deletes it; the HTTP routes call it after every
  committed create, update (new version), delete or (de)activation of a flow. It also expires after
  ``pointer_ttl``, which bounds the one race left: a lookup that read the old pointer from the database
  just before a change committed, and stores it just after the invalidation.

Only the flow's own document is cached: the saved agents, crews and tools it uses (and the provider names
it is validated against) are still read from the unit of work on every resolve, so editing an agent takes
effect on the next run, as without the cache. Each version lookup counts
``cache_hits_total{cache="flows", result="hit"|"miss"}``.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from crewflow.application.catalog import resolve_flow
from crewflow.domain.execution import FlowVersion
from crewflow.domain.flow import Flow, FlowLimits
from crewflow.ports.cache import Cache
from crewflow.ports.metrics import Metrics
from crewflow.ports.uow import UnitOfWork

__all__ = ["CachedFlowResolver", "current_key", "version_key"]


class _Stored(msgspec.Struct, frozen=True):
    flow_id: str
    version: int
    definition: dict[str, Any]
    created_at: float
    created_by: str | None
    incarnation: float  # the flow's created_at: a flow deleted and created again under its id is another flow


class _Pointer(msgspec.Struct, frozen=True, array_like=True):
    current: int
    incarnation: float


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Stored).decode
_decode_pointer = msgspec.json.Decoder(_Pointer).decode


def _pointer(raw: bytes | None) -> _Pointer | None:
    if raw is None:
        return None
    try:
        return _decode_pointer(raw)
    except msgspec.DecodeError:
        return None


def version_key(flow_id: str, version: int) -> str:
    return f"flow:{flow_id}:v{version}"


def current_key(flow_id: str) -> str:
    return f"flow:{flow_id}:current"


class _CachedFlows:
    """The unit of work's flow repository with ``get_version`` read through the cache."""

    def __init__(self, inner: Any, resolver: CachedFlowResolver, namespace: str) -> None:
        self._inner = inner
        self._resolver = resolver
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_version(self, flow_id: str, version: int | None = None) -> FlowVersion:
        cache, ns = self._resolver.cache, self._namespace
        pointer = _pointer(await cache.get(ns, current_key(flow_id)))
        if pointer is None:
            record = await self._inner.get(flow_id)  # NotFound for a missing (or deleted) flow
            pointer = _Pointer(int(record.current_version), float(record.created_at))
            await cache.set(ns, current_key(flow_id), _encode(pointer), self._resolver.pointer_ttl)
        wanted = pointer.current if version is None else version
        raw = await cache.get(ns, version_key(flow_id, wanted)) if wanted <= pointer.current else None
        if raw is not None:
            try:
                stored = _decode(raw)
            except msgspec.DecodeError:
                stored = None
            if (stored is not None and stored.flow_id == flow_id and stored.version == wanted
                    and stored.incarnation == pointer.incarnation):  # fmt: skip
                self._resolver.count("hit")
                return FlowVersion(stored.flow_id, stored.version, stored.definition, stored.created_at,
                                   stored.created_by)  # fmt: skip
        self._resolver.count("miss")
        found: FlowVersion = await self._inner.get_version(flow_id, wanted)
        await cache.set(ns, version_key(flow_id, wanted), _encode(_Stored(
            found.flow_id, found.version, dict(found.definition), found.created_at, found.created_by,
            pointer.incarnation,
        )), self._resolver.ttl)  # fmt: skip
        return found


class _CachedUnitOfWork:
    """A tenant unit of work whose ``flows`` go through the cache; everything else is the real one."""

    def __init__(self, inner: UnitOfWork, resolver: CachedFlowResolver) -> None:
        self._inner = inner
        self.flows = _CachedFlows(inner.flows, resolver, inner.tenant_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CachedFlowResolver:
    """``resolve_flow`` with cached version lookups (see the module docstring)."""

    def __init__(self, cache: Cache, metrics: Metrics | None = None, *, ttl: float = 3600.0,
                 pointer_ttl: float = 60.0) -> None:  # fmt: skip
        if not (ttl > 0 and pointer_ttl > 0):
            raise ValueError("ttl and pointer_ttl must be positive")
        self.cache = cache
        self.metrics = metrics
        self.ttl = ttl
        self.pointer_ttl = pointer_ttl

    def count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc("cache_hits_total", {"cache": "flows", "result": result})

    async def resolve(self, uow: UnitOfWork, flow_id: str, version: int | None = None, *,
                      limits: FlowLimits | None = None) -> Flow:  # fmt: skip
        """Exactly ``resolve_flow(uow, flow_id, version, limits=limits)``, with the flow's document from the
        cache when it is there. Raises what ``resolve_flow`` raises (``NotFound``, ``FlowInvalid``)."""
        return await resolve_flow(cast(UnitOfWork, _CachedUnitOfWork(uow, self)), flow_id, version, limits=limits)

    async def invalidate(self, tenant_id: str, flow_id: str) -> None:
        """Forget the flow's current-version pointer: call after a committed create, update, delete or
        (de)activation of the flow. Version documents stay (immutable; unreachable once the flow is gone)."""
        await self.cache.delete(tenant_id, current_key(flow_id))
