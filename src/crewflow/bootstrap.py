"""The composition root: reads settings, picks adapters (embedded or production) and wires the use cases.

Plain typed functions rather than a DI container: every dependency is visible at its call site, mypy
checks the wiring, and nothing heavy is imported until the function that needs it runs (ADR 0001)."""

from __future__ import annotations

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
from crewflow.ports.runtime import AgentRuntime, ToolSandbox
from crewflow.ports.secrets import SecretCipher
from crewflow.ports.uow import UnitOfWorkFactory
from crewflow.settings import Settings

if TYPE_CHECKING:
    from crewflow.application.chats import ChatService
    from crewflow.application.executions import ExecutionRecorder
    from crewflow.application.providers import RepositoryProviderRegistry
    from crewflow.ports.provisioning import TenantProvisioner

__all__ = ["ApiContainer", "LocalLLM", "build_api_container", "build_engine", "build_local_llm", "build_runtime"]


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
    user_status: UserStatusCache = field(default_factory=UserStatusCache)  # read by the token middleware

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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def _jwt_secret(settings: Settings) -> str:
    import secrets

    return _local_secret(settings, "CREWFLOW_JWT_SECRET", "jwt-secret", lambda: secrets.token_urlsafe(64))


def _cipher_keyring(settings: Settings) -> str:
    from crewflow.adapters.crypto.aesgcm import generate_key

    return _local_secret(settings, "CREWFLOW_SECRET_KEY", "secret-keyring", generate_key)


async def build_api_container(settings: Settings | None = None, *, bcrypt_rounds: int = 12,
                              runtime: AgentRuntime | None = None) -> ApiContainer:  # fmt: skip
    """Embedded defaults with no configuration (SQLite file under the data directory, migrated on start,
    in-memory revocations and rate limits); PostgreSQL when ``CREWFLOW_DATABASE_URL`` says so (migrate it
    with ``crewflow migrate`` first). ``runtime`` replaces the agent runtime (tests, embedding)."""
    from pathlib import Path

    from crewflow.adapters.auth import BcryptHasher, JwtTokenService
    from crewflow.adapters.cache.memory import MemoryCache
    from crewflow.adapters.crypto.aesgcm import AesGcmCipher
    from crewflow.adapters.llm import build_provider
    from crewflow.adapters.memory import MemoryRateLimiter, MemoryTokenRevocations
    from crewflow.adapters.memory.bus import MemoryEventBus
    from crewflow.adapters.memory.queue import InProcessJobQueue
    from crewflow.adapters.sql import PostgresDatabase, SqlUnitOfWorkFactory, open_database
    from crewflow.adapters.sql.catalog_budget import limit_tenants_per_connection
    from crewflow.adapters.sql.checkpoints import CheckpointSink
    from crewflow.adapters.sql.logstore import SqlLogStore
    from crewflow.adapters.sql.migrate import migrate
    from crewflow.adapters.sql.provisioning import PostgresProvisioner, open_provisioner
    from crewflow.application.chats import ChatService
    from crewflow.application.executions import ExecutionRecorder, ExecutionRunner
    from crewflow.application.gateway import Gateway
    from crewflow.application.providers import RepositoryProviderRegistry

    settings = settings or Settings.from_env()
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
        report = await migrate(url)
        if not report.ok:
            failed = ", ".join(r.schema for r in report.failed)
            raise RuntimeError(f"migrating the embedded database failed for: {failed}")
    database = open_database(url, pool_size=settings.db_pool_size)
    spares = 0
    if isinstance(database, PostgresDatabase):
        # Bound per-connection catalog memory across many tenants (ADR 0006), and keep a few spare schemas
        # at the current revision so registering a tenant is a rename (~ms) rather than DDL (~150 ms here).
        limit_tenants_per_connection(database.engine, settings.tenants_per_connection)
        spares = settings.spare_schemas
    provisioner = open_provisioner(url, spare_pool_size=spares)
    if spares and isinstance(provisioner, PostgresProvisioner):
        provisioner.start()  # fill the spare pool now rather than on the first registration
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
    # non-scripted agents run on CrewAI over the failover gateway with each tenant's providers
    engine = build_engine(settings, runtime=runtime, gateway=Gateway(provider_registry, cache=MemoryCache()))
    bus = MemoryEventBus()
    recorder = ExecutionRecorder(
        lambda tenant_id: CheckpointSink(uow_factory, tenant_id, store_events=events_with_checkpoints),
        logstore, bus, clock, checkpoints_store_events=events_with_checkpoints,
    )
    concurrency = int(settings.extra.get("CREWFLOW_WORKER_CONCURRENCY") or 4)
    container = ApiContainer(
        settings=settings,
        clock=clock,
        ids=UuidGenerator(),
        uow_factory=uow_factory,
        logstore=logstore,
        provisioner=provisioner,
        hasher=BcryptHasher(bcrypt_rounds),
        tokens=JwtTokenService(_jwt_secret(settings)),
        revocations=MemoryTokenRevocations(),
        limiter=MemoryRateLimiter(),
        cipher=cipher,
        engine=engine,
        provider_registry=provider_registry,
        bus=bus,
        recorder=recorder,
        queue=InProcessJobQueue(ExecutionRunner(uow_factory, engine, recorder), concurrency=concurrency),
        chats=ChatService(uow_factory, logstore, bus, engine.runtime, clock, UuidGenerator()),
    )
    container.closers.extend([database.dispose, provisioner.aclose, container.provider_registry.close])
    if not events_with_checkpoints:
        container.closers.append(logstore.close)
    container.closers.append(container.queue.close)  # closed first: running jobs still reach the database
    container.closers.append(container.chats.close)
    return container
