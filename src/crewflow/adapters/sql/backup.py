"""Per-tenant backups and restores: ``crewflow backup`` / ``crewflow restore``.

A backup is a directory::

    manifest.json            format, version, backend, revisions, tenants, sha256 of every file
    pg/batch-00000.dump      PostgreSQL: ``pg_dump -Fc`` of a batch of tenant schemas
    sqlite/tenant_<id>.db    SQLite: the tenant's database file (sqlite3 online backup API)
    public/tenant_<id>.json  the tenant's platform rows: its ``public.tenants`` row and its users
    logs/tenant_<id>.jsonl   MongoDB log store only: the tenant's log documents (MongoDB extended JSON)

PostgreSQL
    A whole-database ``pg_dump`` runs out of lock slots at thousands of tenant schemas, and every
    ``pg_dump`` invocation reads the whole catalog (≈1 s at 1,000 schemas) however few schemas it dumps.
    So schemas are dumped in *batches*, one ``pg_dump -n s1 -n s2 …`` per batch, sized so that the
    concurrent dumps together hold at most half of the server's lock table
    (``max_locks_per_transaction * (max_connections + max_prepared_transactions)``); ``--jobs`` dumps run at
    once. Every dump, the alembic revisions and the platform rows are read in one exported snapshot
    (``pg_export_snapshot`` + ``pg_dump --snapshot``), so the whole backup is one consistent point in time.
    One tenant is restored from its batch archive with ``pg_restore -n <schema>`` (≈50 ms of archive
    reading), streamed into ``psql`` inside *one* transaction together with ``CREATE SCHEMA``, the
    migrations from the backup's revision to head and the platform rows: all or nothing.

SQLite (embedded)
    Each tenant file is copied with the sqlite3 online backup API (consistent while the server runs); the
    platform rows come from the main file. Restore copies the file next to its place, checks and upgrades
    it, inserts the rows in a main-file transaction and renames the file into place before the commit
    (stop the server first: it keeps tenant files open).

Output is atomic and resumable: everything is written into ``<out>.partial/`` (every file to a temporary
name, renamed when complete), each finished unit is recorded in a journal there, and the directory is
renamed to ``<out>`` once ``manifest.json`` is written. A rerun of an interrupted backup reuses the units
the journal lists (after checking their checksums) and dumps only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL, make_url

from crewflow import __version__
from crewflow.adapters.sql.engine import tenant_schema
from crewflow.adapters.sql.migrate import asyncpg_connect_kwargs
from crewflow.adapters.sql.migrations import head_revision, known_revisions, render_upgrade_sql, script_directory

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BackupError",
    "BackupReport",
    "Manifest",
    "RestoreReport",
    "TenantEntry",
    "backup",
    "read_manifest",
    "restore",
    "schemas_per_dump",
]

FORMAT = "crewflow-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
Backend = Literal["postgresql", "sqlite"]
Progress = Callable[[str], None]

_COLUMN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SNAPSHOT = re.compile(r"^[0-9A-F]+-[0-9A-F]+-[0-9]+$")
_MAX_SCHEMAS_PER_DUMP = 250
_MONGO_KINDS = ("events", "chat", "audit")


class BackupError(Exception):
    """An operator-facing failure, one line. ``code``: 2 bad input (nothing was changed), 1 operation failed."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- manifest --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TenantEntry:
    id: str
    slug: str
    schema: str
    revision: str | None  # the tenant schema's alembic revision when it was backed up
    archive: str  # relative path: the pg_dump archive holding the schema, or the SQLite file
    public: str  # relative path of the platform rows (JSON)
    logs: str | None = None  # relative path of the MongoDB log documents (JSON lines)

    def files(self) -> list[str]:
        return [self.archive, self.public] + ([self.logs] if self.logs else [])

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "slug": self.slug, "schema": self.schema, "revision": self.revision,
                "archive": self.archive, "public": self.public, "logs": self.logs}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Manifest:
    backend: Backend
    created_at: str
    crewflow_version: str
    public_revision: str | None
    tenant_head: str
    log_store: Literal["sql", "mongodb"]
    tenants: tuple[TenantEntry, ...]
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256": hex, "bytes": n}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "backend": self.backend, "created_at": self.created_at,
            "crewflow_version": self.crewflow_version, "public_revision": self.public_revision,
            "tenant_head": self.tenant_head, "log_store": self.log_store,
            "tenants": [t.to_json() for t in self.tenants], "files": self.files,
        }  # fmt: skip

    def select(self, wanted: Sequence[str] | None) -> list[TenantEntry]:
        """Entries by id or slug (None: all); ``BackupError`` naming the first unknown one."""
        if wanted is None:
            return list(self.tenants)
        chosen: dict[str, TenantEntry] = {}
        for key in wanted:
            match = next((t for t in self.tenants if key in (t.id, t.slug)), None)
            if match is None:
                raise BackupError(f"the backup holds no tenant with id or slug {key!r}", 2)
            chosen[match.id] = match
        return list(chosen.values())


def _corrupt(source: Path, why: str) -> BackupError:
    return BackupError(f"{source / MANIFEST} is not a valid crewflow backup manifest: {why}", 2)


def read_manifest(source: Path) -> Manifest:
    """Read and validate ``<source>/manifest.json`` (structure only; ``verify`` checks the files)."""
    path = source / MANIFEST
    if not source.is_dir():
        raise BackupError(f"backup directory {source} does not exist", 2)
    if not path.is_file():
        raise BackupError(f"{source} is not a crewflow backup: {MANIFEST} is missing (an unfinished backup?)", 2)
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(source, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _corrupt(source, f"format is not {FORMAT!r}")
    if raw.get("version") != FORMAT_VERSION:
        raise _corrupt(source, f"format version {raw.get('version')!r} is not supported (expected {FORMAT_VERSION})")
    try:
        files = raw["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("sha256"), str) for k, v in files.items()
        ):
            raise TypeError("files must map paths to {sha256, bytes}")
        tenants: list[TenantEntry] = []
        for item in raw["tenants"]:
            entry = TenantEntry(
                id=_str(item["id"]), slug=_str(item["slug"]), schema=_str(item["schema"]),
                revision=_opt_str(item["revision"]), archive=_str(item["archive"]), public=_str(item["public"]),
                logs=_opt_str(item.get("logs")),
            )  # fmt: skip
            if tenant_schema(entry.id) != entry.schema:
                raise ValueError(f"tenant {entry.id!r} does not live in schema {entry.schema!r}")
            for name in entry.files():
                if name not in files or not _safe_relative(name):
                    raise ValueError(f"file {name!r} of tenant {entry.id!r} is not listed or not inside the backup")
            tenants.append(entry)
        backend = raw["backend"]
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"unknown backend {backend!r}")
        log_store = raw["log_store"]
        if log_store not in ("sql", "mongodb"):
            raise ValueError(f"unknown log store {log_store!r}")
        return Manifest(
            backend=backend, created_at=_str(raw["created_at"]), crewflow_version=_str(raw["crewflow_version"]),
            public_revision=_opt_str(raw["public_revision"]), tenant_head=_str(raw["tenant_head"]),
            log_store=log_store, tenants=tuple(tenants), files=files,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(source, f"{type(exc).__name__}: {exc}") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _safe_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


async def verify(source: Path, manifest: Manifest, names: Sequence[str]) -> None:
    """Check that each file exists with the manifest's checksum (``BackupError`` on the first mismatch)."""

    def check() -> None:
        for name in dict.fromkeys(names):
            path = source / name
            if not path.is_file():
                raise BackupError(f"backup file {name} is missing from {source}", 2)
            if _sha256(path) != manifest.files[name]["sha256"]:
                raise BackupError(f"backup file {name} is corrupt (checksum mismatch)", 2)

    await asyncio.to_thread(check)


# -- output directory ------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class _Unit:
    """A finished piece of the backup (one pg_dump batch, or one SQLite tenant) as the journal records it."""

    name: str
    tenants: list[TenantEntry]
    files: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.name, "tenants": [t.to_json() for t in self.tenants], "files": self.files}


class _Output:
    """``<out>.partial``: the journal of finished units, renamed to ``<out>`` when the manifest is written."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial")

    def open(self, wanted_ids: set[str], progress: Progress) -> list[_Unit]:
        """Create (or resume) the partial directory; returns the reusable finished units."""
        if self.out.exists():
            raise BackupError(f"{self.out} already exists: choose a new directory for each backup", 2)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(mode=0o700, exist_ok=True)
        self.partial.chmod(0o700)  # it holds password hashes and sealed keys: the owner only
        for sub in ("pg", "sqlite", "public", "logs"):
            (self.partial / sub).mkdir(exist_ok=True)
        journal = self.partial / JOURNAL
        kept: list[_Unit] = []
        if journal.is_file():
            for line in journal.read_text("utf-8").splitlines():
                unit = self._load(line, wanted_ids)
                if unit is not None:
                    kept.append(unit)
            if kept:
                progress(f"resuming {self.partial}: {sum(len(u.tenants) for u in kept)} tenants already backed up")
        # Rewrite the journal with what is kept (drops torn last lines and units of other selections).
        _write_atomic(journal, "".join(json.dumps(u.to_json()) + "\n" for u in kept).encode())
        return kept

    def _load(self, line: str, wanted_ids: set[str]) -> _Unit | None:
        try:
            raw = json.loads(line)
            tenants = [TenantEntry(**t) for t in raw["tenants"]]
            unit = _Unit(str(raw["unit"]), tenants, dict(raw["files"]))
        except (ValueError, KeyError, TypeError):
            return None  # a torn line from an interrupted write
        if not {t.id for t in tenants} <= wanted_ids:
            return None
        for name, record in unit.files.items():
            path = self.partial / name
            if not _safe_relative(name) or not path.is_file() or _sha256(path) != record.get("sha256"):
                return None
        return unit

    def record(self, unit: _Unit) -> None:
        with (self.partial / JOURNAL).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(unit.to_json()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self, manifest: Manifest) -> None:
        referenced = set(manifest.files)
        for path in sorted(self.partial.rglob("*"), reverse=True):  # leftovers of abandoned units
            rel = path.relative_to(self.partial).as_posix()
            if path.is_file() and rel not in referenced and rel != JOURNAL:
                path.unlink()
        for sub in ("pg", "sqlite", "public", "logs"):
            with contextlib.suppress(OSError):  # not empty: kept
                (self.partial / sub).rmdir()
        _write_atomic(self.partial / MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
        (self.partial / JOURNAL).unlink()
        _fsync_dir(self.partial)
        os.replace(self.partial, self.out)
        _fsync_dir(self.out.parent)


# -- reports ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BackupReport:
    out: Path
    tenants: int
    reused: int  # tenants taken over from an interrupted run
    dumps: int  # pg_dump invocations (or SQLite file copies) made by this run
    schemas_per_dump: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RestoreReport:
    restored: tuple[str, ...]
    upgraded: tuple[str, ...]  # restored at an older revision and migrated to head
    seconds: float


# -- log documents (MongoDB log store) -------------------------------------------------------------------
def _mongo_collections(tenant_id: str) -> tuple[str, str, str]:
    from crewflow.adapters.mongo.logstore import collection_names

    return collection_names(tenant_id)


async def _export_logs(log_store: Any, tenant_id: str, path: Path) -> None:
    """Write the tenant's documents of the three log collections as MongoDB extended JSON lines."""
    from bson import json_util

    database = log_store.database
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for kind, name in zip(_MONGO_KINDS, _mongo_collections(tenant_id), strict=True):
            async for doc in database[name].find({"tenant_id": tenant_id}).sort("_id", 1):
                fh.write(json_util.dumps({"collection": kind, "document": doc},
                                         json_options=json_util.CANONICAL_JSON_OPTIONS) + "\n")  # fmt: skip
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class _StagedLogs:
    """A tenant's log documents imported into temporary collections, swapped in by ``publish``."""

    def __init__(self, log_store: Any, tenant_id: str) -> None:
        self.log_store = log_store
        self.tenant_id = tenant_id
        self.suffix = "__restore_" + secrets.token_hex(4)
        self.staged: dict[str, str] = {}  # final collection -> temporary collection

    async def load(self, path: Path) -> None:
        from bson import json_util
        from bson.json_util import JSONOptions

        options = JSONOptions(tz_aware=True, tzinfo=UTC)
        names = dict(zip(_MONGO_KINDS, _mongo_collections(self.tenant_id), strict=True))
        batches: dict[str, list[dict[str, Any]]] = {name: [] for name in names.values()}
        database = self.log_store.database
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    item = json_util.loads(line, json_options=options)
                    final = names[item["collection"]]
                    doc = item["document"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise BackupError(f"{path.name} line {number}: not a log document ({exc})") from None
                if doc.get("tenant_id") != self.tenant_id:
                    raise BackupError(f"{path.name} line {number}: a document of another tenant")
                batch = batches[final]
                batch.append(doc)
                if len(batch) >= 1000:
                    await self._insert(database, final, batch)
        for final, batch in batches.items():
            await self._insert(database, final, batch)

    async def _insert(self, database: Any, final: str, batch: list[dict[str, Any]]) -> None:
        if batch:
            temp = self.staged.setdefault(final, final + self.suffix)
            await database[temp].insert_many(list(batch), ordered=True)
            batch.clear()

    async def publish(self) -> None:
        """Replace the tenant's log collections by the staged ones and rebuild their indexes."""
        await self.log_store.drop_tenant(self.tenant_id)  # old or leftover logs, and the store's cached classes
        database = self.log_store.database
        for final, temp in self.staged.items():
            await database[temp].rename(final)
        self.staged.clear()
        await self.log_store.models_for(self.tenant_id)  # init_beanie: createIndexes on the new collections

    async def publish_after_commit(self, slug: str) -> None:
        """``publish`` once the database part committed: a failure now cannot be rolled back, so it says so."""
        try:
            await self.publish()
        except Exception as exc:  # any driver error, reported as one line
            await self.discard()
            raise BackupError(f"tenant {slug}: its database part was restored but its log documents were not "
                              f"({type(exc).__name__}: {exc}); restore it again with --replace") from None  # fmt: skip

    async def discard(self) -> None:
        database = self.log_store.database
        for temp in self.staged.values():
            with contextlib.suppress(Exception):  # best effort: the error that got us here matters more
                await database[temp].drop()
        self.staged.clear()


# -- entry points ----------------------------------------------------------------------------------------
def _backend(database_url: str | URL) -> Backend:
    url = make_url(database_url)
    name = url.get_backend_name()
    if name == "postgresql":
        return "postgresql"
    if name == "sqlite":
        if not url.database or url.database == ":memory:":
            raise BackupError("the SQLite store needs a file path, e.g. sqlite+aiosqlite:///crewflow.db", 2)
        return "sqlite"
    raise BackupError(f"unsupported database {name!r}: use postgresql+asyncpg or sqlite+aiosqlite", 2)


async def backup(
    database_url: str | URL,
    out: Path,
    *,
    tenants: Sequence[str] | None = None,
    jobs: int = 2,
    schemas_per_dump: int | None = None,
    log_store: Any = None,
    progress: Progress | None = None,
) -> BackupReport:
    """Back up ``tenants`` (ids or slugs; None: every tenant) into the new directory ``out``.

    ``log_store``: a ``MongoLogStore`` when the logs live in MongoDB (their documents are exported too).
    Raises ``BackupError``; an interrupted run leaves ``<out>.partial`` for the next run to resume."""
    if jobs < 1:
        raise BackupError("--jobs must be at least 1", 2)
    if schemas_per_dump is not None and schemas_per_dump < 1:
        raise BackupError("--schemas-per-dump must be at least 1", 2)
    say = progress or (lambda _line: None)
    started = time.perf_counter()
    if _backend(database_url) == "postgresql":
        job: _Job = _PostgresBackup(make_url(database_url), jobs, schemas_per_dump, log_store, say)
    else:
        job = _SqliteBackup(make_url(database_url), jobs, log_store, say)
    return await job.run(Path(out), tenants, started)


async def restore(
    database_url: str | URL,
    source: Path,
    *,
    tenants: Sequence[str] | None = None,
    jobs: int = 4,
    replace: bool = False,
    log_store: Any = None,
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore ``tenants`` (ids or slugs; None: all) from the backup directory ``source``.

    Every check (manifest, checksums, backend, revisions, existing tenants, taken e-mails) runs before the
    first change; each tenant is then restored all or nothing. An existing tenant is refused unless
    ``replace``. Raises ``BackupError``."""
    if jobs < 1:
        raise BackupError("--jobs must be at least 1", 2)
    say = progress or (lambda _line: None)
    started = time.perf_counter()
    source = Path(source)
    manifest = read_manifest(source)
    backend = _backend(database_url)
    if manifest.backend != backend:
        raise BackupError(f"this is a {manifest.backend} backup; it cannot be restored into {backend}", 2)
    if manifest.log_store == "mongodb" and log_store is None:
        raise BackupError("the backup holds MongoDB logs: set CREWFLOW_MONGODB_URL (or --mongodb-url)", 2)
    entries = manifest.select(tenants)
    known = known_revisions(script_directory("tenant"))
    for entry in entries:
        if entry.revision is not None and entry.revision not in known:
            raise BackupError(f"tenant {entry.slug} was backed up at revision {entry.revision!r}, "
                              "unknown to this crewflow version (restore with the newer version)", 2)  # fmt: skip
    await verify(source, manifest, [name for entry in entries for name in entry.files()])
    if backend == "postgresql":
        job: _Restore = _PostgresRestore(make_url(database_url), jobs, log_store, say)
    else:
        job = _SqliteRestore(make_url(database_url), log_store, say)
    restored, upgraded = await job.run(source, manifest, entries, replace)
    return RestoreReport(tuple(restored), tuple(upgraded), time.perf_counter() - started)


@dataclass
class _Selected:
    id: str
    slug: str
    schema: str


def _resolve(rows: Sequence[tuple[str, str]], wanted: Sequence[str] | None) -> list[_Selected]:
    """(id, slug) rows → the tenants named in ``wanted`` by id or slug (None: every row, in order);
    ``BackupError`` for an unknown key."""
    if wanted is None:
        return [_Selected(i, s, tenant_schema(i)) for i, s in rows]
    chosen: dict[str, _Selected] = {}
    for key in wanted:
        match = next(((i, s) for i, s in rows if key in (i, s)), None)
        if match is None:
            raise BackupError(f"no tenant with id or slug {key!r}", 2)
        chosen[match[0]] = _Selected(match[0], match[1], tenant_schema(match[0]))
    return list(chosen.values())


class _Job(ABC):
    @abstractmethod
    async def run(self, out: Path, wanted: Sequence[str] | None, started: float) -> BackupReport: ...


class _Restore(ABC):
    @abstractmethod
    async def run(
        self, source: Path, manifest: Manifest, entries: list[TenantEntry], replace: bool
    ) -> tuple[list[str], list[str]]:
        """Restore ``entries``; returns (restored ids, ids migrated from an older revision)."""


def _manifest(backend: Backend, public_revision: str | None, log_store: Any, units: Sequence[_Unit]) -> Manifest:
    files: dict[str, dict[str, Any]] = {}
    entries: list[TenantEntry] = []
    for unit in units:
        files.update(unit.files)
        entries.extend(unit.tenants)
    entries.sort(key=lambda t: (t.slug, t.id))
    return Manifest(
        backend=backend, created_at=datetime.now(UTC).isoformat(), crewflow_version=__version__,
        public_revision=public_revision, tenant_head=head_revision("tenant"),
        log_store="mongodb" if log_store is not None else "sql", tenants=tuple(entries), files=files,
    )  # fmt: skip


async def _gather_limited(jobs: int, work: Sequence[Callable[[], Any]]) -> None:
    """Run the coroutine factories ``jobs`` at a time; the first failure cancels the rest and is raised."""
    semaphore = asyncio.Semaphore(jobs)

    async def one(make: Callable[[], Any]) -> None:
        async with semaphore:
            await make()

    try:
        async with asyncio.TaskGroup() as group:
            for make in work:
                group.create_task(one(make))
    except BaseExceptionGroup as group:  # report one error (a BackupError if any), not a group traceback
        flat: list[BaseException] = []
        pending: list[BaseException] = [group]
        while pending:
            item = pending.pop(0)
            if isinstance(item, BaseExceptionGroup):
                pending.extend(item.exceptions)
            else:
                flat.append(item)
        raise next((e for e in flat if isinstance(e, BackupError)), flat[0]) from None


# -- PostgreSQL ------------------------------------------------------------------------------------------
def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools (version ≥ the server's)")
    return path


def libpq_target(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI (no password) and the environment for a client tool (``PGPASSWORD``)."""
    kwargs = asyncpg_connect_kwargs(url)
    uri = (f"postgresql://{quote(str(kwargs['user']), safe='')}@{quote(str(kwargs['host']), safe='')}:"
           f"{kwargs['port']}/{quote(str(kwargs['database']), safe='')}")  # fmt: skip
    env = dict(os.environ)
    env["PGAPPNAME"] = "crewflow-backup"
    if "password" in kwargs:
        env["PGPASSWORD"] = str(kwargs["password"])
    sslmode = url.query.get("sslmode") or url.query.get("ssl")
    if isinstance(sslmode, str) and sslmode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        env["PGSSLMODE"] = sslmode
    return uri, env


def _first_error(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line
    return lines[0] if lines else "no error message"


def _quote_ident(name: str) -> str:
    if not _COLUMN.match(name):
        raise BackupError(f"unexpected SQL identifier {name!r} in the backup", 2)
    return f'"{name}"'


def _dollar_quoted(text: str) -> str:
    while True:
        tag = f"$crewflow_{secrets.token_hex(4)}$"
        if tag not in text:
            return f"{tag}{text}{tag}"


def schemas_per_dump(lock_slots: int, locks_per_schema: int, jobs: int) -> int:
    """How many schemas one ``pg_dump`` may dump so that ``jobs`` concurrent dumps hold at most half the
    server's lock table (``lock_slots``). ``locks_per_schema``: the schema's tables + 2 (measured: one
    pg_dump of 200 schemas of 15 tables held ≈3,150 locks, ≈15.7 per schema; 4 concurrent dumps of 250
    schemas each ran out of shared memory on a 6,400-slot table)."""
    return max(1, min(_MAX_SCHEMAS_PER_DUMP, lock_slots // 2 // max(1, jobs) // max(1, locks_per_schema)))


class _PostgresBackup(_Job):
    def __init__(self, url: URL, jobs: int, per_dump: int | None, log_store: Any, say: Progress) -> None:
        self.url = url
        self.jobs = jobs
        self.per_dump = per_dump
        self.log_store = log_store
        self.say = say
        self.uri, self.env = libpq_target(url)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**asyncpg_connect_kwargs(self.url))

    async def run(self, out: Path, wanted: Sequence[str] | None, started: float) -> BackupReport:
        pg_dump = _tool("pg_dump")
        output = _Output(out)
        conn = await self._connect()
        try:
            # One consistent point in time for every dump, revision and platform row: an exported snapshot,
            # held by this transaction (which reads only public tables and the catalog: few locks).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                if not _SNAPSHOT.match(snapshot):
                    raise BackupError(f"unexpected snapshot id {snapshot!r}")
                if await conn.fetchval("SELECT to_regclass('public.tenants')") is None:
                    raise BackupError("the database has no crewflow tables: run `crewflow migrate` first")
                public_revision = None
                if await conn.fetchval("SELECT to_regclass('public.alembic_version')") is not None:
                    public_revision = await conn.fetchval("SELECT version_num FROM public.alembic_version")
                rows = await conn.fetch("SELECT id, slug FROM public.tenants ORDER BY created_at, id")
                selected = _resolve([(r[0], r[1]) for r in rows], wanted)
                schemas = [t.schema for t in selected]
                present = {
                    r[0]: r[1]
                    for r in await conn.fetch(
                        "SELECT n.nspname, count(c.oid) FROM pg_namespace n LEFT JOIN pg_class c ON "
                        "c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f') "
                        "WHERE n.nspname = ANY($1::text[]) GROUP BY n.nspname",
                        schemas,
                    )
                }
                missing = [t for t in selected if t.schema not in present]
                if missing:
                    t = missing[0]
                    raise BackupError(
                        f"tenant {t.slug} ({t.id}) has no schema {t.schema}; "
                        f"{len(missing)} tenant(s) without a schema, back up the others by name"
                    )
                lock_slots = await conn.fetchval(
                    "SELECT current_setting('max_locks_per_transaction')::int * "
                    "(current_setting('max_connections')::int + current_setting('max_prepared_transactions')::int)"
                )
                per_schema = max(present.values(), default=15) + 2
                size = self.per_dump or schemas_per_dump(lock_slots, per_schema, self.jobs)
                kept = await asyncio.to_thread(output.open, {t.id for t in selected}, self.say)
                done = {t.id for unit in kept for t in unit.tenants}
                todo = [t for t in selected if t.id not in done]
                taken = {unit.name for unit in kept}
                names = (f"batch-{n:05d}" for n in range(1_000_000) if f"batch-{n:05d}" not in taken)
                batches = [(next(names), todo[i : i + size]) for i in range(0, len(todo), size)]
                units = list(kept)
                self.say(f"{len(selected)} tenants: {len(todo)} to dump in {len(batches)} pg_dump runs of up to "
                         f"{size} schemas, {self.jobs} at a time")  # fmt: skip
                finished = [len(done)]

                async def dump(name: str, batch: list[_Selected]) -> None:
                    unit = await self._dump_batch(pg_dump, output.partial, snapshot, name, batch)
                    output.record(unit)
                    units.append(unit)
                    finished[0] += len(batch)
                    self.say(f"dumped {finished[0]}/{len(selected)} tenants")

                await _gather_limited(self.jobs, [functools.partial(dump, n, b) for n, b in batches])
                manifest = _manifest("postgresql", public_revision, self.log_store, units)
                await asyncio.to_thread(output.finish, manifest)
        finally:
            await conn.close()
        return BackupReport(out, len(selected), len(done), len(batches), size, time.perf_counter() - started)

    async def _dump_batch(self, pg_dump: str, partial: Path, snapshot: str, name: str, batch: list[_Selected]) -> _Unit:
        conn = await self._connect()
        try:
            # The batch's revisions and platform rows, in the backup's snapshot (locks: this batch only).
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                ids = [t.id for t in batch]
                versioned = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relname = 'alembic_version' AND n.nspname = ANY($1::text[])",
                        [t.schema for t in batch],
                    )
                }
                revisions: dict[str, str | None] = {t.schema: None for t in batch}
                selects = [
                    f"SELECT '{t.schema}', version_num FROM {_quote_ident(t.schema)}.alembic_version"  # noqa: S608
                    for t in batch
                    if t.schema in versioned
                ]
                if selects:
                    revisions.update({r[0]: r[1] for r in await conn.fetch(" UNION ALL ".join(selects))})
                tenant_rows = {
                    r[0]: r[1]
                    for r in await conn.fetch(
                        "SELECT id, row_to_json(t)::text FROM public.tenants t WHERE id = ANY($1::text[])", ids
                    )
                }
                user_rows = {
                    r[0]: r[1]
                    for r in await conn.fetch(
                        "SELECT tenant_id, json_agg(u ORDER BY u.id)::text FROM public.users u "
                        "WHERE tenant_id = ANY($1::text[]) GROUP BY tenant_id",
                        ids,
                    )
                }
        finally:
            await conn.close()
        archive = f"pg/{name}.dump"
        tmp = partial / (archive + ".tmp")
        args = [pg_dump, "--format=custom", f"--snapshot={snapshot}", "--strict-names", f"--file={tmp}",
                *[f"--schema={t.schema}" for t in batch], f"--dbname={self.uri}"]  # fmt: skip
        try:
            await _run_tool(args, self.env)
        except BackupError as exc:
            if "out of shared memory" in str(exc):
                raise BackupError(f"{exc} (the lock table is full: lower --jobs or --schemas-per-dump, or raise "
                                  "max_locks_per_transaction; rerun to resume)") from None  # fmt: skip
            raise
        os.replace(tmp, partial / archive)
        entries: list[TenantEntry] = []
        for t in batch:
            if t.id not in tenant_rows:
                raise BackupError(f"tenant {t.slug} ({t.id}) was dropped while backing up")
            public = f"public/{t.schema}.json"
            payload = '{"tenant": ' + tenant_rows[t.id] + ', "users": ' + user_rows.get(t.id, "[]") + "}"
            await asyncio.to_thread(_write_atomic, partial / public, payload.encode())
            logs = None
            if self.log_store is not None:
                logs = f"logs/{t.schema}.jsonl"
                await _export_logs(self.log_store, t.id, partial / logs)
            entries.append(TenantEntry(t.id, t.slug, t.schema, revisions[t.schema], archive, public, logs))
        names = sorted({name for e in entries for name in e.files()})
        files = await asyncio.to_thread(lambda: {n: _file_record(partial / n) for n in names})
        return _Unit(name, entries, files)


async def _run_tool(args: Sequence[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        _, stderr = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise BackupError(f"{Path(args[0]).name} failed: {_first_error(stderr)}")


class _PostgresRestore(_Restore):
    def __init__(self, url: URL, jobs: int, log_store: Any, say: Progress) -> None:
        self.url = url
        self.jobs = jobs
        self.log_store = log_store
        self.say = say
        self.uri, self.env = libpq_target(url)
        self.head = head_revision("tenant")
        self._upgrades: dict[str | None, str] = {}

    async def run(
        self, source: Path, manifest: Manifest, entries: list[TenantEntry], replace: bool
    ) -> tuple[list[str], list[str]]:
        pg_restore, psql = _tool("pg_restore"), _tool("psql")
        publics = {e.id: json.loads((source / e.public).read_text("utf-8")) for e in entries}
        await self._check(entries, publics, replace)
        for entry in entries:
            if entry.revision != self.head and entry.revision not in self._upgrades:
                self._upgrades[entry.revision] = render_upgrade_sql("tenant", entry.revision)
        restored: list[str] = []
        failures: list[str] = []

        async def one(entry: TenantEntry) -> None:
            try:
                await self._restore_one(pg_restore, psql, source, entry, publics[entry.id], replace)
            except BackupError as exc:
                failures.append(f"{entry.slug}: {exc}")
                self.say(f"FAILED {entry.slug} ({entry.id}): {exc}")
                return
            restored.append(entry.id)
            self.say(f"restored {entry.slug} ({entry.id}) [{len(restored)}/{len(entries)}]")

        await _gather_limited(self.jobs, [functools.partial(one, e) for e in entries])
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise BackupError(f"{len(restored)} restored, {len(failures)} failed: "
                              f"{failures[0]}{more}")  # fmt: skip
        return restored, [e.id for e in entries if e.revision != self.head]

    async def _check(self, entries: list[TenantEntry], publics: dict[str, Any], replace: bool) -> None:
        """Refuse before any change: tables missing, tenants present (unless replace), slugs or e-mails taken."""
        conn = await asyncpg.connect(**asyncpg_connect_kwargs(self.url))
        try:
            if await conn.fetchval("SELECT to_regclass('public.tenants')") is None:
                raise BackupError("the database has no crewflow tables: run `crewflow migrate` first", 2)
            ids = [e.id for e in entries]
            taken = await conn.fetch(
                "SELECT id, slug FROM public.tenants WHERE id = ANY($1::text[]) OR slug = ANY($2::text[])",
                ids, [e.slug for e in entries],
            )  # fmt: skip
            schemas = {
                r[0]
                for r in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", [e.schema for e in entries]
                )
            }
            emails = [u["email"] for e in entries for u in publics[e.id]["users"]]
            foreign = await conn.fetch(
                "SELECT email, tenant_id FROM public.users "
                "WHERE email = ANY($1::text[]) AND tenant_id <> ALL($2::text[])",
                emails,
                ids,
            )
        finally:
            await conn.close()
        by_id = {e.id: e for e in entries}
        for tenant_id, slug in taken:
            if tenant_id not in by_id:
                raise BackupError(f"slug {slug!r} belongs to another tenant ({tenant_id}); drop or rename it first", 2)
            if not replace:
                raise BackupError(f"tenant {slug} ({tenant_id}) already exists; pass --replace to overwrite it", 2)
        for entry in entries:
            if entry.schema in schemas and not replace:
                raise BackupError(f"schema {entry.schema} of tenant {entry.slug} already exists; "
                                  "pass --replace to overwrite it", 2)  # fmt: skip
        if foreign:
            raise BackupError(f"e-mail {foreign[0][0]} is used by a user of another tenant ({foreign[0][1]})", 2)

    def _script_head(self, entry: TenantEntry, replace: bool) -> str:
        schema = _quote_ident(entry.schema)
        lines = ["BEGIN;"]
        if replace:
            lines += [
                f"DELETE FROM public.tenants WHERE id = {_dollar_quoted(entry.id)};",  # noqa: S608 - users cascade
                f"DROP SCHEMA IF EXISTS {schema} CASCADE;",
            ]
        lines.append(f"CREATE SCHEMA {schema};")
        return "\n".join(lines) + "\n"

    def _script_tail(self, entry: TenantEntry, public: dict[str, Any]) -> str:
        schema = _quote_ident(entry.schema)
        parts = [
            # pg_restore -n prints nothing for a schema the archive lacks: never commit an empty tenant
            f"DO $check$ BEGIN IF to_regclass('{schema}.agents') IS NULL THEN RAISE EXCEPTION "
            f"'the archive holds no tables of schema {entry.schema}'; END IF; END $check$;",
            # the tables keep their owner from the dump; the schema (created here) gets the same owner
            f"DO $owner$ BEGIN EXECUTE format('ALTER SCHEMA %I OWNER TO %I', '{entry.schema}', (SELECT tableowner "  # noqa: S608 - validated schema name
            f"FROM pg_catalog.pg_tables WHERE schemaname = '{entry.schema}' AND tablename = 'agents')); END $owner$;",
        ]
        if entry.revision != self.head:
            parts += [f"SET LOCAL search_path TO {schema};", self._upgrades[entry.revision],
                      "SET LOCAL search_path TO public;"]  # fmt: skip
        tenant = public["tenant"]
        if tenant.get("id") != entry.id:
            raise BackupError(f"{entry.public} holds tenant {tenant.get('id')!r}, not {entry.id!r}", 2)
        columns = ", ".join(_quote_ident(c) for c in tenant)
        row = _dollar_quoted(json.dumps(tenant))
        parts.append(
            f"INSERT INTO public.tenants ({columns}) SELECT {columns} "  # noqa: S608 - quoted identifiers and literal
            f"FROM json_populate_record(NULL::public.tenants, {row}::json);"
        )
        users = public["users"]
        if users:
            keys = list(dict.fromkeys(k for u in users for k in u))
            if any(u.get("tenant_id") != entry.id for u in users):
                raise BackupError(f"{entry.public} holds users of another tenant", 2)
            columns = ", ".join(_quote_ident(c) for c in keys)
            rows = _dollar_quoted(json.dumps(users))
            parts.append(
                f"INSERT INTO public.users ({columns}) SELECT {columns} "  # noqa: S608 - quoted identifiers and literal
                f"FROM json_populate_recordset(NULL::public.users, {rows}::json);"
            )
        parts.append("COMMIT;")
        return "\n" + "\n".join(parts) + "\n"

    async def _restore_one(
        self, pg_restore: str, psql: str, source: Path, entry: TenantEntry, public: dict[str, Any], replace: bool
    ) -> None:
        staged = _StagedLogs(self.log_store, entry.id) if entry.logs else None
        try:
            if staged is not None and entry.logs:
                await staged.load(source / entry.logs)
            head, tail = self._script_head(entry, replace), self._script_tail(entry, public)
            await self._stream(pg_restore, psql, source / entry.archive, entry.schema, head, tail)
        except BaseException:
            if staged is not None:
                await staged.discard()
            raise
        if staged is not None:
            await staged.publish_after_commit(entry.slug)

    async def _stream(self, pg_restore: str, psql: str, archive: Path, schema: str, head: str, tail: str) -> None:
        """``head`` + ``pg_restore -n schema`` + ``tail`` into one psql session; ``tail`` (with the COMMIT) is
        sent only when pg_restore succeeded, so any failure leaves the transaction uncommitted."""
        reader = await asyncio.create_subprocess_exec(
            pg_restore, f"--schema={schema}", "--file=-", str(archive),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        writer = await asyncio.create_subprocess_exec(
            psql, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={self.uri}", "--file=-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )  # fmt: skip
        assert reader.stdout is not None
        assert reader.stderr is not None
        assert writer.stdin is not None
        assert writer.stderr is not None
        reader_err = asyncio.create_task(reader.stderr.read())
        writer_err = asyncio.create_task(writer.stderr.read())
        broken = False
        try:
            try:
                writer.stdin.write(head.encode())
                while chunk := await reader.stdout.read(1 << 16):
                    writer.stdin.write(chunk)
                    await writer.stdin.drain()
                if await reader.wait() == 0:
                    writer.stdin.write(tail.encode())
                    await writer.stdin.drain()
                writer.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                broken = True  # psql stopped on an error: its stderr says which
            restore_rc, psql_rc = await reader.wait(), await writer.wait()
            restore_msg, psql_msg = await reader_err, await writer_err
        except BaseException:
            for proc in (reader, writer):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        if psql_rc != 0 or broken:
            raise BackupError(f"psql: {_first_error(psql_msg)}")
        if restore_rc != 0:
            raise BackupError(f"pg_restore: {_first_error(restore_msg)}")


# -- SQLite ----------------------------------------------------------------------------------------------
def _sqlite_paths(url: URL) -> tuple[Path, Path]:
    database = str(url.database)
    return Path(database), Path(f"{database}.tenants")


@contextlib.contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        yield conn
    finally:
        conn.close()


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone():
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])
    return None


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class _SqliteBackup(_Job):
    def __init__(self, url: URL, jobs: int, log_store: Any, say: Progress) -> None:
        self.main, self.tenant_dir = _sqlite_paths(url)
        self.jobs = jobs
        self.log_store = log_store
        self.say = say

    async def run(self, out: Path, wanted: Sequence[str] | None, started: float) -> BackupReport:
        if not self.main.is_file():
            raise BackupError(f"{self.main} does not exist: nothing to back up", 2)

        def read_platform() -> tuple[str | None, list[tuple[str, str]]]:
            with _sqlite(self.main) as conn:
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tenants'").fetchone():
                    raise BackupError(f"{self.main} has no crewflow tables", 2)
                rows = conn.execute("SELECT id, slug FROM tenants ORDER BY created_at, id").fetchall()
                return _sqlite_revision(conn), [(r[0], r[1]) for r in rows]

        public_revision, rows = await asyncio.to_thread(read_platform)
        selected = _resolve(rows, wanted)
        for t in selected:
            if not (self.tenant_dir / f"{t.schema}.db").is_file():
                raise BackupError(f"tenant {t.slug} ({t.id}) has no database file {self.tenant_dir / t.schema}.db")
        output = _Output(out)
        kept = await asyncio.to_thread(output.open, {t.id for t in selected}, self.say)
        done = {t.id for unit in kept for t in unit.tenants}
        todo = [t for t in selected if t.id not in done]
        units = list(kept)

        async def copy(t: _Selected) -> None:
            unit = await asyncio.to_thread(self._copy, output.partial, t)
            if self.log_store is not None:
                logs = f"logs/{t.schema}.jsonl"
                await _export_logs(self.log_store, t.id, output.partial / logs)
                entry = unit.tenants[0]
                unit.tenants[0] = TenantEntry(entry.id, entry.slug, entry.schema, entry.revision, entry.archive,
                                              entry.public, logs)  # fmt: skip
                unit.files[logs] = await asyncio.to_thread(_file_record, output.partial / logs)
            output.record(unit)
            units.append(unit)
            self.say(f"copied {t.slug} ({len(units)}/{len(selected)})")

        await _gather_limited(self.jobs, [functools.partial(copy, t) for t in todo])
        await asyncio.to_thread(output.finish, _manifest("sqlite", public_revision, self.log_store, units))
        return BackupReport(out, len(selected), len(done), len(todo), 1, time.perf_counter() - started)

    def _copy(self, partial: Path, t: _Selected) -> _Unit:
        archive, public = f"sqlite/{t.schema}.db", f"public/{t.schema}.json"
        tmp = partial / (archive + ".tmp")
        tmp.unlink(missing_ok=True)
        with _sqlite(self.tenant_dir / f"{t.schema}.db") as src, _sqlite(tmp) as dst:
            src.backup(dst)  # the online backup API: a consistent copy even while the server writes
            revision = _sqlite_revision(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, partial / archive)
        with _sqlite(self.main) as conn:
            tenant = _rows(conn, "SELECT * FROM tenants WHERE id = ?", [t.id])
            users = _rows(conn, "SELECT * FROM users WHERE tenant_id = ? ORDER BY id", [t.id])
        if not tenant:
            raise BackupError(f"tenant {t.slug} ({t.id}) was dropped while backing up")
        _write_atomic(partial / public, json.dumps({"tenant": tenant[0], "users": users}).encode())
        entry = TenantEntry(t.id, t.slug, t.schema, revision, archive, public)
        return _Unit(t.schema, [entry], {n: _file_record(partial / n) for n in (archive, public)})


_SIDECARS = ("", "-wal", "-shm", "-journal")


class _SqliteRestore(_Restore):
    def __init__(self, url: URL, log_store: Any, say: Progress) -> None:
        self.main, self.tenant_dir = _sqlite_paths(url)
        self.log_store = log_store
        self.say = say
        self.head = head_revision("tenant")

    async def run(
        self, source: Path, manifest: Manifest, entries: list[TenantEntry], replace: bool
    ) -> tuple[list[str], list[str]]:
        publics = {e.id: json.loads((source / e.public).read_text("utf-8")) for e in entries}
        await asyncio.to_thread(self._check, entries, publics, replace)
        restored: list[str] = []
        for entry in entries:  # one at a time: Alembic's online upgrade is not safe concurrently
            staged = _StagedLogs(self.log_store, entry.id) if entry.logs else None
            try:
                if staged is not None and entry.logs:
                    await staged.load(source / entry.logs)
                await asyncio.to_thread(self._restore_one, source, entry, publics[entry.id], replace)
            except BaseException:
                if staged is not None:
                    await staged.discard()
                raise
            if staged is not None:
                await staged.publish_after_commit(entry.slug)
            restored.append(entry.id)
            self.say(f"restored {entry.slug} ({entry.id}) [{len(restored)}/{len(entries)}]")
        return restored, [e.id for e in entries if e.revision != self.head]

    def _check(self, entries: list[TenantEntry], publics: dict[str, Any], replace: bool) -> None:
        if not self.main.is_file():
            raise BackupError(f"{self.main} does not exist: run `crewflow migrate` first", 2)
        ids = {e.id for e in entries}
        with _sqlite(self.main) as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'tenants'").fetchone():
                raise BackupError(f"{self.main} has no crewflow tables: run `crewflow migrate` first", 2)
            for entry in entries:
                for tenant_id, slug in conn.execute(
                    "SELECT id, slug FROM tenants WHERE id = ? OR slug = ?", (entry.id, entry.slug)
                ).fetchall():
                    if tenant_id not in ids:
                        raise BackupError(f"slug {slug!r} belongs to another tenant ({tenant_id}); "
                                          "drop or rename it first", 2)  # fmt: skip
                    if not replace:
                        raise BackupError(f"tenant {slug} ({tenant_id}) already exists; pass --replace to overwrite it",
                                          2)  # fmt: skip
                if (self.tenant_dir / f"{entry.schema}.db").exists() and not replace:
                    raise BackupError(f"the database file of tenant {entry.slug} already exists; "
                                      "pass --replace to overwrite it", 2)  # fmt: skip
                for user in publics[entry.id]["users"]:
                    row = conn.execute("SELECT tenant_id FROM users WHERE email = ?", (user["email"],)).fetchone()
                    if row is not None and row[0] not in ids:
                        raise BackupError(f"e-mail {user['email']} is used by a user of another tenant ({row[0]})", 2)

    def _restore_one(self, source: Path, entry: TenantEntry, public: dict[str, Any], replace: bool) -> None:
        self.tenant_dir.mkdir(parents=True, exist_ok=True)
        target = self.tenant_dir / f"{entry.schema}.db"
        token = secrets.token_hex(4)
        staging = self.tenant_dir / f".restore-{entry.schema}-{token}.db"
        aside = self.tenant_dir / f".replaced-{entry.schema}-{token}.db"
        moved: list[tuple[Path, Path]] = []
        try:
            with _sqlite(source / entry.archive) as src, _sqlite(staging) as dst:
                src.backup(dst)
                if (problem := dst.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
                    raise BackupError(f"{entry.archive} fails the integrity check: {problem}", 2)
            if entry.revision != self.head:
                _upgrade_sqlite(staging)
            tenant, users = public["tenant"], public["users"]
            if tenant.get("id") != entry.id or any(u.get("tenant_id") != entry.id for u in users):
                raise BackupError(f"{entry.public} holds rows of another tenant", 2)
            with _sqlite(self.main) as conn:
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if replace:
                        conn.execute("DELETE FROM users WHERE tenant_id = ?", (entry.id,))
                        conn.execute("DELETE FROM tenants WHERE id = ?", (entry.id,))
                    _insert(conn, "tenants", [tenant])
                    _insert(conn, "users", users)
                    for suffix in _SIDECARS:  # the old file and its WAL must go together
                        old = Path(f"{target}{suffix}")
                        if old.exists():
                            os.replace(old, Path(f"{aside}{suffix}"))
                            moved.append((Path(f"{aside}{suffix}"), old))
                    os.replace(staging, target)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    if not staging.exists() and target.exists():
                        target.unlink()
                    for parked, original in moved:
                        os.replace(parked, original)
                    moved.clear()
                    raise
            for parked, _ in moved:
                parked.unlink(missing_ok=True)
        except sqlite3.Error as exc:
            raise BackupError(f"restoring {entry.slug}: {exc}") from None
        finally:
            for suffix in _SIDECARS:
                Path(f"{staging}{suffix}").unlink(missing_ok=True)


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        columns = list(row)
        names = ", ".join(_quote_ident(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", [row[c] for c in columns])  # noqa: S608


def _upgrade_sqlite(path: Path) -> None:
    import sqlalchemy as sa

    from crewflow.adapters.sql.migrations import upgrade_online

    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            upgrade_online(conn, "tenant")
    finally:
        engine.dispose()
