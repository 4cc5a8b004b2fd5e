"""The LLM gateway: one call in, an answer out, whatever happens to the providers in between.

For each call it: finds the tenant's providers (priority order, the agent's override first), serves from the
response cache when it can, checks the tenant's budget, then calls providers under the ``FailoverPolicy``
(retry with backoff and jitter, ``Retry-After`` honoured, failover, fail fast on bad requests), skipping
providers whose circuit is open. Every attempt is recorded (provider, model, latency, tokens, cost, outcome)
and reported to ``on_attempt``; metrics ``llm_api_calls_total{provider,status}``,
``llm_tokens_total{provider,direction}`` and ``cache_hits_total{cache,result}`` are counted.

The hot path (cache miss, first provider answers) does no logging and allocates little: it sits in front
of every LLM call of every agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import structlog

from crewflow.domain.errors import NotFound
from crewflow.domain.failover import (
    AllProvidersFailed,
    AttemptRecord,
    AuthError,
    BudgetExceeded,
    CircuitBreaker,
    CostLedger,
    Failover,
    FailoverPolicy,
    GiveUp,
    ProviderError,
    RateLimited,
    RequestRejected,
    Reservation,
    Retry,
    estimate_tokens,
    redact,
)
from crewflow.ports.cache import Cache
from crewflow.ports.llm import (
    AttemptCallback,
    CallScope,
    ChatRequest,
    ChatResponse,
    ProviderEntry,
    ProviderRegistry,
    TenantLLMConfig,
    TokenCallback,
    Usage,
)
from crewflow.ports.metrics import Metrics

__all__ = ["CACHE_NAME", "Gateway", "cache_key"]

log = structlog.get_logger(__name__)

CACHE_NAME = "llm"
_CACHE_VERSION = "1"


def cache_key(request: ChatRequest, model: str) -> str:
    """sha256 of the model, the messages and every parameter that changes the answer (not ``stream``)."""
    payload = (
        _CACHE_VERSION,
        model,
        [(m.role, m.content, m.tool_calls, m.tool_call_id, m.name) for m in request.messages],
        request.temperature,
        request.max_tokens,
        request.tools,
        request.tool_choice,
        request.stop,
        request.extra,
    )
    return hashlib.sha256(_encoder.encode(payload)).hexdigest()


def _default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_default, order="deterministic")
_decoder = msgspec.json.Decoder()


def _encode(response: ChatResponse) -> bytes:
    return _encoder.encode(
        (
            response.content,
            response.model,
            response.provider,
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.tool_calls,
            response.finish_reason,
        )
    )


def _decode(raw: bytes) -> ChatResponse | None:
    try:
        content, model, provider, input_tokens, output_tokens, tool_calls, finish_reason = _decoder.decode(raw)
        return ChatResponse(
            content=content,
            model=model,
            provider=provider,
            usage=Usage(int(input_tokens), int(output_tokens)),
            tool_calls=tuple(tool_calls),
            finish_reason=finish_reason,
        )
    except (msgspec.DecodeError, ValueError, TypeError):
        return None  # an entry from another version: treat as a miss


class _TokenCounter:
    """Forwards streamed tokens and counts them per attempt, so a failed attempt's record says how many
    tokens its consumer already saw (and should discard) before the call failed over."""

    __slots__ = ("count", "sink")

    def __init__(self, sink: TokenCallback) -> None:
        self.sink = sink
        self.count = 0

    def __call__(self, token: str) -> None:
        self.count += 1
        self.sink(token)


class Gateway:
    """Implements ``crewflow.ports.llm.LLMGateway``.

    ``monotonic`` (seconds), ``sleep`` and ``rand`` are injected so tests run without real time. Circuit
    breakers are kept per tenant and provider, made by ``breaker``. ``ledger`` keeps what each tenant spent;
    a call is refused with ``BudgetExceeded`` when its worst-case cost (input estimated from the text,
    output ``max_tokens`` or ``output_token_estimate``, at the dearest provider's price) would exceed the
    tenant's budget.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        *,
        policy: FailoverPolicy | None = None,
        breaker: Callable[[], CircuitBreaker] = CircuitBreaker,
        cache: Cache | None = None,
        cache_ttl: float | None = 3600.0,
        metrics: Metrics | None = None,
        ledger: CostLedger | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        output_token_estimate: int = 1024,
    ) -> None:
        self._registry = registry
        self.policy = policy or FailoverPolicy()
        self._new_breaker = breaker
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._metrics = metrics
        self.ledger = ledger if ledger is not None else CostLedger()
        self._now = monotonic
        self._sleep = sleep
        self._rand = rand
        self._output_estimate = output_token_estimate

    def breaker(self, tenant_id: str, provider: str) -> CircuitBreaker:
        key = (tenant_id, provider)
        b = self._breakers.get(key)
        if b is None:
            b = self._breakers[key] = self._new_breaker()
        return b

    # ------------------------------------------------------------------------------------ the call

    async def complete(
        self,
        request: ChatRequest,
        scope: CallScope,
        *,
        on_token: TokenCallback | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> ChatResponse:
        config = await self._registry.for_tenant(scope.tenant_id)
        entries = self._order(config, scope)

        key: str | None = None
        if self._cache is not None and scope.cache:
            key = cache_key(request, request.model or entries[0].config.model)
            hit = await self._cached(scope.tenant_id, key, request, on_token, on_attempt)
            if hit is not None:
                return hit

        reservation: Reservation | None = None
        if config.budget is not None:
            try:
                reservation = self.ledger.reserve(scope.tenant_id, self._estimate(request, entries), config.budget)
            except BudgetExceeded:  # refused before any provider call: counted so operators see exhaustion
                if self._metrics is not None:
                    self._metrics.inc("llm_api_calls_total", {"provider": entries[0].name, "status": "budget_exceeded"})
                raise
        spent = 0.0
        try:
            response = await self._call(request, scope, entries, on_token, on_attempt)
            spent = response.cost
        finally:
            if reservation is not None:
                self.ledger.settle(reservation, spent)
            elif spent:
                self.ledger.spent[scope.tenant_id] = self.ledger.spent.get(scope.tenant_id, 0.0) + spent

        if key is not None and self._cache is not None:
            await self._cache.set(f"{CACHE_NAME}:{scope.tenant_id}", key, _encode(response), self._cache_ttl)
        return response

    def _order(self, config: TenantLLMConfig, scope: CallScope) -> Sequence[ProviderEntry]:
        entries = config.providers
        if scope.provider is None or entries[0].name == scope.provider:
            return entries
        first = [e for e in entries if e.name == scope.provider]
        if not first:
            raise NotFound("LLM provider", scope.provider)
        return [first[0], *(e for e in entries if e.name != scope.provider)]

    def _estimate(self, request: ChatRequest, entries: Sequence[ProviderEntry]) -> float:
        input_tokens = sum(estimate_tokens(m.content or "") for m in request.messages)
        output_tokens = request.max_tokens or self._output_estimate
        return max(e.config.price.cost(input_tokens, output_tokens) for e in entries)

    async def _cached(
        self,
        tenant_id: str,
        key: str,
        request: ChatRequest,
        on_token: TokenCallback | None,
        on_attempt: AttemptCallback | None,
    ) -> ChatResponse | None:
        assert self._cache is not None
        raw = await self._cache.get(f"{CACHE_NAME}:{tenant_id}", key)
        cached = _decode(raw) if raw is not None else None
        if self._metrics is not None:
            self._metrics.inc("cache_hits_total", {"cache": CACHE_NAME, "result": "hit" if cached else "miss"})
        if cached is None:
            return None
        record = AttemptRecord(provider=cached.provider, model=cached.model, latency_ms=0.0, outcome="cache_hit")
        if on_attempt is not None:
            on_attempt(record.to_dict())
        if request.stream and on_token is not None and cached.content:
            on_token(cached.content)
        return ChatResponse(
            content=cached.content,
            model=cached.model,
            provider=cached.provider,
            usage=cached.usage,
            tool_calls=cached.tool_calls,
            finish_reason=cached.finish_reason,
            attempts=(record.to_dict(),),
            cost=0.0,
            cached=True,
        )

    async def _call(
        self,
        request: ChatRequest,
        scope: CallScope,
        entries: Sequence[ProviderEntry],
        on_token: TokenCallback | None,
        on_attempt: AttemptCallback | None,
    ) -> ChatResponse:
        policy = self.policy
        tenant = scope.tenant_id
        attempts: list[AttemptRecord] = []
        skipped: list[str] = []
        attempt_no = 0
        reason = ""
        index = 0
        counter = _TokenCounter(on_token) if on_token is not None and request.stream else None
        token_sink = counter if counter is not None else on_token
        while index < len(entries):
            entry = entries[index]
            breaker = self.breaker(tenant, entry.name)
            if not breaker.allow(self._now()):
                skipped.append(entry.name)
                index += 1
                continue
            provider_attempt = 0
            while True:
                provider_attempt += 1
                attempt_no += 1
                model = request.model or entry.config.model
                if counter is not None:
                    counter.count = 0
                started = time.perf_counter()
                try:
                    response = await entry.provider.complete(request, token_sink)
                except ProviderError as exc:
                    latency_ms = (time.perf_counter() - started) * 1000.0
                    self._on_failure(entry.name, breaker, exc)
                    record = AttemptRecord(
                        provider=entry.name,
                        model=model,
                        latency_ms=latency_ms,
                        outcome=exc.kind.value,
                        error=redact(str(exc), (entry.config.api_key,)),
                        status=exc.status,
                        streamed_tokens=counter.count if counter is not None else 0,
                    )
                    attempts.append(record)
                    self._report(record, on_attempt)
                    now = self._now()
                    has_alternative = any(self.breaker(tenant, e.name).would_allow(now) for e in entries[index + 1 :])
                    decision = policy.next_step(
                        exc,
                        attempt=attempt_no,
                        provider_attempt=provider_attempt,
                        has_alternative=has_alternative,
                        rand=self._rand(),
                    )
                    log.info(
                        "llm.attempt_failed",
                        tenant_id=tenant,
                        execution_id=scope.execution_id,
                        node_id=scope.node_id,
                        provider=entry.name,
                        outcome=record.outcome,
                        status=exc.status,
                        decision=type(decision).__name__,
                    )
                    if isinstance(decision, Retry):
                        await self._sleep(decision.delay)
                        if breaker.allow(self._now()):
                            continue
                        break  # another call took the probe or the circuit opened meanwhile
                    if isinstance(decision, Failover):
                        break
                    assert isinstance(decision, GiveUp)
                    if decision.fail_fast:
                        exc.attempts = tuple(attempts)
                        raise exc from None
                    raise AllProvidersFailed(attempts, skipped, decision.reason) from None
                except BaseException:
                    breaker.release_probe()
                    raise
                latency_ms = (time.perf_counter() - started) * 1000.0
                breaker.record_success()
                streamed = counter.count if counter is not None else 0
                return self._success(entry, model, response, latency_ms, attempts, on_attempt, streamed)
            index += 1
        if not attempts:
            reason = "every provider's circuit is open"
        raise AllProvidersFailed(attempts, skipped, reason or "no provider left to try")

    def _on_failure(self, name: str, breaker: CircuitBreaker, exc: ProviderError) -> None:
        if isinstance(exc, AuthError):
            breaker.mark_unhealthy(self._now())
        elif isinstance(exc, RequestRejected):
            breaker.release_probe()  # says nothing about the provider's health
        else:
            wait = self.policy.retry_after(exc.retry_after) if isinstance(exc, RateLimited) else None
            breaker.record_failure(self._now(), retry_after=wait)
        if self._metrics is not None:
            self._metrics.inc("llm_api_calls_total", {"provider": name, "status": exc.kind.value})

    def _report(self, record: AttemptRecord, on_attempt: AttemptCallback | None) -> None:
        if on_attempt is not None:
            on_attempt(record.to_dict())

    def _success(
        self,
        entry: ProviderEntry,
        model: str,
        response: ChatResponse,
        latency_ms: float,
        attempts: list[AttemptRecord],
        on_attempt: AttemptCallback | None,
        streamed: int,
    ) -> ChatResponse:
        usage = response.usage
        cost = entry.config.price.cost(usage.input_tokens, usage.output_tokens)
        record = AttemptRecord(
            provider=entry.name,
            model=response.model or model,
            latency_ms=latency_ms,
            outcome="success",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost=cost,
            streamed_tokens=streamed,
        )
        attempts.append(record)
        as_dict = record.to_dict()
        if on_attempt is not None:
            on_attempt(as_dict)
        metrics = self._metrics
        if metrics is not None:
            metrics.inc("llm_api_calls_total", {"provider": entry.name, "status": "success"})
            metrics.inc("llm_tokens_total", {"provider": entry.name, "direction": "input"}, usage.input_tokens)
            metrics.inc("llm_tokens_total", {"provider": entry.name, "direction": "output"}, usage.output_tokens)
        history = (*(a.to_dict() for a in attempts[:-1]), as_dict) if len(attempts) > 1 else (as_dict,)
        return ChatResponse(
            content=response.content,
            model=response.model,
            provider=response.provider,
            usage=usage,
            tool_calls=response.tool_calls,
            finish_reason=response.finish_reason,
            attempts=history,
            cost=cost,
            cached=False,
        )
