"""Property tests of the scheduler over random DAGs, driven like the engine drives it.

A simulated driver starts every ready node, then either finishes one running node (chosen by hypothesis:
random completion order, random failures, random router branches) or advances a simulated clock to
``next_wakeup()`` and checks timeouts. Invariants are asserted at every step and at the end."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crewflow.domain.events import EventKind, ExecutionEvent, Sequencer
from crewflow.domain.flow import Edge, Flow, Node, NodeKind, RetryPolicy, Route
from crewflow.domain.graph import Graph
from crewflow.domain.scheduler import NodeStatus, RunStatus, Scheduler

pytestmark = pytest.mark.unit

MAX_NODES = 20

# Strategies built once: hypothesis validates each new strategy object, which costs more than drawing.
_PARENT_SETS = [st.just(frozenset())] + [st.frozensets(st.integers(0, j - 1), max_size=3) for j in range(1, MAX_NODES)]
_POLICIES = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 3),
    initial_delay=st.sampled_from([0.0, 0.5, 2.0]),
    multiplier=st.just(2.0),
    max_delay=st.just(5.0),
    jitter=st.sampled_from([0.0, 0.3]),
)
_ONE_IN_FOUR = st.integers(0, 3)
_NODE_TIMEOUTS = st.sampled_from([None, None, 0.5, 3.0])
_RUN_TIMEOUTS = st.sampled_from([None, None, 2.0, 6.0])
_DURATIONS = st.sampled_from([0.0, 0.1, 0.7])
_ONE_IN_THREE = st.integers(0, 2)
_BOOLS = st.booleans()


@dataclass(frozen=True)
class Spec:
    parents: tuple[tuple[int, ...], ...]
    routers: frozenset[int]
    retries: tuple[RetryPolicy, ...]
    timeouts: tuple[float | None, ...]
    max_parallel: int
    run_timeout: float | None
    failures: bool
    cancel_at: int | None
    seed: int

    @property
    def size(self) -> int:
        return len(self.parents)

    def children(self, i: int) -> list[int]:
        return [j for j in range(self.size) if i in self.parents[j]]


@st.composite
def specs(draw: st.DrawFn, failures: bool) -> Spec:
    n = draw(st.integers(1, MAX_NODES))
    # edges only from a lower to a higher index: acyclic by construction
    parents = tuple(tuple(sorted(draw(_PARENT_SETS[j]))) for j in range(n))
    has_children = {p for ps in parents for p in ps}
    routers = frozenset(i for i in sorted(has_children) if draw(_ONE_IN_FOUR) == 0)
    retries = tuple(draw(_POLICIES) for _ in range(n))
    timeouts = tuple(draw(_NODE_TIMEOUTS) if failures else None for _ in range(n))
    return Spec(
        parents=parents,
        routers=routers,
        retries=retries,
        timeouts=timeouts,
        max_parallel=draw(st.integers(1, 4)),
        run_timeout=draw(_RUN_TIMEOUTS) if failures else None,
        failures=failures,
        cancel_at=draw(st.none() | st.integers(0, 3 * n)) if failures else None,
        seed=draw(st.integers(0, 2**16)),
    )


def name(i: int) -> str:
    return f"n{i}"


def build(spec: Spec) -> tuple[Flow, Graph]:
    nodes = []
    for i in range(spec.size):
        kids = [name(c) for c in spec.children(i)]
        if i in spec.routers:
            node = Node(
                id=name(i),
                kind=NodeKind.ROUTER,
                routes=tuple(Route("true", k) for k in kids[:-1]),
                default=kids[-1],
                retry=spec.retries[i],
                timeout=spec.timeouts[i],
            )
        else:
            node = Node(
                id=name(i), kind=NodeKind.AGENT, agent="w", task="t", retry=spec.retries[i], timeout=spec.timeouts[i]
            )
        nodes.append(node)
    edges = tuple(Edge(name(p), name(j)) for j in range(spec.size) for p in spec.parents[j])
    flow = Flow(id="f", nodes=tuple(nodes), edges=edges)
    return flow, Graph.build([n.id for n in nodes], [(e.source, e.target) for e in edges])


class Driver:
    def __init__(self, spec: Spec, data: st.DataObject, chosen: dict[str, list[str]] | None = None) -> None:
        self.spec = spec
        self.data = data
        self.flow, self.graph = build(spec)
        self.s = Scheduler(
            self.flow,
            self.graph,
            sequencer=Sequencer("run"),
            rng=random.Random(spec.seed),
            max_parallel=spec.max_parallel,
            run_timeout=spec.run_timeout,
        )
        self.events: list[ExecutionEvent] = []
        self.starts: Counter[str] = Counter()
        self.preset = chosen or {}
        self.chosen: dict[str, list[str]] = {}
        self.now = 0.0
        self.routers = {name(i) for i in spec.routers}

    def record(self, events: list[ExecutionEvent]) -> None:
        self.events.extend(events)
        assert len(self.s.running) <= self.s.max_parallel

    def start_ready(self) -> None:
        ready = self.s.ready(self.now)
        assert len(ready) <= self.s.max_parallel - len(self.s.running)
        for node_id in ready:
            state = self.s.nodes[node_id]
            assert state.status in (NodeStatus.PENDING, NodeStatus.RETRYING)
            for parent in self.graph.parents[node_id]:
                # never before every parent is done, and every non-skipped parent completed
                assert self.s.nodes[parent].status in (NodeStatus.COMPLETED, NodeStatus.SKIPPED), (node_id, parent)
            self.record(self.s.start(node_id, self.now))
            self.starts[node_id] += 1
            assert self.starts[node_id] <= self.flow.node(node_id).retry.max_attempts

    def finish_one(self, running: list[str], wakeup: float | None) -> None:
        node_id = self.data.draw(st.sampled_from(running), label="finishes")
        self.now += self.data.draw(_DURATIONS, label="takes")
        if wakeup is not None and self.now >= wakeup:
            self.record(self.s.check_timeouts(self.now))
        was_running = self.s.nodes[node_id].status == NodeStatus.RUNNING
        if self.spec.failures and self.data.draw(_ONE_IN_THREE, label="fails") == 0:
            events = self.s.fail(node_id, "boom", self.now, retryable=self.data.draw(_BOOLS, label="retryable"))
        else:
            branches = None
            if self.flow.node(node_id).kind == NodeKind.ROUTER:
                kids = list(self.graph.children[node_id])
                branches = self.preset.get(node_id)
                if branches is None:
                    branches = self.data.draw(st.lists(st.sampled_from(kids), unique=True), label="branches")
                if was_running:
                    self.chosen[node_id] = sorted(branches)
            output = f"{node_id}#{self.s.nodes[node_id].attempts}"
            events = self.s.complete(node_id, output, self.now, branches)
        if not was_running:
            assert events == []  # a late answer after a timeout or the end of the run is ignored
        self.record(events)

    def drive(self) -> None:
        limit = 3 * sum(r.max_attempts for r in self.spec.retries) + 10
        for step in range(limit):
            if self.s.finished:
                return
            if step == self.spec.cancel_at:
                self.record(self.s.cancel(self.now, "stop"))
                continue
            self.start_ready()
            running = sorted(self.s.running, key=self.graph.index.__getitem__)
            wakeup = self.s.next_wakeup()
            if wakeup is not None:
                assert wakeup >= self.now - 1.0  # deadlines may be overdue by at most one step's duration
            if running and (wakeup is None or self.data.draw(_BOOLS, label="finish rather than wait")):
                self.finish_one(running, wakeup)
            elif wakeup is not None:
                self.now = max(self.now, wakeup)
                self.record(self.s.check_timeouts(self.now))
            else:
                raise AssertionError(f"stuck: nothing running, ready or scheduled; statuses {self.statuses()}")
        assert self.s.finished, f"did not terminate in {limit} steps"

    def statuses(self) -> dict[str, NodeStatus]:
        return {k: v.status for k, v in self.s.nodes.items()}


def check_finished_run(d: Driver) -> None:
    s, events = d.s, d.events
    assert s.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    assert all(state.status.is_terminal for state in s.nodes.values()), d.statuses()
    # sequence numbers strictly increase by one
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].kind == EventKind.RUN_STARTED
    assert [e.kind.is_terminal_run for e in events].count(True) == 1
    assert events[-1].kind.is_terminal_run
    assert (
        events[-1].kind
        == {
            RunStatus.COMPLETED: EventKind.RUN_COMPLETED,
            RunStatus.FAILED: EventKind.RUN_FAILED,
            RunStatus.CANCELLED: EventKind.RUN_CANCELLED,
        }[s.status]
    )
    started = Counter(e.node_id for e in events if e.kind == EventKind.NODE_STARTED)
    assert started == d.starts
    skipped = {e.node_id for e in events if e.kind == EventKind.NODE_SKIPPED}
    assert skipped == {n for n, state in s.nodes.items() if state.status == NodeStatus.SKIPPED}
    assert not skipped & set(started), "a skipped node started"
    for node_id, state in s.nodes.items():
        assert state.attempts == started[node_id] <= d.flow.node(node_id).retry.max_attempts
    # once a node has failed for good, nothing new starts
    kinds = [e.kind for e in events]
    if EventKind.NODE_FAILED in kinds:
        assert EventKind.NODE_STARTED not in kinds[kinds.index(EventKind.NODE_FAILED) :]
        assert s.status != RunStatus.COMPLETED
    if s.status == RunStatus.COMPLETED:
        assert {st_.status for st_ in s.nodes.values()} <= {NodeStatus.COMPLETED, NodeStatus.SKIPPED}
    else:
        assert s.error
    # router choices recorded in node.completed events agree with what happened to the children
    for event in events:
        if event.kind == EventKind.NODE_COMPLETED and event.node_id in d.routers:
            assert event.data["branches"] == d.chosen[event.node_id]
            for child in d.graph.children[event.node_id]:
                if child in event.data["branches"]:
                    assert s.nodes[child].status != NodeStatus.SKIPPED
                elif d.graph.parents[child] == (event.node_id,):
                    assert s.nodes[child].status == NodeStatus.SKIPPED
    # a finished run stays finished
    assert s.ready(d.now + 1e6) == []
    assert s.next_wakeup() is None
    assert all(s.complete(n, "late", d.now) == [] for n in s.nodes)
    assert s.cancel(d.now) == []


def expected_completed(d: Driver) -> set[str]:
    """Nodes reachable from the roots through edges that are live: any edge out of a completed non-router,
    and a router's edges to the children it chose."""
    live: set[str] = set()
    for node_id in d.graph.order:
        parents = d.graph.parents[node_id]
        if not parents or any(p in live and (p not in d.chosen or node_id in d.chosen[p]) for p in parents):
            live.add(node_id)
    return live


@given(specs(failures=True), st.data())
def test_random_runs_with_failures_timeouts_and_cancellation_keep_every_invariant(
    spec: Spec, data: st.DataObject
) -> None:
    d = Driver(spec, data)
    d.record(d.s.begin(0.0, {"topic": "t"}))
    d.drive()
    check_finished_run(d)
    if spec.cancel_at is not None and d.s.status == RunStatus.CANCELLED:
        assert d.events[-1].data == {"reason": "stop"}


@given(specs(failures=False), st.data())
def test_without_failures_every_node_reachable_through_chosen_branches_completes(
    spec: Spec, data: st.DataObject
) -> None:
    d = Driver(spec, data)
    d.record(d.s.begin(0.0))
    d.drive()
    check_finished_run(d)
    assert d.s.status == RunStatus.COMPLETED
    live = expected_completed(d)
    assert {n for n, st_ in d.statuses().items() if st_ == NodeStatus.COMPLETED} == live
    assert {n for n, st_ in d.statuses().items() if st_ == NodeStatus.SKIPPED} == set(d.s.nodes) - live
    assert all(count == 1 for count in d.starts.values())


@given(specs(failures=False), st.data())
def test_replaying_a_prefix_of_checkpoints_never_reruns_a_completed_node(spec: Spec, data: st.DataObject) -> None:
    first = Driver(spec, data)
    first.record(first.s.begin(0.0))
    first.drive()
    completions = [e for e in first.events if e.kind == EventKind.NODE_COMPLETED]
    cut = data.draw(st.integers(0, len(completions)), label="crash after")
    done = {e.node_id: e.data["output"] for e in completions[:cut] if e.node_id is not None}
    branches = {n: first.chosen[n] for n in done if n in first.chosen}

    # the resumed run may have another parallelism bound (settings changed, another worker)
    resumed = replace(spec, max_parallel=data.draw(st.integers(1, 4), label="resumed max_parallel"))
    second = Driver(resumed, data, chosen=first.chosen)
    second.record(second.s.begin(0.0))
    replayed = second.s.replay(done, 0.0, branches)
    # replay emits nothing of the checkpointed nodes; only the run's end when the checkpoints complete it
    assert [e.kind for e in replayed] == ([EventKind.RUN_COMPLETED] if second.s.finished else [])
    assert second.s.sequencer.last_seq == 1 + len(replayed)
    second.record(replayed)
    second.drive()
    assert second.s.finished
    assert not set(second.starts) & set(done)
    assert second.statuses() == first.statuses()
    assert second.s.outputs == first.s.outputs
