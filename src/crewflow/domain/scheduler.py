"""The DAG scheduler: a pure state machine (no asyncio, no clock, no randomness of its own).

The caller asks ``ready(now)`` for runnable nodes, calls ``start`` when it launches one and ``complete`` /
``fail`` when it ends, ``check_timeouts(now)`` at ``next_wakeup()``, and ``cancel`` to stop. Every state
change returns the ``ExecutionEvent``s it produced, numbered by one ``Sequencer``.

Semantics:
- A node becomes ready when all its parents are terminal and at least one incoming edge is *live*. An edge
  is dead when its source was skipped, or when its source is a router that did not choose its target.
  A node whose incoming edges are all dead is skipped (and its own edges die): dead-path elimination.
- A failure is retried per the node's ``RetryPolicy``; when attempts are exhausted the run is *failing*: no
  new node starts, running nodes may finish, then pending nodes are cancelled and the run fails.
- Per-node timeouts and a run timeout are checked against the ``now`` the caller passes in.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from crewflow.domain.events import EventKind, ExecutionEvent, Sequencer
from crewflow.domain.flow import Flow, NodeKind
from crewflow.domain.graph import Graph

__all__ = ["NodeState", "NodeStatus", "RunStatus", "Scheduler", "SchedulerError"]


class SchedulerError(Exception):
    """The caller broke the protocol (started a node that is not ready, exceeded the parallelism bound)."""


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED})


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(slots=True)
class NodeState:
    status: NodeStatus = NodeStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    deadline: float | None = None


class Scheduler:
    def __init__(
        self,
        flow: Flow,
        graph: Graph,
        *,
        sequencer: Sequencer,
        rng: random.Random,
        max_parallel: int | None = None,
        run_timeout: float | None = None,
    ) -> None:
        self.flow = flow
        self.graph = graph
        self.sequencer = sequencer
        self.rng = rng
        self.max_parallel = max_parallel if max_parallel is not None else flow.max_parallel
        if self.max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.run_timeout = run_timeout if run_timeout is not None else flow.timeout
        self.status = RunStatus.PENDING
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.nodes: dict[str, NodeState] = {node_id: NodeState() for node_id in graph.ids}
        self.outputs: dict[str, Any] = {}
        self.inputs: dict[str, Any] = {}
        self._context_nodes: dict[str, dict[str, Any]] = {}
        self._spec = {node.id: node for node in flow.nodes}
        self._waiting_parents = {node_id: len(parents) for node_id, parents in graph.parents.items()}
        self._live = {node_id: False for node_id in graph.ids}
        self._ready: list[int] = []  # heap of topological indices
        self._retry: list[tuple[float, int]] = []  # heap of (not_before, topological index)
        self._running: set[str] = set()
        self._timed_running = 0  # running nodes that have a deadline
        self._failing = False
        self._deadline: float | None = None
        self._emit = True

    # -- queries -----------------------------------------------------------------------------------------
    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    @property
    def finished(self) -> bool:
        return self.status.is_terminal

    def ready(self, now: float) -> list[str]:
        """Nodes that may start now, in topological order, at most as many as free parallel slots."""
        if self.status != RunStatus.RUNNING or self._failing:
            return []
        order = self.graph.order
        while self._retry and self._retry[0][0] <= now:
            heapq.heappush(self._ready, heapq.heappop(self._retry)[1])
        slots = self.max_parallel - len(self._running)
        if slots <= 0 or not self._ready:
            return []
        if slots >= len(self._ready):
            return [order[i] for i in sorted(self._ready)]
        return [order[i] for i in heapq.nsmallest(slots, self._ready)]

    def next_wakeup(self) -> float | None:
        """The earliest time at which ``ready`` or ``check_timeouts`` may give a different answer."""
        if self.status != RunStatus.RUNNING:
            return None
        if not self._retry and not self._timed_running and self._deadline is None:
            return None  # the common case, kept cheap: it is asked after every step
        times = [self._retry[0][0]] if self._retry and not self._failing else []
        if self._timed_running:
            times.extend(d for n in self._running if (d := self.nodes[n].deadline) is not None)
        if self._deadline is not None:
            times.append(self._deadline)
        return min(times, default=None)

    def context(self) -> dict[str, Any]:
        """The template/expression context: ``{"nodes": {id: {"output": ...}}, "inputs": {...}}``."""
        return {"nodes": self._context_nodes, "inputs": self.inputs}

    def parent_outputs(self, node_id: str) -> dict[str, Any]:
        """Outputs of the node's completed parents, by parent id (the node's named inputs)."""
        return {
            p: self.outputs[p] for p in self.graph.parents[node_id] if self.nodes[p].status == NodeStatus.COMPLETED
        }

    # -- transitions -------------------------------------------------------------------------------------
    def begin(self, now: float, inputs: Mapping[str, Any] | None = None) -> list[ExecutionEvent]:
        if self.status != RunStatus.PENDING:
            raise SchedulerError("run already started")
        self.inputs = dict(inputs or {})
        self.status = RunStatus.RUNNING
        self.started_at = now
        if self.run_timeout is not None:
            self._deadline = now + self.run_timeout
        events = [self._event(EventKind.RUN_STARTED, now, None, {"inputs": self.inputs})]
        for node_id, count in self._waiting_parents.items():
            if count == 0:
                heapq.heappush(self._ready, self.graph.index[node_id])
        self._maybe_finish(now, events)  # a graph without nodes is complete at once
        return events

    def start(self, node_id: str, now: float) -> list[ExecutionEvent]:
        if self.status != RunStatus.RUNNING or self._failing:
            raise SchedulerError(f"cannot start '{node_id}': run is {self.status}")
        if len(self._running) >= self.max_parallel:
            raise SchedulerError(f"cannot start '{node_id}': {self.max_parallel} nodes already running")
        index = self.graph.index[node_id]
        if self._ready and self._ready[0] == index:
            heapq.heappop(self._ready)  # the usual case: nodes are started in the order ready() gave
        else:
            try:
                self._ready.remove(index)
            except ValueError:
                raise SchedulerError(f"node '{node_id}' is not ready") from None
            heapq.heapify(self._ready)
        state = self.nodes[node_id]
        state.status = NodeStatus.RUNNING
        state.attempts += 1
        state.started_at = now
        timeout = self._spec[node_id].timeout
        state.deadline = now + timeout if timeout is not None else None
        if timeout is not None:
            self._timed_running += 1
        self._running.add(node_id)
        return [self._event(EventKind.NODE_STARTED, now, node_id, {"attempt": state.attempts})]

    def complete(self, node_id: str, output: Any, now: float, branches: Collection[str] | None = None,
                 *, attempt: int | None = None) -> list[ExecutionEvent]:  # fmt: skip
        """Record a node's result. For a router, ``branches`` are the children it chose. With ``attempt``,
        an answer from an earlier attempt (one that timed out while its retry already runs) is ignored."""
        state = self.nodes[node_id]
        if state.status != NodeStatus.RUNNING or (attempt is not None and attempt != state.attempts):
            return []  # a late answer from a node that was cancelled or timed out
        chosen: set[str] | None = None
        if self._spec[node_id].kind == NodeKind.ROUTER:
            chosen = set(branches or ())
            unknown = chosen - set(self.graph.children[node_id])
            if unknown:
                raise SchedulerError(f"router '{node_id}' chose non-children {sorted(unknown)}")
        self._stop_running(node_id)
        state.status = NodeStatus.COMPLETED
        state.output = output
        state.finished_at = now
        self.outputs[node_id] = output
        self._context_nodes[node_id] = {"output": output}
        data: dict[str, Any] = {"attempt": state.attempts, "output": output,
                                "duration": now - (state.started_at or now)}  # fmt: skip
        if chosen is not None:
            data["branches"] = sorted(chosen)
        events = [self._event(EventKind.NODE_COMPLETED, now, node_id, data)]
        self._release(node_id, chosen, now, events)
        self._maybe_finish(now, events)
        return events

    def fail(self, node_id: str, error: str, now: float, *, retryable: bool = True,
             attempt: int | None = None) -> list[ExecutionEvent]:  # fmt: skip
        state = self.nodes[node_id]
        if state.status != NodeStatus.RUNNING or (attempt is not None and attempt != state.attempts):
            return []
        self._stop_running(node_id)
        policy = self._spec[node_id].retry
        events: list[ExecutionEvent] = []
        if retryable and state.attempts < policy.max_attempts and not self._failing:
            delay = policy.delay(state.attempts, self.rng)
            state.status = NodeStatus.RETRYING
            state.error = error
            state.not_before = now + delay
            heapq.heappush(self._retry, (state.not_before, self.graph.index[node_id]))
            events.append(self._event(EventKind.NODE_RETRYING, now, node_id,
                                      {"attempt": state.attempts, "error": error, "delay": delay}))  # fmt: skip
        else:
            state.status = NodeStatus.FAILED
            state.error = error
            state.finished_at = now
            self._failing = True
            if self.error is None:
                self.error = f"node '{node_id}' failed: {error}"
            events.append(self._event(EventKind.NODE_FAILED, now, node_id,
                                      {"attempt": state.attempts, "error": error}))  # fmt: skip
        self._maybe_finish(now, events)
        return events

    def check_timeouts(self, now: float) -> list[ExecutionEvent]:
        """Fail running nodes past their deadline (retryable) and the whole run past its own."""
        if self.status != RunStatus.RUNNING:
            return []
        events: list[ExecutionEvent] = []
        if self._deadline is not None and now >= self._deadline:
            if self.error is None:  # a node that already failed the run stays the reported cause
                self.error = f"run timed out after {self.run_timeout}s"
            for node_id in self._by_order(self._running):
                state = self.nodes[node_id]
                state.status, state.error, state.finished_at = NodeStatus.FAILED, "run timed out", now
                events.append(self._event(EventKind.NODE_FAILED, now, node_id,
                                          {"attempt": state.attempts, "error": "run timed out"}))  # fmt: skip
            self._running.clear()
            self._timed_running = 0
            self._failing = True
            self._maybe_finish(now, events)
            return events
        for node_id in self._by_order(self._running):
            deadline = self.nodes[node_id].deadline
            if deadline is not None and now >= deadline:
                events.extend(self.fail(node_id, f"timed out after {self._spec[node_id].timeout}s", now))
        return events

    def cancel(self, now: float, reason: str = "cancelled") -> list[ExecutionEvent]:
        if self.status.is_terminal:
            return []
        if self.status == RunStatus.PENDING:
            self.status = RunStatus.RUNNING
            self.started_at = now
            self.inputs = {}
        events: list[ExecutionEvent] = []
        for node_id in self.graph.order:
            state = self.nodes[node_id]
            if not state.status.is_terminal:
                state.status, state.finished_at = NodeStatus.CANCELLED, now
                events.append(self._event(EventKind.NODE_CANCELLED, now, node_id, {"reason": reason}))
        self._running.clear()
        self._timed_running = 0
        self._ready.clear()
        self._retry.clear()
        self.status = RunStatus.CANCELLED
        self.error = reason
        self.finished_at = now
        events.append(self._event(EventKind.RUN_CANCELLED, now, None, {"reason": reason}))
        return events

    def replay(self, completed: Mapping[str, Any], now: float,
               branches: Mapping[str, Collection[str]] | None = None) -> list[ExecutionEvent]:  # fmt: skip
        """Restore checkpointed completions (resume after a crash) without emitting their events again.
        When the checkpoints complete the whole run, the run's terminal event is returned (it was lost with
        the crash), otherwise nothing."""
        branches = branches or {}
        self._emit = False
        try:
            progressed = True
            while progressed and self.status == RunStatus.RUNNING:
                progressed = False
                # every ready node, not just ready(now)'s first free slots: with max_parallel=1 a completed
                # node queued behind a not-completed one would otherwise be run a second time
                for node_id in [self.graph.order[i] for i in sorted(self._ready)]:
                    if node_id in completed and self.status == RunStatus.RUNNING:
                        self.start(node_id, now)
                        self.complete(node_id, completed[node_id], now, branches.get(node_id))
                        progressed = True
        finally:
            self._emit = True
        if self.status == RunStatus.COMPLETED:
            return [self._event(EventKind.RUN_COMPLETED, now, None, {"outputs": self.final_outputs()})]
        return []

    # -- internals ---------------------------------------------------------------------------------------
    def _event(self, kind: EventKind, now: float, node_id: str | None, data: Mapping[str, Any]) -> ExecutionEvent:
        if not self._emit:
            return _SILENT
        return self.sequencer.event(kind, now, node_id, data)

    def _stop_running(self, node_id: str) -> None:
        self._running.discard(node_id)
        if self.nodes[node_id].deadline is not None:
            self._timed_running -= 1

    def _by_order(self, node_ids: Iterable[str]) -> list[str]:
        return sorted(node_ids, key=self.graph.index.__getitem__)

    def _release(self, node_id: str, chosen: set[str] | None, now: float, events: list[ExecutionEvent]) -> None:
        """Propagate a terminal node to its children; skip children whose every incoming edge is dead."""
        stack: list[tuple[str, set[str] | None, bool]] = [(node_id, chosen, True)]
        while stack:
            source, picked, alive = stack.pop()
            for child in self.graph.children[source]:
                if alive and (picked is None or child in picked):
                    self._live[child] = True
                self._waiting_parents[child] -= 1
                if self._waiting_parents[child] == 0:
                    if self._live[child]:
                        heapq.heappush(self._ready, self.graph.index[child])
                    else:
                        state = self.nodes[child]
                        state.status, state.finished_at = NodeStatus.SKIPPED, now
                        self.outputs[child] = None
                        self._context_nodes[child] = {"output": None}
                        events.append(self._event(EventKind.NODE_SKIPPED, now, child, {}))
                        stack.append((child, None, False))

    def _maybe_finish(self, now: float, events: list[ExecutionEvent]) -> None:
        if self._running or self.status != RunStatus.RUNNING:
            return
        if self._failing:
            for node_id in self.graph.order:
                state = self.nodes[node_id]
                if not state.status.is_terminal:
                    state.status, state.finished_at = NodeStatus.CANCELLED, now
                    events.append(self._event(EventKind.NODE_CANCELLED, now, node_id, {"reason": "run failed"}))
            self._ready.clear()
            self._retry.clear()
            self.status = RunStatus.FAILED
            self.finished_at = now
            events.append(self._event(EventKind.RUN_FAILED, now, None, {"error": self.error}))
        elif not self._ready and not self._retry:
            self.status = RunStatus.COMPLETED
            self.finished_at = now
            events.append(self._event(EventKind.RUN_COMPLETED, now, None, {"outputs": self.final_outputs()}))

    def final_outputs(self) -> dict[str, Any]:
        """Outputs of ``output`` nodes (by id); a flow without output nodes returns its sink nodes' outputs."""
        sinks = [n.id for n in self.flow.nodes if n.kind == NodeKind.OUTPUT]
        if not sinks:
            sinks = [node_id for node_id in self.graph.order if not self.graph.children[node_id]]
        return {s: self.outputs[s] for s in sinks if self.nodes[s].status == NodeStatus.COMPLETED}


_SILENT = ExecutionEvent("", 0, EventKind.NODE_LOG, 0.0)
