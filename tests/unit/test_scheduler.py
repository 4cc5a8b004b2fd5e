from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

from crewflow.domain.events import EventKind, ExecutionEvent, Sequencer
from crewflow.domain.flow import Edge, Flow, Node, NodeKind, RetryPolicy, Route
from crewflow.domain.graph import Graph
from crewflow.domain.scheduler import NodeStatus, RunStatus, Scheduler, SchedulerError

pytestmark = pytest.mark.unit


def task(node_id: str, **kw: Any) -> Node:
    return Node(id=node_id, kind=NodeKind.AGENT, agent="w", task="t", **kw)


def router(node_id: str, *children: str) -> Node:
    return Node(id=node_id, kind=NodeKind.ROUTER, routes=(Route("true", children[0]),), default=children[-1])


def make(nodes: Iterable[Node], pairs: str, *, seed: int = 0, **kw: Any) -> Scheduler:
    """``pairs`` like "a>b b>c"."""
    node_list = tuple(nodes)
    edge_list = tuple(Edge(*p.split(">")) for p in pairs.split())
    flow = Flow(id="f", nodes=node_list, edges=edge_list, **{k: v for k, v in kw.items() if k in {"timeout"}})
    graph = Graph.build([n.id for n in node_list], [(e.source, e.target) for e in edge_list])
    extra = {k: v for k, v in kw.items() if k in {"max_parallel", "run_timeout"}}
    return Scheduler(flow, graph, sequencer=Sequencer("x"), rng=random.Random(seed), **extra)


def kinds(events: Iterable[ExecutionEvent]) -> list[tuple[str, str | None]]:
    return [(str(e.kind), e.node_id) for e in events]


def run_in_order(s: Scheduler, now: float = 0.0) -> list[ExecutionEvent]:
    """Start every ready node and complete it with its id as output, until nothing is ready."""
    events: list[ExecutionEvent] = []
    while ready := s.ready(now):
        node_id = ready[0]
        events += s.start(node_id, now)
        events += s.complete(node_id, f"out:{node_id}", now)
    return events


def step(s: Scheduler, node_id: str, output: Any = None, now: float = 0.0) -> list[ExecutionEvent]:
    return s.start(node_id, now) + s.complete(node_id, output, now)


def test_a_linear_chain_runs_one_node_after_the_other() -> None:
    s = make([task("a"), task("b"), task("c")], "a>b b>c")
    events = s.begin(0.0, {"topic": "bees"})
    assert s.ready(0.0) == ["a"]
    events += s.start("a", 0.0)
    assert s.ready(0.0) == []
    events += s.complete("a", "A", 1.0)
    assert s.ready(1.0) == ["b"]
    events += run_in_order(s, 2.0)
    assert s.status == RunStatus.COMPLETED
    assert kinds(events) == [
        ("run.started", None),
        ("node.started", "a"),
        ("node.completed", "a"),
        ("node.started", "b"),
        ("node.completed", "b"),
        ("node.started", "c"),
        ("node.completed", "c"),
        ("run.completed", None),
    ]
    assert [e.seq for e in events] == list(range(1, 9))
    assert events[-1].data == {"outputs": {"c": "out:c"}}
    assert s.next_wakeup() is None


def test_fan_out_runs_in_parallel_and_the_join_waits_for_every_parent() -> None:
    s = make([task("s"), task("x"), task("y"), task("z"), task("j")], "s>x s>y s>z x>j y>j z>j")
    s.begin(0.0)
    s.start("s", 0.0)
    s.complete("s", "S", 0.0)
    assert s.ready(0.0) == ["x", "y", "z"]
    for node_id in ("x", "y", "z"):
        s.start(node_id, 0.0)
    assert s.running == {"x", "y", "z"}
    s.complete("z", "Z", 1.0)
    s.complete("x", "X", 2.0)
    assert s.ready(2.0) == []
    s.complete("y", "Y", 3.0)
    assert s.ready(3.0) == ["j"]
    assert s.parent_outputs("j") == {"x": "X", "y": "Y", "z": "Z"}
    run_in_order(s, 4.0)
    assert s.status == RunStatus.COMPLETED


def test_router_runs_the_chosen_branch_skips_the_other_and_the_join_still_runs() -> None:
    s = make(
        [task("in"), router("r", "a", "b"), task("a"), task("b"), task("after_b"), task("j")],
        "in>r r>a r>b b>after_b a>j after_b>j",
    )
    s.begin(0.0)
    step(s, "in")
    s.start("r", 0.0)
    events = s.complete("r", "route", 1.0, branches=["a"])
    assert kinds(events) == [("node.completed", "r"), ("node.skipped", "b"), ("node.skipped", "after_b")]
    assert events[0].data["branches"] == ["a"]
    assert s.ready(1.0) == ["a"]
    s.start("a", 1.0)
    s.complete("a", "A", 2.0)
    assert s.ready(2.0) == ["j"]
    # a join receives its completed parents only: the skipped branch adds no None input
    assert s.parent_outputs("j") == {"a": "A"}
    run_in_order(s, 3.0)
    assert s.status == RunStatus.COMPLETED
    assert s.nodes["b"].status == s.nodes["after_b"].status == NodeStatus.SKIPPED
    assert s.nodes["b"].attempts == 0
    assert s.context()["nodes"]["b"] == {"output": None}


def test_a_router_that_chooses_nothing_skips_everything_below_it() -> None:
    s = make([router("r", "a", "b"), task("a"), task("b"), task("j")], "r>a r>b a>j b>j")
    s.begin(0.0)
    s.start("r", 0.0)
    events = s.complete("r", None, 0.0, branches=[])
    assert [e.node_id for e in events if e.kind == EventKind.NODE_SKIPPED] == ["a", "b", "j"]
    assert s.status == RunStatus.COMPLETED


def test_a_router_cannot_choose_a_node_that_is_not_its_child() -> None:
    s = make([router("r", "a"), task("a"), task("z")], "r>a")
    s.begin(0.0)
    s.start("r", 0.0)
    with pytest.raises(SchedulerError, match="non-children"):
        s.complete("r", None, 0.0, branches=["z"])


def test_a_failed_attempt_is_retried_after_an_exponential_backoff_on_the_injected_clock() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=0.0)
    s = make([task("a", retry=policy), task("b")], "a>b")
    s.begin(0.0)
    s.start("a", 10.0)
    events = s.fail("a", "boom", 10.0)
    assert kinds(events) == [("node.retrying", "a")]
    assert events[0].data == {"attempt": 1, "error": "boom", "delay": 1.0}
    assert s.nodes["a"].status == NodeStatus.RETRYING
    assert s.next_wakeup() == 11.0
    assert s.ready(10.999) == []
    assert s.ready(11.0) == ["a"]
    assert s.start("a", 11.0)[0].data == {"attempt": 2}
    assert s.fail("a", "boom", 20.0)[0].data["delay"] == 2.0
    assert s.next_wakeup() == 22.0
    assert s.ready(21.0) == []
    s.ready(22.0)
    s.start("a", 22.0)
    s.complete("a", "A", 23.0)
    assert s.nodes["a"].attempts == 3
    assert s.ready(23.0) == ["b"]


def test_backoff_jitter_stays_within_its_bound_and_varies() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay=2.0, multiplier=3.0, max_delay=100.0, jitter=0.25)
    rng = random.Random(7)
    for attempt, base in ((1, 2.0), (2, 6.0), (3, 18.0), (4, 54.0), (5, 100.0)):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
        assert len(set(delays)) > 100


def test_backoff_is_capped_even_when_the_exponential_overflows() -> None:
    # regression: 1e6 ** 99 raised OverflowError out of fail()
    policy = RetryPolicy(max_attempts=100, initial_delay=1.0, multiplier=1e6, max_delay=30.0, jitter=0.0)
    assert policy.delay(99, random.Random(0)) == 30.0
    assert RetryPolicy(initial_delay=0.0, multiplier=1e6, jitter=0.0).delay(99, random.Random(0)) == 0.0


def test_exhausted_retries_fail_the_run_and_cancel_pending_nodes() -> None:
    s = make([task("a", retry=RetryPolicy(max_attempts=2, initial_delay=0.0)), task("b"), task("c")], "a>b")
    s.begin(0.0)
    s.start("a", 0.0)
    s.start("c", 0.0)
    s.fail("a", "first", 1.0)
    s.ready(1.0)
    s.start("a", 1.0)
    events = s.fail("a", "second", 2.0)
    assert kinds(events) == [("node.failed", "a")]
    # c is still running: no new node starts, the run waits for it
    assert s.status == RunStatus.RUNNING
    assert s.ready(2.0) == []
    with pytest.raises(SchedulerError):
        s.start("b", 2.0)
    events = s.complete("c", "C", 3.0)
    assert kinds(events) == [("node.completed", "c"), ("node.cancelled", "b"), ("run.failed", None)]
    assert s.status == RunStatus.FAILED
    assert s.error == "node 'a' failed: second"
    assert events[-1].data == {"error": "node 'a' failed: second"}
    assert s.nodes["b"].attempts == 0


def test_a_non_retryable_failure_fails_at_once_despite_attempts_left() -> None:
    s = make([task("a", retry=RetryPolicy(max_attempts=5)), task("b")], "a>b")
    s.begin(0.0)
    s.start("a", 0.0)
    events = s.fail("a", "bad input", 0.0, retryable=False)
    assert kinds(events) == [("node.failed", "a"), ("node.cancelled", "b"), ("run.failed", None)]


def test_a_node_past_its_timeout_fails_via_check_timeouts_and_its_late_answer_is_ignored() -> None:
    s = make([task("a", timeout=5.0), task("b")], "a>b")
    s.begin(0.0)
    s.start("a", 1.0)
    assert s.next_wakeup() == 6.0
    assert s.check_timeouts(5.999) == []
    events = s.check_timeouts(6.0)
    assert kinds(events) == [("node.failed", "a"), ("node.cancelled", "b"), ("run.failed", None)]
    assert events[0].data["error"] == "timed out after 5.0s"
    assert s.complete("a", "too late", 7.0) == []
    assert "a" not in s.outputs


def test_a_timed_out_node_with_retries_left_is_retried() -> None:
    s = make([task("a", timeout=5.0, retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))], "")
    s.begin(0.0)
    s.start("a", 0.0)
    assert kinds(s.check_timeouts(5.0)) == [("node.retrying", "a")]
    assert s.complete("a", "late answer of attempt 1", 5.5) == []
    assert s.next_wakeup() == 6.0
    s.ready(6.0)
    s.start("a", 6.0)
    assert s.next_wakeup() == 11.0
    s.complete("a", "A", 7.0)
    assert s.status == RunStatus.COMPLETED


def test_the_run_timeout_fails_running_nodes_and_cancels_the_rest() -> None:
    s = make([task("a"), task("b"), task("c")], "a>c", run_timeout=10.0)
    s.begin(100.0)
    s.start("a", 100.0)
    s.start("b", 100.0)
    s.complete("b", "B", 101.0)
    assert s.next_wakeup() == 110.0
    assert s.check_timeouts(109.0) == []
    events = s.check_timeouts(110.0)
    assert kinds(events) == [("node.failed", "a"), ("node.cancelled", "c"), ("run.failed", None)]
    assert s.status == RunStatus.FAILED
    assert s.error == "run timed out after 10.0s"
    assert s.complete("a", "late", 111.0) == []


def test_the_flow_timeout_is_the_default_run_timeout() -> None:
    s = make([task("a")], "", timeout=3.0)
    s.begin(0.0)
    assert s.next_wakeup() == 3.0


def test_cancel_mid_run_cancels_running_and_pending_nodes_and_ignores_late_results() -> None:
    s = make([task("a"), task("b"), task("c")], "a>c b>c")
    s.begin(0.0)
    s.start("a", 0.0)
    s.start("b", 0.0)
    s.complete("b", "B", 1.0)
    events = s.cancel(2.0, "user asked")
    assert kinds(events) == [("node.cancelled", "a"), ("node.cancelled", "c"), ("run.cancelled", None)]
    assert events[-1].data == {"reason": "user asked"}
    assert s.status == RunStatus.CANCELLED
    assert s.nodes["b"].status == NodeStatus.COMPLETED
    assert s.ready(3.0) == []
    assert s.complete("a", "late", 3.0) == []
    assert s.fail("a", "late", 3.0) == []
    assert "a" not in s.outputs
    assert s.cancel(4.0) == []
    assert s.check_timeouts(5.0) == []
    with pytest.raises(SchedulerError):
        s.start("c", 5.0)


def test_cancel_before_the_run_begins() -> None:
    s = make([task("a")], "")
    assert kinds(s.cancel(0.0)) == [("node.cancelled", "a"), ("run.cancelled", None)]
    with pytest.raises(SchedulerError, match="already started"):
        s.begin(1.0)


def test_replay_restores_completed_nodes_without_events_or_reruns() -> None:
    s = make([task("a"), router("r", "b", "x"), task("b"), task("x"), task("c")], "a>r r>b r>x b>c x>c")
    s.begin(0.0, {"topic": "t"})
    seq = s.sequencer.last_seq
    s.replay({"a": "A", "r": "R", "b": "B"}, 5.0, branches={"r": ["b"]})
    assert s.sequencer.last_seq == seq
    assert s.ready(5.0) == ["c"]
    assert s.nodes["x"].status == NodeStatus.SKIPPED
    assert s.outputs["b"] == "B"
    assert s.context()["nodes"]["a"] == {"output": "A"}
    events = run_in_order(s, 6.0)
    assert kinds(events) == [("node.started", "c"), ("node.completed", "c"), ("run.completed", None)]
    assert events[0].seq == seq + 1


def test_replay_finds_completed_nodes_queued_behind_ones_still_to_run() -> None:
    # regression: with max_parallel=1 replay only looked at ready()'s first slot, so y ran a second time
    s = make([task("s"), task("x"), task("y"), task("j")], "s>x s>y x>j y>j", max_parallel=1)
    s.begin(0.0)
    s.replay({"s": "S", "y": "Y"}, 1.0)
    assert s.nodes["y"].status == NodeStatus.COMPLETED
    started = [e.node_id for e in run_in_order(s, 2.0) if e.kind == EventKind.NODE_STARTED]
    assert started == ["x", "j"]


def test_the_parallelism_bound_holds_and_starting_beyond_it_raises() -> None:
    s = make([task("s"), *(task(f"w{i}") for i in range(5))], " ".join(f"s>w{i}" for i in range(5)), max_parallel=2)
    s.begin(0.0)
    step(s, "s")
    assert s.ready(0.0) == ["w0", "w1"]
    s.start("w0", 0.0)
    s.start("w1", 0.0)
    assert s.ready(0.0) == []
    with pytest.raises(SchedulerError, match="2 nodes already running"):
        s.start("w2", 0.0)
    s.complete("w1", None, 1.0)
    assert s.ready(1.0) == ["w2"]


def test_the_flow_max_parallel_is_the_default_and_zero_is_refused() -> None:
    flow = Flow(id="f", nodes=(task("a"),), edges=(), max_parallel=3)
    graph = Graph.build(["a"], [])
    assert Scheduler(flow, graph, sequencer=Sequencer("x"), rng=random.Random()).max_parallel == 3
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(flow, graph, sequencer=Sequencer("x"), rng=random.Random(), max_parallel=0)


def test_protocol_errors_raise_scheduler_error() -> None:
    s = make([task("a"), task("b")], "a>b")
    with pytest.raises(SchedulerError):
        s.start("a", 0.0)  # before begin
    s.begin(0.0)
    with pytest.raises(SchedulerError, match="not ready"):
        s.start("b", 0.0)
    s.start("a", 0.0)
    with pytest.raises(SchedulerError, match="not ready"):
        s.start("a", 0.0)
    assert s.complete("b", "never started", 0.0) == []


def test_context_and_parent_outputs() -> None:
    s = make([task("a"), task("b"), task("c")], "a>c b>c")
    s.begin(0.0, {"topic": "bees"})
    assert s.context() == {"nodes": {}, "inputs": {"topic": "bees"}}
    s.start("a", 0.0)
    s.complete("a", {"k": 1}, 0.0)
    assert s.parent_outputs("c") == {"a": {"k": 1}}
    s.start("b", 0.0)
    s.complete("b", None, 0.0)
    assert s.parent_outputs("c") == {"a": {"k": 1}, "b": None}
    assert s.context() == {"nodes": {"a": {"output": {"k": 1}}, "b": {"output": None}}, "inputs": {"topic": "bees"}}


def test_a_flow_without_nodes_completes_as_soon_as_it_begins() -> None:
    # regression: the run stayed 'running' forever with nothing ever ready
    s = make([], "")
    assert kinds(s.begin(0.0)) == [("run.started", None), ("run.completed", None)]
    assert s.finished


def test_same_inputs_and_seed_give_the_same_events() -> None:
    def trace(seed: int) -> list[dict[str, Any]]:
        policy = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.5)
        s = make([task("a", retry=policy), task("b")], "a>b", seed=seed)
        events = s.begin(0.0)
        events += s.start("a", 0.0)
        events += s.fail("a", "x", 0.0)
        return [e.to_dict() for e in events]

    assert trace(1) == trace(1)
    assert trace(1) != trace(2)


def test_a_run_timeout_after_a_node_failure_keeps_the_failure_as_the_cause() -> None:
    s = make([task("a"), task("b")], "", run_timeout=10.0)
    s.begin(0.0)
    s.start("a", 0.0)
    s.start("b", 0.0)
    s.fail("a", "bad", 1.0, retryable=False)
    events = s.check_timeouts(10.0)
    assert kinds(events) == [("node.failed", "b"), ("run.failed", None)]
    assert events[-1].data == {"error": "node 'a' failed: bad"}
