"""SQL repositories (SQLAlchemy Core, explicit column lists) over the connection of one unit of work.

Tenant repositories query the schema-less ``TENANT`` tables: which tenant they see is decided by the unit
of work's transaction (PostgreSQL ``search_path``, SQLite database file), never by their callers.

Inserts that may collide use ``INSERT … ON CONFLICT DO NOTHING`` and report ``Conflict`` from the row
count, so a duplicate does not abort the PostgreSQL transaction. Other integrity errors (a foreign key to
a missing row, renaming onto an existing name) surface as ``NotFound``/``Conflict`` but leave a PostgreSQL
transaction unusable: the unit of work must then be abandoned (leaving its block rolls it back).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from crewflow.adapters.sql.tables import (
    AGENTS,
    CREWS,
    EXECUTIONS,
    FLOW_VERSIONS,
    FLOWS,
    IDEMPOTENCY_KEYS,
    LLM_PROVIDERS,
    NODE_RUNS,
    TENANTS,
    TOOLS,
    USERS,
)
from crewflow.domain.agents import Agent, Crew, CrewTask, Process
from crewflow.domain.errors import Conflict, NotFound
from crewflow.domain.execution import (
    Execution,
    FlowRecord,
    FlowVersion,
    IdempotencyRecord,
    LLMProviderConfig,
    NodeRun,
    ToolRecord,
)
from crewflow.domain.logs import Page
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.ports.repositories import MAX_PAGE_SIZE

__all__ = [
    "Session",
    "SqlAgentRepository",
    "SqlCrewRepository",
    "SqlExecutionRepository",
    "SqlFlowRepository",
    "SqlIdempotencyRepository",
    "SqlNodeRunRepository",
    "SqlProviderRepository",
    "SqlTenantRepository",
    "SqlToolRepository",
    "SqlUserRepository",
]

T = TypeVar("T")


class Session:
    """The connection of one unit of work while its transaction is open."""

    __slots__ = ("_conn", "dialect")

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._conn: AsyncConnection | None = None

    @property
    def conn(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open: use it inside 'async with', before commit()")
        return self._conn

    def attach(self, conn: AsyncConnection) -> None:
        self._conn = conn

    def detach(self) -> AsyncConnection | None:
        conn, self._conn = self._conn, None
        return conn


# -- shared helpers --------------------------------------------------------------------------------------
def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")


def _encode_cursor(values: Sequence[Any]) -> str:
    plain = [{"t": v.isoformat()} if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, columns: Sequence[sa.ColumnElement[Any]]) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise ValueError("invalid cursor") from None
    if not isinstance(raw, list) or len(raw) != len(columns):
        raise ValueError("invalid cursor")
    values: list[Any] = []
    for column, value in zip(columns, raw, strict=True):
        expected = column.type.python_type
        if expected is datetime and isinstance(value, dict) and isinstance(value.get("t"), str):
            try:
                value = datetime.fromisoformat(value["t"])
            except ValueError:
                raise ValueError("invalid cursor") from None
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # a value of the column's own type only: a crafted cursor must not reach the database as a type error
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError("invalid cursor")
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL: refuse, not 500
            raise ValueError("invalid cursor")
        values.append(value)
    return values


async def _paged(
    conn: AsyncConnection,
    query: sa.Select[Any],
    order: Sequence[sa.ColumnElement[Any]],
    *,
    descending: bool,
    cursor: str | None,
    limit: int,
    convert: Callable[[sa.Row[Any]], T],
) -> Page[T]:
    """Keyset pagination over ``order`` (a unique key, all in one direction)."""
    _check_limit(limit)
    if cursor is not None:
        values = _decode_cursor(cursor, order)
        bound = [sa.bindparam(None, v, type_=c.type) for c, v in zip(order, values, strict=True)]
        left = sa.tuple_(*order) if len(order) > 1 else order[0]
        right = sa.tuple_(*bound) if len(order) > 1 else bound[0]
        query = query.where(left < right if descending else left > right)
    query = query.order_by(*(c.desc() if descending else c.asc() for c in order)).limit(limit + 1)
    rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor([rows[-1]._mapping[c] for c in order]) if more else None
    return Page(tuple(convert(row) for row in rows), next_cursor)


def _is_fk_violation(exc: IntegrityError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    if code is not None:
        return bool(code == "23503")
    return "FOREIGN KEY" in str(exc.orig).upper()


class _Repository:
    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def _conn(self) -> AsyncConnection:
        return self._session.conn

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self._session.dialect == "postgresql" else sqlite.insert(table)

    async def _insert_new(self, table: sa.Table, values: Mapping[str, Any], what: str) -> None:
        """Insert a row; ``Conflict`` (without aborting the transaction) if its key or a unique value exists."""
        stmt = self._insert(table).values(dict(values)).on_conflict_do_nothing()
        result = await self._conn.execute(stmt)
        if result.rowcount == 0:
            raise Conflict(f"{what} already exists")

    async def _one(self, query: sa.Select[Any], kind: str, ident: str) -> sa.Row[Any]:
        row: sa.Row[Any] | None = (await self._conn.execute(query)).first()
        if row is None:
            raise NotFound(kind, ident)
        return row

    async def _change(self, stmt: sa.Update | sa.Delete, kind: str, ident: str, unique: str = "") -> None:
        """Run an UPDATE/DELETE of one row: ``NotFound`` when it matched none."""
        try:
            result = await self._conn.execute(stmt)
        except IntegrityError as exc:
            if unique and not _is_fk_violation(exc):
                raise Conflict(f"{kind} {unique} already taken") from None
            raise
        if result.rowcount == 0:
            raise NotFound(kind, ident)


# -- agents and crews ------------------------------------------------------------------------------------
def _agent_values(agent: Agent) -> dict[str, Any]:
    return {
        "role": agent.role, "goal": agent.goal, "backstory": agent.backstory, "provider": agent.provider,
        "model": agent.model, "tools": list(agent.tools), "allow_delegation": agent.allow_delegation,
        "max_iter": agent.max_iter, "temperature": agent.temperature, "cache": agent.cache,
    }  # fmt: skip


def _agent(row: sa.Row[Any]) -> Agent:
    m = row._mapping
    return Agent(
        id=m["id"], role=m["role"], goal=m["goal"], backstory=m["backstory"], provider=m["provider"],
        model=m["model"], tools=tuple(m["tools"]), allow_delegation=m["allow_delegation"],
        max_iter=m["max_iter"], temperature=m["temperature"], cache=m["cache"],
    )  # fmt: skip


class SqlAgentRepository(_Repository):
    async def add(self, agent: Agent, *, at: float) -> None:
        values = {"id": agent.id, **_agent_values(agent), "created_at": at, "updated_at": at}
        await self._insert_new(AGENTS, values, f"agent {agent.id!r}")

    async def get(self, agent_id: str) -> Agent:
        return _agent(await self._one(sa.select(AGENTS).where(AGENTS.c.id == agent_id), "agent", agent_id))

    async def update(self, agent: Agent, *, at: float) -> None:
        stmt = AGENTS.update().where(AGENTS.c.id == agent.id).values(**_agent_values(agent), updated_at=at)
        await self._change(stmt, "agent", agent.id)

    async def delete(self, agent_id: str) -> None:
        await self._change(AGENTS.delete().where(AGENTS.c.id == agent_id), "agent", agent_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Agent]:
        return await _paged(self._conn, sa.select(AGENTS), [AGENTS.c.id], descending=False,
                            cursor=cursor, limit=limit, convert=_agent)  # fmt: skip


def _crew_values(crew: Crew) -> dict[str, Any]:
    tasks = [
        {"name": t.name, "description": t.description, "expected_output": t.expected_output, "agent": t.agent,
         "context": list(t.context)}
        for t in crew.tasks
    ]  # fmt: skip
    return {"description": crew.description, "process": str(crew.process), "agents": list(crew.agents),
            "tasks": tasks, "manager_provider": crew.manager_provider}  # fmt: skip


def _crew(row: sa.Row[Any]) -> Crew:
    m = row._mapping
    tasks = tuple(
        CrewTask(name=t["name"], description=t["description"], expected_output=t.get("expected_output", ""),
                 agent=t.get("agent"), context=tuple(t.get("context", ())))
        for t in m["tasks"]
    )  # fmt: skip
    return Crew(id=m["id"], agents=tuple(m["agents"]), tasks=tasks, process=Process(m["process"]),
                description=m["description"], manager_provider=m["manager_provider"])  # fmt: skip


class SqlCrewRepository(_Repository):
    async def add(self, crew: Crew, *, at: float) -> None:
        values = {"id": crew.id, **_crew_values(crew), "created_at": at, "updated_at": at}
        await self._insert_new(CREWS, values, f"crew {crew.id!r}")

    async def get(self, crew_id: str) -> Crew:
        return _crew(await self._one(sa.select(CREWS).where(CREWS.c.id == crew_id), "crew", crew_id))

    async def update(self, crew: Crew, *, at: float) -> None:
        stmt = CREWS.update().where(CREWS.c.id == crew.id).values(**_crew_values(crew), updated_at=at)
        await self._change(stmt, "crew", crew.id)

    async def delete(self, crew_id: str) -> None:
        await self._change(CREWS.delete().where(CREWS.c.id == crew_id), "crew", crew_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Crew]:
        return await _paged(self._conn, sa.select(CREWS), [CREWS.c.id], descending=False,
                            cursor=cursor, limit=limit, convert=_crew)  # fmt: skip


# -- flows -----------------------------------------------------------------------------------------------
def _flow(row: sa.Row[Any]) -> FlowRecord:
    m = row._mapping
    return FlowRecord(id=m["id"], name=m["name"], description=m["description"],
                      current_version=m["current_version"], is_active=m["is_active"],
                      created_at=m["created_at"], updated_at=m["updated_at"])  # fmt: skip


def _flow_version(row: sa.Row[Any]) -> FlowVersion:
    m = row._mapping
    return FlowVersion(flow_id=m["flow_id"], version=m["version"], definition=m["definition"],
                       created_at=m["created_at"], created_by=m["created_by"])  # fmt: skip


class SqlFlowRepository(_Repository):
    async def add(self, flow: FlowRecord, definition: Mapping[str, Any], *, created_by: str | None = None) -> None:
        if flow.current_version != 1:
            raise ValueError("a new flow starts at version 1")
        values = {
            "id": flow.id, "name": flow.name, "description": flow.description, "current_version": 1,
            "is_active": flow.is_active, "created_at": flow.created_at, "updated_at": flow.updated_at,
        }  # fmt: skip
        await self._insert_new(FLOWS, values, f"flow {flow.id!r}")
        await self._conn.execute(FLOW_VERSIONS.insert().values(
            flow_id=flow.id, version=1, definition=dict(definition), created_at=flow.created_at,
            created_by=created_by,
        ))  # fmt: skip

    async def get(self, flow_id: str) -> FlowRecord:
        return _flow(await self._one(sa.select(FLOWS).where(FLOWS.c.id == flow_id), "flow", flow_id))

    async def get_version(self, flow_id: str, version: int | None = None) -> FlowVersion:
        query = sa.select(FLOW_VERSIONS).where(FLOW_VERSIONS.c.flow_id == flow_id)
        if version is None:
            current = sa.select(FLOWS.c.current_version).where(FLOWS.c.id == flow_id).scalar_subquery()
            query = query.where(FLOW_VERSIONS.c.version == current)
        else:
            query = query.where(FLOW_VERSIONS.c.version == version)
        ident = flow_id if version is None else f"{flow_id}@{version}"
        return _flow_version(await self._one(query, "flow version", ident))

    async def add_version(
        self,
        flow_id: str,
        definition: Mapping[str, Any],
        *,
        expected_version: int,
        at: float,
        name: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
    ) -> FlowRecord:
        changes: dict[str, Any] = {"current_version": expected_version + 1, "updated_at": at}
        if name is not None:
            changes["name"] = name
        if description is not None:
            changes["description"] = description
        stmt = (
            FLOWS.update()
            .where(FLOWS.c.id == flow_id, FLOWS.c.current_version == expected_version)
            .values(**changes)
            .returning(*FLOWS.c)
        )
        row = (await self._conn.execute(stmt)).first()
        if row is None:
            current = await self.get(flow_id)  # NotFound when the flow does not exist (in this tenant)
            raise Conflict(
                f"flow {flow_id!r} is at version {current.current_version}, not {expected_version}: "
                "it was edited meanwhile; reload it and apply the change again"
            )
        await self._conn.execute(FLOW_VERSIONS.insert().values(
            flow_id=flow_id, version=expected_version + 1, definition=dict(definition), created_at=at,
            created_by=created_by,
        ))  # fmt: skip
        return _flow(row)

    async def set_active(self, flow_id: str, is_active: bool, *, at: float) -> None:
        stmt = FLOWS.update().where(FLOWS.c.id == flow_id).values(is_active=is_active, updated_at=at)
        await self._change(stmt, "flow", flow_id)

    async def delete(self, flow_id: str) -> None:
        await self._conn.execute(FLOW_VERSIONS.delete().where(FLOW_VERSIONS.c.flow_id == flow_id))
        await self._change(FLOWS.delete().where(FLOWS.c.id == flow_id), "flow", flow_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[FlowRecord]:
        return await _paged(self._conn, sa.select(FLOWS), [FLOWS.c.id], descending=False,
                            cursor=cursor, limit=limit, convert=_flow)  # fmt: skip

    async def list_versions(self, flow_id: str, cursor: str | None = None, limit: int = 50) -> Page[FlowVersion]:
        query = sa.select(FLOW_VERSIONS).where(FLOW_VERSIONS.c.flow_id == flow_id)
        return await _paged(self._conn, query, [FLOW_VERSIONS.c.version], descending=True,
                            cursor=cursor, limit=limit, convert=_flow_version)  # fmt: skip


# -- executions and node checkpoints ---------------------------------------------------------------------
def _execution_state(e: Execution) -> dict[str, Any]:
    return {
        "status": str(e.status), "outputs": None if e.outputs is None else dict(e.outputs), "error": e.error,
        "started_at": e.started_at, "finished_at": e.finished_at, "last_seq": e.last_seq,
        "worker_id": e.worker_id, "lease_expires_at": e.lease_expires_at,
    }  # fmt: skip


def _execution(row: sa.Row[Any]) -> Execution:
    m = row._mapping
    return Execution(
        id=m["id"], flow_id=m["flow_id"], flow_version=m["flow_version"], created_at=m["created_at"],
        status=RunStatus(m["status"]), inputs=m["inputs"], outputs=m["outputs"], error=m["error"],
        started_at=m["started_at"], finished_at=m["finished_at"], last_seq=m["last_seq"],
        worker_id=m["worker_id"], lease_expires_at=m["lease_expires_at"],
    )  # fmt: skip


_NEWEST_EXECUTIONS = [EXECUTIONS.c.created_at, EXECUTIONS.c.id]
_UNFINISHED = [str(s) for s in RunStatus if not s.is_terminal]
_FINISHED = [str(s) for s in RunStatus if s.is_terminal]


class SqlExecutionRepository(_Repository):
    async def add(self, execution: Execution) -> None:
        values = {
            "id": execution.id, "flow_id": execution.flow_id, "flow_version": execution.flow_version,
            "inputs": dict(execution.inputs), "created_at": execution.created_at, **_execution_state(execution),
        }  # fmt: skip
        await self._insert_new(EXECUTIONS, values, f"execution {execution.id!r}")

    async def get(self, execution_id: str) -> Execution:
        query = sa.select(EXECUTIONS).where(EXECUTIONS.c.id == execution_id)
        return _execution(await self._one(query, "execution", execution_id))

    async def update(self, execution: Execution) -> None:
        stmt = EXECUTIONS.update().where(EXECUTIONS.c.id == execution.id).values(**_execution_state(execution))
        await self._change(stmt, "execution", execution.id)

    async def record_progress(
        self,
        execution_id: str,
        *,
        last_seq: int,
        status: RunStatus | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        outputs: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        changes: dict[str, Any] = {"last_seq": last_seq}
        if status is not None:
            changes["status"] = str(status)
        if started_at is not None:
            changes["started_at"] = started_at
        if finished_at is not None:
            changes["finished_at"] = finished_at
        if outputs is not None:
            changes["outputs"] = dict(outputs)
        if error is not None:
            changes["error"] = error
        stmt = EXECUTIONS.update().where(EXECUTIONS.c.id == execution_id).values(**changes)
        await self._change(stmt, "execution", execution_id)

    async def delete(self, execution_id: str) -> None:
        await self._conn.execute(NODE_RUNS.delete().where(NODE_RUNS.c.execution_id == execution_id))
        await self._change(EXECUTIONS.delete().where(EXECUTIONS.c.id == execution_id), "execution", execution_id)

    async def list(
        self, cursor: str | None = None, limit: int = 50, *, status: RunStatus | None = None
    ) -> Page[Execution]:
        query = sa.select(EXECUTIONS)
        if status is not None:
            query = query.where(EXECUTIONS.c.status == str(status))
        return await _paged(self._conn, query, _NEWEST_EXECUTIONS, descending=True,
                            cursor=cursor, limit=limit, convert=_execution)  # fmt: skip

    async def list_for_flow(self, flow_id: str, cursor: str | None = None, limit: int = 50) -> Page[Execution]:
        query = sa.select(EXECUTIONS).where(EXECUTIONS.c.flow_id == flow_id)
        return await _paged(self._conn, query, _NEWEST_EXECUTIONS, descending=True,
                            cursor=cursor, limit=limit, convert=_execution)  # fmt: skip

    # -- leases: one conditional UPDATE each, so two workers racing for a row serialise on its row lock and
    # the loser's WHERE no longer matches (PostgreSQL re-checks it on the updated row; SQLite has one writer)
    async def claim(self, execution_id: str, worker_id: str, *, until: float, now: float) -> bool:
        t = EXECUTIONS
        stmt = (
            t.update()
            .where(
                t.c.id == execution_id,
                t.c.status.in_(_UNFINISHED),
                sa.or_(t.c.worker_id.is_(None), t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now,
                       t.c.worker_id == worker_id),
            )
            .values(worker_id=worker_id, lease_expires_at=until)
        )  # fmt: skip
        return bool((await self._conn.execute(stmt)).rowcount == 1)

    async def renew(self, execution_id: str, worker_id: str, *, until: float) -> bool:
        t = EXECUTIONS
        stmt = t.update().where(t.c.id == execution_id, t.c.worker_id == worker_id).values(lease_expires_at=until)
        return bool((await self._conn.execute(stmt)).rowcount == 1)

    async def release(self, execution_id: str, worker_id: str) -> bool:
        t = EXECUTIONS
        stmt = (
            t.update()
            .where(t.c.id == execution_id, t.c.worker_id == worker_id)
            .values(worker_id=None, lease_expires_at=None)
        )
        return bool((await self._conn.execute(stmt)).rowcount == 1)

    async def list_expired(self, now: float, limit: int = 100, *,
                           unclaimed_before: float | None = None) -> Sequence[Execution]:  # fmt: skip
        _check_limit(limit)
        t = EXECUTIONS
        stale: sa.ColumnElement[bool] = t.c.lease_expires_at <= now
        if unclaimed_before is not None:
            never = sa.and_(t.c.worker_id.is_(None), t.c.lease_expires_at.is_(None), t.c.created_at < unclaimed_before)
            stale = sa.or_(stale, never)
        query = (sa.select(EXECUTIONS).where(t.c.status.in_(_UNFINISHED), stale)
                 .order_by(t.c.created_at, t.c.id).limit(limit))  # fmt: skip
        return [_execution(row) for row in (await self._conn.execute(query)).all()]

    async def list_finished_before(self, cutoff: float, limit: int = 100) -> Sequence[str]:
        _check_limit(limit)
        t = EXECUTIONS
        ended = sa.func.coalesce(t.c.finished_at, t.c.created_at)
        query = (sa.select(t.c.id).where(t.c.status.in_(_FINISHED), ended < cutoff)
                 .order_by(t.c.created_at, t.c.id).limit(limit))  # fmt: skip
        return list((await self._conn.execute(query)).scalars().all())

    async def delete_many(self, execution_ids: Collection[str]) -> int:
        ids = sorted(set(execution_ids))
        removed = 0
        for start in range(0, len(ids), 500):  # bounded IN lists (SQLite's bound-parameter limit)
            chunk = ids[start : start + 500]
            await self._conn.execute(NODE_RUNS.delete().where(NODE_RUNS.c.execution_id.in_(chunk)))
            result = await self._conn.execute(EXECUTIONS.delete().where(EXECUTIONS.c.id.in_(chunk)))
            removed += max(result.rowcount, 0)
        return removed


def _node_run_values(run: NodeRun) -> dict[str, Any]:
    return {
        "execution_id": run.execution_id, "node_id": run.node_id, "attempt": run.attempt,
        "status": str(run.status), "output": run.output,
        "branches": None if run.branches is None else list(run.branches), "error": run.error,
        "started_at": run.started_at, "finished_at": run.finished_at, "duration": run.duration,
        "input_tokens": run.input_tokens, "output_tokens": run.output_tokens, "cost": run.cost,
    }  # fmt: skip


def _node_run(row: sa.Row[Any]) -> NodeRun:
    m = row._mapping
    branches = m["branches"]
    return NodeRun(
        execution_id=m["execution_id"], node_id=m["node_id"], status=NodeStatus(m["status"]),
        attempt=m["attempt"], output=m["output"], branches=None if branches is None else tuple(branches),
        error=m["error"], started_at=m["started_at"], finished_at=m["finished_at"], duration=m["duration"],
        input_tokens=m["input_tokens"], output_tokens=m["output_tokens"], cost=m["cost"],
    )  # fmt: skip


def _node_run_upsert(stmt: postgresql.Insert | sqlite.Insert) -> sa.Insert:
    keys = ("execution_id", "node_id")
    return stmt.on_conflict_do_update(
        index_elements=[NODE_RUNS.c[k] for k in keys],
        set_={c.name: stmt.excluded[c.name] for c in NODE_RUNS.c if c.name not in keys},
    )


# built once per dialect: the checkpoint sink runs it for every node start and end
_NODE_RUN_UPSERT: dict[str, sa.Insert] = {}


class SqlNodeRunRepository(_Repository):
    async def save(self, run: NodeRun) -> None:
        await self.save_many([run])

    async def save_many(self, runs: Sequence[NodeRun]) -> None:
        if not runs:
            return
        upsert = _NODE_RUN_UPSERT.get(self._session.dialect)
        if upsert is None:
            upsert = _NODE_RUN_UPSERT[self._session.dialect] = _node_run_upsert(self._insert(NODE_RUNS))
        try:
            await self._conn.execute(upsert, [_node_run_values(run) for run in runs])
        except IntegrityError as exc:
            if _is_fk_violation(exc):
                missing = sorted({run.execution_id for run in runs})
                raise NotFound("execution", ", ".join(missing)) from None
            raise

    async def get(self, execution_id: str, node_id: str) -> NodeRun:
        found = await self.find(execution_id, node_id)
        if found is None:
            raise NotFound("node run", f"{execution_id}/{node_id}")
        return found

    async def find(self, execution_id: str, node_id: str) -> NodeRun | None:
        query = sa.select(NODE_RUNS).where(NODE_RUNS.c.execution_id == execution_id, NODE_RUNS.c.node_id == node_id)
        row = (await self._conn.execute(query)).first()
        return None if row is None else _node_run(row)

    async def find_many(self, execution_id: str, node_ids: Collection[str]) -> dict[str, NodeRun]:
        if not node_ids:
            return {}
        query = sa.select(NODE_RUNS).where(
            NODE_RUNS.c.execution_id == execution_id, NODE_RUNS.c.node_id.in_(sorted(set(node_ids)))
        )
        return {run.node_id: run for run in map(_node_run, (await self._conn.execute(query)).all())}

    async def list_for_execution(self, execution_id: str, cursor: str | None = None, limit: int = 100) -> Page[NodeRun]:
        query = sa.select(NODE_RUNS).where(NODE_RUNS.c.execution_id == execution_id)
        return await _paged(self._conn, query, [NODE_RUNS.c.node_id], descending=False,
                            cursor=cursor, limit=limit, convert=_node_run)  # fmt: skip


# -- providers, tools, idempotency keys ------------------------------------------------------------------
def _provider_values(p: LLMProviderConfig) -> dict[str, Any]:
    return {
        "name": p.name, "provider_type": p.provider_type, "base_url": p.base_url, "model": p.model,
        "config": dict(p.config), "priority": p.priority, "encrypted_key": p.encrypted_key, "key_id": p.key_id,
        "price_input_per_1k": p.price_input_per_1k, "price_output_per_1k": p.price_output_per_1k,
        "budget": p.budget, "is_active": p.is_active, "updated_at": p.updated_at,
    }  # fmt: skip


def _provider(row: sa.Row[Any]) -> LLMProviderConfig:
    m = row._mapping
    key = m["encrypted_key"]
    return LLMProviderConfig(
        id=m["id"], name=m["name"], provider_type=m["provider_type"], model=m["model"],
        created_at=m["created_at"], updated_at=m["updated_at"], base_url=m["base_url"], config=m["config"],
        priority=m["priority"], price_input_per_1k=m["price_input_per_1k"],
        price_output_per_1k=m["price_output_per_1k"], budget=m["budget"], is_active=m["is_active"],
        encrypted_key=None if key is None else bytes(key), key_id=m["key_id"],
    )  # fmt: skip


class SqlProviderRepository(_Repository):
    async def add(self, provider: LLMProviderConfig) -> None:
        values = {"id": provider.id, "created_at": provider.created_at, **_provider_values(provider)}
        await self._insert_new(LLM_PROVIDERS, values, f"provider {provider.id!r} or name {provider.name!r}")

    async def get(self, provider_id: str) -> LLMProviderConfig:
        query = sa.select(LLM_PROVIDERS).where(LLM_PROVIDERS.c.id == provider_id)
        return _provider(await self._one(query, "provider", provider_id))

    async def get_by_name(self, name: str) -> LLMProviderConfig:
        query = sa.select(LLM_PROVIDERS).where(LLM_PROVIDERS.c.name == name)
        return _provider(await self._one(query, "provider", name))

    async def update(self, provider: LLMProviderConfig) -> None:
        stmt = LLM_PROVIDERS.update().where(LLM_PROVIDERS.c.id == provider.id).values(**_provider_values(provider))
        await self._change(stmt, "provider", provider.id, unique=f"name {provider.name!r}")

    async def delete(self, provider_id: str) -> None:
        await self._change(LLM_PROVIDERS.delete().where(LLM_PROVIDERS.c.id == provider_id), "provider", provider_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[LLMProviderConfig]:
        order = [LLM_PROVIDERS.c.priority, LLM_PROVIDERS.c.id]
        return await _paged(self._conn, sa.select(LLM_PROVIDERS), order, descending=False,
                            cursor=cursor, limit=limit, convert=_provider)  # fmt: skip


def _tool_values(t: ToolRecord) -> dict[str, Any]:
    return {
        "name": t.name, "description": t.description, "docker_image": t.docker_image,
        "input_schema": dict(t.input_schema), "output_schema": dict(t.output_schema), "dockerfile": t.dockerfile,
        "build_status": t.build_status, "is_active": t.is_active, "version": t.version, "updated_at": t.updated_at,
        "script": t.script, "context": dict(t.context) or None, "image_digest": t.image_digest,
        "build_error": t.build_error, "build_log": t.build_log, "built_at": t.built_at,
        "limits": dict(t.limits) or None, "warm_pool": t.warm_pool,
    }  # fmt: skip


def _tool(row: sa.Row[Any]) -> ToolRecord:
    m = row._mapping
    return ToolRecord(
        id=m["id"], name=m["name"], created_at=m["created_at"], updated_at=m["updated_at"],
        description=m["description"], docker_image=m["docker_image"], input_schema=m["input_schema"],
        output_schema=m["output_schema"], dockerfile=m["dockerfile"], build_status=m["build_status"],
        is_active=m["is_active"], version=m["version"], script=m["script"], context=m["context"] or {},
        image_digest=m["image_digest"], build_error=m["build_error"], build_log=m["build_log"],
        built_at=m["built_at"], limits=m["limits"] or {}, warm_pool=m["warm_pool"],
    )  # fmt: skip


class SqlToolRepository(_Repository):
    async def add(self, tool: ToolRecord) -> None:
        values = {"id": tool.id, "created_at": tool.created_at, **_tool_values(tool)}
        await self._insert_new(TOOLS, values, f"tool {tool.id!r} or name {tool.name!r}")

    async def get(self, tool_id: str) -> ToolRecord:
        return _tool(await self._one(sa.select(TOOLS).where(TOOLS.c.id == tool_id), "tool", tool_id))

    async def get_by_name(self, name: str) -> ToolRecord:
        return _tool(await self._one(sa.select(TOOLS).where(TOOLS.c.name == name), "tool", name))

    async def update(self, tool: ToolRecord) -> None:
        stmt = TOOLS.update().where(TOOLS.c.id == tool.id).values(**_tool_values(tool))
        await self._change(stmt, "tool", tool.id, unique=f"name {tool.name!r}")

    async def delete(self, tool_id: str) -> None:
        await self._change(TOOLS.delete().where(TOOLS.c.id == tool_id), "tool", tool_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[ToolRecord]:
        return await _paged(self._conn, sa.select(TOOLS), [TOOLS.c.name], descending=False,
                            cursor=cursor, limit=limit, convert=_tool)  # fmt: skip


class SqlIdempotencyRepository(_Repository):
    async def find(self, key: str) -> IdempotencyRecord | None:
        row = (await self._conn.execute(sa.select(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key))).first()
        if row is None:
            return None
        m = row._mapping
        return IdempotencyRecord(key=m["key"], request_hash=m["request_hash"], created_at=m["created_at"],
                                 response=m["response"])  # fmt: skip

    async def add(self, record: IdempotencyRecord) -> None:
        values = {"key": record.key, "request_hash": record.request_hash, "created_at": record.created_at,
                  "response": None if record.response is None else dict(record.response)}  # fmt: skip
        await self._insert_new(IDEMPOTENCY_KEYS, values, "idempotency key")

    async def delete(self, key: str) -> None:
        await self._change(IDEMPOTENCY_KEYS.delete().where(IDEMPOTENCY_KEYS.c.key == key), "idempotency key", key)

    async def purge_before(self, cutoff: float) -> int:
        result = await self._conn.execute(IDEMPOTENCY_KEYS.delete().where(IDEMPOTENCY_KEYS.c.created_at < cutoff))
        return int(result.rowcount)


# -- platform scope --------------------------------------------------------------------------------------
def _tenant(row: sa.Row[Any]) -> Tenant:
    m = row._mapping
    return Tenant(id=m["id"], slug=m["slug"], name=m["name"], db_schema=m["db_schema"], created_at=m["created_at"])


class SqlTenantRepository(_Repository):
    async def add(self, tenant: Tenant) -> None:
        values = {"id": tenant.id, "slug": tenant.slug, "name": tenant.name, "db_schema": tenant.db_schema,
                  "created_at": tenant.created_at}  # fmt: skip
        await self._insert_new(TENANTS, values, f"tenant {tenant.id!r}, slug {tenant.slug!r} or its schema")

    async def get(self, tenant_id: str) -> Tenant:
        return _tenant(await self._one(sa.select(TENANTS).where(TENANTS.c.id == tenant_id), "tenant", tenant_id))

    async def get_by_slug(self, slug: str) -> Tenant:
        return _tenant(await self._one(sa.select(TENANTS).where(TENANTS.c.slug == slug), "tenant", slug))

    async def delete(self, tenant_id: str) -> None:
        await self._conn.execute(USERS.delete().where(USERS.c.tenant_id == tenant_id))
        await self._change(TENANTS.delete().where(TENANTS.c.id == tenant_id), "tenant", tenant_id)

    async def list(self, cursor: str | None = None, limit: int = 50) -> Page[Tenant]:
        return await _paged(self._conn, sa.select(TENANTS), [TENANTS.c.created_at, TENANTS.c.id],
                            descending=False, cursor=cursor, limit=limit, convert=_tenant)  # fmt: skip


def _user(row: sa.Row[Any]) -> User:
    m = row._mapping
    return User(id=m["id"], tenant_id=m["tenant_id"], email=m["email"], role=Role(m["role"]),
                password_hash=m["password_hash"], is_active=m["is_active"], created_at=m["created_at"])  # fmt: skip


class SqlUserRepository(_Repository):
    async def add(self, user: User) -> None:
        values = {
            "id": user.id, "tenant_id": user.tenant_id, "email": user.email.strip().lower(),
            "password_hash": user.password_hash, "role": str(user.role), "is_active": user.is_active,
            "created_at": user.created_at or datetime.now(UTC),
        }  # fmt: skip
        try:
            await self._insert_new(USERS, values, f"user {user.id!r} or e-mail {values['email']!r}")
        except IntegrityError as exc:
            if _is_fk_violation(exc):
                raise NotFound("tenant", user.tenant_id) from None
            raise

    async def get(self, user_id: str) -> User:
        return _user(await self._one(sa.select(USERS).where(USERS.c.id == user_id), "user", user_id))

    async def get_by_email(self, email: str) -> User:
        normalized = email.strip().lower()
        return _user(await self._one(sa.select(USERS).where(USERS.c.email == normalized), "user", normalized))

    async def update(self, user: User) -> None:
        email = user.email.strip().lower()
        stmt = (
            USERS.update()
            .where(USERS.c.id == user.id)
            .values(email=email, password_hash=user.password_hash, role=str(user.role), is_active=user.is_active)
        )
        await self._change(stmt, "user", user.id, unique=f"e-mail {email!r}")

    async def delete(self, user_id: str) -> None:
        await self._change(USERS.delete().where(USERS.c.id == user_id), "user", user_id)

    async def list_for_tenant(self, tenant_id: str, cursor: str | None = None, limit: int = 50) -> Page[User]:
        query = sa.select(USERS).where(USERS.c.tenant_id == tenant_id)
        return await _paged(self._conn, query, [USERS.c.email], descending=False,
                            cursor=cursor, limit=limit, convert=_user)  # fmt: skip
