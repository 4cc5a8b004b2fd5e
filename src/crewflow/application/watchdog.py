"""Housekeeping of executions, written as plain functions over ports so any scheduler can run them (the arq
worker registers them as cron jobs; a test or an operator calls them directly).

- ``recover_expired``: an execution whose worker died (its lease expired, ADR 0012) is re-enqueued, so a
  live worker claims it and resumes it from its checkpoints; one that keeps dying, or is too old, is ended
  ``failed`` with a terminal event instead. Nothing is left ``running`` with nobody running it.
- ``purge_expired``: executions finished longer ago than the retention (with their node checkpoints and
  log events), chat messages and idempotency records older than it, tenant by tenant.

Recoveries are counted without a column: every attempt at running an execution starts with a
``run.started`` event in its replay log (the engine emits it on a fresh start and on every resume), so an
execution whose log holds ``n`` of them was started ``n`` times and recovered ``n - 1`` times. An attempt
killed before it logged ``run.started`` is not counted; the age limit bounds those.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from crewflow.application.executions import ExecutionRecorder, last_stored_seq
from crewflow.domain.errors import NotFound
from crewflow.domain.events import EventKind
from crewflow.domain.execution import Execution
from crewflow.ports.clock import Clock
from crewflow.ports.logstore import LogStore
from crewflow.ports.queue import JobQueue, RunExecution
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_RECOVERIES",
    "DEFAULT_RETENTION_DAYS",
    "PurgeReport",
    "RecoveryReport",
    "count_starts",
    "purge_expired",
    "recover_expired",
    "retention_days_from",
]

log = structlog.get_logger("crewflow.watchdog")

DEFAULT_MAX_RECOVERIES = 3
DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_RETENTION_DAYS = 30.0
_BATCH = 100
_EVENTS_PAGE = 1000


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What one pass did, as (tenant_id, execution_id) pairs."""

    requeued: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # a worker claimed or renewed it meanwhile


@dataclass(frozen=True, slots=True)
class PurgeReport:
    executions: int = 0
    events: int = 0
    chat_messages: int = 0
    idempotency_keys: int = 0


def _watchdog_id() -> str:
    return f"watchdog:{socket.gethostname()}:{os.getpid()}"


async def count_starts(logstore: LogStore, tenant_id: str, execution_id: str) -> int:
    """How many times the execution was started (fresh or resumed): its ``run.started`` events."""
    store = logstore.for_tenant(tenant_id)
    starts, after = 0, 0
    while batch := await store.events_after(execution_id, after, _EVENTS_PAGE):
        starts += sum(1 for e in batch if e.kind == EventKind.RUN_STARTED and e.node_id is None)
        after = batch[-1].seq
        if len(batch) < _EVENTS_PAGE:
            break
    return starts


async def recover_expired(
    tenant_ids: Sequence[str],
    *,
    uow_factory: UnitOfWorkFactory,
    queue: JobQueue,
    recorder: ExecutionRecorder,
    clock: Clock,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    max_age: float = DEFAULT_MAX_AGE,
    unclaimed_grace: float | None = 300.0,
    hold_seconds: float = 10.0,
    limit: int = _BATCH,
    watchdog_id: str | None = None,
) -> RecoveryReport:
    """One pass over each tenant's executions whose lease expired (and, with ``unclaimed_grace``, those no
    worker ever claimed within that many seconds of their creation, e.g. a job lost with its queue).

    Each one is first claimed for the watchdog itself (``hold_seconds``, at most the workers' lease: a worker
    whose claim meets the watchdog's hold waits for it instead of dropping its job), so a worker that renews
    or claims it at the same moment wins or loses cleanly. Then it is ended ``failed`` (terminal event through the
    recorder, so the row, the log and live watchers all see it) when it was created more than ``max_age``
    seconds ago or was already started more than ``max_recoveries`` times after its first start; otherwise
    its lease is released and it is enqueued again (a worker claims it and resumes from the checkpoints).
    At most ``limit`` (1-100) executions per tenant per pass; the rest wait for the next pass."""
    if max_recoveries < 0 or max_age <= 0 or hold_seconds <= 0:
        raise ValueError("max_recoveries must be >= 0, max_age and hold_seconds > 0")
    me = watchdog_id or _watchdog_id()
    requeued: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for tenant_id in tenant_ids:
        now = clock.now()
        unclaimed_before = None if unclaimed_grace is None else now - unclaimed_grace
        try:
            async with uow_factory.for_tenant(tenant_id) as uow:
                expired = await uow.executions.list_expired(now, limit, unclaimed_before=unclaimed_before)
        except NotFound:  # a tenant listed while its storage is being created or dropped: not this pass
            log.info("watchdog.tenant_skipped", tenant_id=tenant_id)
            continue
        for candidate in expired:
            key = (tenant_id, candidate.id)
            now = clock.now()
            async with uow_factory.for_tenant(tenant_id) as uow:
                held = await uow.executions.claim(candidate.id, me, until=now + hold_seconds, now=now)
                await uow.commit()
            if not held:
                skipped.append(key)
                continue
            async with uow_factory.for_tenant(tenant_id) as uow:
                execution = await uow.executions.get(candidate.id)
            starts = await count_starts(recorder.logstore, tenant_id, execution.id)
            reason: str | None = None
            if now - execution.created_at > max_age:
                reason = f"abandoned: no worker finished it within {max_age:g} s of its creation"
            elif starts > max_recoveries:
                tries = f"{starts} attempt" + ("s" if starts != 1 else "")
                reason = f"abandoned: its worker stopped during {tries} (at most {max_recoveries} recoveries)"
            if reason is not None:
                await _fail(recorder, tenant_id, execution, reason, starts)
            # released before the enqueue: the worker taking the job must be able to claim it at once (a
            # pass that stops in between leaves it unclaimed, which the next pass finds)
            async with uow_factory.for_tenant(tenant_id) as uow:
                await uow.executions.release(execution.id, me)
                await uow.commit()
            if reason is not None:
                failed.append(key)
                log.warning("watchdog.failed", tenant_id=tenant_id, execution_id=execution.id, starts=starts,
                            previous_worker=candidate.worker_id, reason=reason)  # fmt: skip
            else:
                await queue.enqueue(RunExecution(tenant_id, execution.id))
                requeued.append(key)
                log.info("watchdog.requeued", tenant_id=tenant_id, execution_id=execution.id, starts=starts,
                         previous_worker=candidate.worker_id)  # fmt: skip
    return RecoveryReport(tuple(requeued), tuple(failed), tuple(skipped))


async def _fail(recorder: ExecutionRecorder, tenant_id: str, execution: Execution, reason: str,
                starts: int) -> None:  # fmt: skip
    last_seq = await last_stored_seq(recorder.logstore, tenant_id, execution)
    await recorder.end_without_run(tenant_id, dataclasses.replace(execution, last_seq=last_seq),
                                   EventKind.RUN_FAILED, {"error": reason, "starts": starts})  # fmt: skip


async def _purge_tenant(tenant_id: str, cutoff: float, uow_factory: UnitOfWorkFactory,
                        logstore: LogStore) -> tuple[int, int, int, int]:  # fmt: skip
    """(executions, events, chat messages, idempotency keys) purged for one tenant."""
    logs = logstore.for_tenant(tenant_id)
    executions = events = 0
    while True:
        async with uow_factory.for_tenant(tenant_id) as uow:
            ids = await uow.executions.list_finished_before(cutoff, _BATCH)
        if not ids:
            break
        events += await logs.purge_executions(ids)
        async with uow_factory.for_tenant(tenant_id) as uow:
            executions += await uow.executions.delete_many(ids)
            await uow.commit()
        if len(ids) < _BATCH:
            break
    chats = await logs.purge_chat_messages_before(cutoff)
    async with uow_factory.for_tenant(tenant_id) as uow:
        keys = await uow.idempotency.purge_before(cutoff)
        await uow.commit()
    return executions, events, chats, keys


def retention_days_from(extra: Mapping[str, str] | None) -> float:
    """``CREWFLOW_RETENTION_DAYS`` from the settings' extra variables (default 30; must be positive)."""
    raw = (extra or {}).get("CREWFLOW_RETENTION_DAYS") or ""
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        days = float(raw)
    except ValueError:
        raise ValueError(f"CREWFLOW_RETENTION_DAYS must be a number, got {raw!r}") from None
    if not days > 0:
        raise ValueError("CREWFLOW_RETENTION_DAYS must be positive")
    return days


async def purge_expired(
    tenant_ids: Sequence[str],
    *,
    uow_factory: UnitOfWorkFactory,
    logstore: LogStore,
    clock: Clock,
    retention_days: float = DEFAULT_RETENTION_DAYS,
) -> PurgeReport:
    """Delete, per tenant, what is older than ``retention_days``: finished executions (ended before the
    cutoff) with their node checkpoints and every event of theirs, chat messages, idempotency records.
    Audit entries are kept. Events go before their execution rows: a pass that stops half-way leaves rows
    whose events are gone, which the next pass deletes, never events nobody can find any more."""
    if not retention_days > 0:
        raise ValueError("retention_days must be positive")
    cutoff = clock.now() - retention_days * 86_400
    executions = events = chats = keys = 0
    for tenant_id in tenant_ids:
        try:
            counts = await _purge_tenant(tenant_id, cutoff, uow_factory, logstore)
        except NotFound:  # a tenant listed while its storage is being created or dropped: not this pass
            log.info("retention.tenant_skipped", tenant_id=tenant_id)
            continue
        executions, events = executions + counts[0], events + counts[1]
        chats, keys = chats + counts[2], keys + counts[3]
    report = PurgeReport(executions, events, chats, keys)
    log.info("watchdog.purged", tenants=len(tenant_ids), cutoff=cutoff, **dataclasses.asdict(report))
    return report
