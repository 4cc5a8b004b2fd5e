"""Request context, rate limits and security headers (ADR 0008).

- The request id (``X-Request-ID``) is set around the whole app by ``observability.instrument_app`` and read
  here by ``request_meta`` for the audit log.
- ``RateLimitMiddleware`` (after authentication, because its keys are the *verified* user and tenant: an
  unverified token's claims would let anyone spend somebody else's budget): 100 requests/min per user and
  1,000/min per tenant on authenticated routes; per client address on the public auth routes. Over the
  limit: ``RateLimited`` → 429 problem details with ``Retry-After``.
- ``security_headers``: a ``before_send`` hook, so every response carries the headers, including errors
  raised by middleware and 404s for unknown paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.middleware import ASGIMiddleware

from crewflow.application.auth import RequestMeta, address_bucket
from crewflow.domain.auth import Identity, RateLimited

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from crewflow.bootstrap import ApiContainer

__all__ = [
    "REQUEST_ID_HEADER",
    "RateLimitMiddleware",
    "RateLimits",
    "invalid_cursor_is_422",
    "request_meta",
    "security_headers",
]

REQUEST_ID_HEADER = "x-request-id"

# A single-page app served from the same origin: its own scripts, styles and images only, API calls and the
# live WebSocket to the same host, never framed, no plugins, forms post only to itself.
CSP_APP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
           "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'; form-action 'self'; "
           "frame-ancestors 'none'")  # fmt: skip
# The interactive API docs page loads its renderer from a CDN and uses inline scripts and styles.
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src 'self' data: https://cdn.jsdelivr.net https://fonts.gstatic.com; img-src 'self' data: https:; "
            "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'")  # fmt: skip
DOCS_PREFIX = "/api/v1/schema"
_COMMON_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    # Sent on every response: browsers ignore it over plain http (RFC 6797 §8.1), so it costs nothing on the
    # embedded http server and protects every https deployment without configuration.
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_APP_HEADERS = [*_COMMON_HEADERS, (b"content-security-policy", CSP_APP.encode())]
_DOCS_HEADERS = [*_COMMON_HEADERS, (b"content-security-policy", CSP_DOCS.encode())]
_SET_BY_US = {name for name, _ in _APP_HEADERS}


async def security_headers(message: Message, scope: Scope) -> None:
    """``before_send`` hook: add the security headers to the start of every HTTP response."""
    if message["type"] != "http.response.start":
        return
    extra = _DOCS_HEADERS if scope["path"].startswith(DOCS_PREFIX) else _APP_HEADERS
    headers = [h for h in message.get("headers", ()) if h[0].lower() not in _SET_BY_US]
    message["headers"] = [*headers, *extra]


def request_meta(connection: ASGIConnection[Any, Any, Any, Any]) -> RequestMeta:
    """Request id and client address of a connection, for the audit log. The client address is the peer's
    (behind a proxy, run the server with the proxy-headers option so the peer is the real client)."""
    state = connection.scope.get("state") or {}
    client = connection.client
    return RequestMeta(request_id=state.get("request_id"), client_addr=client.host if client else None)


@contextmanager
def invalid_cursor_is_422() -> Iterator[None]:
    """Around a list call: a cursor the store did not hand out is a 422 on ``cursor``, not a 500."""
    try:
        yield
    except ValueError:
        raise ValidationException("invalid page cursor",
                                  extra=[{"key": "cursor", "message": "invalid page cursor", "source": "query"}],
                                  ) from None  # fmt: skip


@dataclass(frozen=True, slots=True)
class RateLimits:
    per_user: int = 100
    per_tenant: int = 1000
    window: float = 60.0
    auth_per_address: int = 30  # register + login + logout per client address and window
    auth_paths: frozenset[str] = frozenset({"/api/v1/auth/register", "/api/v1/auth/login"})


class RateLimitMiddleware(ASGIMiddleware):
    """Counts through the container's ``RateLimiter`` port (memory by default, Redis when configured)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, limits: RateLimits | None = None) -> None:
        self.limits = limits or RateLimits()

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        limits = self.limits
        container: ApiContainer = scope["litestar_app"].state.container
        user = scope.get("user")
        if isinstance(user, Identity):
            await _hit(container, f"rl:user:{user.user_id}", limits.per_user, limits.window)
            await _hit(container, f"rl:tenant:{user.tenant_id}", limits.per_tenant, limits.window)
        elif scope["path"] in limits.auth_paths:
            client = scope.get("client")
            address = address_bucket(client[0]) if client else "unknown"
            await _hit(container, f"rl:auth:{address}", limits.auth_per_address, limits.window)
        await next_app(scope, receive, send)


async def _hit(container: ApiContainer, key: str, limit: int, window: float) -> None:
    decision = await container.limiter.hit(key, limit, window)
    if not decision.allowed:
        raise RateLimited(decision.retry_after)
