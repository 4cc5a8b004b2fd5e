"""One contract for every log store adapter: SQL (SQLite file, real PostgreSQL) and MongoDB through beanie
(an in-process fake always; a real server when ``CREWFLOW_MONGODB_URL`` is set).

The in-process fake is mongomock-motor behind a thin shim: beanie 2's ``init_beanie`` passes
``authorizedCollections``/``nameOnly`` to ``list_collection_names``, which mongomock rejects; the shim drops
those two keyword arguments and changes nothing else (ADR 0007).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from crewflow.adapters.logcursor import InvalidCursor
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord
from crewflow.ports.logstore import LogStore, TenantLogStore

pytestmark = pytest.mark.integration

MONGODB_URL = os.environ.get("CREWFLOW_MONGODB_URL")
# Recent times: the MongoDB TTL index (30 days) removes older records, on a real server and in the fake.
T0 = float(int(time.time()) - 3600)


# -- adapters under test ---------------------------------------------------------------------------------
@dataclass
class Harness:
    store: LogStore
    provision: Callable[[str], Awaitable[None]]

    async def tenant(self) -> tuple[str, TenantLogStore]:
        tenant_id = "t" + uuid.uuid4().hex[:12]
        await self.provision(tenant_id)
        return tenant_id, self.store.for_tenant(tenant_id)


async def _nothing_to_provision(_tenant_id: str) -> None:
    return None


class BeanieCompatibleFakeDatabase:
    """mongomock-motor database accepting the keyword arguments beanie 2 passes to ``list_collection_names``."""

    def __init__(self, database: Any) -> None:
        self._database = database

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)

    def __getitem__(self, name: str) -> Any:
        return self._database[name]

    async def list_collection_names(self, *, authorizedCollections: bool = False, nameOnly: bool = False,
                                    **kwargs: Any) -> list[str]:  # fmt: skip
        return list(await self._database.list_collection_names(**kwargs))


ADAPTERS = ["sql-sqlite", "sql-postgres", "mongo-inprocess-fake", "mongo-real"]


@pytest.fixture(params=ADAPTERS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    kind = request.param
    if kind.startswith("sql-"):
        from crewflow.adapters.sql.engine import PostgresDatabase, SqlDatabase, SqliteDatabase
        from crewflow.adapters.sql.logstore import SqlLogStore

        database: SqlDatabase
        if kind == "sql-sqlite":
            database = SqliteDatabase(request.getfixturevalue("sqlite_url"))
        else:  # the session's fresh PostgreSQL database (tests/integration/conftest.py)
            database = PostgresDatabase(request.getfixturevalue("postgres_url"), pool_size=2)
        await database.create_platform_schema()
        store = SqlLogStore(database, owns_database=True)
        created: list[str] = []

        async def provision(tenant_id: str) -> None:
            await database.create_tenant(tenant_id)
            created.append(tenant_id)

        try:
            yield Harness(store, provision)
        finally:
            for tenant_id in created:
                await database.drop_tenant(tenant_id)
            await store.close()
        return

    from crewflow.adapters.mongo import MongoLogStore

    if kind == "mongo-inprocess-fake":
        from mongomock_motor import AsyncMongoMockClient

        fake = BeanieCompatibleFakeDatabase(AsyncMongoMockClient(tz_aware=True)["crewflow_test"])
        store = MongoLogStore(fake)
        try:
            yield Harness(store, _nothing_to_provision)
        finally:
            await store.close()
        return

    if not MONGODB_URL:
        pytest.skip("mongo-real needs a MongoDB server: set CREWFLOW_MONGODB_URL=mongodb://host:27017")
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(MONGODB_URL, tz_aware=True)
    name = f"crewflow_test_{uuid.uuid4().hex[:10]}"
    store = MongoLogStore(client[name])
    try:
        yield Harness(store, _nothing_to_provision)
    finally:
        await store.close()
        await client.drop_database(name)
        await client.close()


def _event(execution_id: str, seq: int, *, at: float | None = None, data: dict[str, Any] | None = None,
           kind: EventKind = EventKind.NODE_LOG) -> ExecutionEvent:  # fmt: skip
    return ExecutionEvent(execution_id, seq, kind, T0 + seq if at is None else at, f"node-{seq}", data or {"n": seq})


def _chat(message_id: str, chat_id: str, at: float, content: str = "hi") -> ChatMessageRecord:
    return ChatMessageRecord(message_id, chat_id, "user", content, at, {"lang": "en"})


def _audit(entry_id: str, at: float, action: str = "flow.create") -> AuditEntry:
    return AuditEntry(entry_id, action, at, actor_id="u1", object_type="flow", object_id="f1",
                      request_id="r1", client_addr="10.0.0.1", details={"k": [1, 2]})  # fmt: skip


# -- the contract ----------------------------------------------------------------------------------------
async def test_events_round_trip_every_field(harness: Harness) -> None:
    _, logs = await harness.tenant()
    event = ExecutionEvent("ex1", 1, EventKind.NODE_COMPLETED, T0 + 0.123456, "research",
                           {"output": {"text": "ünïcode", "n": [1, 2.5, None, True]}})  # fmt: skip
    await logs.append_events([event])
    assert await logs.events_after("ex1") == [event]


async def test_appending_an_already_stored_event_is_a_no_op(harness: Harness) -> None:
    _, logs = await harness.tenant()
    await logs.append_events([_event("ex1", 1), _event("ex1", 2), _event("ex1", 3)])
    # a retried batch overlapping what is stored, with a duplicate inside the batch and a changed payload
    await logs.append_events([_event("ex1", 2, data={"changed": True}), _event("ex1", 4), _event("ex1", 4)])
    await logs.append_events([])
    stored = await logs.events_after("ex1")
    assert [e.seq for e in stored] == [1, 2, 3, 4]
    assert stored[1].data == {"n": 2}  # the first write wins


async def test_events_after_returns_later_events_of_one_execution_in_seq_order_up_to_limit(harness: Harness) -> None:
    _, logs = await harness.tenant()
    seqs = list(range(1, 11))
    random.Random(7).shuffle(seqs)
    await logs.append_events([_event("ex1", s) for s in seqs])
    await logs.append_events([_event("ex2", s) for s in range(1, 4)])
    assert [e.seq for e in await logs.events_after("ex1", after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert [e.seq for e in await logs.events_after("ex1", after_seq=8)] == [9, 10]
    assert await logs.events_after("ex1", after_seq=10) == []
    assert await logs.events_after("unknown") == []
    assert {e.execution_id for e in await logs.events_after("ex1")} == {"ex1"}


async def test_chat_messages_page_oldest_first_without_gaps_or_repeats(harness: Harness) -> None:
    _, logs = await harness.tenant()
    # ties on created_at are ordered by id; insertion order is shuffled
    messages = [_chat(f"m{i:02d}", "c1", T0 + i // 2, content=f"text {i}") for i in range(7)]
    shuffled = list(messages)
    random.Random(3).shuffle(shuffled)
    for message in shuffled:
        await logs.add_chat_message(message)
    await logs.add_chat_message(_chat("other", "c2", T0))

    seen: list[ChatMessageRecord] = []
    cursor: str | None = None
    sizes = []
    while True:
        page = await logs.chat_messages("c1", cursor=cursor, limit=3)
        seen.extend(page.items)
        sizes.append(len(page.items))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == sorted(messages, key=lambda m: (m.created_at, m.id))


async def test_a_page_that_ends_exactly_at_the_last_item_has_no_next_cursor(harness: Harness) -> None:
    _, logs = await harness.tenant()
    for i in range(3):
        await logs.add_chat_message(_chat(f"m{i}", "c1", T0 + i))
    page = await logs.chat_messages("c1", limit=3)
    assert len(page.items) == 3
    assert page.next_cursor is None
    empty = await logs.chat_messages("nobody")
    assert empty.items == ()
    assert empty.next_cursor is None


async def test_adding_the_same_chat_message_or_audit_entry_twice_stores_it_once(harness: Harness) -> None:
    _, logs = await harness.tenant()
    await logs.add_chat_message(_chat("m1", "c1", T0))
    await logs.add_chat_message(_chat("m1", "c1", T0))
    await logs.add_audit(_audit("a1", T0))
    await logs.add_audit(_audit("a1", T0))
    assert len((await logs.chat_messages("c1")).items) == 1
    assert len((await logs.audit_entries()).items) == 1


async def test_audit_entries_page_newest_first_and_round_trip_every_field(harness: Harness) -> None:
    _, logs = await harness.tenant()
    entries = [_audit(f"a{i:02d}", T0 + i // 3, action=f"act.{i}") for i in range(8)]
    shuffled = list(entries)
    random.Random(5).shuffle(shuffled)
    for entry in shuffled:
        await logs.add_audit(entry)
    seen: list[AuditEntry] = []
    page = await logs.audit_entries(limit=3)
    seen.extend(page.items)
    while page.next_cursor is not None:
        page = await logs.audit_entries(cursor=page.next_cursor, limit=3)
        seen.extend(page.items)
    assert seen == sorted(entries, key=lambda e: (e.created_at, e.id), reverse=True)
    sparse = AuditEntry("z", "auth.login.failed", T0 + 100)
    await logs.add_audit(sparse)
    assert (await logs.audit_entries(limit=1)).items == (sparse,)


async def test_a_cursor_the_store_did_not_issue_is_refused(harness: Harness) -> None:
    _, logs = await harness.tenant()
    with pytest.raises(InvalidCursor):
        await logs.chat_messages("c1", cursor="not-a-cursor")
    with pytest.raises(InvalidCursor):
        await logs.audit_entries(cursor="WyJ4IiwxXQ")  # ["x",1]: wrong types


async def test_purge_removes_records_older_than_the_cutoff_and_counts_them(harness: Harness) -> None:
    _, logs = await harness.tenant()
    await logs.append_events([_event("ex1", s, at=T0 + s) for s in range(1, 6)])  # at T0+1..T0+5
    for i in range(4):
        await logs.add_chat_message(_chat(f"m{i}", "c1", T0 + i))  # T0..T0+3
        await logs.add_audit(_audit(f"a{i}", T0 + i))
    removed = await logs.purge_before(T0 + 3)  # strictly before: events 1,2; chat m0-m2; audit a0-a2
    assert removed == 2 + 3 + 3
    assert [e.seq for e in await logs.events_after("ex1")] == [3, 4, 5]
    assert [m.id for m in (await logs.chat_messages("c1")).items] == ["m3"]
    assert [a.id for a in (await logs.audit_entries()).items] == ["a3"]
    assert await logs.purge_before(T0 + 3) == 0


async def test_purging_executions_removes_all_their_events_and_nothing_else(harness: Harness) -> None:
    _, logs = await harness.tenant()
    _, other = await harness.tenant()
    for logs_of in (logs, other):
        await logs_of.append_events([_event(ex, s) for ex in ("ex1", "ex2", "ex3") for s in (1, 2, 3)])
    await logs.add_chat_message(_chat("m1", "c1", T0))
    await logs.add_audit(_audit("a1", T0))

    assert await logs.purge_executions(["ex1", "ex3", "ex-unknown"]) == 6
    assert await logs.events_after("ex1") == []
    assert await logs.events_after("ex3") == []
    assert [e.seq for e in await logs.events_after("ex2")] == [1, 2, 3]
    assert await logs.purge_executions([]) == 0
    assert await logs.purge_executions(["ex1"]) == 0
    assert [m.id for m in (await logs.chat_messages("c1")).items] == ["m1"]
    assert [a.id for a in (await logs.audit_entries()).items] == ["a1"]
    assert [e.seq for e in await other.events_after("ex1")] == [1, 2, 3]  # the other tenant's are untouched


async def test_purging_chat_messages_by_age_keeps_events_and_audit_entries(harness: Harness) -> None:
    _, logs = await harness.tenant()
    _, other = await harness.tenant()
    for i in range(4):
        await logs.add_chat_message(_chat(f"m{i}", "c1", T0 + i))
        await other.add_chat_message(_chat(f"m{i}", "c1", T0 + i))
    await logs.append_events([_event("ex1", 1, at=T0)])
    await logs.add_audit(_audit("a1", T0))

    assert await logs.purge_chat_messages_before(T0 + 2) == 2  # strictly before: m0, m1
    assert [m.id for m in (await logs.chat_messages("c1")).items] == ["m2", "m3"]
    assert await logs.purge_chat_messages_before(T0 + 2) == 0
    assert [e.seq for e in await logs.events_after("ex1")] == [1]
    assert [a.id for a in (await logs.audit_entries()).items] == ["a1"]
    assert len((await other.chat_messages("c1")).items) == 4


async def test_one_tenant_never_sees_or_purges_another_tenants_records(harness: Harness) -> None:
    _, a = await harness.tenant()
    b_id, b = await harness.tenant()
    await a.append_events([_event("ex1", 1), _event("ex1", 2)])
    await a.add_chat_message(_chat("m1", "c1", T0))
    await a.add_audit(_audit("a1", T0))

    assert await b.events_after("ex1") == []
    assert (await b.chat_messages("c1")).items == ()
    assert (await b.audit_entries()).items == ()
    assert await b.purge_before(T0 + 1_000_000) == 0

    # the same ids in the other tenant are separate records, not duplicates
    await b.append_events([_event("ex1", 1, data={"tenant": "b"})])
    await b.add_chat_message(_chat("m1", "c1", T0, content="from b"))
    assert [e.data for e in await a.events_after("ex1")] == [{"n": 1}, {"n": 2}]
    assert [e.data for e in await b.events_after("ex1")] == [{"tenant": "b"}]
    assert [m.content for m in (await a.chat_messages("c1")).items] == ["hi"]

    await harness.store.drop_tenant(b_id)
    assert [e.seq for e in await a.events_after("ex1")] == [1, 2]
    assert len((await a.audit_entries()).items) == 1


async def test_dropping_a_tenant_removes_its_records(harness: Harness) -> None:
    tenant_id, logs = await harness.tenant()
    await logs.append_events([_event("ex1", 1)])
    await logs.add_chat_message(_chat("m1", "c1", T0))
    await logs.add_audit(_audit("a1", T0))
    await harness.store.drop_tenant(tenant_id)
    await harness.store.drop_tenant(tenant_id)  # idempotent
    # (SQL: the log tables stay in the tenant's schema/file, empty, until the relational store drops it)
    await harness.store.drop_tenant("t" + uuid.uuid4().hex[:12])  # a tenant that never existed: no error
    fresh = harness.store.for_tenant(tenant_id)
    assert await fresh.events_after("ex1") == []
    assert (await fresh.chat_messages("c1")).items == ()
    assert (await fresh.audit_entries()).items == ()


# -- MongoDB specifics (same fixtures, Mongo adapters only) ----------------------------------------------
@pytest.mark.parametrize("harness", ["mongo-inprocess-fake", "mongo-real"], indirect=True)
async def test_mongo_keeps_each_tenant_in_its_own_collections_with_time_and_ttl_indexes(harness: Harness) -> None:
    from crewflow.adapters.mongo import MongoLogStore, collection_names

    tenant_id, logs = await harness.tenant()
    await logs.append_events([_event("ex1", 1)])
    await logs.add_chat_message(_chat("m1", "c1", T0))
    await logs.add_audit(_audit("a1", T0))
    assert isinstance(harness.store, MongoLogStore)
    database = harness.store.database  # read the server's own view of the collections, not the adapter's
    names = collection_names(tenant_id)
    assert names == (f"execution_logs_{tenant_id}", f"chat_messages_{tenant_id}", f"audit_logs_{tenant_id}")
    for name in names:
        assert await database[name].count_documents({"tenant_id": tenant_id}) == 1
        indexes = [(list(dict(i["key"]).items()), i) for i in (await database[name].index_information()).values()]
        assert any(key == [("tenant_id", 1), ("created_at", 1)] for key, _ in indexes)
        ttl = [
            i["expireAfterSeconds"] for key, i in indexes if key == [("created_at", 1)] and "expireAfterSeconds" in i
        ]
        assert ttl == [30 * 86_400]
    await harness.store.drop_tenant(tenant_id)
    remaining = set(await database.list_collection_names())
    assert not remaining & set(names)


@pytest.mark.parametrize("tenant_id", ["", "a/b", "a.b", "x" * 65, "t$1"])
def test_mongo_refuses_tenant_ids_that_cannot_name_a_collection_verbatim(tenant_id: str) -> None:
    from crewflow.adapters.mongo import MongoLogStore

    with pytest.raises(ValueError, match="cannot name a MongoDB collection"):
        MongoLogStore(database=None).for_tenant(tenant_id)


def test_importing_crewflow_and_its_mongo_adapter_does_not_import_beanie_or_pymongo() -> None:
    code = (
        "import sys, crewflow, crewflow.adapters.mongo, crewflow.adapters.crypto;"
        "loaded = sorted(m for m in ('beanie', 'pymongo', 'motor') if m in sys.modules);"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
