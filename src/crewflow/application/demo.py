"""Use case: seed the demo tenant of the embedded server — an admin, two scripted agents and the demo flow —
so ``make run`` shows something that runs offline. Idempotent: an existing demo tenant is left as it is."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from crewflow.domain.codec import flow_from_dict
from crewflow.domain.execution import FlowRecord
from crewflow.domain.tenancy import Role, Tenant, User, schema_name_for
from crewflow.ports.auth import PasswordHasher
from crewflow.ports.clock import Clock
from crewflow.ports.provisioning import TenantProvisioner
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = ["DEMO_EMAIL", "DEMO_TENANT", "DemoSeed", "seed_demo"]

DEMO_TENANT = "demo"
DEMO_EMAIL = "demo@crewflow.local"


@dataclass(frozen=True, slots=True)
class DemoSeed:
    tenant_id: str
    email: str
    password: str | None  # None when the tenant already existed (the password was shown when it was made)
    flow_id: str


async def seed_demo(
    provisioner: TenantProvisioner,
    uow_factory: UnitOfWorkFactory,
    hasher: PasswordHasher,
    clock: Clock,
    flow_document: Mapping[str, Any],
    *,
    password: str | None = None,
) -> DemoSeed:
    flow = flow_from_dict(flow_document)
    if any(t.id == DEMO_TENANT for t in await provisioner.list_tenants()):
        return DemoSeed(DEMO_TENANT, DEMO_EMAIL, None, flow.id)
    await provisioner.register(Tenant(DEMO_TENANT, DEMO_TENANT, "Demo workspace", schema_name_for(DEMO_TENANT),
                                      datetime.now(UTC)))
    password = password or secrets.token_urlsafe(12)
    async with uow_factory.platform() as platform:
        await platform.users.add(User(secrets.token_hex(16), DEMO_TENANT, DEMO_EMAIL, Role.ADMIN,
                                      hasher.hash(password), created_at=datetime.now(UTC)))
        await platform.commit()
    now = clock.now()
    async with uow_factory.for_tenant(DEMO_TENANT) as uow:
        for agent in flow.agents.values():
            await uow.agents.add(dataclasses.replace(agent), at=now)
        await uow.flows.add(FlowRecord(flow.id, flow.name, now, now, flow.description), dict(flow_document))
        await uow.commit()
    return DemoSeed(DEMO_TENANT, DEMO_EMAIL, password, flow.id)
