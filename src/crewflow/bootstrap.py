"""The composition root: reads settings, picks adapters (embedded or production) and wires the use cases.

Plain typed functions rather than a DI container: every dependency is visible at its call site, mypy
checks the wiring, and nothing heavy is imported until the function that needs it runs (ADR 0001)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crewflow.adapters.memory.limits import UserStatusCache
from crewflow.adapters.runtime import ProviderRoutingRuntime, ScriptedRuntime
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine
from crewflow.domain.failover import Budget
from crewflow.domain.flow import FlowLimits
from crewflow.ports.auth import PasswordHasher, RateLimiter, TokenRevocations, TokenService
from crewflow.ports.bus import EventBus
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.llm import LLMGateway, ProviderConfig
from crewflow.ports.logstore import LogStore
from crewflow.ports.queue import JobQueue
from crewflow.ports.runtime import AgentRuntime, ToolBuilder, ToolSandbox
from crewflow.ports.secrets import SecretCipher
from crewflow.ports.uow import UnitOfWorkFactory
from crewflow.settings import Settings

if TYPE_CHECKING:
    from crewflow.adapters.arq.queue import ArqJobQueue
    from crewflow.adapters.metrics.prometheus import PrometheusMetrics
    from crewflow.adapters.redis import RedisAdapters
    from crewflow.application.chats import ChatService
    from crewflow.application.executions import ExecutionRecorder, ExecutionRunner, FlowResolver
    from crewflow.application.flow_cache import CachedFlowResolver
    from crewflow.application.providers import RepositoryProviderRegistry
    from crewflow.application.tools import ToolService
    from crewflow.application.webhooks import WebhookDispatcher
    from crewflow.ports.events import EventSink
    from crewflow.ports.metrics import Metrics
    from crewflow.ports.provisioning import TenantProvisioner
    from crewflow.ports.sessions import SessionStore

__all__ = [
    "ApiContainer",
    "Core",
    "LocalLLM",
    "WorkerContainer",
    "build_api_container",
    "build_core",
    "build_engine",
    "build_local_llm",
    "build_runtime",
    "build_worker_container",
    "lease_seconds",
    "queue_name",
    "worker_concurrency",
]


@dataclass(frozen=True, slots=True)
class LocalLLM:
    """A gateway over providers configured for one tenant (the CLI and library's providers file), with the
    hook to close their HTTP sessions."""

    gateway: LLMGateway
    registry: object

    async def aclose(self) -> None:
        from crewflow.adapters.llm.registry import InMemoryProviderRegistry

        if isinstance(self.registry, InMemoryProviderRegistry):
            await self.registry.close()


def build_local_llm(tenant_id: str, providers: Sequence[ProviderConfig], budget: Budget | None = None) -> LocalLLM:
    from crewflow.adapters.cache.memory import MemoryCache
    from crewflow.adapters.llm import build_provider
    from crewflow.adapters.llm.registry import InMemoryProviderRegistry
    from crewflow.application.gateway import Gateway
    from crewflow.ports.llm import ProviderEntry

    registry = InMemoryProviderRegistry()
    registry.set_tenant(tenant_id, [ProviderEntry(c, build_provider(c)) for c in providers], budget)
    return LocalLLM(Gateway(registry, cache=MemoryCache()), registry)


def build_runtime(settings: Settings, gateway: LLMGateway | None = None,
                  tools: ToolSandbox | None = None) -> AgentRuntime:  # fmt: skip
    """``scripted`` agents run offline; other providers run on CrewAI over ``gateway`` (built lazily, so
    CrewAI is imported only when such an agent runs). With a gateway configured and no explicit
    ``CREWFLOW_DEFAULT_PROVIDER``, agents without a provider use the tenant's provider chain."""

    def crewai_runtime() -> AgentRuntime:
        from crewflow.adapters.crewai.runtime import CrewAIRuntime

        assert gateway is not None
        return CrewAIRuntime(gateway, tools=tools)

    default = settings.default_provider
    if gateway is not None and "CREWFLOW_DEFAULT_PROVIDER" not in settings.extra:
        default = ""
    scripted = ScriptedRuntime(latency=settings.scripted_latency, stream=settings.scripted_latency > 0)
    return ProviderRoutingRuntime(scripted, crewai_runtime if gateway is not None else None,
                                  default_provider=default)  # fmt: skip


def build_engine(
    settings: Settings | None = None,
    *,
    runtime: AgentRuntime | None = None,
    gateway: LLMGateway | None = None,
    tools: ToolSandbox | None = None,
    limits: FlowLimits | None = None,
) -> Engine:
    settings = settings or Settings.from_env()
    return Engine(
        runtime or build_runtime(settings, gateway, tools),
        clock=SystemClock(),
        ids=UuidGenerator(),
        tools=tools,
        limits=limits,
    )


# -- the API ----------------------------------------------------------------------------------------------


@dataclass
class ApiContainer:
    """Everything the HTTP API needs, built once per process by ``build_api_container``."""

    settings: Settings
    clock: Clock
    ids: IdGenerator
    uow_factory: UnitOfWorkFactory
    logstore: LogStore
    provisioner: TenantProvisioner
    hasher: PasswordHasher
    tokens: TokenService
    revocations: TokenRevocations
    limiter: RateLimiter
    cipher: SecretCipher
    engine: Engine
    provider_registry: RepositoryProviderRegistry  # tenants' LLM providers for the gateway; writes invalidate
    bus: EventBus  # live execution events for WebSocket clients
    recorder: ExecutionRecorder  # where execution events go: checkpoints, replay log, bus
    queue: JobQueue  # runs executions (started with the app, closed first by ``aclose``)
    chats: ChatService  # chats with agents and crews; replies run in this process
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    # background work started by ``start`` on the loop that serves the app (the queue's own start included)
    starters: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    user_status: UserStatusCache = field(default_factory=UserStatusCache)  # read by the token middleware
    sessions: SessionStore | None = None  # login sessions (memory, or Redis with ``CREWFLOW_REDIS_URL``)
    metrics: Metrics | None = None  # served at /metrics (ADR 0013)
    # For WebSocket replays (``watch_execution``) only: with Redis, recent events come from the bus' streams
    # (ADR 0015); paged log reads and ``last_stored_seq`` must keep using ``logstore`` (the durable store).
    watch_logstore: LogStore | None = None
    tool_service: ToolService | None = None  # tool builds (queued) and test runs in the sandbox
    flow_cache: CachedFlowResolver | None = None  # flow versions for execute requests; flow writes invalidate

    async def start(self) -> None:
        """Start running executions (the in-process queue) and the background chores, on this loop."""
        await self.queue.start()
        for start in self.starters:
            await start()

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def _local_secret(settings: Settings, variable: str, filename: str, make: Callable[[], str]) -> str:
    """The setting ``variable`` if set; else a secret generated once and kept in the data directory (mode
    0600), so the embedded server keeps sessions and can read stored keys across restarts. Production
    deployments set the variable (see docs)."""
    import os
    from pathlib import Path

    configured = settings.extra.get(variable)
    if configured:
        return configured
    path = Path(settings.data_dir) / filename
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    # Written under a temporary name and linked into place: processes starting together (API and workers
    # on one data directory) agree on the first secret and never read a half-written file.
    staging = path.with_name(f".{filename}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    try:
        os.link(staging, path)
    except FileExistsError:
        secret = path.read_text().strip()
    finally:
        staging.unlink()
    return secret


def _jwt_secret(settings: Settings) -> str:
    import secrets

    return _local_secret(settings, "CREWFLOW_JWT_SECRET", "jwt-secret", lambda: secrets.token_urlsafe(64))


def _cipher_keyring(settings: Settings) -> str:
    from crewflow.adapters.crypto.aesgcm import generate_key

    return _local_secret(settings, "CREWFLOW_SECRET_KEY", "secret-keyring", generate_key)


@dataclass
class Core:
    """What the API and the worker share: storage, the engine and where execution events go. Built once per
    process by ``build_core``; ``closers`` release what it opened (in reverse order)."""

    settings: Settings
    clock: Clock
    uow_factory: UnitOfWorkFactory
    database_url: str
    logstore: LogStore
    cipher: SecretCipher
    engine: Engine
    provider_registry: RepositoryProviderRegistry
    bus: EventBus
    recorder: ExecutionRecorder
    metrics: PrometheusMetrics  # this process's metrics (the API's /metrics, a worker's CREWFLOW_METRICS_PORT)
    webhooks: WebhookDispatcher  # flow webhooks: the recorder's sink schedules, a worker cron retries
    redis: RedisAdapters | None = None  # with ``CREWFLOW_REDIS_URL``: the bus, cache, limits, sessions on Redis
    tool_sandbox: ToolSandbox | None = None  # runs tool nodes, agents' tools and test runs (ADR 0014)
    flow_cache: CachedFlowResolver | None = None  # flow versions cached (Redis or memory); writes invalidate
    tool_builder: ToolBuilder | None = None  # builds tool images; None where no Docker engine answers
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


async def build_core(settings: Settings | None = None, *, runtime: AgentRuntime | None = None) -> Core:
    """Embedded defaults with no configuration (SQLite file under the data directory, migrated on start);
    PostgreSQL when ``CREWFLOW_DATABASE_URL`` says so (migrate it with ``crewflow migrate`` first), MongoDB
    for the logs when ``CREWFLOW_MONGODB_URL`` is set. ``runtime`` replaces the agent runtime."""
    from pathlib import Path

    from crewflow.adapters.cache.memory import MemoryCache
    from crewflow.adapters.crypto.aesgcm import AesGcmCipher
    from crewflow.adapters.llm import build_provider
    from crewflow.adapters.metrics.events import count_runs
    from crewflow.adapters.metrics.prometheus import PrometheusMetrics
    from crewflow.adapters.sandbox import open_sandbox
    from crewflow.adapters.sql import PostgresDatabase, SqlUnitOfWorkFactory, open_database
    from crewflow.adapters.sql.catalog_budget import limit_tenants_per_connection
    from crewflow.adapters.sql.checkpoints import CheckpointSink
    from crewflow.adapters.sql.logstore import SqlLogStore
    from crewflow.adapters.sql.migrate import migrate
    from crewflow.adapters.telemetry import instrument_engine
    from crewflow.adapters.webhook_http import AiohttpWebhookTransport
    from crewflow.application.executions import ExecutionRecorder
    from crewflow.application.flow_cache import CachedFlowResolver
    from crewflow.application.gateway import Gateway
    from crewflow.application.providers import RepositoryProviderRegistry
    from crewflow.application.webhooks import WebhookDispatcher, WebhookSink, allow_private_from
    from crewflow.ports.cache import Cache

    settings = settings or Settings.from_env()
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
        report = await migrate(url)
        if not report.ok:
            failed = ", ".join(r.schema for r in report.failed)
            raise RuntimeError(f"migrating the embedded database failed for: {failed}")
    database = open_database(url, pool_size=settings.db_pool_size)
    if isinstance(database, PostgresDatabase):
        # Bound per-connection catalog memory across many tenants (ADR 0006).
        limit_tenants_per_connection(database.engine, settings.tenants_per_connection)
    clock = SystemClock()
    uow_factory = SqlUnitOfWorkFactory(database)
    cipher = AesGcmCipher.from_setting(_cipher_keyring(settings))
    logstore: LogStore
    if settings.mongodb_url:
        from crewflow.adapters.mongo.logstore import MongoLogStore

        logstore = MongoLogStore.connect(settings.mongodb_url)
    else:
        logstore = SqlLogStore(database)
    # With the log in this same database, a batch's checkpoint and its replay-log rows share one commit.
    events_with_checkpoints = isinstance(logstore, SqlLogStore)
    provider_registry = RepositoryProviderRegistry(uow_factory, cipher, build_provider, clock)
    # The live bus and the LLM response cache: on Redis when configured (API instances and workers share
    # them); otherwise in memory, one process (watchers of a run elsewhere still get every event:
    # ``watch_execution`` re-reads the log).
    redis = None
    bus: EventBus
    cache: Cache
    if settings.redis_url:
        from crewflow.adapters.redis import build_redis_adapters

        redis = build_redis_adapters(settings.redis_url)
        bus, cache = redis.bus, redis.cache
    else:
        from crewflow.adapters.memory.bus import MemoryEventBus

        bus, cache = MemoryEventBus(), MemoryCache()
    metrics = PrometheusMetrics()
    # Tools run only sandboxed: Docker (image tools, warm pools) or bubblewrap (script tools) where present;
    # a tool no backend here can run fails with a clear error (ADR 0014). Probing takes a few ms.
    tool_sandbox = await asyncio.to_thread(open_sandbox, settings.extra, metrics)
    tool_builder = tool_sandbox.docker  # the same Docker engine (and connection) builds images; None without one
    # non-scripted agents run on CrewAI over the failover gateway with each tenant's providers
    engine = build_engine(settings, runtime=runtime, gateway=Gateway(provider_registry, cache=cache, metrics=metrics),
                          tools=tool_sandbox)  # fmt: skip
    instrument_engine(engine, metrics)  # node spans, node metrics, node_id in the log context (ADR 0013)
    transport = AiohttpWebhookTransport(allow_private=allow_private_from(settings.extra))
    webhooks = WebhookDispatcher(uow_factory, cipher, transport, clock)

    def checkpoints(tenant_id: str) -> EventSink:
        return CheckpointSink(uow_factory, tenant_id, store_events=events_with_checkpoints)

    recorder = ExecutionRecorder(
        count_runs(checkpoints, metrics), logstore, bus, clock, checkpoints_store_events=events_with_checkpoints,
        extra_sinks=lambda tenant_id: [WebhookSink(tenant_id, uow_factory, webhooks, clock)],
    )
    core = Core(settings=settings, clock=clock, uow_factory=uow_factory, database_url=url, logstore=logstore,
                cipher=cipher, engine=engine, provider_registry=provider_registry, bus=bus,
                recorder=recorder, metrics=metrics, webhooks=webhooks, redis=redis, tool_sandbox=tool_sandbox,
                tool_builder=tool_builder, flow_cache=CachedFlowResolver(cache, metrics))  # fmt: skip
    core.closers.extend([database.dispose, provider_registry.close, tool_sandbox.close])  # closes the builder too
    if not events_with_checkpoints:
        core.closers.append(logstore.close)
    if redis is not None:
        core.closers.append(redis.aclose)
    core.closers.extend([transport.aclose, webhooks.close])  # pending deliveries stop before their transport
    return core


def _resolver(core: Core) -> FlowResolver:
    from crewflow.application.catalog import resolve_flow

    return core.flow_cache.resolve if core.flow_cache is not None else resolve_flow


async def _embedded_housekeeping(core: Core, queue: JobQueue, every: float = 30.0) -> None:
    """The worker crons of the embedded server (ADR 0012): executions whose lease expired (a stopped or
    crashed process) are enqueued again and resume from their checkpoints, or end ``failed``; due webhook
    deliveries are retried. A failing pass is logged; the next one runs anyway."""
    import structlog

    from crewflow.application.watchdog import recover_expired
    from crewflow.application.webhooks import deliver_due, tenant_ids

    log = structlog.get_logger("crewflow.housekeeping")
    hold = min(10.0, lease_seconds(core.settings))
    while True:
        await asyncio.sleep(every)
        try:
            tenants = await tenant_ids(core.uow_factory)
            report = await recover_expired(tenants, uow_factory=core.uow_factory, queue=queue, recorder=core.recorder,
                                           clock=core.clock, hold_seconds=hold)  # fmt: skip
            if report.requeued or report.failed:
                log.info("watchdog.recovered", requeued=len(report.requeued), failed=len(report.failed))
            await deliver_due(core.webhooks, tenants)
        except Exception:
            log.exception("housekeeping.pass_failed")


def queue_name(settings: Settings) -> str:
    """The arq queue (``CREWFLOW_QUEUE``, default ``crewflow:queue``) the API enqueues on and workers take."""
    from crewflow.adapters.arq.queue import DEFAULT_QUEUE

    return settings.extra.get("CREWFLOW_QUEUE") or DEFAULT_QUEUE


def _seconds_setting(settings: Settings, variable: str, default: float) -> float:
    from crewflow.settings import number_setting

    return number_setting(settings.extra, variable, default, low=0, high=86_400, above=True)


def lease_seconds(settings: Settings) -> float:
    """How long a worker's hold on an execution lasts unless renewed (``CREWFLOW_WORKER_LEASE``, default
    30 s): the database lease of ``ExecutionRunner`` and the queue's in-progress key alike."""
    return _seconds_setting(settings, "CREWFLOW_WORKER_LEASE", 30.0)


def worker_concurrency(settings: Settings) -> int:
    """Executions one worker runs at once (``CREWFLOW_WORKER_CONCURRENCY``, default 4)."""
    from crewflow.settings import int_setting

    return int_setting(settings.extra, "CREWFLOW_WORKER_CONCURRENCY", 4, low=1, high=10_000)


@functools.cache
def _traced_queue_class() -> type:
    from crewflow.adapters.telemetry import TracingJobQueue

    class TracedQueue(TracingJobQueue):
        """``TracingJobQueue`` (ADR 0013) whose ``handler`` reads and writes the wrapped in-process queue's,
        so code that swaps the handler of ``container.queue`` (tests, embedding) still reaches the queue."""

        @property
        def handler(self) -> object:
            return self.inner.handler  # type: ignore[attr-defined]

        @handler.setter
        def handler(self, value: object) -> None:
            self.inner.handler = value  # type: ignore[attr-defined]

    return TracedQueue


def _traced(queue: JobQueue) -> JobQueue:
    """``queue`` whose jobs leave with the enqueuer's trace context and request id (ADR 0013)."""
    traced: JobQueue = _traced_queue_class()(queue)
    return traced


async def build_api_container(settings: Settings | None = None, *, bcrypt_rounds: int = 12,
                              runtime: AgentRuntime | None = None) -> ApiContainer:  # fmt: skip
    """The shared core (``build_core``) plus what only the HTTP API needs: tenant provisioning (with spare
    PostgreSQL schemas), authentication, in-memory revocations and rate limits, chats, and the job queue —
    in-process workers when ``CREWFLOW_REDIS_URL`` is unset; with it, the arq queue, and this process only
    enqueues (``crewflow worker`` processes run the executions)."""
    from crewflow.adapters.auth import BcryptHasher, JwtTokenService
    from crewflow.adapters.memory import MemoryRateLimiter, MemoryTokenRevocations
    from crewflow.adapters.memory.queue import InProcessJobQueue
    from crewflow.adapters.memory.sessions import MemorySessionStore
    from crewflow.adapters.sql.provisioning import PostgresProvisioner, open_provisioner
    from crewflow.adapters.telemetry import bind_job_context
    from crewflow.application.chats import ChatService
    from crewflow.application.executions import ExecutionRunner
    from crewflow.application.tools import ToolService

    settings = settings or Settings.from_env()
    core = await build_core(settings, runtime=runtime)
    tool_service = ToolService(core.uow_factory, core.clock, UuidGenerator(), builder=core.tool_builder,
                               sandbox=core.tool_sandbox)  # fmt: skip
    # Keep a few spare schemas at the current revision so registering a tenant is a rename (~ms) rather than
    # DDL (~150 ms here); SQLite has no schemas to keep.
    spares = 0 if core.database_url.startswith("sqlite") else settings.spare_schemas
    provisioner = open_provisioner(core.database_url, spare_pool_size=spares)
    if spares and isinstance(provisioner, PostgresProvisioner):
        provisioner.start()  # fill the spare pool now rather than on the first registration
    queue: JobQueue
    if settings.redis_url:
        from crewflow.adapters.arq.queue import ArqJobQueue

        arq_queue = ArqJobQueue(settings.redis_url, queue_name=queue_name(settings))
        tool_service.builds = arq_queue  # workers build (where their Docker engine is)
        queue = arq_queue
    else:
        runner = ExecutionRunner(core.uow_factory, core.engine, core.recorder, resolve=_resolver(core))
        in_process = InProcessJobQueue(runner, concurrency=worker_concurrency(settings),
                                       build_handler=tool_service.run_build)  # fmt: skip
        tool_service.builds = in_process
        queue = in_process
    container = ApiContainer(
        settings=settings,
        clock=core.clock,
        ids=UuidGenerator(),
        uow_factory=core.uow_factory,
        logstore=core.logstore,
        provisioner=provisioner,
        hasher=BcryptHasher(bcrypt_rounds),
        tokens=JwtTokenService(_jwt_secret(settings)),
        revocations=core.redis.revocations if core.redis else MemoryTokenRevocations(),
        limiter=core.redis.limiter if core.redis else MemoryRateLimiter(),
        cipher=core.cipher,
        engine=core.engine,
        provider_registry=core.provider_registry,
        bus=core.bus,
        recorder=core.recorder,
        queue=queue,
        chats=ChatService(core.uow_factory, core.logstore, core.bus, core.engine.runtime, core.clock, UuidGenerator()),
        sessions=core.redis.sessions if core.redis else MemorySessionStore(),
        metrics=core.metrics,
        watch_logstore=core.redis.replay_first(core.logstore) if core.redis else None,
        tool_service=tool_service,
        flow_cache=core.flow_cache,
    )
    # the in-process queue's handler in the job's log context and span; enqueued jobs carry the trace
    if isinstance(queue, InProcessJobQueue):
        queue.handler = bind_job_context(queue.handler, metrics=core.metrics)
    container.queue = _traced(queue)
    container.closers.extend([core.aclose, provisioner.aclose])
    if isinstance(queue, InProcessJobQueue):
        # No arq worker runs the crons here: this process resumes what a stopped process left running and
        # retries due webhooks itself (first pass one interval after start), on the loop that serves the app.
        every = _seconds_setting(settings, "CREWFLOW_HOUSEKEEPING_INTERVAL", 30.0)
        chores: list[asyncio.Task[None]] = []

        async def start_chores() -> None:
            if not chores:
                chores.append(asyncio.create_task(_embedded_housekeeping(core, queue, every),
                                                  name="crewflow-housekeeping"))  # fmt: skip

        async def stop_chores() -> None:
            for task in chores:
                task.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            chores.clear()

        container.starters.append(start_chores)
        container.closers.append(stop_chores)
    container.closers.append(container.queue.close)  # closed first: running jobs still reach the database
    container.closers.append(container.chats.close)
    return container


# -- the worker -------------------------------------------------------------------------------------------


@dataclass
class WorkerContainer:
    """What a ``crewflow worker`` process needs: the shared core, the job handler, and the queue (to enqueue
    again from cron jobs). Built by ``build_worker_container``."""

    core: Core
    worker_id: str
    runner: ExecutionRunner  # the job handler, the same one the in-process queue calls
    queue: ArqJobQueue
    tool_service: ToolService  # its ``run_build`` is the handler of tool build jobs

    @property
    def settings(self) -> Settings:
        return self.core.settings

    async def aclose(self) -> None:
        await self.queue.close()
        await self.core.aclose()


async def build_worker_container(settings: Settings | None = None, *, runtime: AgentRuntime | None = None,
                                 worker_id: str | None = None) -> WorkerContainer:  # fmt: skip
    """The API's core minus HTTP: database unit of work, log store, recorder, engine and runner. Needs
    ``CREWFLOW_REDIS_URL`` (the queue)."""
    from crewflow.adapters.arq.queue import ArqJobQueue
    from crewflow.adapters.arq.worker import new_worker_id
    from crewflow.application.executions import ExecutionRunner

    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise ValueError("CREWFLOW_REDIS_URL is not set: workers take executions from the Redis queue")
    core = await build_core(settings, runtime=runtime)
    worker_id = worker_id or new_worker_id()
    # On SIGTERM the worker cancels its jobs and the queue hands them to another worker: the runner records
    # nothing then and releases the lease, so the next holder resumes from the checkpoints at once.
    runner = ExecutionRunner(core.uow_factory, core.engine, core.recorder, worker_id=worker_id,
                             lease_seconds=lease_seconds(settings), resume_on_shutdown=True,
                             resolve=_resolver(core))  # fmt: skip
    from crewflow.application.tools import ToolService

    queue = ArqJobQueue(settings.redis_url, queue_name=queue_name(settings))
    tools = ToolService(core.uow_factory, core.clock, UuidGenerator(), builds=queue, builder=core.tool_builder,
                        sandbox=core.tool_sandbox)  # fmt: skip
    return WorkerContainer(core, worker_id, runner, queue, tools)
