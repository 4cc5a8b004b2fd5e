"""The SQL ``WebhookRepository`` over the tenant tables ``flow_webhooks`` and ``webhook_deliveries`` (t0002)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from crewflow.adapters.sql.repositories import _paged, _Repository
from crewflow.adapters.sql.tables import FLOW_WEBHOOKS, FLOWS, WEBHOOK_DELIVERIES
from crewflow.domain.errors import NotFound
from crewflow.domain.logs import Page
from crewflow.ports.webhooks import DeliveryStatus, Webhook, WebhookDelivery

__all__ = ["SqlWebhookRepository"]


def _webhook(row: sa.Row[Any]) -> Webhook:
    m = row._mapping
    return Webhook(flow_id=m["flow_id"], url=m["url"], sealed_secret=bytes(m["encrypted_secret"]).decode("ascii"),
                   key_id=m["key_id"], events=tuple(m["events"] or ()), created_at=m["created_at"],
                   updated_at=m["updated_at"], is_active=m["is_active"])  # fmt: skip


def _delivery(row: sa.Row[Any]) -> WebhookDelivery:
    m = row._mapping
    return WebhookDelivery(id=m["id"], flow_id=m["flow_id"], execution_id=m["execution_id"], event=m["event"],
                           url=m["url"], payload=m["payload"], created_at=m["created_at"],
                           updated_at=m["updated_at"], status=DeliveryStatus(m["status"]), attempts=m["attempts"],
                           response_status=m["response_status"], error=m["error"],
                           next_attempt_at=m["next_attempt_at"])  # fmt: skip


class SqlWebhookRepository(_Repository):
    async def find(self, flow_id: str) -> Webhook | None:
        row = (await self._conn.execute(sa.select(FLOW_WEBHOOKS).where(FLOW_WEBHOOKS.c.flow_id == flow_id))).first()
        return None if row is None else _webhook(row)

    async def put(self, webhook: Webhook) -> None:
        exists = (await self._conn.execute(sa.select(FLOWS.c.id).where(FLOWS.c.id == webhook.flow_id))).first()
        if exists is None:
            raise NotFound("flow", webhook.flow_id)
        values = {"url": webhook.url, "encrypted_secret": webhook.sealed_secret.encode("ascii"),
                  "key_id": webhook.key_id, "events": list(webhook.events), "is_active": webhook.is_active,
                  "updated_at": webhook.updated_at}  # fmt: skip
        stmt = self._insert(FLOW_WEBHOOKS).values(flow_id=webhook.flow_id, created_at=webhook.created_at, **values)
        await self._conn.execute(stmt.on_conflict_do_update(index_elements=[FLOW_WEBHOOKS.c.flow_id], set_=values))

    async def delete(self, flow_id: str) -> None:
        await self._change(FLOW_WEBHOOKS.delete().where(FLOW_WEBHOOKS.c.flow_id == flow_id), "webhook", flow_id)

    async def add_delivery(self, delivery: WebhookDelivery) -> bool:
        values = {"id": delivery.id, "flow_id": delivery.flow_id, "execution_id": delivery.execution_id,
                  "event": delivery.event, "url": delivery.url, "payload": dict(delivery.payload),
                  "status": str(delivery.status), "attempts": delivery.attempts,
                  "response_status": delivery.response_status, "error": delivery.error,
                  "next_attempt_at": delivery.next_attempt_at, "created_at": delivery.created_at,
                  "updated_at": delivery.updated_at}  # fmt: skip
        result = await self._conn.execute(self._insert(WEBHOOK_DELIVERIES).values(values).on_conflict_do_nothing())
        return bool(result.rowcount)

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery:
        query = sa.select(WEBHOOK_DELIVERIES).where(WEBHOOK_DELIVERIES.c.id == delivery_id)
        return _delivery(await self._one(query, "webhook delivery", delivery_id))

    async def claim_delivery(self, delivery_id: str, *, now: float, until: float) -> WebhookDelivery | None:
        d = WEBHOOK_DELIVERIES.c
        stmt = (WEBHOOK_DELIVERIES.update()
                .where(d.id == delivery_id, d.status == str(DeliveryStatus.PENDING), d.next_attempt_at <= now)
                .values(next_attempt_at=until, updated_at=now)
                .returning(*WEBHOOK_DELIVERIES.c))  # fmt: skip
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else _delivery(row)

    async def record_attempt(self, delivery_id: str, *, status: DeliveryStatus, attempts: int,
                             response_status: int | None, error: str | None, next_attempt_at: float | None,
                             at: float) -> None:  # fmt: skip
        stmt = WEBHOOK_DELIVERIES.update().where(WEBHOOK_DELIVERIES.c.id == delivery_id).values(
            status=str(status), attempts=attempts, response_status=response_status, error=error,
            next_attempt_at=next_attempt_at, updated_at=at,
        )  # fmt: skip
        await self._change(stmt, "webhook delivery", delivery_id)

    async def list_deliveries(self, flow_id: str, cursor: str | None = None,
                              limit: int = 50) -> Page[WebhookDelivery]:  # fmt: skip
        d = WEBHOOK_DELIVERIES.c
        query = sa.select(WEBHOOK_DELIVERIES).where(d.flow_id == flow_id)
        return await _paged(self._conn, query, [d.created_at, d.id], descending=True, cursor=cursor, limit=limit,
                            convert=_delivery)  # fmt: skip

    async def list_due(self, now: float, limit: int = 100) -> Sequence[str]:
        d = WEBHOOK_DELIVERIES.c
        query = (sa.select(d.id).where(d.status == str(DeliveryStatus.PENDING), d.next_attempt_at <= now)
                 .order_by(d.next_attempt_at, d.id).limit(limit))  # fmt: skip
        return [row[0] for row in (await self._conn.execute(query)).all()]
