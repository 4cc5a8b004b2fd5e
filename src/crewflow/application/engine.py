"""The in-process engine: drives the pure ``Scheduler`` with asyncio and the runtime ports.

One asyncio task per running agent/crew/tool node; input, output and router nodes are evaluated inline.
Events go, in sequence order, to synchronous listeners at once and to async ``EventSink``s (log store,
bus, checkpoints), which are awaited before the run takes its next step.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crewflow.application.results import NodeResult, RunResult
from crewflow.domain.errors import NodeExecutionError, TemplateError
from crewflow.domain.events import EventKind, ExecutionEvent, Sequencer
from crewflow.domain.flow import Flow, FlowLimits, Node, NodeKind
from crewflow.domain.graph import Graph
from crewflow.domain.nodes import choose_branch, input_output, output_value
from crewflow.domain.scheduler import NodeStatus, Scheduler
from crewflow.domain.templates import render, render_value
from crewflow.domain.validation import ensure_valid
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.events import EventSink
from crewflow.ports.runtime import AgentRuntime, AgentWork, CrewWork, NodeOutcome, ToolSandbox, ToolWork

__all__ = ["Engine", "EventListener", "Resume", "RunHandle"]

EventListener = Callable[[ExecutionEvent], None]
_INSTANT = frozenset({NodeKind.INPUT, NodeKind.OUTPUT, NodeKind.ROUTER})


@dataclass(frozen=True, slots=True)
class Resume:
    """Checkpoints of an interrupted run: completed nodes' outputs, routers' choices, last event seq."""

    completed: Mapping[str, Any]
    branches: Mapping[str, Sequence[str]] = field(default_factory=dict)
    last_seq: int = 0


class Engine:
    def __init__(
        self,
        runtime: AgentRuntime,
        *,
        clock: Clock,
        ids: IdGenerator,
        tools: ToolSandbox | None = None,
        limits: FlowLimits | None = None,
    ) -> None:
        self.runtime = runtime
        self.tools = tools
        self.clock = clock
        self.ids = ids
        self.limits = limits or FlowLimits()

    def start(
        self,
        flow: Flow,
        inputs: Mapping[str, Any] | None = None,
        *,
        tenant_id: str = "local",
        execution_id: str | None = None,
        listeners: Sequence[EventListener] = (),
        sinks: Sequence[EventSink] = (),
        max_parallel: int | None = None,
        timeout: float | None = None,
        seed: int | None = None,
        resume: Resume | None = None,
        graph: Graph | None = None,
    ) -> RunHandle:
        """Validate and start a run on the current event loop. Raises ``FlowInvalid`` before starting."""
        graph = graph or ensure_valid(flow, self.limits)
        run = _Run(
            self, flow, graph, dict(inputs or {}), tenant_id, execution_id or self.ids.new_id(),
            listeners, sinks, max_parallel, timeout, seed, resume,
        )  # fmt: skip
        return RunHandle(run)

    async def run(self, flow: Flow, inputs: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
        return await self.start(flow, inputs, **options).result()


class RunHandle:
    """A run in progress: await ``result()``, iterate ``events()``, or ``cancel()`` it."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._task = asyncio.get_running_loop().create_task(run.main(), name=f"crewflow-run-{run.execution_id}")

    @property
    def execution_id(self) -> str:
        return self._run.execution_id

    def cancel(self, reason: str = "cancelled") -> None:
        self._run.cancel(reason)

    async def result(self) -> RunResult:
        return await asyncio.shield(self._task)

    async def events(self) -> AsyncIterator[ExecutionEvent]:
        """Every event of the run from the first, live, ending with the run's terminal event."""
        queue: asyncio.Queue[ExecutionEvent] = asyncio.Queue()
        for event in self._run.events:
            queue.put_nowait(event)
        self._run.subscribers.append(queue)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.node_id is None and event.kind.is_terminal_run:
                    return
        finally:
            self._run.subscribers.remove(queue)


class _Run:
    def __init__(
        self,
        engine: Engine,
        flow: Flow,
        graph: Graph,
        inputs: dict[str, Any],
        tenant_id: str,
        execution_id: str,
        listeners: Sequence[EventListener],
        sinks: Sequence[EventSink],
        max_parallel: int | None,
        timeout: float | None,
        seed: int | None,
        resume: Resume | None,
    ) -> None:
        self.engine = engine
        self.clock = engine.clock
        self.flow = flow
        self.inputs = inputs
        self.tenant_id = tenant_id
        self.execution_id = execution_id
        self.listeners = tuple(listeners)
        self.sinks = tuple(sinks)
        self.resume = resume
        self.spec = {node.id: node for node in flow.nodes}
        self.scheduler = Scheduler(
            flow, graph, sequencer=Sequencer(execution_id, resume.last_seq if resume else 0),
            rng=random.Random(seed), max_parallel=max_parallel, run_timeout=timeout,
        )  # fmt: skip
        self.events: list[ExecutionEvent] = []
        self.subscribers: list[asyncio.Queue[ExecutionEvent]] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.outcomes: dict[str, NodeOutcome] = {}
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.unpublished: list[ExecutionEvent] = []
        self.sink_lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.flush_task: asyncio.Task[None] | None = None
        self.timer_at: float | None = None

    # -- main --------------------------------------------------------------------------------------------
    async def main(self) -> RunResult:
        scheduler = self.scheduler
        try:
            now = self.clock.now()
            self.record(scheduler.begin(now, self.flow.resolve_inputs(self.inputs)))
            if self.resume is not None:
                self.record(scheduler.replay(self.resume.completed, now, self.resume.branches))
            await self.flush()
            await self.advance()
            if not self.done.done():
                await self.done
        except asyncio.CancelledError:
            self.cancel("interrupted")
            await self.settle(interrupt=True)
            raise
        finally:
            if self.timer is not None:
                self.timer.cancel()
        await self.settle(interrupt=False)
        return self.result()

    async def settle(self, *, interrupt: bool) -> None:
        """Let node tasks that are still storing their last events finish (or, when the run is being torn
        down, interrupt them), then hand every remaining event to the sinks."""
        while leftovers := [t for t in self.tasks.values() if not t.done()]:
            if interrupt:
                for task in leftovers:
                    task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        await asyncio.shield(self.flush())

    def cancel(self, reason: str) -> None:
        self.record(self.scheduler.cancel(self.clock.now(), reason))
        self.interrupt_stopped_nodes()
        self.finish_if_done()

    # -- events ------------------------------------------------------------------------------------------
    def record(self, events: Sequence[ExecutionEvent]) -> None:
        if not events:
            return
        self.events.extend(events)
        for listener in self.listeners:
            for event in events:
                listener(event)
        for queue in self.subscribers:
            for event in events:
                queue.put_nowait(event)
        if self.sinks:
            self.unpublished.extend(events)

    async def flush(self) -> None:
        """Deliver everything recorded so far. Taking the lock also waits for a delivery in progress, so
        when this returns, every event recorded before the call is stored."""
        if not self.sinks:
            return
        async with self.sink_lock:
            batch, self.unpublished = self.unpublished, []
            if batch:
                # A batch taken off the queue is delivered even if the caller is cancelled meanwhile.
                delivery = asyncio.ensure_future(self.publish(batch))
                try:
                    await asyncio.shield(delivery)
                except asyncio.CancelledError:
                    await delivery
                    raise

    async def publish(self, batch: list[ExecutionEvent]) -> None:
        for sink in self.sinks:
            await sink.publish(batch)

    def emitter(self, node_id: str) -> Callable[[EventKind, Mapping[str, Any]], None]:
        def emit(kind: EventKind, data: Mapping[str, Any]) -> None:
            if threading.get_ident() != self.loop_thread:
                self.loop.call_soon_threadsafe(emit, kind, data)
                return
            if self.scheduler.nodes[node_id].status == NodeStatus.RUNNING:
                self.record([self.scheduler.sequencer.event(kind, self.clock.now(), node_id, data)])
                self.flush_soon()

        return emit

    def flush_soon(self) -> None:
        """Deliver intermediate events (tokens, logs, LLM attempts) while the node still works, instead of
        holding them until its result: one delivery task at a time, picking up whatever accumulated."""
        if not self.sinks or self.flush_task is not None:
            return

        async def deliver() -> None:
            try:
                while self.unpublished:
                    await self.flush()
            finally:
                self.flush_task = None

        self.flush_task = self.loop.create_task(deliver())
        self.tasks[f"__flush__{id(self.flush_task)}"] = self.flush_task
        self.flush_task.add_done_callback(lambda t: self.tasks.pop(f"__flush__{id(t)}", None))

    # -- stepping ----------------------------------------------------------------------------------------
    async def advance(self) -> None:
        """Start everything that is ready; evaluate instant nodes inline until nothing more is ready."""
        scheduler = self.scheduler
        while True:
            now = self.clock.now()
            ready = scheduler.ready(now)
            if not ready:
                break
            instant = False
            for node_id in ready:
                node = self.spec[node_id]
                self.record(scheduler.start(node_id, now))
                if node.kind in _INSTANT:
                    self.record(self.evaluate_instant(node, now))
                    instant = True
                else:
                    self.tasks[node_id] = self.loop.create_task(self.run_node(node))
            if self.sinks:
                await self.flush()
            if not instant:
                break
        self.arm_timer()
        self.finish_if_done()

    def evaluate_instant(self, node: Node, now: float) -> list[ExecutionEvent]:
        scheduler = self.scheduler
        try:
            if node.kind == NodeKind.INPUT:
                return scheduler.complete(node.id, input_output(self.flow, scheduler.inputs), now)
            if node.kind == NodeKind.OUTPUT:
                value = output_value(node, scheduler.parent_outputs(node.id), scheduler.context())
                return scheduler.complete(node.id, value, now)
            branch = choose_branch(node, scheduler.context())
            return scheduler.complete(node.id, branch, now, branches=(branch,))
        except NodeExecutionError as exc:
            return scheduler.fail(node.id, str(exc), now, retryable=exc.retryable)

    async def run_node(self, node: Node) -> None:
        scheduler = self.scheduler
        attempt = scheduler.nodes[node.id].attempts
        try:
            if self.sinks:
                await self.flush()  # the node's start is checkpointed before its work begins
            try:
                outcome = await self.execute(node, attempt)
            except asyncio.CancelledError:
                if scheduler.nodes[node.id].status == NodeStatus.RUNNING:
                    raise  # not interrupted by us: the whole run is being torn down
                return
            except NodeExecutionError as exc:
                self.record(scheduler.fail(node.id, str(exc), self.clock.now(), retryable=exc.retryable,
                                           attempt=attempt))
            except TemplateError as exc:
                self.record(scheduler.fail(node.id, str(exc), self.clock.now(), retryable=False, attempt=attempt))
            except Exception as exc:  # a runtime bug or an unexpected library error: retry per policy
                self.record(scheduler.fail(node.id, f"{type(exc).__name__}: {exc}", self.clock.now(),
                                           attempt=attempt))
            else:
                events = scheduler.complete(node.id, outcome.output, self.clock.now(), attempt=attempt)
                if events:
                    self.outcomes[node.id] = outcome
                self.record(events)
            if self.sinks:
                await self.flush()
        finally:
            if self.tasks.get(node.id) is asyncio.current_task():
                del self.tasks[node.id]
        await self.advance()

    async def execute(self, node: Node, attempt: int) -> NodeOutcome:
        scheduler = self.scheduler
        context = scheduler.context()
        emit = self.emitter(node.id)
        if node.kind == NodeKind.AGENT:
            assert node.agent is not None
            agent = self.flow.agents[node.agent]
            work = AgentWork(
                tenant_id=self.tenant_id, execution_id=self.execution_id, node_id=node.id, attempt=attempt,
                agent=agent, task=render(node.task, context), expected_output=render(node.expected_output, context),
                inputs=scheduler.parent_outputs(node.id), run_inputs=scheduler.inputs,
                tools={t: self.flow.tools[t] for t in agent.tools if t in self.flow.tools},
            )  # fmt: skip
            return await self.engine.runtime.run_agent(work, emit)
        if node.kind == NodeKind.CREW:
            assert node.crew is not None
            crew = self.flow.crews[node.crew]
            crew_inputs: dict[str, Any] = dict(scheduler.inputs)
            crew_inputs.update(scheduler.parent_outputs(node.id))
            crew_inputs.update({k: render_value(v, context) for k, v in node.inputs.items()})
            agents = {a: self.flow.agents[a] for a in crew.agents}
            tools = {t: self.flow.tools[t] for a in agents.values() for t in a.tools if t in self.flow.tools}
            return await self.engine.runtime.run_crew(
                CrewWork(self.tenant_id, self.execution_id, node.id, attempt, crew, agents, crew_inputs, tools), emit
            )
        assert node.tool is not None, f"{node.kind} node '{node.id}' reached the tool branch"
        sandbox = self.engine.tools
        if sandbox is None:
            raise NodeExecutionError(
                f"tool '{node.tool}' cannot run: no tool sandbox is available (tools never run unsandboxed)",
                retryable=False,
            )
        payload = self.tool_payload(node, context)
        work_item = ToolWork(self.tenant_id, self.execution_id, node.id, attempt, self.flow.tools[node.tool],
                             payload, node.timeout)  # fmt: skip
        return await sandbox.run_tool(work_item, emit)

    def tool_payload(self, node: Node, context: Mapping[str, Any]) -> dict[str, Any]:
        if node.inputs:
            return {k: render_value(v, context) for k, v in node.inputs.items()}
        parents = {k: v for k, v in self.scheduler.parent_outputs(node.id).items() if v is not None}
        if len(parents) == 1:
            only = next(iter(parents.values()))
            return dict(only) if isinstance(only, Mapping) else {"input": only}
        return parents

    # -- timers and the end ------------------------------------------------------------------------------
    def arm_timer(self) -> None:
        wake = self.scheduler.next_wakeup()
        if wake == self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at = wake
        if wake is not None:
            delay = max(0.0, wake - self.clock.now())
            self.timer = self.loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self.timer, self.timer_at = None, None
        self.record(self.scheduler.check_timeouts(self.clock.now()))
        self.interrupt_stopped_nodes()
        task = self.loop.create_task(self.advance())
        self.tasks[f"__timer__{id(task)}"] = task
        task.add_done_callback(lambda t: self.tasks.pop(f"__timer__{id(t)}", None))

    def interrupt_stopped_nodes(self) -> None:
        for node_id, task in list(self.tasks.items()):
            state = self.scheduler.nodes.get(node_id)
            if state is not None and state.status != NodeStatus.RUNNING and not task.done():
                task.cancel()

    def finish_if_done(self) -> None:
        if self.scheduler.finished and not self.done.done():
            self.done.set_result(None)

    def result(self) -> RunResult:
        scheduler = self.scheduler
        nodes: dict[str, NodeResult] = {}
        for node_id in scheduler.graph.order:
            state = scheduler.nodes[node_id]
            outcome = self.outcomes.get(node_id)
            nodes[node_id] = NodeResult(
                node_id=node_id, status=state.status, output=state.output, error=state.error,
                attempts=state.attempts, started_at=state.started_at, finished_at=state.finished_at,
                llm_attempts=outcome.llm_attempts if outcome else (),
                input_tokens=outcome.input_tokens if outcome else 0,
                output_tokens=outcome.output_tokens if outcome else 0,
                cost=outcome.cost if outcome else 0.0,
            )  # fmt: skip
        return RunResult(
            execution_id=self.execution_id, flow_id=self.flow.id, status=scheduler.status,
            outputs=scheduler.final_outputs() if scheduler.status == "completed" else {},
            nodes=nodes, started_at=scheduler.started_at, finished_at=scheduler.finished_at,
            error=scheduler.error, events=tuple(self.events),
        )  # fmt: skip


