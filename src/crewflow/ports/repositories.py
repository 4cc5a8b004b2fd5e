"""Repositories: what the application needs from the relational store, in domain terms.

A tenant-scoped repository is built by a ``UnitOfWork`` for one tenant; none of its methods takes a tenant
id, and nothing of another tenant is reachable through it (``get`` of another tenant's id raises
``NotFound``, lists never include it, updates and deletes of it raise ``NotFound`` and change nothing).

Conventions: ``get`` raises ``crewflow.domain.errors.NotFound``; ``add`` of an existing id or unique name
raises ``crewflow.domain.errors.Conflict``; ``update``/``delete`` of a missing record raise ``NotFound``;
list methods return a ``Page`` whose ``next_cursor`` is opaque, with ``1 <= limit <= 100`` (``ValueError``
otherwise). Times are epoch seconds passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from crewflow.domain.agents import Agent, Crew
from crewflow.domain.execution import (
    Execution,
    FlowRecord,
    FlowVersion,
    IdempotencyRecord,
    LLMProviderConfig,
    NodeRun,
    ToolRecord,
)
from crewflow.domain.logs import Page
from crewflow.domain.scheduler import RunStatus
from crewflow.domain.tenancy import Tenant, User

__all__ = [
    "MAX_PAGE_SIZE",
    "AgentRepository",
    "CrewRepository",
    "ExecutionRepository",
    "FlowRepository",
    "IdempotencyRepository",
    "NodeRunRepository",
    "ProviderRepository",
    "TenantRepository",
    "ToolRepository",
    "UserRepository",
]

MAX_PAGE_SIZE = 100


class AgentRepository(Protocol):
    async def add(self, agent: Agent, *, at: float) -> None: ...
    async def get(self, agent_id: str) -> Agent: ...
    async def update(self, agent: Agent, *, at: float) -> None: ...
    async def delete(self, agent_id: str) -> None: ...
    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Agent]:
        """Ordered by id."""
        ...


class CrewRepository(Protocol):
    async def add(self, crew: Crew, *, at: float) -> None: ...
    async def get(self, crew_id: str) -> Crew: ...
    async def update(self, crew: Crew, *, at: float) -> None: ...
    async def delete(self, crew_id: str) -> None: ...
    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Crew]:
        """Ordered by id."""
        ...


class FlowRepository(Protocol):
    """Flows with immutable versions. Edits add a version, guarded by optimistic concurrency."""

    async def add(self, flow: FlowRecord, definition: Mapping[str, Any], *, created_by: str | None = None) -> None:
        """Store a new flow and its first version (``flow.current_version`` must be 1)."""
        ...

    async def get(self, flow_id: str) -> FlowRecord: ...

    async def get_version(self, flow_id: str, version: int | None = None) -> FlowVersion:
        """A version of the flow; its current one when ``version`` is None."""
        ...

    async def add_version(
        self,
        flow_id: str,
        definition: Mapping[str, Any],
        *,
        expected_version: int,
        at: float,
        name: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
    ) -> FlowRecord:
        """Add version ``expected_version + 1`` and make it current. Raises ``Conflict`` when the flow's
        current version is no longer ``expected_version`` (someone else edited it first)."""
        ...

    async def set_active(self, flow_id: str, is_active: bool, *, at: float) -> None: ...

    async def delete(self, flow_id: str) -> None:
        """Delete the flow and all its versions (its executions are kept)."""
        ...

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[FlowRecord]:
        """Ordered by id."""
        ...

    async def list_versions(self, flow_id: str, cursor: str | None = None, limit: int = 50) -> Page[FlowVersion]:
        """Newest version first."""
        ...


class ExecutionRepository(Protocol):
    async def add(self, execution: Execution) -> None: ...
    async def get(self, execution_id: str) -> Execution: ...

    async def update(self, execution: Execution) -> None:
        """Replace every mutable field (status, outputs, error, times, lease, last_seq)."""
        ...

    async def record_progress(
        self,
        execution_id: str,
        *,
        last_seq: int,
        status: RunStatus | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        outputs: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Checkpoint a run's state without reading it: sets last_seq, and each other field that is given
        (not None). Raises ``NotFound`` for an unknown execution."""
        ...

    async def delete(self, execution_id: str) -> None:
        """Delete the execution and its node checkpoints."""
        ...

    async def list(
        self, cursor: str | None = None, limit: int = 50, *, status: RunStatus | None = None
    ) -> Page[Execution]:
        """Newest first (created_at, then id)."""
        ...

    async def list_for_flow(self, flow_id: str, cursor: str | None = None, limit: int = 50) -> Page[Execution]:
        """Executions of one flow, newest first."""
        ...

    # -- leases of distributed workers (ADR 0012) --
    async def claim(self, execution_id: str, worker_id: str, *, until: float, now: float) -> bool:
        """Take the lease of a ``pending``/``running`` execution for ``worker_id`` until ``until``, in one
        conditional UPDATE: it wins when no worker holds the execution, when the holder's lease expired
        (``lease_expires_at <= now``) or when ``worker_id`` holds it already. True when ``worker_id`` holds it
        afterwards; False when another worker's live lease holds it, it is finished, or it does not exist."""
        ...

    async def renew(self, execution_id: str, worker_id: str, *, until: float) -> bool:
        """Move the lease's expiry to ``until`` while ``worker_id`` still holds it (even past its expiry: as
        long as nobody claimed it, nobody else ran it). False when another worker took it or it was released."""
        ...

    async def release(self, execution_id: str, worker_id: str) -> bool:
        """Clear the lease if ``worker_id`` holds it (whatever the status); False when it did not."""
        ...

    async def list_expired(self, now: float, limit: int = 100, *,
                           unclaimed_before: float | None = None) -> Sequence[Execution]:  # fmt: skip
        """``pending``/``running`` executions whose lease expired (``lease_expires_at <= now``) and, when
        ``unclaimed_before`` is given, those no worker holds that were created before it: what the watchdog
        must rescue. Oldest first (created_at, id), at most ``limit`` (1-100)."""
        ...

    async def list_finished_before(self, cutoff: float, limit: int = 100) -> Sequence[str]:
        """Ids of finished executions (completed, failed, cancelled) that ended (or, without an end time, were
        created) before ``cutoff``: the retention cleanup's candidates. Oldest first, at most ``limit`` (1-100)."""
        ...

    async def delete_many(self, execution_ids: Collection[str]) -> int:
        """Delete these executions with their node checkpoints (missing ids are ignored); returns how many
        executions went."""
        ...


class NodeRunRepository(Protocol):
    async def save(self, run: NodeRun) -> None:
        """Insert or replace the checkpoint of (execution_id, node_id). Raises ``NotFound`` when the
        execution does not exist."""
        ...

    async def get(self, execution_id: str, node_id: str) -> NodeRun: ...

    async def find(self, execution_id: str, node_id: str) -> NodeRun | None: ...

    async def find_many(self, execution_id: str, node_ids: Collection[str]) -> dict[str, NodeRun]:
        """The stored checkpoints among ``node_ids``, by node id (absent ones are left out)."""
        ...

    async def save_many(self, runs: Sequence[NodeRun]) -> None:
        """``save`` for several checkpoints at once."""
        ...

    async def list_for_execution(self, execution_id: str, cursor: str | None = None, limit: int = 100) -> Page[NodeRun]:
        """Ordered by node id."""
        ...


class ProviderRepository(Protocol):
    async def add(self, provider: LLMProviderConfig) -> None:
        """Raises ``Conflict`` for an existing id or name."""
        ...

    async def get(self, provider_id: str) -> LLMProviderConfig: ...
    async def get_by_name(self, name: str) -> LLMProviderConfig: ...

    async def update(self, provider: LLMProviderConfig) -> None:
        """Replace every field but ``created_at`` (including the sealed key and its key id)."""
        ...

    async def delete(self, provider_id: str) -> None: ...

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[LLMProviderConfig]:
        """Ordered by priority (lowest first), then id: the failover order."""
        ...


class ToolRepository(Protocol):
    async def add(self, tool: ToolRecord) -> None:
        """Raises ``Conflict`` for an existing id or name."""
        ...

    async def get(self, tool_id: str) -> ToolRecord: ...
    async def get_by_name(self, name: str) -> ToolRecord: ...
    async def update(self, tool: ToolRecord) -> None: ...
    async def delete(self, tool_id: str) -> None: ...

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[ToolRecord]:
        """Ordered by name."""
        ...


class IdempotencyRepository(Protocol):
    async def find(self, key: str) -> IdempotencyRecord | None: ...

    async def add(self, record: IdempotencyRecord) -> None:
        """Raises ``Conflict`` when the key is already stored (a concurrent duplicate request)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def purge_before(self, cutoff: float) -> int:
        """Delete records created before ``cutoff``; returns how many went."""
        ...


# -- platform scope (the ``public`` schema) ----------------------------------------------------------------
class TenantRepository(Protocol):
    async def add(self, tenant: Tenant) -> None:
        """Raises ``Conflict`` for an existing id, slug or schema."""
        ...

    async def get(self, tenant_id: str) -> Tenant: ...
    async def get_by_slug(self, slug: str) -> Tenant: ...

    async def delete(self, tenant_id: str) -> None:
        """Delete the tenant row and its users (its schema is dropped by the provisioning code)."""
        ...

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Tenant]:
        """Ordered by creation time, then id."""
        ...


class UserRepository(Protocol):
    """E-mail addresses are unique across the platform (compared lower-cased): login finds the account,
    and so the tenant, from the e-mail alone."""

    async def add(self, user: User) -> None:
        """Raises ``Conflict`` for an existing id or e-mail, ``NotFound`` for an unknown tenant."""
        ...

    async def get(self, user_id: str) -> User: ...
    async def get_by_email(self, email: str) -> User: ...

    async def update(self, user: User) -> None:
        """Replace e-mail, password hash, role and is_active (never the tenant)."""
        ...

    async def delete(self, user_id: str) -> None: ...

    async def list_for_tenant(self, tenant_id: str, cursor: str | None = None, limit: int = 50) -> Page[User]:
        """Users of one tenant ordered by e-mail (platform scope: the caller names the tenant)."""
        ...
