"""Authentication (cookie or Bearer token → ``Identity`` on the connection) and RBAC guards.

The session cookie is HttpOnly, Secure, SameSite=Strict and lives 24 h; API clients send
``Authorization: Bearer <token>``. Routes opt out of authentication with ``opt={"public": True}``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Guard

from crewflow.domain.auth import Identity, Unauthenticated
from crewflow.domain.errors import NotFound, PermissionDenied
from crewflow.domain.tenancy import Permission

if TYPE_CHECKING:
    from litestar.handlers.base import BaseRouteHandler

    from crewflow.bootstrap import ApiContainer

__all__ = ["SESSION_COOKIE", "TokenAuthMiddleware", "identity_of", "require"]

SESSION_COOKIE = "crewflow_session"


def token_from(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return connection.cookies.get(SESSION_COOKIE) or None


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        container: ApiContainer = connection.app.state.container
        token = token_from(connection)
        if token is None:
            raise Unauthenticated()
        identity = container.tokens.verify(token)
        if await container.revocations.is_revoked(identity.jti):
            raise Unauthenticated("invalid or expired token")
        try:  # a deleted or deactivated user's tokens stop working at once
            async with container.uow_factory.platform() as uow:
                user = await uow.users.get(identity.user_id)
        except NotFound:
            raise Unauthenticated("invalid or expired token") from None
        if not user.is_active or user.tenant_id != identity.tenant_id:
            raise Unauthenticated("invalid or expired token")
        if user.role != identity.role:  # role changed since the token was issued: the stored role wins
            identity = Identity(identity.user_id, identity.tenant_id, user.role, identity.jti, identity.expires_at)
        return AuthenticationResult(user=identity, auth=token)


def identity_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Identity:
    identity = connection.scope.get("user")
    if not isinstance(identity, Identity):
        raise Unauthenticated()
    return identity


def require(permission: Permission) -> Guard:
    """A guard allowing the route only to roles holding ``permission`` (the seed's matrix)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not identity_of(connection).can(permission):
            raise PermissionDenied(str(permission))

    guard.__name__ = f"require_{permission.value.replace(':', '_')}"
    return guard
