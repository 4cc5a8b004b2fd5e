"""Flow webhooks end to end: configured over the API, a real run ends, a real local HTTP receiver (aiohttp's
test server) fails twice then accepts — three attempts logged, the signature verifies with the secret shown
once at creation, and the secret appears in no other response, no log line and no audit entry. Then the
pieces on both SQL backends: the repository, the sink (one delivery per run outcome, events filter), the
durable retry schedule picked up by ``deliver_due`` after a "restart", and the address policy (URLs and the
transport refuse loopback/private/link-local addresses unless allowed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from api_support import bearer, make_user
from litestar.testing import AsyncTestClient

from crewflow.adapters.crypto.aesgcm import AesGcmCipher, generate_key
from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
from crewflow.adapters.webhook_http import AiohttpWebhookTransport
from crewflow.application.catalog import create_flow
from crewflow.application.executions import ExecutionRunner, InvalidArguments
from crewflow.application.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    ConfigureWebhook,
    DeliveryPolicy,
    WebhookDispatcher,
    WebhookSink,
    check_webhook_url,
    configure_webhook,
    deliver_due,
    list_deliveries,
    retry_due_forever,
    sign,
    verify_signature,
    webhook_sinks,
)
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import Execution
from crewflow.domain.scheduler import RunStatus
from crewflow.domain.tenancy import Role, Tenant
from crewflow.entrypoints.http import create_app
from crewflow.entrypoints.http.webhooks import WebhookController
from crewflow.ports.webhooks import DeliveryStatus, WebhookTransportError, is_public_address
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

API = "/api/v1"
FLOW: dict[str, Any] = {
    "name": "Note",
    "inputs": {"topic": {"default": "tides"}},
    "agents": {"writer": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "write", "kind": "agent", "agent": "writer", "task": "Write about {{ inputs.topic }}"},
        {"id": "out", "kind": "output"},
    ],
    "edges": ["in -> write", "write -> out"],
}
FAST = DeliveryPolicy(max_attempts=5, initial_delay=0.01, multiplier=1.0, jitter=0.0, timeout=5.0)


class Receiver:
    """A real HTTP endpoint answering ``statuses`` in turn (then 200), recording every request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = asyncio.Event()
        self.server = TestServer(self._app(), host="127.0.0.1")

    def _app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.requests.append((dict(request.headers), await request.read()))
            self.got.set()
            return web.Response(status=self.statuses.pop(0) if self.statuses else 200, text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start(*statuses: int) -> Receiver:
        r = Receiver(*statuses)
        await r.server.start_server()
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            await r.server.close()


# -- end to end over the API ---------------------------------------------------------------------------
@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiContainer, WebhookDispatcher]]:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40,
                                                       "CREWFLOW_WEBHOOK_ALLOW_PRIVATE": "true"})  # fmt: skip
    container = await build_api_container(settings, bcrypt_rounds=4)
    transport = AiohttpWebhookTransport(allow_private=True)
    dispatcher = WebhookDispatcher(container.uow_factory, container.cipher, transport, container.clock, FAST)
    # the wiring bootstrap does: the recorder's extra sinks, and the runner the in-process queue calls
    container.recorder = dataclasses.replace(container.recorder, extra_sinks=webhook_sinks(
        container.uow_factory, dispatcher, container.clock))  # fmt: skip
    container.queue.handler = ExecutionRunner(container.uow_factory, container.engine,  # type: ignore[attr-defined]
                                              container.recorder)  # fmt: skip
    try:
        yield container, dispatcher
    finally:
        await dispatcher.close()
        await transport.aclose()
        await container.aclose()


async def test_a_run_end_is_delivered_signed_after_two_failures_and_the_secret_never_shows_again(
    api: tuple[ApiContainer, WebhookDispatcher], receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    container, _ = api
    hook = await receiver(500, 503)
    tenant_id, token = await make_user(container, Role.MEMBER)
    _, admin = await make_user(container, Role.ADMIN, tenant_id)
    app = create_app(container, route_handlers=[WebhookController])
    with structlog.testing.capture_logs() as logs:
        async with AsyncTestClient(app=app) as client:
            flow_id = (await client.post(f"{API}/flows", json=FLOW, headers=bearer(token))).json()["id"]
            created = await client.put(f"{API}/flows/{flow_id}/webhook", json={"url": hook.url},
                                       headers=bearer(token))  # fmt: skip
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]
            assert secret.startswith("whsec_") and len(secret) > 30
            assert created.json()["events"] == ["completed", "failed", "cancelled"]

            started = await client.post(f"{API}/flows/{flow_id}/execute", json={}, headers=bearer(token))
            assert started.status_code == 202, started.text
            execution_id = started.json()["execution_id"]
            deliveries: list[dict[str, Any]] = []
            for _ in range(500):  # bounded wait for the run and the three attempts
                page = (await client.get(f"{API}/flows/{flow_id}/webhook/deliveries", headers=bearer(token))).json()
                deliveries = page["items"]
                if deliveries and deliveries[0]["status"] != "pending":
                    break
                await asyncio.sleep(0.02)
            reads = [
                await client.get(f"{API}/flows/{flow_id}/webhook", headers=bearer(token)),
                await client.get(f"{API}/flows/{flow_id}/webhook/deliveries", headers=bearer(token)),
                await client.put(f"{API}/flows/{flow_id}/webhook", json={"url": hook.url, "events": ["completed"]},
                                 headers=bearer(token)),
                await client.get(f"{API}/audit-logs", headers=bearer(admin)),
            ]

    assert [d["execution_id"] for d in deliveries] == [execution_id]
    delivery = deliveries[0]
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == ("delivered", 3, 200)
    assert delivery["error"] is None
    assert len(hook.requests) == 3
    ids = {headers[DELIVERY_HEADER] for headers, _ in hook.requests}
    assert ids == {delivery["id"]}  # one delivery, three attempts: the receiver de-duplicates on the id
    for headers, body in hook.requests:
        assert verify_signature(secret, headers[SIGNATURE_HEADER], body, now=time.time())
        assert not verify_signature("whsec_another-secret-entirely", headers[SIGNATURE_HEADER], body, now=time.time())
        assert secret not in json.dumps(headers)
    payload = json.loads(hook.requests[-1][1])
    assert payload["type"] == "execution.completed"
    assert payload["execution"]["id"] == execution_id
    assert payload["execution"]["flow_id"] == flow_id
    assert payload["execution"]["flow_version"] == 1
    assert payload["execution"]["status"] == "completed"
    assert payload["execution"]["outputs"]
    assert payload == delivery["payload"]

    assert reads[2].status_code == 200 and reads[2].json()["events"] == ["completed"]
    for response in reads:
        assert response.status_code == 200, response.text
        assert secret not in response.text
    assert "secret" not in reads[0].json() and "secret" not in reads[2].json()
    assert secret not in repr(logs)
    audit_actions = [e["action"] for e in reads[3].json()["items"]]
    assert "flow.webhook.put" in audit_actions


async def test_webhook_routes_hide_other_tenants_flows_and_refuse_viewers(
    api: tuple[ApiContainer, WebhookDispatcher],
) -> None:
    container, _ = api
    tenant_id, owner = await make_user(container, Role.ADMIN)
    _, viewer = await make_user(container, Role.VIEWER, tenant_id)
    _, stranger = await make_user(container, Role.ADMIN)
    app = create_app(container, route_handlers=[WebhookController])
    async with AsyncTestClient(app=app) as client:
        flow_id = (await client.post(f"{API}/flows", json=FLOW, headers=bearer(owner))).json()["id"]
        url = f"{API}/flows/{flow_id}/webhook"
        assert (await client.put(url, json={"url": "https://hooks.example.com/x"},
                                 headers=bearer(owner))).status_code == 201  # fmt: skip
        calls = [("PUT", url, {"url": "https://evil.example.com/"}), ("GET", url, None), ("DELETE", url, None),
                 ("GET", f"{url}/deliveries", None)]  # fmt: skip
        for method, path, body in calls:
            foreign = await client.request(method, path, json=body, headers=bearer(stranger))
            missing = await client.request(method, path.replace(flow_id, "no-such-flow"), json=body,
                                           headers=bearer(owner))  # fmt: skip
            assert foreign.status_code == missing.status_code == 404, (method, path, foreign.text)
            assert (await client.request(method, path, json=body, headers=bearer(viewer))).status_code == 403
        kept = await client.get(url, headers=bearer(owner))
        assert kept.json()["url"] == "https://hooks.example.com/x"
        bad = await client.put(url, json={"url": "ftp://example.com/x"}, headers=bearer(owner))
        assert bad.status_code == 422
        assert (await client.put(url, json={"url": "https://x.example.com", "events": ["started"]},
                                 headers=bearer(owner))).status_code == 422  # fmt: skip
        assert (await client.delete(url, headers=bearer(owner))).status_code == 204
        assert (await client.get(url, headers=bearer(owner))).status_code == 404


# -- the pieces, on SQLite and PostgreSQL ---------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


async def _flow_and_execution(uow_factory: SqlUnitOfWorkFactory, tenant_id: str, status: RunStatus,
                              clock: FakeClock) -> Execution:  # fmt: skip
    async with uow_factory.for_tenant(tenant_id) as uow:
        record = await create_flow(uow, {**FLOW, "id": "note"}, at=clock.now(), new_id=lambda s: s)
        execution = Execution(id=uuid.uuid4().hex, flow_id=record.id, flow_version=1, created_at=clock.now(),
                              status=status, outputs={"out": "done"} if status is RunStatus.COMPLETED else None,
                              error="boom" if status is RunStatus.FAILED else None, started_at=clock.now(),
                              finished_at=clock.now())  # fmt: skip
        await uow.executions.add(execution)
        await uow.commit()
    return execution


def _end(execution: Execution, kind: EventKind, seq: int = 5) -> ExecutionEvent:
    return ExecutionEvent(execution.id, seq, kind, time.time(), None, {})


async def test_deliveries_retry_durably_and_deliver_due_finishes_them_after_a_restart(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]],
    receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    tenant_id = await new_tenant()
    clock = FakeClock()
    cipher = AesGcmCipher.from_setting(generate_key())
    hook = await receiver(500)
    execution = await _flow_and_execution(uow_factory, tenant_id, RunStatus.FAILED, clock)
    configured = await configure_webhook(tenant_id, ConfigureWebhook("note", hook.url, ("failed",),
                                                                     secret="a given secret of 32 chars....."),
                                         uow_factory=uow_factory, cipher=cipher, clock=clock,
                                         allow_private=True)  # fmt: skip
    assert configured.secret is None  # given, so not echoed
    transport = AiohttpWebhookTransport(allow_private=True)
    slow_retries = dataclasses.replace(FAST, initial_delay=600.0, inline_max_delay=60.0)
    dispatcher = WebhookDispatcher(uow_factory, cipher, transport, clock, slow_retries, rand=lambda: 0.5)
    sink = WebhookSink(tenant_id, uow_factory, dispatcher, clock)
    try:
        await sink.publish([_end(execution, EventKind.RUN_FAILED)])
        await sink.publish([_end(execution, EventKind.RUN_FAILED)])  # published again: still one delivery
        await asyncio.gather(*list(dispatcher._tasks))
        page = await list_deliveries(tenant_id, "note", uow_factory=uow_factory)
        assert len(page.items) == 1
        first = page.items[0]
        assert (first.status, first.attempts, first.response_status) == (DeliveryStatus.PENDING, 1, 500)
        assert first.error == "the endpoint answered HTTP 500"
        assert first.next_attempt_at == pytest.approx(clock.now() + 600.0)
        assert first.payload["execution"]["error"] == "boom"
        assert first.payload["execution"]["outputs"] is None

        # "restart": a new dispatcher; nothing is due yet, then the clock passes next_attempt_at
        await dispatcher.close()
        later = WebhookDispatcher(uow_factory, cipher, transport, clock, slow_retries)
        assert await deliver_due(later, [tenant_id]) == 0
        clock.t += 601
        assert await deliver_due(later, [tenant_id]) == 1
        assert await deliver_due(later, [tenant_id]) == 0  # delivered: nothing left
        done = (await list_deliveries(tenant_id, "note", uow_factory=uow_factory)).items[0]
        assert (done.status, done.attempts, done.response_status, done.error) == (DeliveryStatus.DELIVERED, 2,
                                                                                  200, None)  # fmt: skip
        assert len(hook.requests) == 2
        headers, body = hook.requests[-1]
        assert headers[SIGNATURE_HEADER] == sign("a given secret of 32 chars.....", int(clock.now()), body)
    finally:
        await dispatcher.close()
        await transport.aclose()


async def test_outcomes_not_subscribed_to_and_exhausted_retries(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]],
) -> None:
    tenant_id = await new_tenant()
    clock = FakeClock()
    cipher = AesGcmCipher.from_setting(generate_key())
    completed = await _flow_and_execution(uow_factory, tenant_id, RunStatus.COMPLETED, clock)
    await configure_webhook(tenant_id, ConfigureWebhook("note", "http://127.0.0.1:9/closed", ("failed", "cancelled")),
                            uow_factory=uow_factory, cipher=cipher, clock=clock, allow_private=True)  # fmt: skip
    transport = AiohttpWebhookTransport(allow_private=True)
    dispatcher = WebhookDispatcher(uow_factory, cipher, transport, clock,
                                   dataclasses.replace(FAST, max_attempts=2, initial_delay=0.0))  # fmt: skip
    sink = WebhookSink(tenant_id, uow_factory, dispatcher, clock)
    try:
        await sink.publish([_end(completed, EventKind.RUN_COMPLETED)])  # not subscribed: nothing
        assert (await list_deliveries(tenant_id, "note", uow_factory=uow_factory)).items == ()
        await sink.publish([_end(completed, EventKind.RUN_CANCELLED, 6)])  # (a later outcome, for the test)
        await asyncio.gather(*list(dispatcher._tasks))
        [failed] = (await list_deliveries(tenant_id, "note", uow_factory=uow_factory)).items
        assert (failed.status, failed.attempts, failed.response_status) == (DeliveryStatus.FAILED, 2, None)
        assert failed.next_attempt_at is None
        assert failed.error and "secret" not in failed.error
    finally:
        await dispatcher.close()
        await transport.aclose()


# -- the address policy --------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://10.1.2.3/hook", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://localhost:8000/", "http://api.localhost/",
    "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/",
])  # fmt: skip
async def test_urls_on_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidArguments):
        await check_webhook_url(url, allow_private=False)
    assert await check_webhook_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "https://user:pw@example.com/",
                                 "https:///nohost", "http://exa mple.com/", "javascript:alert(1)"])  # fmt: skip
async def test_malformed_or_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArguments):
        await check_webhook_url(url, allow_private=True)


async def test_public_literal_addresses_are_accepted() -> None:
    assert await check_webhook_url("https://93.184.216.34/hook", allow_private=False)
    assert is_public_address("2606:2800:220:1:248:1893:25c8:1946")
    assert not is_public_address("fd00::1")


async def test_the_transport_never_connects_to_private_addresses_unless_allowed(
    receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    hook = await receiver()
    port = hook.server.port
    strict = AiohttpWebhookTransport(allow_private=False)
    try:
        for url in (f"http://127.0.0.1:{port}/hook", f"http://localhost:{port}/hook"):
            with pytest.raises(WebhookTransportError):
                await strict.post(url, b"{}", {}, timeout=5)
        assert hook.requests == []
    finally:
        await strict.aclose()
    allowed = AiohttpWebhookTransport(allow_private=True)
    try:
        assert await allowed.post(f"http://localhost:{port}/hook", b"{}", {}, timeout=5) == 200
        assert len(hook.requests) == 1
    finally:
        await allowed.aclose()


async def test_the_retry_loop_delivers_due_deliveries_of_every_tenant(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]],
    receiver: Callable[..., Awaitable[Receiver]],
) -> None:
    tenant_id = await new_tenant()
    async with uow_factory.platform() as uow:  # a registered tenant (the loop lists the platform's tenants)
        await uow.tenants.add(Tenant(tenant_id, f"s-{tenant_id}", "T", f"tenant_{tenant_id}", datetime.now(UTC)))
        await uow.commit()
    clock = FakeClock()
    cipher = AesGcmCipher.from_setting(generate_key())
    hook = await receiver(500)
    execution = await _flow_and_execution(uow_factory, tenant_id, RunStatus.COMPLETED, clock)
    await configure_webhook(tenant_id, ConfigureWebhook("note", hook.url), uow_factory=uow_factory, cipher=cipher,
                            clock=clock, allow_private=True)  # fmt: skip
    transport = AiohttpWebhookTransport(allow_private=True)
    no_inline = dataclasses.replace(FAST, initial_delay=0.0, inline_max_delay=-1.0)  # every retry left to the loop
    dispatcher = WebhookDispatcher(uow_factory, cipher, transport, clock, no_inline)
    loop: asyncio.Task[None] | None = None
    try:
        await WebhookSink(tenant_id, uow_factory, dispatcher, clock).publish([_end(execution, EventKind.RUN_COMPLETED)])
        await asyncio.gather(*list(dispatcher._tasks))
        assert (await list_deliveries(tenant_id, "note", uow_factory=uow_factory)).items[0].attempts == 1
        loop = asyncio.create_task(retry_due_forever(dispatcher, every=0.01))
        for _ in range(500):
            delivery = (await list_deliveries(tenant_id, "note", uow_factory=uow_factory)).items[0]
            if delivery.status is DeliveryStatus.DELIVERED:
                break
            await asyncio.sleep(0.01)
        assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)
        assert len(hook.requests) == 2
    finally:
        if loop is not None:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        await dispatcher.close()
        await transport.aclose()
