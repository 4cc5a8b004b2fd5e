"""Authentication over HTTP: registration, login (cookie and token), logout, JWT attacks, timing safety,
brute-force throttling, rate limits, body size, security headers, problem details."""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from httpx import Response
from litestar.testing import AsyncTestClient

from crewflow.adapters.memory import MemoryRateLimiter
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.entrypoints.http import create_app
from crewflow.ports.auth import PasswordHasher
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

SECRET = "x" * 40
PASSWORD = "correct horse battery"
PROBLEM = "application/problem+json"


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    built = await build_api_container(Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": SECRET}),
                                      bcrypt_rounds=4)  # fmt: skip
    # the limiter's windows are aligned to its clock: a frozen one keeps each test inside one window
    built.limiter = MemoryRateLimiter(clock=lambda: 1_000.0)
    yield built
    await built.aclose()


@pytest.fixture
async def client(container: ApiContainer) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(container)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: AsyncTestClient[Any], *, slug: str | None = None, email: str | None = None,
                   password: str = PASSWORD) -> Response:  # fmt: skip
    slug = slug or f"t-{uuid.uuid4().hex[:8]}"
    email = email or f"admin-{uuid.uuid4().hex[:8]}@example.com"
    body = {"tenant_name": "Acme", "slug": slug, "email": email, "password": password}
    return await client.post("/api/v1/auth/register", json=body)


async def login(client: AsyncTestClient[Any], email: str, password: str = PASSWORD) -> Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def admin_token(client: AsyncTestClient[Any]) -> tuple[str, str]:
    """Register a tenant; return (admin e-mail, bearer token)."""
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    assert (await register(client, email=email)).status_code == 201
    response = await login(client, email)
    assert response.status_code == 200, response.text
    return email, str(response.json()["access_token"])


def assert_problem(response: Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == status


# -- the happy path ------------------------------------------------------------------------------------
async def test_register_login_me_logout_and_the_token_stops_working(client: AsyncTestClient[Any]) -> None:
    registered = await register(client, slug="acme", email="Ada@Example.com")
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["tenant"]["slug"] == "acme"
    assert body["user"] == {"id": body["user"]["id"], "email": "ada@example.com", "role": "admin", "is_active": True}
    assert PASSWORD not in registered.text

    logged_in = await login(client, "ada@example.com")
    assert logged_in.status_code == 200, logged_in.text
    token = logged_in.json()["access_token"]
    assert logged_in.json()["token_type"] == "Bearer"
    assert logged_in.headers["cache-control"] == "no-store"
    cookie = logged_in.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith(f"crewflow_session={token};")
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attributes.keys()
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["max-age"] == "Max-Age=86400"
    assert attributes["path"] == "Path=/"

    me = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["user"]["email"] == "ada@example.com"
    assert me.json()["tenant"] == body["tenant"]
    by_cookie = await client.get("/api/v1/auth/me", headers={"Cookie": f"crewflow_session={token}"})
    assert by_cookie.status_code == 200

    out = await client.post("/api/v1/auth/logout", headers={"Cookie": f"crewflow_session={token}"})
    assert out.status_code == 204
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(token)), 401)
    assert_problem(await client.get("/api/v1/auth/me", headers={"Cookie": f"crewflow_session={token}"}), 401)


async def test_wrong_password_and_unknown_email_get_the_same_401(client: AsyncTestClient[Any]) -> None:
    email, _ = await admin_token(client)
    wrong = await login(client, email, "not the password at all")
    unknown = await login(client, "nobody@example.com")
    assert_problem(wrong, 401)
    assert_problem(unknown, 401)
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert "set-cookie" not in wrong.headers


async def test_passwords_past_bcrypts_72_bytes_are_refused_not_truncated(client: AsyncTestClient[Any]) -> None:
    too_long = await register(client, password="p" * 73)
    assert_problem(too_long, 422)
    email = f"long-{uuid.uuid4().hex[:6]}@example.com"
    exactly_72 = "é" * 36  # 72 bytes in UTF-8
    assert (await register(client, email=email, password=exactly_72)).status_code == 201
    assert (await login(client, email, exactly_72)).status_code == 200
    assert_problem(await login(client, email, exactly_72 + "x"), 401)  # same first 72 bytes


async def test_weak_passwords_and_bad_slugs_are_422_with_field_errors(client: AsyncTestClient[Any]) -> None:
    short = await register(client, password="short")
    assert_problem(short, 422)
    assert short.json()["errors"]
    assert_problem(await register(client, slug="Not A Slug"), 422)


async def test_duplicate_slug_or_email_is_409_and_leaves_no_tenant_behind(client: AsyncTestClient[Any]) -> None:
    assert (await register(client, slug="taken", email="first@example.com")).status_code == 201
    assert_problem(await register(client, slug="taken", email="second@example.com"), 409)
    assert_problem(await register(client, slug="free-slug", email="FIRST@example.com"), 409)
    # the refused registrations created nothing: the slug is still free and the second e-mail unused
    assert (await register(client, slug="free-slug", email="second@example.com")).status_code == 201


# -- JWT attacks ---------------------------------------------------------------------------------------
def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _alg_none(token: str) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(token))}."


def _wrong_key(token: str) -> str:
    return jwt.encode(_claims(token), "y" * 40, algorithm="HS256")


def _resigned(**changes: Any) -> Any:
    def forge(token: str) -> str:
        return jwt.encode({**_claims(token), **changes}, SECRET, algorithm="HS256")

    return forge


def _tampered_role(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64({**_claims(token), 'role': 'admin'})}.{signature}"


def _hs512(token: str) -> str:
    with warnings.catch_warnings():  # PyJWT warns that the key is short for SHA-512: it is the server's key
        warnings.simplefilter("ignore")
        return jwt.encode(_claims(token), SECRET, algorithm="HS512")


FORGERIES = {
    "alg none": _alg_none,
    "signed with a wrong key": _wrong_key,
    "expired": _resigned(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
    "tampered role claim": _tampered_role,
    "wrong issuer": _resigned(iss="someone-else"),
    "wrong audience": _resigned(aud="another-api"),
    "another algorithm (HS512)": _hs512,
    "missing jti": lambda token: jwt.encode({k: v for k, v in _claims(token).items() if k != "jti"}, SECRET),
    "garbage": lambda token: "a.b.c",
}


@pytest.mark.parametrize("attack", list(FORGERIES))
async def test_forged_tokens_are_refused_with_401(client: AsyncTestClient[Any], attack: str) -> None:
    _, token = await admin_token(client)
    assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
    forged = FORGERIES[attack](token)
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(forged)), 401)
    assert_problem(await client.get("/api/v1/auth/me", headers={"Cookie": f"crewflow_session={forged}"}), 401)


async def test_a_validly_signed_role_claim_does_not_beat_the_stored_role(client: AsyncTestClient[Any],
                                                                         container: ApiContainer) -> None:  # fmt: skip
    _, admin = await admin_token(client)
    viewer_email = f"viewer-{uuid.uuid4().hex[:6]}@example.com"
    invited = await client.post("/api/v1/users", headers=bearer(admin),
                                json={"email": viewer_email, "role": "viewer", "password": PASSWORD})  # fmt: skip
    assert invited.status_code == 201, invited.text
    viewer = (await login(client, viewer_email)).json()["access_token"]
    claims_admin = _resigned(role="admin")(viewer)  # signed with the real key: only the database can tell
    assert_problem(await client.get("/api/v1/users", headers=bearer(claims_admin)), 403)


async def test_tokens_of_deleted_or_deactivated_users_stop_working_at_once(client: AsyncTestClient[Any]) -> None:
    _, admin = await admin_token(client)
    tokens: dict[str, tuple[str, str]] = {}
    for name in ("deleted", "deactivated"):
        email = f"{name}-{uuid.uuid4().hex[:6]}@example.com"
        created = await client.post("/api/v1/users", headers=bearer(admin),
                                    json={"email": email, "role": "member", "password": PASSWORD})  # fmt: skip
        token = (await login(client, email)).json()["access_token"]
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200  # now cached
        tokens[name] = (created.json()["id"], token)
    assert (await client.delete(f"/api/v1/users/{tokens['deleted'][0]}", headers=bearer(admin))).status_code == 204
    patched = await client.patch(f"/api/v1/users/{tokens['deactivated'][0]}", headers=bearer(admin),
                                 json={"is_active": False})  # fmt: skip
    assert patched.status_code == 200
    for _, token in tokens.values():
        assert_problem(await client.get("/api/v1/auth/me", headers=bearer(token)), 401)


async def test_a_change_made_elsewhere_reaches_a_cached_user_through_the_revocation_store(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    """Another server process deactivates the user: this process's cache still says active, but the
    "user changed" marker in the shared revocation store makes it read the database again."""
    from dataclasses import replace

    from crewflow.application.auth import USER_CHANGED_TTL, user_changed_marker

    _, admin = await admin_token(client)
    user_id = (await client.get("/api/v1/auth/me", headers=bearer(admin))).json()["user"]["id"]
    async with container.uow_factory.platform() as uow:  # the other process's write
        user = await uow.users.get(user_id)
        await uow.users.update(replace(user, is_active=False))
        await uow.commit()
    await container.revocations.revoke(user_changed_marker(user_id), time.time() + USER_CHANGED_TTL)
    assert_problem(await client.get("/api/v1/auth/me", headers=bearer(admin)), 401)


# -- timing safety and throttling ----------------------------------------------------------------------
class CountingHasher:
    """A PasswordHasher that counts verifications and records which hashes they ran against."""

    def __init__(self, inner: PasswordHasher) -> None:
        self.inner = inner
        self.verified: list[str] = []

    def hash(self, password: str) -> str:
        return self.inner.hash(password)

    def verify(self, password: str, hashed: str) -> bool:
        self.verified.append(hashed)
        return self.inner.verify(password, hashed)

    @property
    def dummy_hash(self) -> str:
        return self.inner.dummy_hash


async def test_a_login_for_an_unknown_email_still_runs_one_bcrypt_verification(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    email, _ = await admin_token(client)
    counting = CountingHasher(container.hasher)
    container.hasher = counting
    assert_problem(await login(client, "nobody@example.com"), 401)
    assert counting.verified == [counting.dummy_hash]
    assert_problem(await login(client, email, "a wrong password"), 401)
    assert len(counting.verified) == 2
    assert counting.verified[1] != counting.dummy_hash


async def test_brute_force_on_one_account_is_throttled_with_429_and_retry_after(client: AsyncTestClient[Any]) -> None:
    email, _ = await admin_token(client)  # one successful login counts as an attempt too
    for _ in range(9):
        assert_problem(await login(client, email, "guess-guess-guess"), 401)
    throttled = await login(client, email, "guess-guess-guess")
    assert_problem(throttled, 429)
    assert int(throttled.headers["retry-after"]) >= 1
    assert_problem(await login(client, email), 429)  # even the right password waits
    assert_problem(await login(client, email.upper()), 429)  # the same account however it is spelled


async def test_the_auth_routes_are_limited_per_client_address(client: AsyncTestClient[Any]) -> None:
    statuses = [(await login(client, f"user{i}@example.com")).status_code for i in range(31)]
    assert statuses[:30] == [401] * 30
    assert statuses[30] == 429


async def test_an_authenticated_user_gets_100_requests_per_minute(client: AsyncTestClient[Any]) -> None:
    _, token = await admin_token(client)
    for _ in range(100):
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
    limited = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert_problem(limited, 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 60


# -- limits, headers, problem details ------------------------------------------------------------------
async def test_an_oversized_body_is_413_problem_details(client: AsyncTestClient[Any]) -> None:
    huge = {"tenant_name": "x" * (3 * 1024 * 1024), "slug": "big", "email": "a@example.com", "password": PASSWORD}
    assert_problem(await client.post("/api/v1/auth/register", json=huge), 413)


async def test_every_response_carries_the_security_headers_and_a_request_id(client: AsyncTestClient[Any]) -> None:
    responses = [
        await client.get("/healthz"),
        await client.get("/api/v1/auth/me"),  # 401 raised by middleware
        await client.get("/api/v1/no-such-route"),  # 404 from the router
        await register(client, password="short"),  # 422
    ]
    for response in responses:
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self' ws: wss:" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_errors_are_problem_details(client: AsyncTestClient[Any]) -> None:
    _, admin = await admin_token(client)
    email = f"member-{uuid.uuid4().hex[:6]}@example.com"
    invited = await client.post("/api/v1/users", headers=bearer(admin),
                                json={"email": email, "role": "member", "password": PASSWORD})  # fmt: skip
    assert invited.status_code == 201
    member = (await login(client, email)).json()["access_token"]
    assert_problem(await client.get("/api/v1/users", headers=bearer("nope")), 401)
    assert_problem(await client.get("/api/v1/users", headers=bearer(member)), 403)
    assert_problem(await client.post("/api/v1/users", headers=bearer(admin), json={"email": "x"}), 422)
    assert (await register(client, slug="dup")).status_code == 201
    assert_problem(await register(client, slug="dup"), 409)


async def test_a_tenant_gets_1000_requests_per_minute_across_its_users(client: AsyncTestClient[Any]) -> None:
    _, admin = await admin_token(client)
    tokens = [admin]
    for i in range(10):
        email = f"m{i}-{uuid.uuid4().hex[:6]}@example.com"
        invited = await client.post("/api/v1/users", headers=bearer(admin),
                                    json={"email": email, "role": "member", "password": PASSWORD})  # fmt: skip
        assert invited.status_code == 201
        tokens.append((await login(client, email)).json()["access_token"])
    used = 11  # the admin's ten invitations and the /me below
    assert (await client.get("/api/v1/auth/me", headers=bearer(admin))).status_code == 200
    for token in tokens[1:]:  # each member stays under its own 100/min
        for _ in range(min(99, 1000 - used)):
            assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 200
            used += 1
    assert used == 1000
    limited = await client.get("/api/v1/auth/me", headers=bearer(tokens[-1]))  # its 99th request this minute
    assert_problem(limited, 429)
    assert "retry-after" in limited.headers


async def test_cookie_writes_from_another_origin_are_refused(client: AsyncTestClient[Any]) -> None:
    _, token = await admin_token(client)
    cookie = {"Cookie": f"crewflow_session={token}"}
    invite = {"email": f"x-{uuid.uuid4().hex[:6]}@example.com", "role": "viewer", "password": PASSWORD}
    foreign = await client.post("/api/v1/users", headers={**cookie, "Origin": "https://evil.example.com"},
                                json=invite)  # fmt: skip
    assert_problem(foreign, 403)
    evil = {**cookie, "Origin": "https://evil.example.com"}
    assert (await client.get("/api/v1/users", headers=evil)).status_code == 200  # reads are not state changes
    same = await client.post("/api/v1/users", headers={**cookie, "Origin": "http://testserver.local"}, json=invite)
    assert same.status_code == 201, same.text
    # a Bearer token is not sent by browsers on their own: no origin check
    invite["email"] = f"y-{uuid.uuid4().hex[:6]}@example.com"
    bearer_call = await client.post("/api/v1/users", headers={**bearer(token), "Origin": "https://evil.example.com"},
                                    json=invite)  # fmt: skip
    assert bearer_call.status_code == 201


async def test_a_user_changes_their_password_with_the_current_one(client: AsyncTestClient[Any]) -> None:
    email, token = await admin_token(client)
    new = "an even better passphrase"
    wrong = await client.post("/api/v1/auth/password", headers=bearer(token),
                              json={"current_password": "not it at all", "new_password": new})  # fmt: skip
    assert_problem(wrong, 422)
    assert wrong.json()["errors"][0]["field"] == "current_password"
    weak = await client.post("/api/v1/auth/password", headers=bearer(token),
                             json={"current_password": PASSWORD, "new_password": "short"})  # fmt: skip
    assert_problem(weak, 422)
    assert (await login(client, email)).status_code == 200  # nothing changed so far
    changed = await client.post("/api/v1/auth/password", headers=bearer(token),
                                json={"current_password": PASSWORD, "new_password": new})  # fmt: skip
    assert changed.status_code == 204, changed.text
    assert_problem(await login(client, email), 401)
    assert (await login(client, email, new)).status_code == 200
    audit = await client.get("/api/v1/audit-logs", headers=bearer(token))
    actions = [e["action"] for e in audit.json()["items"]]
    assert "auth.password.change" in actions and "auth.password.failed" in actions
    assert new not in audit.text and PASSWORD not in audit.text
    assert_problem(await client.post("/api/v1/auth/password", json={"current_password": new, "new_password": new}),
                   401)  # fmt: skip
