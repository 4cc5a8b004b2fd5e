"""Helpers shared by the API tests: the app on a real uvicorn server in the test's event loop, and users of
fresh tenants created directly through the container (no HTTP round trip)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import uvicorn

from crewflow.bootstrap import ApiContainer
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.entrypoints.http import create_app

__all__ = ["bearer", "make_user", "served", "served_client"]


@asynccontextmanager
async def served(container: ApiContainer) -> AsyncIterator[str]:
    """The app on a real server in this event loop; yields its address ``127.0.0.1:<port>``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(container), log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def served_client(container: ApiContainer) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``served``, yielding an HTTP client for the server."""
    async with served(container) as address, httpx.AsyncClient(base_url=f"http://{address}") as client:
        yield client


async def make_user(container: ApiContainer, role: Role = Role.ADMIN, tenant_id: str | None = None) -> tuple[str, str]:
    """A user of ``tenant_id`` (a new tenant when None); returns (tenant id, bearer token)."""
    if tenant_id is None:
        tenant_id = uuid.uuid4().hex[:12]
        await container.provisioner.register(
            Tenant(tenant_id, f"t-{tenant_id}", "T", f"tenant_{tenant_id}", datetime.now(UTC))
        )
    user = User(uuid.uuid4().hex, tenant_id, f"{uuid.uuid4().hex[:8]}@example.com", role,
                container.hasher.hash("pw-123456789"))  # fmt: skip
    async with container.uow_factory.platform() as uow:
        await uow.users.add(user)
        await uow.commit()
    return tenant_id, container.tokens.issue(user.id, tenant_id, role).token


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}
