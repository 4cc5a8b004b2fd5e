"""A bounded schemathesis run against the API's own OpenAPI document: no request, valid or not, makes the
server answer 5xx.

The app runs on a real uvicorn server on 127.0.0.1 (its own thread and event loop, embedded SQLite
defaults); every operation of ``/api/v1/schema/openapi.json`` gets a few schema-conforming and a few
schema-violating requests (deterministic examples, so CI runs the same cases), sent with a valid admin token
of a tenant that owns some objects. Rate limits are lifted through the limiter port: the run sends a few
hundred requests a minute from one user."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings

from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.entrypoints.http import create_app
from crewflow.ports.auth import RateDecision
from crewflow.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402

pytestmark = pytest.mark.integration

EXAMPLES = {GenerationMode.POSITIVE: 5, GenerationMode.NEGATIVE: 3}  # per operation, ~35 operations


class Unlimited:
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        return RateDecision(allowed=True, remaining=limit)


@dataclass
class LiveServer:
    base_url: str
    container: ApiContainer
    tenant_id: str
    user_id: str

    def token(self) -> str:
        """A fresh admin token (a fuzzed ``POST /auth/logout`` revokes the one it was sent with)."""
        return self.container.tokens.issue(self.user_id, self.tenant_id, Role.ADMIN).token


async def _seed(container: ApiContainer) -> tuple[str, str]:
    tenant_id = uuid.uuid4().hex[:12]
    await container.provisioner.register(Tenant(tenant_id, f"t-{tenant_id}", "T", f"tenant_{tenant_id}",
                                                datetime.now(UTC)))  # fmt: skip
    user = User(uuid.uuid4().hex, tenant_id, "fuzz-admin@example.com", Role.ADMIN, container.hasher.hash("pw-12345678"))
    async with container.uow_factory.platform() as uow:
        await uow.users.add(user)
        await uow.commit()
    return tenant_id, user.id


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def build() -> tuple[ApiContainer, str, str]:
        settings = Settings(data_dir=str(data_dir), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
        container = await build_api_container(settings, bcrypt_rounds=4)
        container.limiter = Unlimited()
        return (container, *await _seed(container))

    container, tenant_id, user_id = loop.run_until_complete(build())
    server = uvicorn.Server(uvicorn.Config(create_app(container), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", container, tenant_id, user_id)
    with httpx.Client(base_url=live.base_url) as client:
        while not server.started:  # wait for start-up (or the thread's death, which fails the fixture)
            assert thread.is_alive(), "the server did not start"
            thread.join(0.01)
        seed = {"Authorization": f"Bearer {live.token()}"}
        agent = {"id": "writer", "role": "W", "goal": "G"}
        provider = {"name": "main", "kind": "scripted", "model": "m", "api_key": "sk-fuzz-000000000000"}
        assert client.post("/api/v1/agents", json=agent, headers=seed).is_success
        assert client.post("/api/v1/providers", json=provider, headers=seed).is_success
    yield live
    server.should_exit = True
    thread.join()
    loop.run_until_complete(container.aclose())
    loop.close()
    sock.close()


def test_no_request_makes_the_api_answer_a_server_error(live_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/api/v1/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20  # the whole API is in the document
    server_errors: list[str] = []
    statuses: dict[int, int] = {}
    sent = 0

    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
            def probe(case: Any) -> None:
                nonlocal sent
                response = case.call(base_url=live_server.base_url,
                                     headers={"Authorization": f"Bearer {live_server.token()}"})  # fmt: skip
                sent += 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    server_errors.append(f"{response.status_code} {case.method} {case.formatted_path} query="
                                         f"{case.query} body={case.body!r:.300}: {response.text[:300]}")  # fmt: skip

            probe()

    assert sent >= len(operations) * 4
    assert sum(n for status, n in statuses.items() if status < 300) >= 20  # the token works: handlers ran
    assert not server_errors, "\n".join(server_errors)
