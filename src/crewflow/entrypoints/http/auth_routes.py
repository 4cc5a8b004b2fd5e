"""/api/v1/auth — register a tenant, log in (session cookie + token), log out, who am I."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.params import JSONBody, PathParameter

from crewflow.application import auth as use_cases
from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Role
from crewflow.entrypoints.http.limits import request_meta
from crewflow.entrypoints.http.security import SESSION_COOKIE

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from crewflow.bootstrap import ApiContainer

__all__ = ["AuthController", "LoginIn", "MeOut", "RegisterIn", "SessionOut", "TokenOut", "container_of",
           "session_cookie"]

SESSION_MAX_AGE = 24 * 3600
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$"
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}$"
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
Email = Annotated[str, msgspec.Meta(pattern=EMAIL_PATTERN, max_length=320)]
NewPassword = Annotated[str, msgspec.Meta(min_length=use_cases.MIN_PASSWORD_CHARS, max_length=72)]


def check_new_password(password: str) -> None:
    """For a Struct's ``__post_init__``: a ValueError there becomes a 422 naming the body."""
    if (problem := use_cases.password_problem(password)) is not None:
        raise ValueError(f"password {problem}")


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    tenant_name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_CONTROL_CHARS)]
    slug: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    email: Email
    password: NewPassword

    def __post_init__(self) -> None:
        check_new_password(self.password)


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class PasswordChangeIn(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    new_password: NewPassword

    def __post_init__(self) -> None:
        check_new_password(self.new_password)


class UserOut(msgspec.Struct):
    id: str
    email: str
    role: Role
    is_active: bool


class TenantOut(msgspec.Struct):
    id: str
    slug: str
    name: str


class RegisteredOut(msgspec.Struct):
    tenant: TenantOut
    user: UserOut


class TokenOut(msgspec.Struct):
    """For API clients; browsers use the session cookie set by the same response."""

    access_token: str
    token_type: str
    expires_at: float
    user: UserOut
    tenant_id: str


class MeOut(msgspec.Struct):
    user: UserOut
    tenant: TenantOut


class SessionOut(msgspec.Struct):
    jti: str
    created_at: float
    expires_at: float
    user_agent: str | None
    current: bool  # the session of the token making this request


TokenId = Annotated[str, PathParameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def container_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiContainer:
    """The app's container, typed (so mypy checks it provides every port ``AuthPorts`` names)."""
    container: ApiContainer = connection.app.state.container
    return container


def session_cookie(token: str, max_age: int = SESSION_MAX_AGE) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, max_age=max_age, path="/", secure=True, httponly=True,
                  samesite="strict")  # fmt: skip


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/register", opt={"public": True}, security=[{}])
    async def register(self, request: Request[Any, Any, Any], data: JSONBody[RegisterIn]) -> RegisteredOut:
        """Create a tenant and its first admin (public). Log in afterwards to get a session."""
        cmd = use_cases.RegisterTenant(data.tenant_name, data.slug, data.email, data.password)
        done = await use_cases.register_tenant(cmd, container_of(request), request_meta(request))
        tenant, admin = done.tenant, done.admin
        return RegisteredOut(TenantOut(tenant.id, tenant.slug, tenant.name),
                             UserOut(admin.id, admin.email, admin.role, admin.is_active))  # fmt: skip

    @post("/login", opt={"public": True}, security=[{}], status_code=200)
    async def login(self, request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> Response[TokenOut]:
        """Check the credentials; set the session cookie and return the same token for API clients."""
        attempt = use_cases.LoginAttempt(data.email, data.password, request.headers.get("user-agent"))
        result = await use_cases.login(attempt, container_of(request), request_meta(request))
        user = result.user
        body = TokenOut(result.token.token, "Bearer", result.token.expires_at,
                        UserOut(user.id, user.email, user.role, user.is_active), user.tenant_id)  # fmt: skip
        return Response(body, cookies=[session_cookie(result.token.token)],
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    @post("/logout", status_code=204)
    async def logout(self, request: Request[Identity, Any, Any]) -> Response[None]:
        """Revoke the current token (cookie or Bearer) and clear the session cookie."""
        await use_cases.logout(request.user, container_of(request), request_meta(request))
        return Response(None, status_code=204, cookies=[session_cookie("", max_age=0)])

    @post("/password", status_code=204)
    async def change_password(self, request: Request[Identity, Any, Any], data: JSONBody[PasswordChangeIn]) -> None:
        """Replace the caller's password (the current one is required)."""
        await use_cases.change_password(request.user, data.current_password, data.new_password,
                                        container_of(request), request_meta(request))  # fmt: skip

    @get("/me")
    async def me(self, request: Request[Identity, Any, Any]) -> MeOut:
        user, tenant = await use_cases.current_user(request.user, container_of(request))
        return MeOut(UserOut(user.id, user.email, user.role, user.is_active),
                     TenantOut(tenant.id, tenant.slug, tenant.name))  # fmt: skip

    @get("/sessions")
    async def list_sessions(self, request: Request[Identity, Any, Any]) -> list[SessionOut]:
        """The caller's login sessions (kept 24 h), newest first."""
        sessions = await use_cases.list_sessions(request.user, container_of(request))
        return [SessionOut(s.jti, s.created_at, s.expires_at, s.user_agent, s.jti == request.user.jti)
                for s in sessions]  # fmt: skip

    @delete("/sessions/{jti:str}", status_code=204)
    async def revoke_session(self, request: Request[Identity, Any, Any], jti: TokenId) -> None:
        """End one of the caller's sessions (its token stops working at once); 404 if it is not one."""
        await use_cases.revoke_session(request.user, jti, container_of(request), request_meta(request))
