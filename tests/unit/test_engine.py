"""The in-process engine, driven through its ports with fakes (no LLM, no network)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine, Resume
from crewflow.domain.agents import Agent, ToolRef
from crewflow.domain.codec import flow_from_dict
from crewflow.domain.errors import FlowInvalid
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.flow import Flow
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome, ToolWork

pytestmark = pytest.mark.unit

AGENT = {"role": "Analyst", "goal": "Analyse", "provider": "scripted"}


def flow(nodes: list[dict[str, Any]], edges: list[str], **extra: Any) -> Flow:
    return flow_from_dict({"id": "f", "agents": {"a": AGENT}, "nodes": nodes, "edges": edges, **extra})


def agent_node(node_id: str, task: str = "do {{ inputs.topic }}", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "agent", "agent": "a", "task": task, **extra}


def engine(runtime: Any = None, tools: Any = None) -> Engine:
    return Engine(runtime or ScriptedRuntime(), clock=SystemClock(), ids=UuidGenerator(), tools=tools)


class Tracking:
    """A runtime that records concurrency and can block nodes until released."""

    def __init__(self, delay: float = 0.0, gates: Mapping[str, asyncio.Event] | None = None) -> None:
        self.delay = delay
        self.gates = dict(gates or {})
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        self.finished: list[str] = []

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        self.started.append(work.node_id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if work.node_id in self.gates:
                await self.gates[work.node_id].wait()
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        self.finished.append(work.node_id)
        return NodeOutcome(output=f"{work.node_id}<-{sorted(work.inputs)}")

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        raise AssertionError("no crews here")


async def test_a_linear_flow_passes_outputs_down_the_chain_and_reports_per_node_results() -> None:
    f = flow(
        [{"id": "in", "kind": "input"}, agent_node("research"), agent_node("write", "use {{ nodes.research.output }}"),
         {"id": "out", "kind": "output", "value": "{{ nodes.write.output }}"}],
        ["in -> research", "research -> write", "write -> out"],
    )  # fmt: skip
    result = await engine().run(f, {"topic": "tides"})
    assert result.status == RunStatus.COMPLETED
    assert result.nodes["research"].output == "[Analyst] do tides"
    assert result.nodes["write"].output == "[Analyst] use [Analyst] do tides"
    assert result.outputs == {"out": "[Analyst] use [Analyst] do tides"}
    assert all(n.status == NodeStatus.COMPLETED and n.duration is not None for n in result.nodes.values())
    assert [e.seq for e in result.events] == list(range(1, len(result.events) + 1))
    assert result.events[0].kind == EventKind.RUN_STARTED and result.events[-1].kind == EventKind.RUN_COMPLETED


async def test_fan_out_runs_branches_concurrently_within_the_parallelism_bound() -> None:
    nodes = [agent_node("s")] + [agent_node(f"m{i}") for i in range(6)] + [agent_node("j")]
    edges = [f"s -> m{i}" for i in range(6)] + [f"m{i} -> j" for i in range(6)]
    runtime = Tracking(delay=0.02)
    result = await engine(runtime).run(flow(nodes, edges, max_parallel=3), {"topic": "t"})
    assert result.ok
    assert runtime.peak == 3
    assert runtime.started[-1] == "j" and runtime.started[0] == "s"
    assert result.nodes["j"].output == "j<-" + str([f"m{i}" for i in range(6)])


async def test_a_router_runs_one_branch_skips_the_other_and_the_join_still_runs() -> None:
    nodes = [
        {"id": "in", "kind": "input"},
        {"id": "r", "kind": "router", "routes": [{"when": "inputs.n > 10", "to": "big"}], "default": "small"},
        agent_node("big", "big"), agent_node("small", "small"),
        {"id": "out", "kind": "output"},
    ]  # fmt: skip
    edges = ["in -> r", "r -> big", "r -> small", "big -> out", "small -> out"]
    runtime = ScriptedRuntime()
    result = await engine(runtime).run(flow(nodes, edges), {"n": 3})
    assert result.ok
    assert result.nodes["big"].status == NodeStatus.SKIPPED
    assert result.nodes["r"].output == "small"
    assert result.outputs == {"out": "[Analyst] small"}
    assert [c[0] for c in runtime.calls] == ["small"]


async def test_a_failing_node_is_retried_per_its_policy_then_succeeds() -> None:
    f = flow([agent_node("x", retry={"max_attempts": 3, "initial_delay": 0.01, "jitter": 0})], [])
    runtime = ScriptedRuntime(failures={"x": 2})
    result = await engine(runtime).run(f, {"topic": "t"})
    assert result.ok
    assert result.nodes["x"].attempts == 3
    assert runtime.calls == [("x", 1), ("x", 2), ("x", 3)]
    assert [e.kind for e in result.events].count(EventKind.NODE_RETRYING) == 2


async def test_exhausted_retries_fail_the_run_and_cancel_what_never_ran() -> None:
    f = flow([agent_node("x", retry={"max_attempts": 2, "initial_delay": 0.0}), agent_node("y")], ["x -> y"])
    result = await engine(ScriptedRuntime(failures={"x": 5})).run(f, {"topic": "t"})
    assert result.status == RunStatus.FAILED
    assert result.nodes["x"].status == NodeStatus.FAILED and result.nodes["x"].attempts == 2
    assert result.nodes["y"].status == NodeStatus.CANCELLED
    assert result.error is not None and "'x'" in result.error
    assert result.outputs == {}


async def test_a_node_past_its_timeout_is_interrupted_and_fails() -> None:
    gate = asyncio.Event()  # never set: the node would hang forever
    runtime = Tracking(gates={"slow": gate})
    result = await engine(runtime).run(flow([agent_node("slow", timeout=0.05)], []), {"topic": "t"})
    assert result.status == RunStatus.FAILED
    assert "timed out" in (result.nodes["slow"].error or "")
    assert runtime.running == 0  # the hanging call was cancelled, not leaked


async def test_the_run_timeout_fails_the_whole_run() -> None:
    runtime = Tracking(gates={"slow": asyncio.Event()})
    result = await engine(runtime).run(flow([agent_node("slow")], []), {"topic": "t"}, timeout=0.05)
    assert result.status == RunStatus.FAILED
    assert "run timed out" in (result.error or "")


async def test_cancel_interrupts_running_nodes_and_starts_nothing_new() -> None:
    gate = asyncio.Event()
    runtime = Tracking(gates={"a1": gate})
    handle = engine(runtime).start(flow([agent_node("a1"), agent_node("a2")], ["a1 -> a2"]), {"topic": "t"})
    while "a1" not in runtime.started:
        await asyncio.sleep(0.001)
    handle.cancel("user asked")
    result = await handle.result()
    assert result.status == RunStatus.CANCELLED
    assert runtime.started == ["a1"] and runtime.finished == []
    assert {n.status for n in result.nodes.values()} == {NodeStatus.CANCELLED}
    assert result.events[-1].kind == EventKind.RUN_CANCELLED


async def test_a_tool_node_never_runs_without_a_sandbox() -> None:
    f = flow_from_dict({"id": "f", "tools": {"wc": {}}, "nodes": [{"id": "t", "kind": "tool", "tool": "wc"}]})
    result = await engine().run(f)
    assert result.status == RunStatus.FAILED
    assert "no tool sandbox" in (result.nodes["t"].error or "")
    assert result.nodes["t"].attempts == 1


async def test_a_tool_node_gets_its_rendered_payload_from_the_sandbox_port() -> None:
    class Sandbox:
        def __init__(self) -> None:
            self.work: list[ToolWork] = []

        async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome:
            self.work.append(work)
            return NodeOutcome(output={"words": len(str(work.payload["text"]).split())})

    f = flow_from_dict({
        "id": "f", "agents": {"a": AGENT}, "tools": {"wc": {}},
        "nodes": [agent_node("w", "three word task"), {"id": "t", "kind": "tool", "tool": "wc",
                  "inputs": {"text": "{{ nodes.w.output }}"}}],
        "edges": ["w -> t"],
    })  # fmt: skip
    sandbox = Sandbox()
    result = await engine(tools=sandbox).run(f)
    assert result.ok
    assert result.nodes["t"].output == {"words": 4}
    assert sandbox.work[0].payload == {"text": "[Analyst] three word task"}


async def test_an_invalid_flow_is_refused_before_anything_runs() -> None:
    runtime = ScriptedRuntime()
    with pytest.raises(FlowInvalid) as info:
        engine(runtime).start(flow([agent_node("a1"), agent_node("a2")], ["a1 -> a2", "a2 -> a1"]))
    assert "cycle" in str(info.value)
    assert runtime.calls == []


class RecordingSink:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.events: list[ExecutionEvent] = []

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        await asyncio.sleep(0.001)  # a real store takes time; the engine must wait for it
        self.events.extend(events)
        self.log.extend(f"stored {e.kind} {e.node_id}" for e in events if e.node_id)


async def test_events_reach_sinks_in_order_and_are_stored_before_the_next_step() -> None:
    log: list[str] = []

    class Runtime(ScriptedRuntime):
        async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
            log.append(f"work {work.node_id}")
            return await super().run_agent(work, emit)

    sink = RecordingSink(log)
    result = await engine(Runtime()).run(
        flow([agent_node("a1"), agent_node("a2")], ["a1 -> a2"]), {"topic": "t"}, sinks=[sink]
    )
    assert result.ok
    assert [e.seq for e in sink.events] == [e.seq for e in result.events]
    assert log.index("stored node.started a1") < log.index("work a1")
    assert log.index("stored node.completed a1") < log.index("work a2")


async def test_resume_skips_checkpointed_nodes_and_continues_the_sequence() -> None:
    f = flow([agent_node("a1"), agent_node("a2"), agent_node("a3")], ["a1 -> a2", "a2 -> a3"])
    runtime = ScriptedRuntime()
    result = await engine(runtime).run(
        f, {"topic": "t"}, execution_id="e1", resume=Resume(completed={"a1": "one", "a2": "two"}, last_seq=7)
    )
    assert result.ok
    assert [c[0] for c in runtime.calls] == ["a3"]
    assert result.nodes["a2"].output == "two"
    assert result.events[0].seq == 8


async def test_runtime_events_emitted_from_another_thread_arrive_in_sequence() -> None:
    class Threaded(ScriptedRuntime):
        async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
            def in_thread() -> None:
                for i in range(5):
                    emit(EventKind.NODE_TOKEN, {"text": str(i)})

            thread = threading.Thread(target=in_thread)
            thread.start()
            await asyncio.to_thread(thread.join)
            await asyncio.sleep(0.01)  # let the loop deliver the hopped calls
            return NodeOutcome(output="done")

    result = await engine(Threaded()).run(flow([agent_node("a1")], []), {"topic": "t"})
    tokens = [e.data["text"] for e in result.events if e.kind == EventKind.NODE_TOKEN]
    assert tokens == ["0", "1", "2", "3", "4"]
    assert [e.seq for e in result.events] == list(range(1, len(result.events) + 1))


async def test_events_iterator_streams_every_event_live_until_the_end() -> None:
    handle = engine(ScriptedRuntime(latency=0.005)).start(
        flow([agent_node("a1"), agent_node("a2")], ["a1 -> a2"]), {"topic": "t"}
    )
    seen = [e async for e in handle.events()]
    result = await handle.result()
    assert [e.seq for e in seen] == [e.seq for e in result.events]


async def test_a_crew_node_gets_rendered_inputs_and_parent_outputs() -> None:
    f = flow_from_dict({
        "id": "f", "agents": {"a": AGENT, "b": {**AGENT, "role": "Writer"}},
        "crews": {"c": {"agents": ["a", "b"], "tasks": [
            {"name": "t1", "description": "research {topic}", "agent": "a"},
            {"name": "t2", "description": "write about {topic} using {first}", "agent": "b", "context": ["t1"]},
        ]}},
        "nodes": [agent_node("first", "start"),
                  {"id": "crew", "kind": "crew", "crew": "c", "inputs": {"topic": "{{ inputs.topic }}"}}],
        "edges": ["first -> crew"],
    })  # fmt: skip
    result = await engine().run(f, {"topic": "tides"})
    assert result.ok
    assert result.nodes["crew"].output == "[Writer] write about tides using [Analyst] start"
    logs = [e.data["task"] for e in result.events if e.kind == EventKind.NODE_LOG]
    assert logs == ["t1", "t2"]


def test_agent_records_are_validated() -> None:
    with pytest.raises(ValueError, match="role"):
        Agent(id="x", role=" ", goal="g")
    assert ToolRef(id="t").input_schema == {}


async def test_resuming_a_run_whose_every_node_was_checkpointed_ends_with_a_completed_event() -> None:
    f = flow([agent_node("a1"), agent_node("a2")], ["a1 -> a2"])
    runtime = ScriptedRuntime()
    result = await engine(runtime).run(f, {"topic": "t"}, resume=Resume(completed={"a1": "x", "a2": "y"}, last_seq=9))
    assert result.status == RunStatus.COMPLETED
    assert runtime.calls == []
    assert [e.kind for e in result.events] == [EventKind.RUN_STARTED, EventKind.RUN_COMPLETED]
    assert result.events[-1].data["outputs"] == {"a2": "y"}


async def test_a_late_answer_from_a_timed_out_attempt_is_not_taken_for_the_retry() -> None:
    """The first attempt ignores cancellation (like a worker thread) and answers after its retry began."""
    release_first = asyncio.Event()

    class Stubborn(ScriptedRuntime):
        async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
            if work.attempt == 1:
                while not release_first.is_set():
                    try:
                        await release_first.wait()
                    except asyncio.CancelledError:
                        continue  # refuses to stop, as a thread blocked in a library call would
                return NodeOutcome(output="stale answer of attempt 1")
            release_first.set()  # the first attempt answers now, while this one is still working
            await asyncio.sleep(0.01)
            return NodeOutcome(output="answer of attempt 2")

    f = flow([agent_node("x", timeout=0.2, retry={"max_attempts": 2, "initial_delay": 0.0, "jitter": 0})], [])
    result = await engine(Stubborn()).run(f, {"topic": "t"})
    assert result.ok
    assert result.nodes["x"].attempts == 2
    assert result.nodes["x"].output == "answer of attempt 2"


async def test_tokens_reach_the_sinks_while_the_node_is_still_working() -> None:
    gate = asyncio.Event()
    log: list[str] = []

    class Streaming(ScriptedRuntime):
        async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
            emit(EventKind.NODE_TOKEN, {"text": "Hel"})
            emit(EventKind.NODE_TOKEN, {"text": "lo"})
            await gate.wait()
            return NodeOutcome(output="Hello")

    sink = RecordingSink(log)
    handle = engine(Streaming()).start(flow([agent_node("a1")], []), {"topic": "t"}, sinks=[sink])
    for _ in range(200):
        if sum(e.kind == EventKind.NODE_TOKEN for e in sink.events) == 2:
            break
        await asyncio.sleep(0.005)
    stored_before_the_answer = [e.data["text"] for e in sink.events if e.kind == EventKind.NODE_TOKEN]
    gate.set()
    result = await handle.result()
    assert stored_before_the_answer == ["Hel", "lo"]
    assert result.ok
    assert [e.seq for e in sink.events] == [e.seq for e in result.events]
