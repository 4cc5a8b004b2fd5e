"""Authentication (cookie or Bearer token → ``Identity`` on the connection) and RBAC guards.

The session cookie is HttpOnly, Secure, SameSite=Strict and lives 24 h; API clients send
``Authorization: Bearer <token>``. Routes opt out of authentication with ``opt={"public": True}``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Guard

from crewflow.adapters.memory.limits import UserStatus
from crewflow.application.auth import user_changed_marker
from crewflow.domain.auth import Identity, Unauthenticated
from crewflow.domain.errors import NotFound, PermissionDenied
from crewflow.domain.tenancy import Permission

if TYPE_CHECKING:
    from litestar.handlers.base import BaseRouteHandler

    from crewflow.bootstrap import ApiContainer

__all__ = ["SESSION_COOKIE", "TokenAuthMiddleware", "identity_of", "require"]

SESSION_COOKIE = "crewflow_session"


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_from(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return connection.cookies.get(SESSION_COOKIE) or None


def _check_cookie_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A state-changing request authenticated by the session cookie must come from our own origin when the
    browser says where it comes from. SameSite=Strict already keeps the cookie off cross-site requests;
    this also covers a sibling subdomain (same site, other origin). Clients without ``Origin`` are not
    browsers and cannot be made to send the cookie by another page."""
    scope = connection.scope
    if scope["type"] != ScopeType.HTTP or scope["method"] in SAFE_METHODS:  # WebSockets: ws.py checks
        return
    origin = connection.headers.get("origin")
    if origin and urlsplit(origin).netloc.lower() != connection.headers.get("host", "").lower():
        raise PermissionDeniedException("cross-origin request with a session cookie refused")


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    """On every authenticated request: the signature, algorithm, issuer, audience and expiry (in memory),
    the ``jti`` against revocations, then the user's current status — from a short per-process cache,
    re-read from the database on a miss or when the user changed (a marker in the revocation store set by
    the user use cases, so other processes notice too). A deleted or deactivated user's tokens stop
    working at once; a changed role applies at once (the stored role wins over the token's claim)."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        container: ApiContainer = connection.app.state.container
        token = token_from(connection)
        if token is None:
            raise Unauthenticated()
        identity = container.tokens.verify(token)
        if connection.headers.get("authorization", "")[:7].lower() != "bearer ":  # the cookie's token
            _check_cookie_origin(connection)
        revocations = container.revocations
        if await revocations.is_revoked(identity.jti):
            raise Unauthenticated("invalid or expired token")
        cache = container.user_status
        status = cache.get(identity.user_id)
        if status is None or await revocations.is_revoked(user_changed_marker(identity.user_id)):
            status = await _load_status(container, identity.user_id)
            if status is None:
                cache.forget(identity.user_id)
                raise Unauthenticated("invalid or expired token")
            cache.put(identity.user_id, status)
        if not status.is_active or status.tenant_id != identity.tenant_id:
            raise Unauthenticated("invalid or expired token")
        if status.role != identity.role:
            identity = Identity(identity.user_id, identity.tenant_id, status.role, identity.jti, identity.expires_at)
        return AuthenticationResult(user=identity, auth=token)


async def _load_status(container: ApiContainer, user_id: str) -> UserStatus | None:
    try:
        async with container.uow_factory.platform() as uow:
            user = await uow.users.get(user_id)
    except NotFound:
        return None
    return UserStatus(user.tenant_id, user.role, user.is_active)


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
