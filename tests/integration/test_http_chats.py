"""Chats with an agent: open, post, the reply streamed on the chat's WebSocket and stored, history with
cursor pagination, tenant isolation and roles. A real uvicorn server in the test's event loop; the agent
runtime is the offline scripted one, streaming its answer word by word."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer as auth
from api_support import make_user
from api_support import served_client as serve
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.sql.migrate import migrate
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.tenancy import Role
from crewflow.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
async def container(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApiContainer]:
    """The API on the embedded SQLite file, and on PostgreSQL (chat messages in the tenant's schema)."""
    url = str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    if url is not None:
        assert (await migrate(url)).ok
    settings = Settings(data_dir=str(tmp_path), database_url=url, extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4, runtime=ScriptedRuntime(stream=True))
    yield built
    await built.aclose()


def ws_base(client: httpx.AsyncClient) -> str:
    return str(client.base_url).replace("http://", "ws://")


async def open_chat(client: httpx.AsyncClient, token: str) -> str:
    agent = {"id": "helper", "role": "Helper", "goal": "Help", "provider": "scripted"}
    assert (await client.post("/api/v1/agents", json=agent, headers=auth(token))).status_code == 201
    chat = await client.post("/api/v1/chats", json={"agent": "helper", "title": "Questions"}, headers=auth(token))
    assert chat.status_code == 201, chat.text
    return str(chat.json()["id"])


async def frames_until_reply(ws: ClientConnection, reply_id: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if frame["type"] == "message" and frame["message"]["id"] == reply_id:
            return frames


async def test_a_reply_is_streamed_on_the_chat_socket_stored_and_the_history_pages(container: ApiContainer) -> None:
    _, token = await make_user(container)
    async with serve(container) as client:
        chat_id = await open_chat(client, token)
        async with connect(f"{ws_base(client)}/api/v1/ws/chats/{chat_id}", additional_headers=auth(token)) as ws:
            assert json.loads(await ws.recv()) == {"type": "ready", "chat_id": chat_id}
            posted = await client.post(f"/api/v1/chats/{chat_id}/messages", json={"content": "hello there"},
                                       headers=auth(token))  # fmt: skip
            assert posted.status_code == 202, posted.text
            reply_id = posted.json()["reply_id"]
            first = await frames_until_reply(ws, reply_id)
            again = await client.post(f"/api/v1/chats/{chat_id}/messages", json={"content": "and then?"},
                                      headers=auth(token))  # fmt: skip
            second = await frames_until_reply(ws, again.json()["reply_id"])
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(f"/api/v1/chats/{chat_id}/messages", params=params, headers=auth(token))).json()
            pages.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        chat = (await client.get(f"/api/v1/chats/{chat_id}", headers=auth(token))).json()

    assert [f["type"] for f in first[:2]] == ["message", "reply.started"]
    assert first[0]["message"]["content"] == "hello there"
    tokens = [f["text"] for f in first if f["type"] == "reply.token"]
    answer = first[-1]["message"]
    assert tokens
    assert "".join(tokens).strip() == answer["content"]
    assert answer["role"] == "assistant"
    assert answer["metadata"]["in_reply_to"] == posted.json()["message"]["id"]
    assert [f["seq"] for f in first + second] == sorted(f["seq"] for f in first + second)
    assert "user: hello there" in second[-1]["message"]["content"]  # the history went to the agent
    assert [(m["role"], m["content"]) for m in pages] == [
        ("system", "Chat with agent 'helper'"), ("user", "hello there"), ("assistant", answer["content"]),
        ("user", "and then?"), ("assistant", second[-1]["message"]["content"])]  # fmt: skip
    assert (chat["agent"], chat["crew"], chat["title"]) == ("helper", None, "Questions")


async def test_chats_are_invisible_to_other_tenants_and_viewers_cannot_post(container: ApiContainer) -> None:
    tenant, token = await make_user(container)
    _, viewer = await make_user(container, Role.VIEWER, tenant)
    _, stranger = await make_user(container)
    async with serve(container) as client:
        chat_id = await open_chat(client, token)
        for target in (chat_id, "no-such-chat"):
            assert (await client.get(f"/api/v1/chats/{target}", headers=auth(stranger))).status_code == 404
            assert (await client.get(f"/api/v1/chats/{target}/messages", headers=auth(stranger))).status_code == 404
            posted = await client.post(f"/api/v1/chats/{target}/messages", json={"content": "hi"},
                                       headers=auth(stranger))  # fmt: skip
            assert posted.status_code == 404
            async with connect(f"{ws_base(client)}/api/v1/ws/chats/{target}", additional_headers=auth(stranger)) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4404
        denied = await client.post(f"/api/v1/chats/{chat_id}/messages", json={"content": "hi"}, headers=auth(viewer))
        assert denied.status_code == 403
        assert (await client.get(f"/api/v1/chats/{chat_id}/messages", headers=auth(viewer))).status_code == 200
        unknown = await client.post("/api/v1/chats", json={"agent": "nobody"}, headers=auth(token))
        both = await client.post("/api/v1/chats", json={"agent": "helper", "crew": "c"}, headers=auth(token))
        assert unknown.status_code == both.status_code == 422
        history = (await client.get(f"/api/v1/chats/{chat_id}/messages", headers=auth(token))).json()
    assert [m["role"] for m in history["items"]] == ["system"]  # nothing was added by the refused requests


async def test_a_chat_with_a_crew_gets_the_message_as_the_crews_input(container: ApiContainer) -> None:
    _, token = await make_user(container)
    async with serve(container) as client:
        agent = {"id": "helper", "role": "Helper", "goal": "Help", "provider": "scripted"}
        assert (await client.post("/api/v1/agents", json=agent, headers=auth(token))).status_code == 201
        crew = {"id": "desk", "agents": ["helper"],
                "tasks": [{"name": "answer", "description": "Answer: {message}", "agent": "helper"}]}  # fmt: skip
        assert (await client.post("/api/v1/crews", json=crew, headers=auth(token))).status_code == 201, "crew"
        chat_id = (await client.post("/api/v1/chats", json={"crew": "desk"}, headers=auth(token))).json()["id"]
        async with connect(f"{ws_base(client)}/api/v1/ws/chats/{chat_id}", additional_headers=auth(token)) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            posted = await client.post(f"/api/v1/chats/{chat_id}/messages", json={"content": "why tides?"},
                                       headers=auth(token))  # fmt: skip
            frames = await frames_until_reply(ws, posted.json()["reply_id"])
    assert frames[-1]["message"]["content"] == "[Helper] Answer: why tides?"


async def test_a_reply_that_cannot_be_made_is_announced_as_failed(container: ApiContainer) -> None:
    _, token = await make_user(container)
    async with serve(container) as client:
        chat_id = await open_chat(client, token)
        assert (await client.delete("/api/v1/agents/helper", headers=auth(token))).status_code == 204
        async with connect(f"{ws_base(client)}/api/v1/ws/chats/{chat_id}", additional_headers=auth(token)) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            posted = await client.post(f"/api/v1/chats/{chat_id}/messages", json={"content": "still there?"},
                                       headers=auth(token))  # fmt: skip
            reply_id = posted.json()["reply_id"]
            frames = []
            while not frames or frames[-1]["type"] != "reply.failed":
                frames.append(json.loads(await ws.recv()))
        history = (await client.get(f"/api/v1/chats/{chat_id}/messages", headers=auth(token))).json()
    failed = frames[-1]
    assert (failed["reply_id"], failed["in_reply_to"]) == (reply_id, posted.json()["message"]["id"])
    assert failed["error"] == "agent 'helper' not found"
    assert [m["role"] for m in history["items"]] == ["system", "user"]
