"""``ArqJobQueue``: the production ``JobQueue`` on Redis, run by arq workers (``crewflow worker``).

Job identity. The arq job id is the execution id. arq refuses a job whose job key (queued or running) or
result key exists, and this queue keeps no results (``keep_result=0`` in the worker): enqueuing an
execution that is queued or running is a no-op, and once its job has finished (or failed for good) the
same execution can be enqueued again — the watchdog re-enqueues executions whose lease expired, and a
replayed ``Idempotency-Key`` re-enqueues harmlessly because ``ExecutionRunner`` skips finished executions.
Keeping results would block those re-enqueues for the retention time, for results nobody reads (the
execution row is the result).

One round trip per enqueue. A Lua script does what ``ArqRedis.enqueue_job`` does with WATCH/MULTI (exists
check, job key, queue entry; the job is serialized by arq's own ``serialize_job``) and also pushes a token
on the queue's wake-up list, which idle workers wait on with ``BLPOP`` instead of sleeping between polls.

Cancel. ``cancel`` sets a ``cancel:{execution}`` key (workers check it when they claim the job, so a job
picked up later still sees it), and publishes the execution id on the cancel channel of the worker that
holds the execution, named by the ``running:{execution}`` key (its value is the worker id; the worker
keeps it alive while the job runs). It answers True when such a worker exists. All of that is one script,
so a worker claiming the job concurrently either sees the key or is named by it.

Jobs are serialized as JSON (``job_serializer``), never pickle: a job is data, not code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

from crewflow.ports.queue import BuildTool, RunExecution

__all__ = [
    "BUILD_TOOL",
    "DEFAULT_QUEUE",
    "RUN_EXECUTION",
    "ArqJobQueue",
    "QueueKeys",
    "job_deserializer",
    "job_from_payload",
    "job_payload",
    "job_serializer",
]

DEFAULT_QUEUE = "crewflow:queue"
RUN_EXECUTION = "crewflow.run_execution"  # the arq function name of a RunExecution job
BUILD_TOOL = "crewflow.build_tool"  # … and of a BuildTool job (a tool image build)
CANCEL_TTL_MS = 3_600_000  # a cancel request outlives any race between a claim and the canceller's check
WAKE_TOKENS = 16  # at most this many wake-up tokens wait on the list (each wakes one idle worker)
JOB_EXPIRES_MS = 86_400_000  # a job not started within a day expires (arq's default)


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """Every Redis key of one queue, in one place. arq's own keys (job, in-progress, retry, result) are
    global, named by job id; crewflow's are under the queue name, so queues never share them."""

    queue: str = DEFAULT_QUEUE

    def job(self, job_id: str) -> str:
        return job_key_prefix + job_id

    def result(self, job_id: str) -> str:
        return result_key_prefix + job_id

    def in_progress(self, job_id: str) -> str:
        return in_progress_key_prefix + job_id

    def retry(self, job_id: str) -> str:
        return retry_key_prefix + job_id

    @property
    def wake(self) -> str:
        """A list: enqueue pushes a token, an idle worker's ``BLPOP`` takes it and polls at once."""
        return f"{self.queue}:wake"

    @property
    def health_check(self) -> str:
        """arq's health-check key (its default name for this queue)."""
        return f"{self.queue}:health-check"

    @property
    def workers(self) -> str:
        """A sorted set: worker id → time of its last heartbeat (ms)."""
        return f"{self.queue}:workers"

    def worker(self, worker_id: str) -> str:
        """The worker's heartbeat key (JSON about it), with a TTL a few heartbeats long."""
        return f"{self.queue}:worker:{worker_id}"

    def cancel_channel(self, worker_id: str) -> str:
        return f"{self.queue}:worker:{worker_id}:cancel"

    def running(self, execution_id: str) -> str:
        """Held while a worker runs the execution; the value is that worker's id."""
        return f"{self.queue}:running:{execution_id}"

    def cancel(self, execution_id: str) -> str:
        return f"{self.queue}:cancel:{execution_id}"


# -- serialization ------------------------------------------------------------------------------------------
def _encode_hook(value: Any) -> Any:
    return str(value)  # exceptions in arq's failure records, datetimes: their text is enough


_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)
_decoder = msgspec.json.Decoder(dict[str, Any])


def job_serializer(data: dict[str, Any]) -> bytes:
    return _encoder.encode(data)


def job_deserializer(raw: bytes) -> dict[str, Any]:
    return _decoder.decode(raw)


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunExecution))


def job_payload(job: RunExecution) -> dict[str, Any]:
    """The job as plain data: every field of ``RunExecution``, whatever fields it gains."""
    return dataclasses.asdict(job)


def job_from_payload(payload: Mapping[str, Any]) -> RunExecution:
    """Rebuild the job, ignoring keys this version does not know (a newer producer)."""
    return RunExecution(**{k: v for k, v in payload.items() if k in _FIELDS})


_BUILD_FIELDS = frozenset(f.name for f in dataclasses.fields(BuildTool))


def build_from_payload(payload: Mapping[str, Any]) -> BuildTool:
    """A ``BuildTool`` job from its plain data, ignoring unknown keys (a newer producer)."""
    return BuildTool(**{k: v for k, v in payload.items() if k in _BUILD_FIELDS})


# -- scripts ------------------------------------------------------------------------------------------------
# KEYS: job, result, queue, wake; ARGV: job id, serialized job, expires ms, score, wake-token cap
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[3], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[1])
redis.call('lpush', KEYS[4], '1')
redis.call('ltrim', KEYS[4], 0, tonumber(ARGV[5]) - 1)
return 1
"""

# KEYS: cancel, running; ARGV: execution id, cancel TTL ms, channel prefix (channel = prefix .. worker id .. suffix)
_CANCEL = """
redis.call('psetex', KEYS[1], ARGV[2], '1')
local worker = redis.call('get', KEYS[2])
if not worker then return false end
redis.call('publish', ARGV[3] .. worker .. ':cancel', ARGV[1])
return worker
"""


class ArqJobQueue:
    """Enqueues ``RunExecution`` jobs for ``crewflow worker`` processes and delivers cancel requests to them.
    It runs nothing itself: with ``CREWFLOW_REDIS_URL`` set, the API process only enqueues."""

    def __init__(self, redis_url: str, *, queue_name: str = DEFAULT_QUEUE) -> None:
        self.redis_url = redis_url
        self.keys = QueueKeys(queue_name)
        self._redis: aioredis.Redis | None = None
        self._enqueue: Any = None
        self._cancel: Any = None
        self._lock = asyncio.Lock()

    @property
    def queue_name(self) -> str:
        return self.keys.queue

    async def _client(self) -> aioredis.Redis:
        if self._redis is None:
            async with self._lock:
                if self._redis is None:
                    client = aioredis.Redis.from_url(self.redis_url)
                    self._enqueue = client.register_script(_ENQUEUE)
                    self._cancel = client.register_script(_CANCEL)
                    self._redis = client
        return self._redis

    async def start(self) -> None:
        """Connect (fails fast when Redis is unreachable)."""
        client = await self._client()
        await client.ping()

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def enqueue(self, job: RunExecution) -> None:
        await self.enqueue_new(job)

    async def enqueue_new(self, job: RunExecution) -> bool:
        """``enqueue`` that tells whether a job was added (False: that execution is already queued/running)."""
        await self._client()
        job_id = job.execution_id
        now_ms = int(time.time() * 1000)
        data = serialize_job(RUN_EXECUTION, (job_payload(job),), {}, None, now_ms, serializer=job_serializer)
        keys = [self.keys.job(job_id), self.keys.result(job_id), self.keys.queue, self.keys.wake]
        added = await self._enqueue(keys=keys, args=[job_id, data, JOB_EXPIRES_MS, now_ms, WAKE_TOKENS])
        return bool(added)

    async def enqueue_build(self, job: BuildTool) -> None:
        """Queue a tool build for the workers (``ToolBuildQueue``). Its job id names tenant, tool and version,
        so asking again while that build is queued or running adds nothing."""
        await self._client()
        job_id = job.job_id
        now_ms = int(time.time() * 1000)
        data = serialize_job(BUILD_TOOL, (dataclasses.asdict(job),), {}, None, now_ms, serializer=job_serializer)
        keys = [self.keys.job(job_id), self.keys.result(job_id), self.keys.queue, self.keys.wake]
        await self._enqueue(keys=keys, args=[job_id, data, JOB_EXPIRES_MS, now_ms, WAKE_TOKENS])

    async def cancel(self, tenant_id: str, execution_id: str) -> bool:
        """True when a worker holds the execution (it stops the run and records the cancellation)."""
        await self._client()
        keys = [self.keys.cancel(execution_id), self.keys.running(execution_id)]
        held = await self._cancel(keys=keys, args=[execution_id, CANCEL_TTL_MS, f"{self.keys.queue}:worker:"])
        return held is not None

    async def holder(self, execution_id: str) -> str | None:
        """The id of the worker running the execution, if any."""
        client = await self._client()
        value = await client.get(self.keys.running(execution_id))
        return value.decode() if isinstance(value, bytes) else value
