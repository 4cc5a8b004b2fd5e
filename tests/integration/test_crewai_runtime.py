"""Real crews through real CrewAI → FailoverLLM → the gateway → the local LLM server (127.0.0.1 only).

The primary provider answers 429 and the secondary answers: failover happens inside the crew, and attempts,
tokens and cost reach the node's outcome and the run result. Provider keys never appear in events or
results. CrewAI's own clients are pointed at a closed loopback port, so a stray call of its own would fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from crewflow.adapters.crewai import CrewAIRuntime
from crewflow.adapters.crewai.interop import import_crewai_project
from crewflow.adapters.llm import build_provider
from crewflow.adapters.llm.registry import InMemoryProviderRegistry
from crewflow.application.gateway import Gateway
from crewflow.domain.agents import Agent, Crew, CrewTask
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.failover import Price
from crewflow.ports.llm import CallScope, ChatRequest, ChatResponse, ProviderConfig, ProviderEntry
from crewflow.ports.runtime import CrewWork
from crewflow.testing.llm_server import Fault, LLMTestServer

pytestmark = pytest.mark.integration

PRIMARY_KEY = "sk-primary-SECRET-7c41e9a0b2d35f86"
SECONDARY_KEY = "sk-secondary-SECRET-0d9b8a7c6e5f4321"
SECRETS = (PRIMARY_KEY, SECONDARY_KEY)


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


@pytest.fixture
async def server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer(api_key=None) as srv:
        srv.provider("primary").api_key = PRIMARY_KEY
        srv.provider("secondary").api_key = SECONDARY_KEY
        yield srv


@pytest.fixture
async def gateway(server: LLMTestServer) -> AsyncIterator[Gateway]:
    registry = InMemoryProviderRegistry()
    configs = [
        ProviderConfig(name="primary", kind="openai", model="primary-model", base_url=server.openai_base_url("primary"),
                       api_key=PRIMARY_KEY, priority=0, price=Price(0.5, 1.5), timeout=5.0),
        ProviderConfig(name="secondary", kind="openai", model="secondary-model",
                       base_url=server.openai_base_url("secondary"), api_key=SECONDARY_KEY, priority=1,
                       price=Price(0.01, 0.03), timeout=5.0),
    ]  # fmt: skip
    entries = [ProviderEntry(c, build_provider(c)) for c in configs]
    registry.set_tenant("acme", entries)
    registry.set_tenant("local", entries)  # the library API runs flows as the embedded tenant "local"
    yield Gateway(registry)
    await registry.close()


class SpyGateway:
    """Implements ``LLMGateway`` by delegating to the real gateway, keeping the requests it was given."""

    def __init__(self, inner: Gateway) -> None:
        self.inner = inner
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, scope: CallScope, **kwargs: Any) -> ChatResponse:
        self.requests.append(request)
        return await self.inner.complete(request, scope, **kwargs)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []

    def __call__(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(data)))

    def of(self, kind: EventKind) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def two_agents_three_tasks() -> tuple[Crew, dict[str, Agent]]:
    agents = {
        "researcher": Agent(id="researcher", role="Researcher of {topic}", goal="Collect facts about {topic}"),
        "writer": Agent(id="writer", role="Writer", goal="Write a short article"),
    }
    crew = Crew(id="article", agents=("researcher", "writer"), tasks=(
        CrewTask("research", "Research {topic}.", "Facts.", "researcher"),
        CrewTask("outline", "Outline an article from the facts.", "An outline.", "writer", ("research",)),
        CrewTask("write", "Write the article.", "An article.", "writer", ("research", "outline")),
    ))  # fmt: skip
    return crew, agents


def assert_no_secret(value: Any) -> None:
    text = json.dumps(value, default=str)
    for secret in SECRETS:
        assert secret not in text


async def test_a_crew_of_two_agents_and_three_tasks_fails_over_inside_the_crew(
    server: LLMTestServer, gateway: Gateway
) -> None:
    server.provider("primary").fail(Fault.rate_limited(retry_after="30", times=None))
    server.provider("secondary").script("Final Answer: FACT bees dance", "Final Answer: OUTLINE intro, dance",
                                        "Final Answer: ARTICLE about dancing bees")  # fmt: skip
    crew, agents = two_agents_three_tasks()
    emit = Recorder()

    spy = SpyGateway(gateway)
    outcome = await CrewAIRuntime(spy).run_crew(
        CrewWork("acme", "exec-1", "article", 1, crew, agents, {"topic": "bees"}), emit
    )

    assert outcome.output == "ARTICLE about dancing bees"
    # Failover: the primary was tried (429) and every answer came from the secondary.
    outcomes = [(a["provider"], a["outcome"]) for a in outcome.llm_attempts]
    assert ("primary", "rate_limited") in outcomes
    assert [a for a in outcome.llm_attempts if a["outcome"] == "success"] == [
        a for a in outcome.llm_attempts if a["provider"] == "secondary"
    ]
    assert len([o for o in outcomes if o == ("secondary", "success")]) == 3
    assert {r.status for r in server.requests("primary")} == {429}
    # Tokens and cost of the secondary's answers, priced at its rate.
    assert outcome.input_tokens > 0
    assert outcome.output_tokens > 0
    assert outcome.cost == pytest.approx((outcome.input_tokens * 0.01 + outcome.output_tokens * 0.03) / 1000)
    # Context between tasks reached the gateway: the last task saw both earlier answers.
    prompts = ["\n".join(m.content or "" for m in r.messages) for r in spy.requests]
    assert "FACT bees dance" in prompts[-1]
    assert "OUTLINE intro, dance" in prompts[-1]
    assert "Researcher of bees" in prompts[0]
    assert len(server.requests("secondary")) == 3
    # Events: every attempt, the streamed tokens, each task's output.
    assert len(emit.of(EventKind.LLM_ATTEMPT)) == len(outcome.llm_attempts)
    assert "".join(e["token"] for e in emit.of(EventKind.NODE_TOKEN))
    assert [e["task"] for e in emit.of(EventKind.NODE_LOG) if e["event"] == "task.completed"] == [
        "research", "outline", "write",
    ]  # fmt: skip
    assert_no_secret([outcome.output, outcome.llm_attempts, emit.events])


async def test_when_every_provider_fails_the_node_fails_retryably_and_no_key_leaks(
    server: LLMTestServer, gateway: Gateway
) -> None:
    server.provider("primary").fail(Fault.rate_limited(retry_after="30", times=None))
    server.provider("secondary").fail(Fault.unauthorized(times=None))
    crew, agents = two_agents_three_tasks()
    emit = Recorder()

    with pytest.raises(NodeExecutionError) as caught:
        await CrewAIRuntime(gateway).run_crew(CrewWork("acme", "exec-2", "article", 1, crew, agents,
                                                       {"topic": "bees"}), emit)  # fmt: skip

    assert caught.value.retryable is True
    assert "all LLM providers failed" in str(caught.value)
    assert {a["outcome"] for a in emit.of(EventKind.LLM_ATTEMPT)} >= {"rate_limited", "auth"}
    assert_no_secret([str(caught.value), repr(caught.value), emit.events])


async def test_an_imported_crewai_project_runs_in_a_flow_with_failover_and_costs_in_the_run_result(
    server: LLMTestServer, gateway: Gateway
) -> None:
    from crewflow.entrypoints.library import arun

    server.provider("primary").fail(Fault.rate_limited(retry_after="30", times=None))
    agents = {"analyst": {"role": "Analyst", "goal": "Study {company}", "backstory": "Sharp."},
              "scribe": {"role": "Scribe", "goal": "Report on {company}", "backstory": "Neat."}}  # fmt: skip
    tasks = {"study": {"description": "Study {company}.", "expected_output": "Notes."},
             "report": {"description": "Report on {company}.", "expected_output": "A report.",
                        "context": ["study"]}}  # fmt: skip
    imported = import_crewai_project(agents, tasks, name="company_report")
    events: list[ExecutionEvent] = []

    result = await arun(imported.flow, {"company": "ACME"}, runtime=CrewAIRuntime(gateway), on_event=events.append)

    assert result.ok, result.error
    node = result.nodes["company_report"]
    assert [a["provider"] for a in node.llm_attempts if a["outcome"] == "success"] == ["secondary", "secondary"]
    assert any(a["provider"] == "primary" and a["status"] == 429 for a in node.llm_attempts)
    assert node.input_tokens > 0
    assert node.cost > 0
    assert result.cost == pytest.approx(node.cost)
    assert "secondary-model" in str(result.outputs["result"])
    assert_no_secret([result.to_dict(), [e.to_dict() for e in events]])


def test_importing_crewflow_and_these_modules_does_not_import_crewai() -> None:
    code = (
        "import sys, crewflow, crewflow.adapters.crewai, crewflow.adapters.crewai.llm, "
        "crewflow.adapters.crewai.runtime, crewflow.adapters.crewai.interop, crewflow.entrypoints.cli_crewai; "
        "print('crewai' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"
