"""Every Redis key crewflow uses, in one module.

Per-tenant keys are ``crewflow:{tenant}:…``: a tenant's data can be found (and dropped) by the pattern
``crewflow:{tenant}:*`` and two tenants never share a key, whatever ids they use. Global keys (the job queue,
rate limits of unauthenticated requests, token revocations) are ``crewflow:<kind>:…``.

``prefix`` arguments put a whole deployment (or a test) under another root than ``crewflow``; every key
built here starts with it. Tenant ids are checked (letters, digits, ``_`` and ``-``), so a tenant id can
never contain ``:`` and reach into another tenant's keys.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_PREFIX",
    "QUEUE",
    "cache_key",
    "check_tenant",
    "events_channel",
    "events_stream",
    "rate_limit_key",
    "revoked_key",
    "sessions_key",
    "tenant_pattern",
]

DEFAULT_PREFIX = "crewflow"
QUEUE = f"{DEFAULT_PREFIX}:queue"  # the arq queue (``crewflow.adapters.arq.queue.DEFAULT_QUEUE``)

_TENANT = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_tenant(tenant_id: str) -> str:
    if not _TENANT.fullmatch(tenant_id):
        raise ValueError("a tenant id uses letters, digits, '_' and '-' only (at most 128)")
    return tenant_id


def _escape(part: str) -> str:
    """A free-form key part made free of ``:`` (and of the escape character itself), so the parts of a key
    stay apart: namespace ``a:b`` + key ``c`` and namespace ``a`` + key ``b:c`` are two keys."""
    return part.replace("%", "%25").replace(":", "%3A")


def tenant_pattern(tenant_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A ``SCAN MATCH`` pattern of every key of one tenant."""
    return f"{prefix}:{check_tenant(tenant_id)}:*"


def events_channel(tenant_id: str, execution_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The pub/sub channel of one execution's live events."""
    return f"{prefix}:{check_tenant(tenant_id)}:events:{_escape(execution_id)}"


def events_stream(tenant_id: str, execution_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The stream holding one execution's recent events (the fast replay log), entry id ``<seq>-1``."""
    return f"{prefix}:{check_tenant(tenant_id)}:stream:{_escape(execution_id)}"


def sessions_key(tenant_id: str, user_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A hash of one user's login sessions, field = token id."""
    return f"{prefix}:{check_tenant(tenant_id)}:sessions:{_escape(user_id)}"


def cache_key(namespace: str, key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A cache entry. A namespace ending in a tenant id (``{tenant}`` or ``<use>:{tenant}``, e.g. the LLM
    cache's ``llm:{tenant}``) lands under the tenant: ``crewflow:{tenant}:cache:<use>:{key}``. Any other
    namespace is global: ``crewflow:cache:<namespace>:{key}`` (its last part is not a tenant id, so it
    never meets a tenant's keys). ``<use>`` and the namespace are escaped, keeping the mapping one-to-one."""
    use, _, last = namespace.rpartition(":")
    if _TENANT.fullmatch(last):
        return f"{prefix}:{last}:cache:{_escape(use)}:{key}"
    return f"{prefix}:cache:{_escape(namespace)}:{key}"


def rate_limit_key(key: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The fixed-window counter of one rate-limit key (``login:addr:…``, ``login:account:…``)."""
    return f"{prefix}:ratelimit:{key}"


def revoked_key(jti: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Present while a token id (or a "user changed" marker) is revoked; expires with the token."""
    return f"{prefix}:revoked:{jti}"
