"""Flow webhooks: notify a flow's endpoint when one of its executions ends.

- **Configure** (``configure_webhook``): an ``http``/``https`` URL, the outcomes to notify of (a subset of
  completed/failed/cancelled) and a secret — given, or generated here and shown once. The secret is sealed
  with the ``SecretCipher`` (bound to the tenant and flow) and never appears again: not in responses, logs,
  errors or the delivery log. URLs on loopback, private, link-local or otherwise non-public addresses are
  refused unless ``CREWFLOW_WEBHOOK_ALLOW_PRIVATE=true`` (the transport checks the addresses it actually
  connects to as well, so a DNS name cannot be pointed at the private network after the check).
- **Record** (``WebhookSink``, an ``EventSink`` after the bus): on a run's terminal event it stores a pending
  delivery (one per execution and outcome: a replayed event adds nothing) and hands it to the dispatcher.
- **Deliver** (``WebhookDispatcher``): each attempt claims the delivery row, POSTs the JSON payload signed
  like Stripe's webhooks — ``X-Crewflow-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>``,
  ``X-Crewflow-Delivery: <delivery id>`` (receivers de-duplicate on it: delivery is at least once) — and
  records the outcome (attempts, response status, error). A failure schedules the next attempt with
  exponential backoff and jitter in the row (``next_attempt_at``); retries due soon are awaited in process,
  later ones (and those of a process that stopped) are sent by ``deliver_due``, run from a cron.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import random
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from crewflow.application.executions import InvalidArguments
from crewflow.domain.errors import NotFound, Problem
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.logs import Page
from crewflow.ports.clock import Clock
from crewflow.ports.events import EventSink
from crewflow.ports.secrets import DecryptionFailed, SecretCipher
from crewflow.ports.uow import UnitOfWorkFactory
from crewflow.ports.webhooks import (
    WEBHOOK_EVENTS,
    DeliveryStatus,
    Webhook,
    WebhookDelivery,
    WebhookTransport,
    WebhookTransportError,
    is_public_address,
)

__all__ = [
    "ALLOW_PRIVATE_SETTING",
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "ConfigureWebhook",
    "Configured",
    "DeliveryPolicy",
    "WebhookDispatcher",
    "WebhookSink",
    "allow_private_from",
    "check_webhook_url",
    "configure_webhook",
    "delete_webhook",
    "deliver_due",
    "delivery_id_for",
    "get_webhook",
    "list_deliveries",
    "retry_due_forever",
    "sign",
    "tenant_ids",
    "verify_signature",
    "webhook_sinks",
]

log = structlog.get_logger("crewflow.webhooks")

ALLOW_PRIVATE_SETTING = "CREWFLOW_WEBHOOK_ALLOW_PRIVATE"
SIGNATURE_HEADER = "X-Crewflow-Signature"
DELIVERY_HEADER = "X-Crewflow-Delivery"
EVENT_HEADER = "X-Crewflow-Event"
MAX_URL = 2000
MIN_SECRET, MAX_SECRET = 16, 256
_OUTCOMES = {EventKind.RUN_COMPLETED: "completed", EventKind.RUN_FAILED: "failed",
             EventKind.RUN_CANCELLED: "cancelled"}  # fmt: skip


def allow_private_from(settings: Mapping[str, str]) -> bool:
    """``CREWFLOW_WEBHOOK_ALLOW_PRIVATE`` (from ``Settings.extra`` or the environment) as a flag."""
    return settings.get(ALLOW_PRIVATE_SETTING, "").strip().lower() in {"1", "true", "yes", "on"}


def _context(tenant_id: str, flow_id: str) -> str:
    """The cipher's associated data: a sealed secret opens only for its own tenant and flow."""
    return f"{tenant_id}/webhook/{flow_id}"


# -- signatures ----------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Crewflow-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, *, now: float, tolerance: float = 300.0) -> bool:
    """What a receiver does: the header's timestamp is within ``tolerance`` of ``now`` and one of its ``v1``
    signatures matches (compared in constant time)."""
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    macs = [v.strip() for k, _, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not macs:
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, mac) for mac in macs)


# -- configuration -------------------------------------------------------------------------------------
def _bad(field: str, message: str) -> InvalidArguments:
    return InvalidArguments([Problem("invalid_webhook", message, field)])


async def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """``url`` if a webhook may be sent to it, else ``InvalidArguments`` naming why. A host name that does
    not resolve now is accepted (the transport checks the addresses again on every delivery)."""
    if len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _bad("url", f"must be at most {MAX_URL} characters without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad("url", "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("url", "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _bad("url", "must not carry credentials (the signature authenticates deliveries)")
    if allow_private:
        return url
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        raise _bad("url", "must not point to a loopback, private or link-local address")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return url  # not resolvable now: checked again when delivering
    if any(not is_public_address(str(info[4][0])) for info in infos):
        raise _bad("url", "must not point to a loopback, private or link-local address")
    return url


@dataclass(frozen=True, slots=True)
class ConfigureWebhook:
    flow_id: str
    url: str
    events: tuple[str, ...] = WEBHOOK_EVENTS
    secret: str | None = None  # None: keep the current one, or generate one for a new webhook
    rotate_secret: bool = False  # generate a new secret (shown once) even if one exists
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class Configured:
    webhook: Webhook
    secret: str | None  # the plaintext, only when it was generated by this call (shown once)
    created: bool


def _check_events(events: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown or not events:
        raise _bad("events", f"must be a non-empty subset of {', '.join(WEBHOOK_EVENTS)}")
    return tuple(e for e in WEBHOOK_EVENTS if e in events)


def _check_secret(secret: str) -> str:
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or not secret.isascii() or not secret.isprintable():
        raise _bad("secret", f"must be {MIN_SECRET} to {MAX_SECRET} printable ASCII characters")
    return secret


async def configure_webhook(tenant_id: str, cmd: ConfigureWebhook, *, uow_factory: UnitOfWorkFactory,
                            cipher: SecretCipher, clock: Clock, allow_private: bool) -> Configured:  # fmt: skip
    """Create or replace the flow's webhook. ``NotFound`` for a missing (or another tenant's) flow, before
    anything about the request is checked."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.get(cmd.flow_id)
        existing = await uow.webhooks.find(cmd.flow_id)
    events = _check_events(cmd.events)
    url = await check_webhook_url(cmd.url, allow_private=allow_private)
    shown: str | None = None
    if cmd.secret is not None:
        sealed = cipher.encrypt(_check_secret(cmd.secret), context=_context(tenant_id, cmd.flow_id))
    elif existing is not None and not cmd.rotate_secret:
        sealed = existing.sealed_secret
    else:
        shown = "whsec_" + secrets.token_urlsafe(32)
        sealed = cipher.encrypt(shown, context=_context(tenant_id, cmd.flow_id))
    now = clock.now()
    webhook = Webhook(flow_id=cmd.flow_id, url=url, sealed_secret=sealed, key_id=cipher.key_id_of(sealed),
                      events=events, created_at=existing.created_at if existing else now, updated_at=now,
                      is_active=cmd.is_active)  # fmt: skip
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.webhooks.put(webhook)
        await uow.commit()
    log.info("webhook.configured", tenant_id=tenant_id, flow_id=cmd.flow_id, events=list(events),
             secret_generated=shown is not None)  # fmt: skip
    return Configured(webhook, shown, existing is None)


async def get_webhook(tenant_id: str, flow_id: str, *, uow_factory: UnitOfWorkFactory) -> Webhook:
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.get(flow_id)
        webhook = await uow.webhooks.find(flow_id)
    if webhook is None:
        raise NotFound("webhook", flow_id)
    return webhook


async def delete_webhook(tenant_id: str, flow_id: str, *, uow_factory: UnitOfWorkFactory) -> None:
    """Pending deliveries of a deleted webhook fail at their next attempt (nothing is sent)."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.get(flow_id)
        await uow.webhooks.delete(flow_id)
        await uow.commit()


async def list_deliveries(tenant_id: str, flow_id: str, cursor: str | None = None, limit: int = 20, *,
                          uow_factory: UnitOfWorkFactory) -> Page[WebhookDelivery]:  # fmt: skip
    """The flow's delivery log, newest first."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.get(flow_id)
        return await uow.webhooks.list_deliveries(flow_id, cursor, limit)


# -- delivery ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Attempt ``n`` (1-based) failing schedules the next after ``initial_delay * multiplier**(n-1)`` seconds
    (at most ``max_delay``), spread by ±``jitter``; after ``max_attempts`` the delivery is ``failed``.
    Retries due within ``inline_max_delay`` are awaited by the process that made the attempt; later ones
    are left to ``deliver_due``. The defaults span about a day and a half."""

    max_attempts: int = 10
    initial_delay: float = 10.0
    multiplier: float = 3.0
    max_delay: float = 6 * 3600.0
    jitter: float = 0.2
    timeout: float = 10.0
    inline_max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_delay < 0 or self.multiplier < 1 or self.timeout <= 0:
            raise ValueError("max_attempts >= 1, initial_delay >= 0, multiplier >= 1 and timeout > 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempts - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rand())


def _body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str).encode()


class WebhookDispatcher:
    """Sends deliveries (see the module docstring). ``schedule`` runs ``deliver`` in the background;
    ``close`` cancels what is still running (the rows stay pending: ``deliver_due`` picks them up)."""

    def __init__(self, uow_factory: UnitOfWorkFactory, cipher: SecretCipher, transport: WebhookTransport,
                 clock: Clock, policy: DeliveryPolicy | None = None, *,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:  # fmt: skip
        self.uow_factory = uow_factory
        self.cipher = cipher
        self.transport = transport
        self.clock = clock
        self.policy = policy or DeliveryPolicy()
        self._sleep = sleep
        self._rand = rand
        self._tasks: set[asyncio.Task[Any]] = set()

    async def attempt(self, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
        """One attempt if the delivery is pending and due; its updated row, or None if it was not."""
        now = self.clock.now()
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            delivery = await uow.webhooks.claim_delivery(delivery_id, now=now, until=now + self.policy.timeout + 30)
            webhook = None if delivery is None else await uow.webhooks.find(delivery.flow_id)
            await uow.commit()
        if delivery is None:
            return None
        attempts = delivery.attempts + 1
        response_status: int | None = None
        error: str | None = None
        if webhook is None or not webhook.is_active:
            outcome = DeliveryStatus.FAILED
            error = "the webhook was deleted or disabled"
        else:
            response_status, error = await self._send(tenant_id, delivery, webhook)
            if error is None:
                outcome = DeliveryStatus.DELIVERED
            elif attempts >= self.policy.max_attempts:
                outcome = DeliveryStatus.FAILED
            else:
                outcome = DeliveryStatus.PENDING
        at = self.clock.now()
        next_at = at + self.policy.delay(attempts, self._rand) if outcome is DeliveryStatus.PENDING else None
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            await uow.webhooks.record_attempt(delivery_id, status=outcome, attempts=attempts,
                                              response_status=response_status, error=error,
                                              next_attempt_at=next_at, at=at)  # fmt: skip
            await uow.commit()
        log.info("webhook.attempt", tenant_id=tenant_id, flow_id=delivery.flow_id, delivery_id=delivery_id,
                 attempt=attempts, status=str(outcome), response_status=response_status, error=error)  # fmt: skip
        return dataclasses.replace(delivery, status=outcome, attempts=attempts, response_status=response_status,
                                   error=error, next_attempt_at=next_at, updated_at=at)  # fmt: skip

    async def _send(self, tenant_id: str, delivery: WebhookDelivery, webhook: Webhook) -> tuple[int | None, str | None]:
        try:
            secret = self.cipher.decrypt(webhook.sealed_secret, context=_context(tenant_id, webhook.flow_id))
        except DecryptionFailed:
            return None, "the webhook secret cannot be opened with the configured keys"
        body = _body(delivery.payload)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, int(self.clock.now()), body),
                   DELIVERY_HEADER: delivery.id, EVENT_HEADER: f"execution.{delivery.event}"}  # fmt: skip
        try:
            status = await self.transport.post(webhook.url, body, headers, timeout=self.policy.timeout)
        except WebhookTransportError as exc:
            return None, str(exc)[:500]
        return status, None if 200 <= status < 300 else f"the endpoint answered HTTP {status}"

    async def deliver(self, tenant_id: str, delivery_id: str) -> WebhookDelivery | None:
        """Attempt now, and again after each failure while the next attempt is due within
        ``policy.inline_max_delay``; the last state of the delivery (None if it was not due)."""
        last: WebhookDelivery | None = None
        while True:
            delivery = await self.attempt(tenant_id, delivery_id)
            if delivery is None:
                return last
            last = delivery
            if delivery.status is not DeliveryStatus.PENDING or delivery.next_attempt_at is None:
                return delivery
            wait = delivery.next_attempt_at - self.clock.now()
            if wait > self.policy.inline_max_delay:
                return delivery
            await self._sleep(max(0.0, wait))

    def schedule(self, tenant_id: str, delivery_id: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._deliver_logged(tenant_id, delivery_id), name=f"crewflow-webhook-{delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver_logged(self, tenant_id: str, delivery_id: str) -> None:
        try:
            await self.deliver(tenant_id, delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the row stays pending; deliver_due tries again
            log.exception("webhook.deliver_failed", tenant_id=tenant_id, delivery_id=delivery_id)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def deliver_due(dispatcher: WebhookDispatcher, tenant_ids: Iterable[str], *, limit: int = 100) -> int:
    """One cron pass: one attempt for each pending delivery whose ``next_attempt_at`` passed (at most
    ``limit`` per tenant); returns how many attempts were made. Safe to run in several processes at once
    (each attempt claims its row first)."""
    made = 0
    for tenant_id in tenant_ids:
        try:
            async with dispatcher.uow_factory.for_tenant(tenant_id) as uow:
                due = await uow.webhooks.list_due(dispatcher.clock.now(), limit)
        except NotFound:  # a tenant listed while its storage is being created or dropped: not this pass
            log.info("webhook.tenant_skipped", tenant_id=tenant_id)
            continue
        for delivery_id in due:
            try:
                if await dispatcher.attempt(tenant_id, delivery_id) is not None:
                    made += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook.deliver_due_failed", tenant_id=tenant_id, delivery_id=delivery_id)
    return made


async def tenant_ids(uow_factory: UnitOfWorkFactory) -> list[str]:
    """Every tenant's id (the platform's tenants table), for a ``deliver_due`` pass over all of them."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        async with uow_factory.platform() as uow:
            page = await uow.tenants.list(cursor, 100)
        ids.extend(t.id for t in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


async def retry_due_forever(dispatcher: WebhookDispatcher, *, every: float = 30.0) -> None:
    """``deliver_due`` over every tenant each ``every`` seconds until cancelled: the retry cron of a process
    without an arq worker (the embedded server). A failing pass is logged and the next one runs anyway."""
    if not every > 0:
        raise ValueError("every must be positive")
    while True:
        try:
            await deliver_due(dispatcher, await tenant_ids(dispatcher.uow_factory))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook.retry_pass_failed")
        await asyncio.sleep(every)


# -- the sink ------------------------------------------------------------------------------------------
def delivery_id_for(tenant_id: str, execution_id: str, outcome: str) -> str:
    """Deterministic: the same run's same outcome is one delivery, however often its event is published."""
    return "whd_" + hashlib.sha256(f"{tenant_id}/{execution_id}/{outcome}".encode()).hexdigest()[:32]


class WebhookSink:
    """``EventSink`` of one tenant (after the bus in ``ExecutionRecorder.extra_sinks``): a run's terminal
    event becomes a pending delivery when the flow has an active webhook wanting that outcome. It never
    fails the run: an error here is logged (the run is already recorded)."""

    def __init__(self, tenant_id: str, uow_factory: UnitOfWorkFactory, dispatcher: WebhookDispatcher,
                 clock: Clock) -> None:  # fmt: skip
        self.tenant_id = tenant_id
        self.uow_factory = uow_factory
        self.dispatcher = dispatcher
        self.clock = clock

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        for event in events:
            outcome = _OUTCOMES.get(event.kind) if event.node_id is None else None
            if outcome is None:
                continue
            try:
                delivery_id = await self._record(event, outcome)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook.record_failed", tenant_id=self.tenant_id, execution_id=event.execution_id)
                continue
            if delivery_id is not None:
                self.dispatcher.schedule(self.tenant_id, delivery_id)

    async def _record(self, event: ExecutionEvent, outcome: str) -> str | None:
        now = self.clock.now()
        async with self.uow_factory.for_tenant(self.tenant_id) as uow:
            execution = await uow.executions.get(event.execution_id)
            webhook = await uow.webhooks.find(execution.flow_id)
            if webhook is None or not webhook.is_active or outcome not in webhook.events:
                return None
            delivery_id = delivery_id_for(self.tenant_id, execution.id, outcome)
            final = execution.status.is_terminal
            outputs = execution.outputs if final else event.data.get("outputs")
            error = execution.error if final else event.data.get("error", event.data.get("reason"))
            payload: dict[str, Any] = {
                "id": delivery_id,
                "type": f"execution.{outcome}",
                "created_at": now,
                "execution": {
                    "id": execution.id, "flow_id": execution.flow_id, "flow_version": execution.flow_version,
                    "status": outcome, "outputs": dict(outputs) if outcome == "completed" and outputs else None,
                    "error": error if outcome != "completed" else None, "created_at": execution.created_at,
                    "started_at": execution.started_at, "finished_at": execution.finished_at or event.at,
                },
            }  # fmt: skip
            delivery = WebhookDelivery(id=delivery_id, flow_id=execution.flow_id, execution_id=execution.id,
                                       event=outcome, url=webhook.url, payload=payload, created_at=now,
                                       updated_at=now, next_attempt_at=now)  # fmt: skip
            added = await uow.webhooks.add_delivery(delivery)
            await uow.commit()
        return delivery_id if added else None


def webhook_sinks(uow_factory: UnitOfWorkFactory, dispatcher: WebhookDispatcher,
                  clock: Clock) -> Callable[[str], Sequence[EventSink]]:  # fmt: skip
    """For ``ExecutionRecorder(extra_sinks=...)``."""

    def sinks(tenant_id: str) -> Sequence[EventSink]:
        return [WebhookSink(tenant_id, uow_factory, dispatcher, clock)]

    return sinks

