"""The API skeleton: authentication, RBAC guards, problem details and tenant scoping on /agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from api_support import bearer as auth
from api_support import make_user
from litestar.testing import AsyncTestClient

from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.tenancy import Role
from crewflow.entrypoints.http import create_app
from crewflow.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    yield built
    await built.aclose()


AGENT: dict[str, Any] = {"id": "writer", "role": "Writer", "goal": "Write"}


async def test_agents_crud_is_scoped_to_the_callers_tenant(container: ApiContainer) -> None:
    _, admin_a = await make_user(container, Role.ADMIN)
    _, admin_b = await make_user(container, Role.ADMIN)
    async with AsyncTestClient(create_app(container)) as client:
        created = await client.post("/api/v1/agents", json=AGENT, headers=auth(admin_a))
        assert created.status_code == 201, created.text
        listed = await client.get("/api/v1/agents", headers=auth(admin_a))
        assert [a["id"] for a in listed.json()["items"]] == ["writer"]
        patched = await client.patch("/api/v1/agents/writer", json={"goal": "Write better"}, headers=auth(admin_a))
        assert patched.json()["goal"] == "Write better"
        # another tenant sees nothing, and gets the same 404 as for a missing object
        other = await client.get("/api/v1/agents/writer", headers=auth(admin_b))
        missing = await client.get("/api/v1/agents/nope", headers=auth(admin_b))
        assert other.status_code == missing.status_code == 404
        assert other.headers["content-type"].startswith("application/problem+json")
        assert (await client.delete("/api/v1/agents/writer", headers=auth(admin_b))).status_code == 404
        assert (await client.get("/api/v1/agents", headers=auth(admin_b))).json()["items"] == []
        assert (await client.get("/api/v1/agents/writer", headers=auth(admin_a))).status_code == 200


async def test_viewers_read_but_cannot_write(container: ApiContainer) -> None:
    tenant, admin = await make_user(container, Role.ADMIN)
    _, viewer = await make_user(container, Role.VIEWER, tenant)
    async with AsyncTestClient(create_app(container)) as client:
        assert (await client.post("/api/v1/agents", json=AGENT, headers=auth(admin))).status_code == 201
        assert (await client.get("/api/v1/agents", headers=auth(viewer))).status_code == 200
        denied = await client.post("/api/v1/agents", json={**AGENT, "id": "w2"}, headers=auth(viewer))
        assert denied.status_code == 403
        assert denied.json()["title"] == "Forbidden"
        assert (await client.delete("/api/v1/agents/writer", headers=auth(viewer))).status_code == 403


async def test_requests_without_a_valid_token_get_401_problem_details(container: ApiContainer) -> None:
    async with AsyncTestClient(create_app(container)) as client:
        assert (await client.get("/api/v1/agents")).status_code == 401
        bad = await client.get("/api/v1/agents", headers=auth("not.a.token"))
        assert bad.status_code == 401
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert (await client.get("/healthz")).status_code == 200


async def test_invalid_bodies_get_422_with_per_field_messages(container: ApiContainer) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    async with AsyncTestClient(create_app(container)) as client:
        response = await client.post("/api/v1/agents", json={"role": "", "goal": "g", "bogus": 1},
                                     headers=auth(admin))  # fmt: skip
        assert response.status_code == 422
        assert response.json()["errors"]
