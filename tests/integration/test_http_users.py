"""User management and the audit log over HTTP: only admins manage users and read the audit log (BFLA),
viewers change nothing, the last admin is protected, other tenants' users are 404, every write and login
attempt is audited without secrets."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from crewflow.adapters.sql.migrate import migrate
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.entrypoints.http import create_app
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


@pytest.fixture(params=["sqlite", "postgres"])
async def client(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[AsyncTestClient[Any]]:
    database_url = None
    if request.param == "postgres":
        database_url = str(request.getfixturevalue("postgres_url"))
        assert (await migrate(database_url)).ok
    # no spare-schema pool: its refill task would live on this fixture's loop, while the app's shutdown closes
    # the container from the test client's loop
    settings = Settings(data_dir=str(tmp_path), database_url=database_url, spare_schemas=0,
                        extra={"CREWFLOW_JWT_SECRET": "x" * 40})  # fmt: skip
    container: ApiContainer = await build_api_container(settings, bcrypt_rounds=4)
    async with AsyncTestClient(create_app(container)) as test_client:
        yield test_client
    await container.aclose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Account:
    id: str
    email: str
    token: str


@dataclass
class Team:
    admin: Account
    member: Account
    viewer: Account


async def _login(client: AsyncTestClient[Any], email: str) -> str:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def make_team(client: AsyncTestClient[Any]) -> Team:
    """A new tenant with an admin (registered), a member and a viewer (invited by the admin)."""
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post("/api/v1/auth/register", json={
        "tenant_name": "Team", "slug": f"team-{uuid.uuid4().hex[:8]}", "email": admin_email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    admin = Account(registered.json()["user"]["id"], admin_email, await _login(client, admin_email))
    accounts = {}
    for role in ("member", "viewer"):
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        invited = await client.post("/api/v1/users", headers=bearer(admin.token),
                                    json={"email": email, "role": role, "password": PASSWORD})  # fmt: skip
        assert invited.status_code == 201, invited.text
        assert invited.json()["role"] == role
        accounts[role] = Account(invited.json()["id"], email, await _login(client, email))
    return Team(admin, accounts["member"], accounts["viewer"])


async def test_the_admin_lists_users_page_by_page(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    await make_team(client)  # another tenant's users never show up
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/api/v1/users", headers=bearer(team.admin.token), params=params)
        assert page.status_code == 200, page.text
        seen += [u["email"] for u in page.json()["items"]]
        assert all("password" not in key for u in page.json()["items"] for key in u)
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([team.admin.email, team.member.email, team.viewer.email])
    bad = await client.get("/api/v1/users", headers=bearer(team.admin.token), params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


@pytest.mark.parametrize("who", ["member", "viewer"])
async def test_only_admins_manage_users_and_read_the_audit_log(client: AsyncTestClient[Any], who: str) -> None:
    team = await make_team(client)
    caller = bearer(getattr(team, who).token)
    target = team.member.id if who == "viewer" else team.viewer.id
    attempts = [
        await client.get("/api/v1/users", headers=caller),
        await client.post("/api/v1/users", headers=caller, json={"email": "new@example.com", "role": "admin",
                                                                  "password": PASSWORD}),
        await client.patch(f"/api/v1/users/{target}", headers=caller, json={"role": "admin"}),
        await client.patch(f"/api/v1/users/{getattr(team, who).id}", headers=caller, json={"role": "admin"}),
        await client.delete(f"/api/v1/users/{team.admin.id}", headers=caller),
        await client.get("/api/v1/audit-logs", headers=caller),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts)
    assert all(r.headers["content-type"].startswith("application/problem+json") for r in attempts)
    users = (await client.get("/api/v1/users", headers=bearer(team.admin.token))).json()["items"]
    assert {u["email"]: u["role"] for u in users} == {team.admin.email: "admin", team.member.email: "member",
                                                      team.viewer.email: "viewer"}  # fmt: skip


async def test_a_viewer_cannot_write_anything(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    viewer = bearer(team.viewer.token)
    agent = {"id": "writer", "role": "Writer", "goal": "Write"}
    assert (await client.post("/api/v1/agents", headers=viewer, json=agent)).status_code == 403
    invite = {"email": "v2@example.com", "role": "viewer", "password": PASSWORD}
    assert (await client.post("/api/v1/users", headers=viewer, json=invite)).status_code == 403
    assert (await client.get("/api/v1/agents", headers=viewer)).status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=viewer)).json()["user"]["role"] == "viewer"


async def test_the_last_active_admin_cannot_be_demoted_deactivated_or_deleted(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    admin = bearer(team.admin.token)
    me = team.admin.id
    for change in ({"role": "member"}, {"role": "viewer"}, {"is_active": False}):
        refused = await client.patch(f"/api/v1/users/{me}", headers=admin, json=change)
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert (await client.delete(f"/api/v1/users/{me}", headers=admin)).status_code == 409
    # with a second admin, the first can step down
    promoted = await client.patch(f"/api/v1/users/{team.member.id}", headers=admin, json={"role": "admin"})
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    assert (await client.patch(f"/api/v1/users/{me}", headers=admin, json={"role": "member"})).status_code == 200
    # the old admin's token now carries member rights only, at once
    assert (await client.get("/api/v1/users", headers=admin)).status_code == 403
    new_admin = bearer(team.member.token)
    assert (await client.delete(f"/api/v1/users/{team.member.id}", headers=new_admin)).status_code == 409


async def test_role_changes_apply_to_existing_tokens_at_once(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    member = bearer(team.member.token)
    agent = {"id": "writer", "role": "Writer", "goal": "Write"}
    assert (await client.post("/api/v1/agents", headers=member, json=agent)).status_code == 201
    demoted = await client.patch(f"/api/v1/users/{team.member.id}", headers=bearer(team.admin.token),
                                 json={"role": "viewer"})  # fmt: skip
    assert demoted.status_code == 200
    assert (await client.post("/api/v1/agents", headers=member, json={**agent, "id": "w2"})).status_code == 403


async def test_another_tenants_users_are_404_and_unchanged(client: AsyncTestClient[Any]) -> None:
    ours, theirs = await make_team(client), await make_team(client)
    admin = bearer(ours.admin.token)
    for response in (
        await client.patch(f"/api/v1/users/{theirs.member.id}", headers=admin, json={"role": "admin"}),
        await client.patch(f"/api/v1/users/{theirs.admin.id}", headers=admin, json={"is_active": False}),
        await client.delete(f"/api/v1/users/{theirs.viewer.id}", headers=admin),
    ):
        missing = await client.delete(f"/api/v1/users/{uuid.uuid4().hex}", headers=admin)
        assert response.status_code == missing.status_code == 404
        assert response.json()["title"] == missing.json()["title"]
    users = (await client.get("/api/v1/users", headers=bearer(theirs.admin.token))).json()["items"]
    assert {u["email"]: (u["role"], u["is_active"]) for u in users} == {
        theirs.admin.email: ("admin", True), theirs.member.email: ("member", True),
        theirs.viewer.email: ("viewer", True)}  # fmt: skip


async def test_inviting_a_taken_email_is_409(client: AsyncTestClient[Any]) -> None:
    ours, theirs = await make_team(client), await make_team(client)
    invite = {"email": theirs.viewer.email.upper(), "role": "viewer", "password": PASSWORD}
    taken = await client.post("/api/v1/users", headers=bearer(ours.admin.token), json=invite)
    assert taken.status_code == 409


async def test_writes_and_login_attempts_are_audited_without_secrets(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    other = await make_team(client)
    admin = bearer(team.admin.token)
    failed = await client.post("/api/v1/auth/login", headers={"X-Request-ID": "req-failed-login"},
                               json={"email": team.viewer.email, "password": "wrong password!"})  # fmt: skip
    assert failed.status_code == 401
    assert (await client.patch(f"/api/v1/users/{team.viewer.id}", headers=admin,
                               json={"role": "member"})).status_code == 200  # fmt: skip
    assert (await client.delete(f"/api/v1/users/{team.viewer.id}", headers=admin)).status_code == 204
    assert (await client.post("/api/v1/auth/logout", headers=bearer(team.member.token))).status_code == 204

    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/api/v1/audit-logs", headers=admin, params=params)
        assert page.status_code == 200, page.text
        entries += page.json()["items"]
        assert PASSWORD not in page.text and "wrong password!" not in page.text
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    times = [e["created_at"] for e in entries]
    assert times == sorted(times, reverse=True)  # newest first
    actions = [e["action"] for e in entries]
    assert actions[:4] == ["auth.logout", "user.delete", "user.update", "auth.login.failed"]
    assert actions.count("auth.login") == 3 and actions.count("user.invite") == 2
    assert actions[-1] == "tenant.register"
    failed_entry = entries[3]
    assert failed_entry["request_id"] == "req-failed-login"
    assert failed_entry["object_id"] == team.viewer.id and failed_entry["client_addr"]
    update = entries[2]
    assert update["actor_id"] == team.admin.id
    assert update["details"]["role"] == {"from": "viewer", "to": "member"}
    # another tenant's log holds none of this
    theirs = (await client.get("/api/v1/audit-logs", headers=bearer(other.admin.token))).json()["items"]
    assert {e["id"] for e in theirs}.isdisjoint({e["id"] for e in entries})
    assert all(e["object_id"] not in {team.viewer.id, team.admin.id} for e in theirs)


async def test_hostile_inputs_get_4xx_problem_details_never_500(client: AsyncTestClient[Any]) -> None:
    team = await make_team(client)
    admin = bearer(team.admin.token)
    register = {"tenant_name": "T", "slug": "hostile", "email": "h@example.com", "password": PASSWORD}
    responses = [
        await client.post("/api/v1/auth/register", json={**register, "tenant_name": "bad\x00name"}),
        await client.post("/api/v1/auth/register", json={**register, "email": "nul\x00@example.com"}),
        await client.post("/api/v1/auth/register", json={**register, "password": "p\x00" * 8}),
        await client.post("/api/v1/auth/login", json={"email": "nul\x00@example.com", "password": "x"}),
        await client.post("/api/v1/auth/login", json={"email": team.admin.email, "password": "\x00" * 80}),
        await client.post("/api/v1/auth/login", content=b"{not json"),
        await client.patch("/api/v1/users/%00", headers=admin, json={"role": "admin"}),
        await client.patch(f"/api/v1/users/{'a' * 200}", headers=admin, json={"role": "admin"}),
        await client.delete("/api/v1/users/%C3%A9t%C3%A9", headers=admin),
        await client.patch(f"/api/v1/users/{team.viewer.id}", headers=admin, json={"role": "owner"}),
        await client.get("/api/v1/audit-logs", headers=admin, params={"cursor": "\x00", "limit": 5}),
        await client.get("/api/v1/audit-logs", headers=admin, params={"limit": 1000}),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
