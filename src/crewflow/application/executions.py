"""Use cases around executions: start one on the job queue, run it in a worker, cancel it, read it back,
and watch its events exactly once and in order (replay log + live bus).

Every function takes the tenant id from its caller (the token, at the HTTP edge) and builds its unit of
work for that tenant only, so another tenant's execution is ``NotFound`` like a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from crewflow.application.catalog import resolve_flow
from crewflow.application.engine import Engine, Resume
from crewflow.application.event_sinks import BusSink, LogStoreSink
from crewflow.domain.errors import Conflict, DomainError, FlowInvalid, NotFound, Problem
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import Execution, IdempotencyRecord, NodeRun
from crewflow.domain.flow import Flow
from crewflow.domain.logs import Page
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.ports.bus import EventBus
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.events import EventSink
from crewflow.ports.logstore import LogStore, TenantLogStore
from crewflow.ports.queue import JobQueue, RunExecution
from crewflow.ports.uow import UnitOfWork, UnitOfWorkFactory

__all__ = [
    "ExecuteFlow",
    "ExecutionDetails",
    "ExecutionRecorder",
    "ExecutionRunner",
    "InvalidArguments",
    "LeaseLost",
    "LogPage",
    "cancel_execution",
    "default_worker_id",
    "execute_flow",
    "execution_logs",
    "get_execution",
    "is_final_event",
    "last_stored_seq",
    "list_executions_for_flow",
    "watch_execution",
]

log = structlog.get_logger("crewflow.executions")

FlowResolver = Callable[[UnitOfWork, str, int | None], Awaitable[Flow]]
"""Loads a runnable flow version for a tenant's unit of work: ``resolve_flow`` itself, or a cache in front
of it (``crewflow.application.flow_cache.CachedFlowResolver.resolve``)."""
_REPLAY_BATCH = 500


class InvalidArguments(DomainError):
    """A request's arguments are wrong in a way only the application can tell (e.g. a flow's required input
    is missing). ``problems`` name each field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid arguments")


def is_final_event(event: ExecutionEvent) -> bool:
    """The run's terminal event: nothing of this execution comes after it."""
    return event.node_id is None and event.kind.is_terminal_run


# -- recording ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecutionRecorder:
    """Where a tenant's execution events go, in this order: the checkpoint (execution row and node runs), the
    replay log, the live bus. A subscriber that sees an event live can therefore always find it in the log.
    ``checkpoints`` builds the checkpoint sink of a tenant (an adapter, injected by the composition root)."""

    checkpoints: Callable[[str], EventSink]
    logstore: LogStore
    bus: EventBus
    clock: Clock
    checkpoints_store_events: bool = False  # the checkpoint sink also writes the replay log (one commit)
    # Sinks after the bus (metrics, webhooks, …): they see each batch once it is stored and published.
    extra_sinks: Callable[[str], Sequence[EventSink]] | None = None

    def sinks(self, tenant_id: str) -> list[EventSink]:
        if self.checkpoints_store_events:
            sinks = [self.checkpoints(tenant_id), BusSink(self.bus, tenant_id)]
        else:
            sinks = [self.checkpoints(tenant_id), LogStoreSink(self.logstore.for_tenant(tenant_id)),
                     BusSink(self.bus, tenant_id)]  # fmt: skip
        if self.extra_sinks is not None:
            sinks.extend(self.extra_sinks(tenant_id))
        return sinks

    async def end_without_run(self, tenant_id: str, execution: Execution, kind: EventKind,
                              data: Mapping[str, Any]) -> None:  # fmt: skip
        """Record the terminal event of an execution the engine never ran (cancelled while queued, or its
        flow can no longer run), so watchers and the execution row both see the end."""
        event = ExecutionEvent(execution.id, execution.last_seq + 1, kind, self.clock.now(), None, dict(data))
        for sink in self.sinks(tenant_id):
            await sink.publish([event])


# -- execute -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecuteFlow:
    tenant_id: str
    flow_id: str
    version: int | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    execution_id: str
    replayed: bool = False  # True: an earlier request with the same Idempotency-Key created it


def _request_hash(cmd: ExecuteFlow) -> str:
    body = {"flow_id": cmd.flow_id, "version": cmd.version, "inputs": cmd.inputs}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _replayed(uow: UnitOfWork, key: str, request_hash: str) -> Accepted | None:
    previous = await uow.idempotency.find(key)
    if previous is None:
        return None
    execution_id = (previous.response or {}).get("execution_id")
    if previous.request_hash != request_hash or not isinstance(execution_id, str):
        raise Conflict("this Idempotency-Key was already used with a different request")
    return Accepted(execution_id, replayed=True)


async def execute_flow(cmd: ExecuteFlow, *, uow_factory: UnitOfWorkFactory, queue: JobQueue, clock: Clock,
                       ids: IdGenerator, resolve: FlowResolver = resolve_flow) -> Accepted:  # fmt: skip
    """Resolve the flow version for the caller's tenant, check the inputs, commit the execution as
    ``pending`` (with the idempotency record, in the same transaction), then enqueue it. The same key with
    the same request answers the first execution's id; with a different request, ``Conflict``."""
    request_hash = _request_hash(cmd)
    key = None if cmd.idempotency_key is None else f"execute:{cmd.idempotency_key}"  # keys of other routes differ
    accepted: Accepted | None = None
    for attempt in range(2):
        try:
            async with uow_factory.for_tenant(cmd.tenant_id) as uow:
                if key is not None and (accepted := await _replayed(uow, key, request_hash)) is not None:
                    break
                flow = await resolve(uow, cmd.flow_id, cmd.version)
                missing = flow.missing_inputs(cmd.inputs)
                if missing:
                    raise InvalidArguments([Problem("missing_input", "is required", f"inputs.{name}")
                                            for name in missing])  # fmt: skip
                now = clock.now()
                execution = Execution(id=ids.new_id(), flow_id=flow.id, flow_version=flow.version, created_at=now,
                                      inputs=dict(cmd.inputs))  # fmt: skip
                await uow.executions.add(execution)
                if key is not None:
                    await uow.idempotency.add(IdempotencyRecord(key, request_hash, now,
                                                                {"execution_id": execution.id}))  # fmt: skip
                await uow.commit()
                accepted = Accepted(execution.id)
                break
        except Conflict:
            if key is None or attempt > 0:
                raise
            # a concurrent request with the same key committed first: answer as it did (or 409)
    assert accepted is not None
    # Enqueuing an execution that is queued, running or finished is harmless (job id = execution id; a worker
    # skips finished ones), so a replay also re-enqueues: it rescues a first request that died before this.
    await queue.enqueue(RunExecution(cmd.tenant_id, accepted.execution_id, cmd.request_id))
    return accepted


# -- run (what a worker does) --------------------------------------------------------------------------------
async def _all_node_runs(uow: UnitOfWork, execution_id: str) -> list[NodeRun]:
    runs: list[NodeRun] = []
    cursor: str | None = None
    while True:
        page = await uow.node_runs.list_for_execution(execution_id, cursor, 100)
        runs.extend(page.items)
        if page.next_cursor is None:
            return runs
        cursor = page.next_cursor


def _resume(execution: Execution, runs: Sequence[NodeRun]) -> Resume | None:
    """Checkpoints of an earlier attempt: completed nodes are never run again, seq numbers continue."""
    if execution.last_seq == 0 and not runs:
        return None
    done = [r for r in runs if r.status == NodeStatus.COMPLETED]
    return Resume(completed={r.node_id: r.output for r in done},
                  branches={r.node_id: list(r.branches) for r in done if r.branches is not None},
                  last_seq=execution.last_seq)  # fmt: skip


class LeaseLost(Exception):
    """This worker no longer holds the execution's lease (another worker took it over, or it could not renew
    it in time): it must stop writing anything of the run."""


def default_worker_id() -> str:
    """``host:pid:random``: unique per runner even when containers reuse pids or one process runs several."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class _Lease:
    """The lease one runner holds on one execution: renewed every ``seconds / 3``; it is *lost* when a
    renewal finds another holder, or when the last confirmed expiry comes within ``seconds / 6`` (a worker
    cut off from the database stops writing before anyone may take over)."""

    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock, tenant_id: str, execution_id: str,
                 worker_id: str, seconds: float, expires_at: float) -> None:  # fmt: skip
        self._uow_factory = uow_factory
        self._clock = clock
        self.tenant_id = tenant_id
        self.execution_id = execution_id
        self.worker_id = worker_id
        self.seconds = seconds
        self.expires_at = expires_at
        self.lost = asyncio.Event()
        self.closed = False  # set when the run is abandoned for a successor: nothing more may be written

    @property
    def fence_at(self) -> float:
        return self.expires_at - self.seconds / 6

    def check(self) -> None:
        """Raise ``LeaseLost`` (and mark the lease lost) unless this worker may still write."""
        if not self.lost.is_set() and self._clock.now() >= self.fence_at:
            log.warning("execution.lease_expired_locally", tenant_id=self.tenant_id,
                        execution_id=self.execution_id, worker_id=self.worker_id)  # fmt: skip
            self.lost.set()
        if self.lost.is_set() or self.closed:
            raise LeaseLost(self.execution_id)

    async def keep(self) -> None:
        """Renew until cancelled or lost."""
        while not self.lost.is_set():
            await asyncio.sleep(max(0.0, min(self.seconds / 3, self.fence_at - self._clock.now())))
            until = self._clock.now() + self.seconds
            held: bool | None = None
            try:
                async with self._uow_factory.for_tenant(self.tenant_id) as uow:
                    held = await uow.executions.renew(self.execution_id, self.worker_id, until=until)
                    await uow.commit()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is unreachable for now: try again until the fence
                log.warning("execution.lease_renewal_failed", tenant_id=self.tenant_id,
                            execution_id=self.execution_id, exc_info=True)  # fmt: skip
            if held is True:
                self.expires_at = until
            elif held is False:
                log.warning("execution.lease_lost", tenant_id=self.tenant_id, execution_id=self.execution_id,
                            worker_id=self.worker_id)  # fmt: skip
                self.lost.set()
            else:
                with contextlib.suppress(LeaseLost):
                    self.check()


class _FencedSink:
    """Forwards events only while the run's lease is held, so a worker that lost its execution (it stalled,
    or was cut off) cannot write checkpoints or log events under the new holder's sequence numbers."""

    __slots__ = ("_inner", "_lease")

    def __init__(self, inner: EventSink, lease: _Lease) -> None:
        self._inner = inner
        self._lease = lease

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        self._lease.check()
        await self._inner.publish(events)


class ExecutionRunner:
    """The job handler: run (or resume) one stored execution, honouring its cancel signal.

    Before anything else it claims the execution's lease for ``worker_id`` (``lease_seconds`` long): a job
    for an execution that is finished, missing, or whose live lease another worker holds is dropped (that
    worker runs it) — when that lease runs out within one lease, the runner first watches whether its holder
    renews it, and takes the execution over if not (the queue's retry after the holder died). The lease is
    renewed in the background every ``lease_seconds / 3`` and released at the end; when it is lost (another
    worker took the execution over after it expired) the run is interrupted and writes nothing more. A new
    holder resumes from the checkpoints: completed nodes never run again, a node that was in flight runs
    again with the same idempotency key (ADR 0012).

    The engine runs with the recorder's sinks, so node checkpoints, the replay log and the live bus receive
    every event in order. When ``cancel`` is set the run stops (running nodes are interrupted) and ends
    ``cancelled``. When the worker itself is torn down (shutdown: the handler is cancelled) the run is
    interrupted and, by default, recorded ``cancelled`` ("interrupted"), as the embedded in-process queue
    wants; with ``resume_on_shutdown`` (distributed workers whose queue hands the job to another worker)
    nothing is recorded and the lease is released, so the next holder resumes the run from its checkpoints."""

    def __init__(self, uow_factory: UnitOfWorkFactory, engine: Engine, recorder: ExecutionRecorder, *,
                 worker_id: str | None = None, lease_seconds: float = 30.0,
                 resume_on_shutdown: bool = False, resolve: FlowResolver = resolve_flow) -> None:  # fmt: skip
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        self.uow_factory = uow_factory
        self.engine = engine
        self.recorder = recorder
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.resume_on_shutdown = resume_on_shutdown
        self.resolve = resolve
        self._active: set[tuple[str, str]] = set()

    async def __call__(self, job: RunExecution, cancel: asyncio.Event) -> None:
        key = (job.tenant_id, job.execution_id)
        if key in self._active:  # a duplicate delivery while this runner already runs it
            log.info("execution.already_running_here", tenant_id=key[0], execution_id=key[1])
            return
        self._active.add(key)
        try:
            await self._claim_and_run(job, cancel)
        finally:
            self._active.discard(key)

    async def _claim_and_run(self, job: RunExecution, cancel: asyncio.Event) -> None:
        tenant_id, execution_id = job.tenant_id, job.execution_id
        clock = self.recorder.clock
        expires_at = await self._claim(tenant_id, execution_id)
        if expires_at is None and await self._holder_died(tenant_id, execution_id, cancel):
            expires_at = await self._claim(tenant_id, execution_id)
        if expires_at is None:
            log.info("execution.not_claimed", tenant_id=tenant_id, execution_id=execution_id,
                     reason="finished, missing, or leased by another worker")  # fmt: skip
            return
        lease = _Lease(self.uow_factory, clock, tenant_id, execution_id, self.worker_id, self.lease_seconds,
                       expires_at)  # fmt: skip
        keeper = asyncio.create_task(lease.keep(), name=f"crewflow-lease-{execution_id}")
        try:
            await self._run(tenant_id, execution_id, cancel, lease)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not lease.lost.is_set():
                with contextlib.suppress(Exception):  # an unreleased lease just expires
                    await asyncio.shield(self._release(tenant_id, execution_id))

    async def _claim(self, tenant_id: str, execution_id: str) -> float | None:
        """Claim the lease; its expiry when this runner holds it now, else None."""
        now = self.recorder.clock.now()
        until = now + self.lease_seconds
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            won = await uow.executions.claim(execution_id, self.worker_id, until=until, now=now)
            await uow.commit()
        return until if won else None

    async def _holder_died(self, tenant_id: str, execution_id: str, cancel: asyncio.Event) -> bool:
        """Another worker's lease holds the execution. When that lease runs out within one lease of this
        runner, the holder most likely died and this job is the queue's retry: watch the lease (every
        ``lease_seconds / 3``) until it expires unrenewed (True: claim it) or its holder renews it, the run
        ends, or a cancel arrives (False)."""
        seen: float | None = None
        while True:
            async with self.uow_factory.for_tenant(tenant_id) as uow:
                try:
                    execution = await uow.executions.get(execution_id)
                except NotFound:
                    return False
            expires = execution.lease_expires_at
            if execution.status.is_terminal or expires is None or execution.worker_id == self.worker_id:
                return expires is None and not execution.status.is_terminal  # released meanwhile: claim it
            if seen is not None and expires != seen:
                return False  # renewed, or taken by yet another worker: alive
            left = expires - self.recorder.clock.now()
            if left <= 0:
                return True
            if left > self.lease_seconds or cancel.is_set():
                return False
            if seen is None:
                log.info("execution.waiting_for_lease", tenant_id=tenant_id, execution_id=execution_id,
                         holder=execution.worker_id, seconds=left)  # fmt: skip
            seen = expires
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), min(left + 0.05, self.lease_seconds / 3))

    async def _release(self, tenant_id: str, execution_id: str) -> None:
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            await uow.executions.release(execution_id, self.worker_id)
            await uow.commit()

    async def _run(self, tenant_id: str, execution_id: str, cancel: asyncio.Event, lease: _Lease) -> None:
        unrunnable: str | None = None
        flow: Flow | None = None
        async with self.uow_factory.for_tenant(tenant_id) as uow:  # read after the claim: the last checkpoint
            try:
                execution = await uow.executions.get(execution_id)
            except NotFound:
                log.warning("execution.job_without_execution", tenant_id=tenant_id, execution_id=execution_id)
                return
            if execution.status.is_terminal:
                return
            try:
                flow = await self.resolve(uow, execution.flow_id, execution.flow_version)
            except (NotFound, FlowInvalid) as exc:
                unrunnable = f"the flow cannot run: {exc}"
            runs = await _all_node_runs(uow, execution_id)
        if cancel.is_set():
            await self.recorder.end_without_run(tenant_id, execution, EventKind.RUN_CANCELLED, {"reason": "cancelled"})
            return
        if flow is None:
            await self.recorder.end_without_run(tenant_id, execution, EventKind.RUN_FAILED,
                                                {"error": unrunnable or "the flow cannot run"})  # fmt: skip
            return
        resume = _resume(execution, runs)
        log.info("execution.started", tenant_id=tenant_id, execution_id=execution_id, flow_id=flow.id,
                 resumed=resume is not None, worker_id=self.worker_id)  # fmt: skip
        sinks: list[EventSink] = [_FencedSink(sink, lease) for sink in self.recorder.sinks(tenant_id)]
        try:
            handle = self.engine.start(flow, execution.inputs, tenant_id=tenant_id, execution_id=execution_id,
                                       sinks=sinks, resume=resume)  # fmt: skip
        except FlowInvalid as exc:
            await self.recorder.end_without_run(tenant_id, execution, EventKind.RUN_FAILED,
                                                {"error": f"the flow cannot run: {exc}"})  # fmt: skip
            return
        result = asyncio.ensure_future(handle.result())
        cancelled = asyncio.ensure_future(cancel.wait())
        lost = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({result, cancelled, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not result.done():
                handle.cancel("lease lost" if lease.lost.is_set() else "cancelled")
            outcome = await result
        except asyncio.CancelledError:
            if self.resume_on_shutdown:
                lease.closed = True  # the interruption is not recorded: the run stays resumable
                log.info("execution.left_for_resume", tenant_id=tenant_id, execution_id=execution_id,
                         worker_id=self.worker_id)  # fmt: skip
            handle.cancel("interrupted")
            with contextlib.suppress(Exception):
                await asyncio.shield(result)
            raise
        except Exception:
            if lease.lost.is_set():  # the run stopped writing: its new holder resumes it
                log.warning("execution.abandoned_after_lease_loss", tenant_id=tenant_id, execution_id=execution_id,
                            worker_id=self.worker_id)  # fmt: skip
                return
            # the run itself broke (e.g. a store failed mid-run): never leave it "running"
            log.exception("execution.crashed", tenant_id=tenant_id, execution_id=execution_id)
            handle.cancel("internal error")  # interrupt node tasks the broken run may have left behind
            await self._record_crash(tenant_id, execution_id)
            return
        finally:
            cancelled.cancel()
            lost.cancel()
        if lease.lost.is_set():
            log.warning("execution.abandoned_after_lease_loss", tenant_id=tenant_id, execution_id=execution_id,
                        worker_id=self.worker_id)  # fmt: skip
            return
        log.info("execution.finished", tenant_id=tenant_id, execution_id=execution_id, status=str(outcome.status))

    async def _record_crash(self, tenant_id: str, execution_id: str) -> None:
        """End the execution ``failed`` after the seq of everything already stored (checkpoint or log). The
        error says no more than that: the log has the details, the client gets no internals."""
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            execution = await uow.executions.get(execution_id)
        if execution.status.is_terminal:
            return
        execution = dataclasses.replace(execution, last_seq=await last_stored_seq(self.recorder.logstore, tenant_id,
                                                                                  execution))  # fmt: skip
        await self.recorder.end_without_run(tenant_id, execution, EventKind.RUN_FAILED,
                                            {"error": "internal error while running the flow"})  # fmt: skip


async def last_stored_seq(logstore: LogStore, tenant_id: str, execution: Execution) -> int:
    """The last seq stored for the execution, in its checkpoint or its replay log (which may be ahead when
    a crash fell between the two)."""
    store = logstore.for_tenant(tenant_id)
    last = execution.last_seq
    while batch := await store.events_after(execution.id, last, _REPLAY_BATCH):
        last = batch[-1].seq
        if len(batch) < _REPLAY_BATCH:
            break
    return last


# -- cancel ------------------------------------------------------------------------------------------------
async def cancel_execution(tenant_id: str, execution_id: str, *, uow_factory: UnitOfWorkFactory, queue: JobQueue,
                           recorder: ExecutionRecorder) -> RunStatus:  # fmt: skip
    """Ask whoever holds the execution to stop it (``RUNNING`` is returned: it ends ``cancelled`` shortly).
    An execution no worker holds (never enqueued, or left over by a stopped process) is cancelled here
    (``CANCELLED``). A finished one is a ``Conflict``."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        execution = await uow.executions.get(execution_id)
    if execution.status.is_terminal:
        raise Conflict(f"execution {execution_id!r} already {execution.status}")
    if await queue.cancel(tenant_id, execution_id):
        return RunStatus.RUNNING
    await recorder.end_without_run(tenant_id, execution, EventKind.RUN_CANCELLED, {"reason": "cancelled"})
    return RunStatus.CANCELLED


# -- read --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecutionDetails:
    execution: Execution
    nodes: tuple[NodeRun, ...]


async def get_execution(tenant_id: str, execution_id: str, *, uow_factory: UnitOfWorkFactory) -> ExecutionDetails:
    async with uow_factory.for_tenant(tenant_id) as uow:
        execution = await uow.executions.get(execution_id)
        runs = await _all_node_runs(uow, execution_id)
    return ExecutionDetails(execution, tuple(runs))


async def list_executions_for_flow(tenant_id: str, flow_id: str, cursor: str | None = None, limit: int = 20, *,
                                   uow_factory: UnitOfWorkFactory) -> Page[Execution]:  # fmt: skip
    """Newest first. ``NotFound`` when the tenant has no such flow."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.get(flow_id)
        return await uow.executions.list_for_flow(flow_id, cursor, limit)


@dataclass(frozen=True, slots=True)
class LogPage:
    events: tuple[ExecutionEvent, ...]
    next_cursor: int | None  # the seq of the last event returned, when there may be more


async def execution_logs(tenant_id: str, execution_id: str, after_seq: int = 0, limit: int = 50, *,
                         uow_factory: UnitOfWorkFactory, logstore: LogStore) -> LogPage:  # fmt: skip
    """Events of one execution with seq > ``after_seq``, oldest first."""
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.executions.get(execution_id)
    events = await logstore.for_tenant(tenant_id).events_after(execution_id, after_seq, limit + 1)
    more = len(events) > limit
    page = tuple(events[:limit])
    return LogPage(page, page[-1].seq if more and page else None)


# -- watch -------------------------------------------------------------------------------------------------
async def _close(subscription: AsyncIterator[ExecutionEvent]) -> None:
    aclose = getattr(subscription, "aclose", None)
    if aclose is not None:
        await aclose()


async def _replay(store: TenantLogStore, execution_id: str, after_seq: int,
                  until: int | None = None) -> AsyncIterator[ExecutionEvent]:  # fmt: skip
    while True:
        batch = await store.events_after(execution_id, after_seq, _REPLAY_BATCH)
        for event in batch:
            if until is not None and event.seq >= until:
                return
            yield event
            after_seq = event.seq
        if len(batch) < _REPLAY_BATCH:
            return


async def watch_execution(
    tenant_id: str, execution_id: str, after_seq: int = 0, *, logstore: LogStore, bus: EventBus,
    quiet: float | None = 2.0,
) -> AsyncGenerator[ExecutionEvent, None]:
    """Every event of the execution with seq > ``after_seq``, each exactly once and in seq order, ending
    with the run's terminal event.

    Subscribes to the bus FIRST (the bus does not buffer), then replays the log store, then follows the live
    feed, dropping what the replay already gave. Events reach the log before the bus (see
    ``ExecutionRecorder``), so nothing falls between the two. The log is read again (from the last event
    sent) when the live feed skips a seq, and after ``quiet`` seconds without a live event (a run in another
    process than this bus reaches, a lost message); a live feed that ends early (a slow subscriber dropped
    by the bus) is resumed by subscribing again. The caller checks the execution belongs to the tenant."""
    store = logstore.for_tenant(tenant_id)
    last = after_seq
    while True:
        live = bus.subscribe(tenant_id, execution_id)
        try:
            catch_up = True
            while True:
                if catch_up:
                    async for event in _replay(store, execution_id, last):
                        yield event
                        last = event.seq
                        if is_final_event(event):
                            return
                    catch_up = False
                try:
                    event = await asyncio.wait_for(anext(live), quiet)
                except TimeoutError:
                    catch_up = True
                    continue
                except StopAsyncIteration:
                    break  # dropped by the bus: subscribe again, then catch up from the log
                if event.seq <= last:
                    continue
                if event.seq > last + 1:  # the log has it (it is written before the bus) and what was missed
                    catch_up = True
                    continue
                yield event
                last = event.seq
                if is_final_event(event):
                    return
        finally:
            await _close(live)
