"""One ``redis.asyncio`` client per process, built from a URL with bounded pools and timeouts.

Every Redis adapter of a process shares this client (and so its connection pool); the bus's pub/sub takes
one more connection from the same pool. Timeouts are finite so a Redis outage makes calls fail fast instead
of hanging request handlers; a failed command is retried once on a fresh connection (a server restart or
an idle connection closed by a proxy), never more: callers decide what a failure means.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["create_redis"]


def create_redis(url: str, *, max_connections: int = 64, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0, health_check_interval: float = 30.0,
                 client_name: str = "crewflow") -> Redis:  # fmt: skip
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``). Responses are bytes (not decoded):
    payloads are msgspec/JSON bytes, and keys are built by ``crewflow.adapters.redis.keys``."""
    client: Redis = Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=int(health_check_interval),
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name=client_name,
        decode_responses=False,
    )
    return client
