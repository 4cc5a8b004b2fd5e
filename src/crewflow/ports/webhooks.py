"""Flow webhooks: a flow's notification endpoint (its HMAC secret sealed by the ``SecretCipher``), the
durable log of every delivery, and the transport that POSTs a delivery.

A delivery row is the retry schedule: ``pending`` with ``next_attempt_at`` until it is ``delivered`` or
``failed`` (attempts exhausted). An attempt first *claims* the row (moves ``next_attempt_at`` past the
attempt's timeout, only if it was due), so two processes never send the same attempt at once, and a process
that died mid-attempt leaves a row that becomes due again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from crewflow.domain.logs import Page

__all__ = [
    "WEBHOOK_EVENTS",
    "DeliveryStatus",
    "Webhook",
    "WebhookDelivery",
    "WebhookRepository",
    "WebhookTransport",
    "WebhookTransportError",
    "is_public_address",
]

#: The execution outcomes a webhook can be notified of.
WEBHOOK_EVENTS = ("completed", "failed", "cancelled")


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Webhook:
    flow_id: str
    url: str
    sealed_secret: str  # SecretCipher token (never the plaintext)
    key_id: str  # the keyring key it was sealed with (key rotation)
    events: tuple[str, ...]
    created_at: float
    updated_at: float
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    flow_id: str
    execution_id: str
    event: str  # one of WEBHOOK_EVENTS
    url: str
    payload: Mapping[str, Any]
    created_at: float
    updated_at: float
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    response_status: int | None = None
    error: str | None = None  # of the last failed attempt; never holds the secret or the signature
    next_attempt_at: float | None = None


class WebhookRepository(Protocol):
    async def find(self, flow_id: str) -> Webhook | None: ...

    async def put(self, webhook: Webhook) -> None:
        """Create or replace the flow's webhook; ``NotFound`` when the flow does not exist."""
        ...

    async def delete(self, flow_id: str) -> None:
        """``NotFound`` when the flow has no webhook."""
        ...

    async def add_delivery(self, delivery: WebhookDelivery) -> bool:
        """Store a new delivery; False (and nothing changes) when one with its id exists."""
        ...

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery: ...

    async def claim_delivery(self, delivery_id: str, *, now: float, until: float) -> WebhookDelivery | None:
        """Take a pending delivery whose ``next_attempt_at`` is due (<= ``now``) for one attempt: its
        ``next_attempt_at`` becomes ``until``. None when it is not pending, not due, or missing."""
        ...

    async def record_attempt(self, delivery_id: str, *, status: DeliveryStatus, attempts: int,
                             response_status: int | None, error: str | None, next_attempt_at: float | None,
                             at: float) -> None:  # fmt: skip
        ...

    async def list_deliveries(self, flow_id: str, cursor: str | None = None,
                              limit: int = 50) -> Page[WebhookDelivery]:  # fmt: skip
        """Newest first."""
        ...

    async def list_due(self, now: float, limit: int = 100) -> Sequence[str]:
        """Ids of pending deliveries whose ``next_attempt_at`` has passed, oldest due first."""
        ...


class WebhookTransportError(Exception):
    """The request did not get an HTTP response (refused address, DNS, connection, timeout). The message
    names the failure, never a header value."""


class WebhookTransport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
        """POST ``body``; the response status (redirects are not followed). Raises ``WebhookTransportError``."""
        ...


def is_public_address(address: str) -> bool:
    """Whether a webhook may be sent to this IP address: a globally routable unicast one. Loopback,
    private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254), shared, reserved, unspecified
    and multicast addresses are not, nor an IPv4 one in IPv6 clothing (``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast
