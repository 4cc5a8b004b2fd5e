"""CrewAIRuntime and FailoverLLM against a fake gateway passed through the ``LLMGateway`` port: real CrewAI
objects and kickoff, no network (CrewAI's own clients are pointed at a closed loopback port)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from crewflow.adapters.crewai.llm import GatewayBridge, chat_request_from_crewai, make_failover_llm
from crewflow.adapters.crewai.runtime import CrewAIRuntime
from crewflow.domain.agents import Agent, Crew, CrewTask, Process, ToolRef
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.domain.failover import AllProvidersFailed, AttemptRecord, BudgetExceeded
from crewflow.ports.llm import CallScope, ChatRequest, ChatResponse, TokenCallback, Usage
from crewflow.ports.runtime import AgentWork, CrewWork, NodeOutcome, ToolWork

pytestmark = pytest.mark.unit

Reply = ChatResponse | Exception | Callable[[ChatRequest], ChatResponse]


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")


def answer(text: str, provider: str = "p1", tokens: tuple[int, int] = (11, 7)) -> ChatResponse:
    return ChatResponse(content=text, model="m", provider=provider, usage=Usage(*tokens))


class FakeGateway:
    """Implements ``LLMGateway``: answers from a script, streams words, reports one attempt per call."""

    def __init__(self, *replies: Reply, price: float = 0.001) -> None:
        self.replies = list(replies)
        self.price = price
        self.calls: list[tuple[ChatRequest, CallScope]] = []
        self.threads: list[int] = []

    async def complete(self, request: ChatRequest, scope: CallScope, *, on_token: TokenCallback | None = None,
                       on_attempt: Callable[[Mapping[str, Any]], None] | None = None) -> ChatResponse:  # fmt: skip
        self.calls.append((request, scope))
        self.threads.append(threading.get_ident())
        await asyncio.sleep(0)
        reply = self.replies.pop(0) if self.replies else answer("Final Answer: done")
        if isinstance(reply, Exception):
            raise reply
        response = reply(request) if callable(reply) else reply
        if on_token is not None and response.content:
            for word in response.content.split(" "):
                on_token(word)
        if on_attempt is not None:
            usage = response.usage
            cost = (usage.input_tokens + usage.output_tokens) * self.price
            on_attempt(AttemptRecord(response.provider, response.model, 1.0, "success", usage.input_tokens,
                                     usage.output_tokens, cost).to_dict())  # fmt: skip
        return response


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Any]]] = []
        self.threads: set[int] = set()

    def __call__(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        self.threads.add(threading.get_ident())
        self.events.append((kind, dict(data)))

    def of(self, kind: EventKind) -> list[dict[str, Any]]:
        return [d for k, d in self.events if k == kind]


def agent_work(agent: Agent, task: str = "Say hello", tools: Mapping[str, ToolRef] | None = None) -> AgentWork:
    return AgentWork(tenant_id="t1", execution_id="e1", node_id="greet", attempt=1, agent=agent, task=task,
                     expected_output="A greeting", inputs={}, run_inputs={}, tools=dict(tools or {}))  # fmt: skip


WRITER = Agent(id="writer", role="Writer", goal="Write well", backstory="Seasoned.", provider="backup",
               model="model-x", temperature=0.3, cache=False)  # fmt: skip


# ------------------------------------------------------------------------------------ message conversion


def test_crewai_messages_become_a_chat_request_with_tools_and_tool_results() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": {"q": 1}}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "42"},
    ]  # fmt: skip
    request = chat_request_from_crewai(messages, tools=tools, model="m", stop=["\nObservation:"], stream=True)

    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[1].content == "part one\npart two"
    assert request.messages[2].tool_calls[0]["function"] == {"name": "lookup", "arguments": json.dumps({"q": 1})}
    assert (request.messages[3].tool_call_id, request.messages[3].name) == ("c1", "lookup")
    assert request.tools == tuple(tools)
    assert request.stop == ("\nObservation:",)
    assert request.stream
    assert request.model == "m"
    assert chat_request_from_crewai("hi").messages[0].content == "hi"


# ------------------------------------------------------------------------------------ agent nodes


async def test_an_agent_node_answers_through_the_gateway_with_attempts_tokens_cost_and_streamed_tokens() -> None:
    gateway = FakeGateway(answer("Final Answer: Hello there"))
    emit = Recorder()

    outcome = await CrewAIRuntime(gateway).run_agent(agent_work(WRITER), emit)

    assert outcome.output == "Hello there"
    assert len(gateway.calls) == 1
    request, scope = gateway.calls[0]
    assert scope == CallScope(tenant_id="t1", execution_id="e1", node_id="greet", provider="backup", cache=False)
    assert request.model == "model-x"
    assert request.temperature == 0.3
    assert request.stream
    assert "Say hello" in "\n".join(m.content or "" for m in request.messages)
    assert outcome.input_tokens == 11
    assert outcome.output_tokens == 7
    assert outcome.cost == pytest.approx(18 * 0.001)
    assert [a["provider"] for a in outcome.llm_attempts] == ["p1"]
    assert [e["agent"] for e in emit.of(EventKind.LLM_ATTEMPT)] == ["writer"]
    assert "".join(e["token"] for e in emit.of(EventKind.NODE_TOKEN)) == "Final Answer: Hello there".replace(" ", "")
    assert emit.of(EventKind.NODE_LOG)[-1]["event"] == "task.completed"


async def test_the_gateway_runs_on_the_engine_loop_while_crewai_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen_in_crewai: list[int] = []

    def reply(request: ChatRequest) -> ChatResponse:
        return answer("Final Answer: ok")

    gateway = FakeGateway(reply)
    emit = Recorder()

    class Spy(CrewAIRuntime):
        def _crew(self, *args: Any, **kwargs: Any) -> Any:
            seen_in_crewai.append(threading.get_ident())
            return super()._crew(*args, **kwargs)

    await Spy(gateway).run_agent(agent_work(WRITER), emit)

    assert gateway.threads == [loop_thread]
    assert seen_in_crewai
    assert seen_in_crewai[0] != loop_thread
    assert emit.threads == {loop_thread}  # events cross back to the loop before reaching the emitter


async def test_parent_outputs_are_given_to_an_agent_whose_task_does_not_quote_them() -> None:
    gateway = FakeGateway(answer("Final Answer: ok"))
    work = agent_work(WRITER, task="Summarise")
    work = AgentWork(**{**{f: getattr(work, f) for f in work.__dataclass_fields__}, "inputs": {"research": "X-42"}})

    await CrewAIRuntime(gateway, stream_tokens=False).run_agent(work, Recorder())

    prompt = "\n".join(m.content or "" for m in gateway.calls[0][0].messages)
    assert "research: X-42" in prompt
    assert gateway.calls[0][0].stream is False


async def test_calling_failover_llm_on_the_loop_thread_is_refused_instead_of_deadlocking() -> None:
    bridge = GatewayBridge(FakeGateway(), asyncio.get_running_loop(), Recorder())
    llm = make_failover_llm(bridge, CallScope("t1"), label="a")

    with pytest.raises(RuntimeError, match="would block"):
        llm.call("hello")
    assert await llm.acall("hello") == "Final Answer: done"  # the async path awaits on the loop directly


# ------------------------------------------------------------------------------------ tools


class FakeSandbox:
    """Implements ``ToolSandbox``: records the payloads and answers with a fixed result."""

    def __init__(self) -> None:
        self.works: list[ToolWork] = []

    async def run_tool(self, work: ToolWork, emit: Any) -> NodeOutcome:
        self.works.append(work)
        return NodeOutcome(output={"population": 8_700_000, "city": work.payload.get("city")})


async def test_tool_calls_pass_through_crewai_to_the_sandbox_and_back() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"city": "London"})}}  # fmt: skip

    def after_tool(request: ChatRequest) -> ChatResponse:
        tool_messages = [m for m in request.messages if m.role == "tool"]
        return answer(f"London has {json.loads(tool_messages[-1].content or '{}')['population']} people")

    gateway = FakeGateway(ChatResponse(None, "m", "p1", Usage(5, 3), tool_calls=(call,)), after_tool)
    sandbox = FakeSandbox()
    agent = Agent(id="geo", role="Geographer", goal="Know places", tools=("lookup",))
    ref = ToolRef(id="lookup", description="Population of a city",
                  input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    emit = Recorder()

    outcome = await CrewAIRuntime(gateway, tools=sandbox).run_agent(agent_work(agent, "How many live in London?",
                                                                               {"lookup": ref}), emit)  # fmt: skip

    assert [w.payload for w in sandbox.works] == [{"city": "London"}]
    assert sandbox.works[0].tool == ref
    assert sandbox.works[0].node_id == "greet"
    first_request = gateway.calls[0][0]
    assert first_request.tools[0]["function"]["name"] == "lookup"
    second_request = gateway.calls[1][0]
    assert second_request.messages[-2].tool_calls[0]["id"] == "call_1"
    assert second_request.messages[-1].role == "tool"
    assert second_request.messages[-1].tool_call_id == "call_1"
    assert outcome.output == "London has 8700000 people"
    steps = [e for e in emit.of(EventKind.NODE_LOG) if e["event"] == "agent.step"]
    assert steps
    assert steps[0]["agent"] == "geo"
    assert outcome.input_tokens == 5 + 11
    assert len(outcome.llm_attempts) == 2


# ------------------------------------------------------------------------------------ crews


def three_task_crew() -> tuple[Crew, dict[str, Agent]]:
    agents = {
        "researcher": Agent(id="researcher", role="Researcher of {topic}", goal="Find facts on {topic}"),
        "writer": Agent(id="writer", role="Writer", goal="Write"),
    }
    crew = Crew(id="article", agents=("researcher", "writer"), tasks=(
        CrewTask("research", "Research {topic}", "facts", "researcher"),
        CrewTask("outline", "Outline it", "an outline", "writer", ("research",)),
        CrewTask("write", "Write it", "an article", None, ("research", "outline")),
    ))  # fmt: skip
    return crew, agents


async def test_a_crew_runs_its_tasks_in_order_with_context_and_inputs() -> None:
    gateway = FakeGateway(answer("Final Answer: FACTS-1"), answer("Final Answer: OUTLINE-2"),
                          answer("Final Answer: ARTICLE-3"))  # fmt: skip
    crew, agents = three_task_crew()
    emit = Recorder()

    outcome = await CrewAIRuntime(gateway).run_crew(CrewWork("t1", "e1", "crew", 1, crew, agents, {"topic": "bees"}),
                                                    emit)  # fmt: skip

    assert outcome.output == "ARTICLE-3"
    prompts = ["\n".join(m.content or "" for m in r.messages) for r, _ in gateway.calls]
    assert "Researcher of bees" in prompts[0]
    assert "Research bees" in prompts[0]
    assert "FACTS-1" in prompts[1]
    assert "FACTS-1" in prompts[2]
    assert "OUTLINE-2" in prompts[2]
    # The unassigned third task goes to agents in order: task 3 → agent 3 mod 2 = the researcher.
    assert "Researcher of bees" in prompts[2]
    assert [e["task"] for e in emit.of(EventKind.NODE_LOG) if e["event"] == "task.completed"] == [
        "research", "outline", "write",
    ]  # fmt: skip
    assert outcome.input_tokens == 33
    assert len(outcome.llm_attempts) == 3


async def test_missing_crew_inputs_fail_before_any_llm_call() -> None:
    gateway = FakeGateway()
    crew, agents = three_task_crew()

    with pytest.raises(NodeExecutionError, match="needs inputs it was not given: topic") as caught:
        await CrewAIRuntime(gateway).run_crew(CrewWork("t1", "e1", "crew", 1, crew, agents, {}), Recorder())
    assert caught.value.retryable is False
    assert gateway.calls == []


# ------------------------------------------------------------------------------------ failures


def rate_limited_everywhere() -> AllProvidersFailed:
    attempts = [AttemptRecord(p, "m", 2.0, "rate_limited", error="429 Too Many Requests: rate limit", status=429)
                for p in ("primary", "secondary")]  # fmt: skip
    return AllProvidersFailed(attempts)


async def test_all_providers_failing_fails_the_node_retryably_without_crewai_retrying_the_call() -> None:
    gateway = FakeGateway(rate_limited_everywhere(), rate_limited_everywhere(), rate_limited_everywhere())

    with pytest.raises(NodeExecutionError) as caught:
        await CrewAIRuntime(gateway).run_agent(agent_work(WRITER), Recorder())

    assert caught.value.retryable is True
    assert "all LLM providers failed" in str(caught.value)
    assert "agent 'writer'" in str(caught.value)
    assert len(gateway.calls) == 1  # neither CrewAI's rate-limit retry nor its agent retry loop called again


async def test_an_exceeded_budget_fails_the_node_for_good() -> None:
    gateway = FakeGateway(BudgetExceeded("t1", 1.0, 0.99, 0.5))

    with pytest.raises(NodeExecutionError, match="budget") as caught:
        await CrewAIRuntime(gateway).run_agent(agent_work(WRITER), Recorder())
    assert caught.value.retryable is False


async def test_cancelling_the_node_abandons_the_llm_call_in_flight() -> None:
    entered, abandoned = asyncio.Event(), asyncio.Event()

    class BlockingGateway(FakeGateway):
        async def complete(self, request: ChatRequest, scope: CallScope, **kwargs: Any) -> ChatResponse:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                abandoned.set()
                raise
            raise AssertionError("unreachable")

    task = asyncio.create_task(CrewAIRuntime(BlockingGateway()).run_agent(agent_work(WRITER), Recorder()))
    await entered.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    await abandoned.wait()
    assert abandoned.is_set()



async def test_a_hierarchical_crew_is_managed_by_a_failover_llm_that_delegates_through_tool_calls() -> None:
    def reply(request: ChatRequest) -> ChatResponse:
        system = request.messages[0].content or ""
        tools = [t["function"]["name"] for t in request.tools]
        if "delegate_work_to_coworker" in tools and not any(m.role == "tool" for m in request.messages):
            arguments = json.dumps({"task": "Find facts on bees", "context": "none", "coworker": "Researcher"})
            call = {"id": "d1", "type": "function",
                    "function": {"name": "delegate_work_to_coworker", "arguments": arguments}}  # fmt: skip
            return ChatResponse(None, "m", "p1", Usage(3, 2), tool_calls=(call,))
        if system.startswith("You are Researcher"):
            return answer("Final Answer: BEES-DANCE")
        tool_results = [m.content or "" for m in request.messages if m.role == "tool"]
        return answer(f"Manager summary: {tool_results[-1]}")

    gateway = FakeGateway(reply, reply, reply)
    crew = Crew(id="team", agents=("researcher",), tasks=(CrewTask("study", "Study bees", "facts"),),
                process=Process.HIERARCHICAL, manager_provider="boss")  # fmt: skip
    agents = {"researcher": Agent(id="researcher", role="Researcher", goal="Find facts")}
    emit = Recorder()

    outcome = await CrewAIRuntime(gateway).run_crew(CrewWork("t1", "e1", "team", 1, crew, agents, {}), emit)

    scopes = [scope.provider for _, scope in gateway.calls]
    assert scopes == ["boss", None, "boss"]  # manager, delegated researcher, manager again
    assert outcome.output == "Manager summary: BEES-DANCE"
    assert [a["agent"] for a in emit.of(EventKind.LLM_ATTEMPT)] == ["manager", "researcher", "manager"]


async def test_concurrent_nodes_keep_their_own_attempts_and_answers() -> None:
    def by_node(request: ChatRequest) -> ChatResponse:
        prompt = "\n".join(m.content or "" for m in request.messages)
        return answer(f"Final Answer: {'ONE' if 'first job' in prompt else 'TWO'}", tokens=(3, 1))

    gateway = FakeGateway(by_node, by_node)
    runtime = CrewAIRuntime(gateway)
    first, second = Recorder(), Recorder()
    work_one = agent_work(WRITER, "Do the first job")
    work_two = AgentWork(**{**{f: getattr(work_one, f) for f in work_one.__dataclass_fields__},
                            "node_id": "other", "task": "Do the second job"})  # fmt: skip

    one, two = await asyncio.gather(runtime.run_agent(work_one, first), runtime.run_agent(work_two, second))

    assert (one.output, two.output) == ("ONE", "TWO")
    assert len(one.llm_attempts) == 1
    assert len(two.llm_attempts) == 1
    assert len(first.of(EventKind.LLM_ATTEMPT)) == 1
    assert len(second.of(EventKind.LLM_ATTEMPT)) == 1
    assert sorted(scope.node_id or "" for _, scope in gateway.calls) == ["greet", "other"]


async def test_an_empty_answer_fails_the_node_retryably() -> None:
    gateway = FakeGateway(answer(""), answer(""), answer(""))

    with pytest.raises(NodeExecutionError) as caught:
        await CrewAIRuntime(gateway).run_agent(agent_work(WRITER), Recorder())
    assert caught.value.retryable is True
    assert "failed on CrewAI" in str(caught.value)
