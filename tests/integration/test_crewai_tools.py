"""crewflow tools inside CrewAI: the argument model generated from a tool's input JSON Schema, and a real agent
(CrewAI → FailoverLLM → gateway → the local LLM server on 127.0.0.1) calling a tool whose call runs through the
``ToolSandbox`` port on the engine's loop, the tool's output reaching the agent's answer.

The sandbox is a fake of the port that counts words (the real sandboxes are tested with their adapters and in
test_tool_acceptance.py); it records on which thread each call ran."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import pytest

from crewflow.adapters.crewai import CrewAIRuntime
from crewflow.adapters.crewai.tools import SandboxCall, ToolCallRefused, args_model, crewai_tool
from crewflow.adapters.llm import build_provider
from crewflow.adapters.llm.registry import InMemoryProviderRegistry
from crewflow.adapters.llm.scripted import ScriptedReply, tool_call
from crewflow.application.gateway import Gateway
from crewflow.domain.agents import Agent, ToolLimits, ToolRef
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.ports.llm import CallScope, ChatRequest, ChatResponse, ProviderConfig, ProviderEntry
from crewflow.ports.runtime import AgentWork, NodeOutcome, ToolWork
from crewflow.testing.llm_server import LLMTestServer

pytestmark = pytest.mark.integration

WORDCOUNT = ToolRef(
    id="wordcount",
    description="Count the words of a text",
    input_schema={"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string", "description": "the text to count"},
        "mode": {"enum": ["words", "chars"], "default": "words"},
        "options": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "max": {"type": ["integer", "null"]},
        "class": {"type": "boolean", "description": "a keyword as a property name"},
    }},
    output_schema={"type": "object", "properties": {"words": {"type": "integer"}}},
    limits=ToolLimits(timeout=7),
)  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


class CountingSandbox:
    """A ``ToolSandbox`` counting words; records each call's work and thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[ToolWork, int]] = []

    async def run_tool(self, work: ToolWork, emit: Callable[[EventKind, Mapping[str, Any]], None]) -> NodeOutcome:
        self.calls.append((work, threading.get_ident()))
        emit(EventKind.NODE_LOG, {"line": f"counted for {work.node_id}"})
        if work.payload.get("text") == "boom":
            raise NodeExecutionError("the tool exited with status 3", retryable=False)
        return NodeOutcome(output={"words": len(str(work.payload["text"]).split())})


class SpyGateway:
    def __init__(self, inner: Gateway) -> None:
        self.inner = inner
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, scope: CallScope, **kwargs: Any) -> ChatResponse:
        self.requests.append(request)
        return await self.inner.complete(request, scope, **kwargs)


@pytest.fixture
async def server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer(api_key=None) as srv:
        yield srv


@pytest.fixture
async def gateway(server: LLMTestServer) -> AsyncIterator[SpyGateway]:
    registry = InMemoryProviderRegistry()
    config = ProviderConfig(name="primary", kind="openai", model="m1", base_url=server.openai_base_url("primary"),
                            api_key="sk-test-0000", timeout=10.0)  # fmt: skip
    registry.set_tenant("acme", [ProviderEntry(config, build_provider(config))])
    yield SpyGateway(Gateway(registry))
    await registry.close()


def test_the_argument_model_follows_the_input_schema() -> None:
    model = args_model(WORDCOUNT)
    fields = model.model_fields
    assert fields["text"].is_required() and fields["text"].description == "the text to count"
    assert not fields["mode"].is_required() and fields["mode"].default == "words"
    class_field = next(name for name, info in fields.items() if info.alias == "class")
    assert class_field != "class" and fields[class_field].description == "a keyword as a property name"
    parsed = model.model_validate({"text": "a b", "options": {"x": 1}, "tags": ["t"], "max": None, "class": True})
    assert (parsed.text, parsed.options, parsed.tags, parsed.max, getattr(parsed, class_field)) == (
        "a b", {"x": 1}, ["t"], None, True)  # fmt: skip
    for wrong in ({"mode": "lines", "text": "a"}, {"tags": "t", "text": "a"}, {"max": "many", "text": "a"}, {}):
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(wrong)
    shown = model.model_json_schema()
    assert shown["required"] == ["text"] and "class" in shown["properties"]
    free = args_model(ToolRef(id="free"))
    assert list(free.model_fields) == ["input"]


async def test_the_tool_runs_on_the_engines_loop_with_the_payload_the_schema_names() -> None:
    sandbox = CountingSandbox()
    events: list[tuple[EventKind, Mapping[str, Any]]] = []
    cancelled = threading.Event()
    call = SandboxCall(sandbox, asyncio.get_running_loop(), lambda k, d: events.append((k, d)), "acme", "ex1",
                       "count", 2, cancelled=cancelled.is_set)  # fmt: skip
    tool = crewai_tool(WORDCOUNT, call)
    assert tool.name == "wordcount" and tool.args_schema.model_fields["text"].is_required()
    answer = await asyncio.to_thread(tool.run, text="one two three", **{"class": False})
    assert answer == json.dumps({"words": 3})
    work, thread = sandbox.calls[0]
    assert dict(work.payload) == {"text": "one two three", "mode": "words", "class": False}
    assert (work.tenant_id, work.execution_id, work.node_id, work.attempt, work.timeout) == ("acme", "ex1", "count", 2,
                                                                                             7)  # fmt: skip
    assert thread == threading.get_ident()  # the engine's loop thread, not CrewAI's
    assert await tool.arun(text="x y") == json.dumps({"words": 2})  # on the loop itself: awaited directly
    assert "failed: the tool exited with status 3" in await asyncio.to_thread(tool.run, text="boom")
    with pytest.raises(ToolCallRefused, match="engine's loop thread"):
        tool.run(text="sync call on the loop")
    cancelled.set()
    with pytest.raises(ToolCallRefused, match="cancelled"):
        await asyncio.to_thread(tool.run, text="late")
    assert len(sandbox.calls) == 3 and events[0] == (EventKind.NODE_LOG, {"line": "counted for count"})


async def test_an_agent_calls_its_tool_and_the_tools_output_reaches_the_answer(
    server: LLMTestServer, gateway: SpyGateway
) -> None:
    server.provider("primary").script(ScriptedReply(tool_calls=(tool_call("wordcount", {"text": "one two three"}),)))
    sandbox = CountingSandbox()
    runtime = CrewAIRuntime(gateway, tools=sandbox, stream_tokens=False)
    agent = Agent(id="counter", role="Counter", goal="Count words", provider="primary", tools=("wordcount",))
    work = AgentWork(tenant_id="acme", execution_id="ex1", node_id="count", attempt=1, agent=agent,
                     task="How many words are in 'one two three'? Use the wordcount tool.",
                     expected_output="The number of words.", inputs={}, run_inputs={},
                     tools={"wordcount": WORDCOUNT})  # fmt: skip
    events: list[tuple[EventKind, dict[str, Any]]] = []
    outcome = await runtime.run_agent(work, lambda kind, data: events.append((kind, dict(data))))

    assert [dict(w.payload)["text"] for w, _ in sandbox.calls] == ["one two three"]
    offered = gateway.requests[0].tools
    assert [t["function"]["name"] for t in offered] == ["wordcount"]
    parameters = offered[0]["function"]["parameters"]
    assert parameters["properties"]["text"]["type"] == "string" and "text" in parameters["required"]
    told = [m.content or "" for m in gateway.requests[1].messages if m.role == "tool"]
    assert told and '"words": 3' in told[-1]
    assert '"words": 3' in outcome.output  # the answer is built from the tool's result
    assert (EventKind.NODE_LOG, {"line": "counted for count"}) in events
