"""The aiohttp ``WebhookTransport``: one POST per attempt, no redirects, a total timeout, and (unless private
addresses are allowed) a resolver that connects only to public addresses, so a webhook URL can never reach
the loopback interface, the private network or a cloud metadata endpoint — even through a DNS name that
changes its answer after the URL was checked (the addresses checked are the ones connected to)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from crewflow.ports.webhooks import WebhookTransportError, is_public_address

__all__ = ["AiohttpWebhookTransport"]

USER_AGENT = "crewflow-webhooks/1"


class _PublicOnlyResolver(AbstractResolver):
    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:  # fmt: skip
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


class AiohttpWebhookTransport:
    """Implements ``crewflow.ports.webhooks.WebhookTransport``. ``allow_private`` lifts the address check
    (``CREWFLOW_WEBHOOK_ALLOW_PRIVATE=true``: development, tests, receivers on the same private network)."""

    def __init__(self, *, allow_private: bool = False, max_connections: int = 100) -> None:
        self.allow_private = allow_private
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver: AbstractResolver = aiohttp.ThreadedResolver()
            if not self.allow_private:
                resolver = _PublicOnlyResolver(resolver)
            connector = aiohttp.TCPConnector(limit=self._max_connections, resolver=resolver, ttl_dns_cache=None)
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
        host = urlsplit(url).hostname or ""
        literal = _is_ip_literal(host)
        if literal and not self.allow_private and not is_public_address(host):  # literals skip the resolver
            raise WebhookTransportError("the URL's address is not a public one")
        try:
            async with self._client().post(url, data=body, headers=dict(headers), allow_redirects=False,
                                           timeout=aiohttp.ClientTimeout(total=timeout)) as response:  # fmt: skip
                await response.content.read(64 * 1024)  # a little of the body, so the connection can be reused
                return response.status
        except TimeoutError:
            raise WebhookTransportError(f"no response within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise WebhookTransportError(_describe(exc)) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%", 1)[0])
    except OSError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """A short reason: the exception type and its first line (aiohttp's messages name host and port only)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
