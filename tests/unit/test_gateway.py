"""The gateway with fake providers passed through the ``LLMProvider`` port (no network, fake time)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from crewflow.adapters.cache.memory import MemoryCache
from crewflow.adapters.llm.registry import InMemoryProviderRegistry
from crewflow.adapters.metrics.memory import InMemoryMetrics
from crewflow.application.gateway import Gateway, cache_key
from crewflow.domain.errors import NotFound
from crewflow.domain.failover import (
    AllProvidersFailed,
    AuthError,
    Budget,
    BudgetExceeded,
    CircuitBreaker,
    CircuitState,
    FailoverPolicy,
    Price,
    ProviderError,
    RateLimited,
    RequestRejected,
    ServerError,
)
from crewflow.ports.llm import (
    CallScope,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ProviderConfig,
    ProviderEntry,
    TokenCallback,
    Usage,
)

pytestmark = pytest.mark.unit

SECRET = "sk-live-0123456789abcdef"


class FakeProvider:
    """Raises the queued errors first, then answers; streams word by word."""

    def __init__(self, name: str, errors: Sequence[ProviderError] = (), answer: str = "the answer") -> None:
        self._name = name
        self.errors = list(errors)
        self.answer = answer
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if request.stream and on_token is not None:
            for word in self.answer.split(" "):
                on_token(word)
        return ChatResponse(
            content=f"{self.answer} ({self._name})",
            model=request.model or "model-" + self._name,
            provider=self._name,
            usage=Usage(1000, 500),
        )

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def setup(
    *providers: FakeProvider,
    tenant: str = "acme",
    budget: Budget | None = None,
    cache: MemoryCache | None = None,
    policy: FailoverPolicy | None = None,
    threshold: int = 3,
) -> tuple[Gateway, InMemoryMetrics, Clock, InMemoryProviderRegistry]:
    registry = InMemoryProviderRegistry()
    registry.set_tenant(
        tenant,
        [
            ProviderEntry(
                ProviderConfig(p.name, "openai", "model-" + p.name, api_key=SECRET, priority=i, price=Price(0.5, 1.5)),
                p,
            )
            for i, p in enumerate(providers)
        ],
        budget,
    )
    metrics = InMemoryMetrics()
    clock = Clock()
    gateway = Gateway(
        registry,
        policy=policy,
        breaker=lambda: CircuitBreaker(failure_threshold=threshold, cool_down=30, max_cool_down=120),
        cache=cache,
        metrics=metrics,
        monotonic=clock.now,
        sleep=clock.sleep,
        rand=lambda: 0.5,
    )
    return gateway, metrics, clock, registry


def ask(text: str = "hello", **kw: object) -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), **kw)  # type: ignore[arg-type]


async def test_a_rate_limited_primary_fails_over_to_the_secondary_and_every_attempt_is_recorded() -> None:
    primary = FakeProvider("primary", [RateLimited("slow down", provider="primary", status=429, retry_after=60)])
    secondary = FakeProvider("secondary")
    gateway, metrics, _, _ = setup(primary, secondary)
    reported: list[dict[str, object]] = []
    response = await gateway.complete(ask(), CallScope("acme"), on_attempt=reported.append)
    assert response.provider == "secondary"
    assert [a["provider"] for a in response.attempts] == ["primary", "secondary"]
    assert [a["outcome"] for a in response.attempts] == ["rate_limited", "success"]
    assert reported == list(response.attempts)
    ok = response.attempts[1]
    assert (ok["input_tokens"], ok["output_tokens"]) == (1000, 500)
    assert ok["cost"] == pytest.approx(0.5 + 0.75)
    assert response.cost == pytest.approx(1.25)
    assert gateway.ledger.total("acme") == pytest.approx(1.25)
    assert metrics.counter("llm_api_calls_total", provider="primary", status="rate_limited") == 1
    assert metrics.counter("llm_api_calls_total", provider="secondary", status="success") == 1
    assert metrics.counter("llm_tokens_total", provider="secondary", direction="input") == 1000
    assert metrics.counter("llm_tokens_total", provider="secondary", direction="output") == 500


async def test_a_short_retry_after_is_waited_out_on_the_same_provider_with_the_floor_applied() -> None:
    primary = FakeProvider("primary", [RateLimited("slow", provider="primary", status=429, retry_after=0.0)])
    gateway, _, clock, _ = setup(primary, FakeProvider("secondary"))
    response = await gateway.complete(ask(), CallScope("acme"))
    assert response.provider == "primary"
    assert primary.calls == 2
    assert clock.sleeps
    assert clock.sleeps[0] >= gateway.policy.retry_after_floor


async def test_server_errors_are_retried_with_backoff_before_failing_over() -> None:
    primary = FakeProvider("primary", [ServerError("boom", status=500)] * 2)
    secondary = FakeProvider("secondary")
    gateway, _, clock, _ = setup(primary, secondary)
    response = await gateway.complete(ask(), CallScope("acme"))
    assert response.provider == "secondary"
    assert primary.calls == 2  # attempts_per_provider
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] > 0


async def test_rejected_credentials_take_the_provider_out_of_rotation() -> None:
    primary = FakeProvider("primary", [AuthError("invalid key", status=401)])
    secondary = FakeProvider("secondary")
    gateway, _, _, _ = setup(primary, secondary)
    first = await gateway.complete(ask("one"), CallScope("acme"))
    second = await gateway.complete(ask("two"), CallScope("acme"))
    assert (first.provider, second.provider) == ("secondary", "secondary")
    assert primary.calls == 1  # not called again: marked unhealthy
    assert gateway.breaker("acme", "primary").unhealthy


async def test_a_bad_request_fails_fast_without_trying_other_providers() -> None:
    primary = FakeProvider("primary", [RequestRejected("context length exceeded", status=400)])
    secondary = FakeProvider("secondary")
    gateway, _, _, _ = setup(primary, secondary)
    with pytest.raises(RequestRejected) as info:
        await gateway.complete(ask(), CallScope("acme"))
    assert secondary.calls == 0
    assert [a.outcome for a in info.value.attempts] == ["request_rejected"]
    assert gateway.breaker("acme", "primary").state is CircuitState.CLOSED


async def test_when_everything_fails_the_error_lists_every_attempt() -> None:
    errors = [ServerError("down", status=503)] * 5
    gateway, _, _, _ = setup(FakeProvider("a", errors), FakeProvider("b", errors))
    with pytest.raises(AllProvidersFailed) as info:
        await gateway.complete(ask(), CallScope("acme"))
    assert [a.provider for a in info.value.attempts] == ["a", "a", "b", "b"]
    assert "a/model-a" in str(info.value)


async def test_an_open_circuit_is_skipped_until_its_cool_down_then_probed() -> None:
    flaky = FakeProvider("flaky", [ServerError("down", status=500)] * 3)
    backup = FakeProvider("backup")
    gateway, _, clock, _ = setup(flaky, backup, threshold=3)
    for _ in range(4):
        await gateway.complete(ask(), CallScope("acme", cache=False))
    calls_when_open = flaky.calls
    assert gateway.breaker("acme", "flaky").state is CircuitState.OPEN
    for _ in range(10):
        assert (await gateway.complete(ask(), CallScope("acme", cache=False))).provider == "backup"
    assert flaky.calls == calls_when_open
    clock.t += 1000  # past the cool-down: one probe, which succeeds (no errors left) and closes the circuit
    assert (await gateway.complete(ask(), CallScope("acme", cache=False))).provider == "flaky"
    assert gateway.breaker("acme", "flaky").state is CircuitState.CLOSED


async def test_all_circuits_open_ends_in_a_typed_error_without_calling_anyone() -> None:
    a = FakeProvider("a", [ServerError("down")] * 10)
    gateway, _, _, _ = setup(a, threshold=1, policy=FailoverPolicy(attempts_per_provider=1))
    with pytest.raises(AllProvidersFailed):
        await gateway.complete(ask(), CallScope("acme"))
    calls = a.calls
    with pytest.raises(AllProvidersFailed) as info:
        await gateway.complete(ask(), CallScope("acme"))
    assert a.calls == calls
    assert info.value.attempts == ()
    assert info.value.skipped == ("a",)


async def test_the_agents_provider_override_is_tried_first() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    gateway, _, _, _ = setup(a, b)
    response = await gateway.complete(ask(), CallScope("acme", provider="b"))
    assert response.provider == "b"
    assert a.calls == 0
    with pytest.raises(NotFound):
        await gateway.complete(ask(), CallScope("acme", provider="nope"))


async def test_a_call_that_would_exceed_the_budget_is_refused_before_any_provider_is_called() -> None:
    a = FakeProvider("a")
    gateway, metrics, _, _ = setup(a, budget=Budget(2.0))
    # worst case: 1 input token (0.0005) + 1000 output tokens at 1.5/1K = 1.5005 -> fits once
    await gateway.complete(ask("hi", max_tokens=1000), CallScope("acme"))
    assert gateway.ledger.total("acme") == pytest.approx(1.25)
    with pytest.raises(BudgetExceeded):
        await gateway.complete(ask("hi again", max_tokens=1000), CallScope("acme"))
    assert a.calls == 1
    # the refusal is counted (the budget-exhaustion alert reads it)
    assert metrics.counter("llm_api_calls_total", provider="a", status="budget_exceeded") == 1
    assert metrics.counter("llm_api_calls_total", provider="a", status="success") == 1


async def test_concurrent_calls_cannot_overrun_the_budget_together() -> None:
    gate = asyncio.Event()

    class Slow(FakeProvider):
        async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
            await gate.wait()
            return await super().complete(request, on_token)

    slow = Slow("slow")
    gateway, _, _, _ = setup(slow, budget=Budget(3.01))
    tasks = [asyncio.create_task(gateway.complete(ask(f"q{i}", max_tokens=1000), CallScope("acme"))) for i in range(4)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(refused) == 2  # two reservations of 1.5005 fit in 3.01, a third does not
    assert gateway.ledger.total("acme") <= 3.01


async def test_the_response_cache_answers_repeats_per_tenant_and_can_be_opted_out() -> None:
    a = FakeProvider("a")
    cache = MemoryCache()
    gateway, metrics, _, registry = setup(a, cache=cache)
    registry.set_tenant("other", [ProviderEntry(ProviderConfig("a", "openai", "model-a"), a)])
    first = await gateway.complete(ask(), CallScope("acme"))
    again = await gateway.complete(ask(), CallScope("acme"))
    assert a.calls == 1
    assert again.cached
    assert not first.cached
    assert again.content == first.content
    assert again.attempts[0]["outcome"] == "cache_hit"
    assert again.cost == 0.0
    await gateway.complete(ask(), CallScope("other"))  # another tenant never sees acme's entry
    assert a.calls == 2
    await gateway.complete(ask(), CallScope("acme", cache=False))
    assert a.calls == 3
    await gateway.complete(ask(temperature=0.9), CallScope("acme"))  # other parameters, other key
    assert a.calls == 4
    assert metrics.counter("cache_hits_total", cache="llm", result="hit") == 1
    assert metrics.counter("cache_hits_total", cache="llm", result="miss") == 3


def test_the_cache_key_depends_on_model_messages_and_parameters_but_not_streaming() -> None:
    base = cache_key(ask("x"), "m")
    assert cache_key(ask("x"), "m") == base
    assert cache_key(ask("x", stream=True), "m") == base
    assert cache_key(ask("y"), "m") != base
    assert cache_key(ask("x"), "m2") != base
    assert cache_key(ask("x", stop=("\n",)), "m") != base
    assert len(base) == 64


async def test_streamed_tokens_reach_the_callback_and_a_cached_answer_streams_too() -> None:
    gateway, _, _, _ = setup(FakeProvider("a", answer="one two three"), cache=MemoryCache())
    tokens: list[str] = []
    await gateway.complete(ask(stream=True), CallScope("acme"), on_token=tokens.append)
    assert tokens == ["one", "two", "three"]
    cached: list[str] = []
    response = await gateway.complete(ask(stream=True), CallScope("acme"), on_token=cached.append)
    assert response.cached
    assert "".join(cached) == response.content


async def test_a_key_leaked_into_a_provider_error_is_redacted_from_attempts_and_errors() -> None:
    leaky = FakeProvider("a", [ServerError(f"upstream said Bearer {SECRET} is odd", status=500)] * 2)
    gateway, _, _, _ = setup(leaky)
    with pytest.raises(AllProvidersFailed) as info:
        await gateway.complete(ask(), CallScope("acme"))
    assert SECRET not in str(info.value)
    assert all(SECRET not in (a.error or "") for a in info.value.attempts)


async def test_an_unknown_tenant_is_not_found() -> None:
    gateway, _, _, _ = setup(FakeProvider("a"))
    with pytest.raises(NotFound):
        await gateway.complete(ask(), CallScope("ghost"))


# ------------------------------------------------------------------- adapters the gateway relies on


async def test_the_memory_cache_expires_entries_and_evicts_the_least_recently_used() -> None:
    now = [0.0]
    cache = MemoryCache(max_entries=2, default_ttl=10, clock=lambda: now[0])
    await cache.set("ns", "a", b"1")
    await cache.set("ns", "b", b"2", ttl=100)
    assert await cache.get("ns", "a") == b"1"  # a is now the most recently used
    await cache.set("ns", "c", b"3")  # evicts b
    assert await cache.get("ns", "b") is None
    assert await cache.get("other", "a") is None  # namespaces are separate
    now[0] = 10.0
    assert await cache.get("ns", "a") is None  # expired
    assert await cache.get("ns", "c") is None
    await cache.set("ns", "d", b"4")
    await cache.delete("ns", "d")
    assert await cache.get("ns", "d") is None


async def test_the_scripted_provider_plays_its_script_then_answers_by_default() -> None:
    from crewflow.adapters.llm.scripted import ScriptedProvider, ScriptedReply, tool_call

    call = tool_call("search", {"q": "x"})
    provider = ScriptedProvider(
        "offline", script=[RateLimited("busy", retry_after=1), ScriptedReply(tool_calls=(call,)), "fixed"]
    )
    with pytest.raises(RateLimited):
        await provider.complete(ask())
    assert (await provider.complete(ask())).tool_calls == (call,)
    assert (await provider.complete(ask())).content == "fixed"
    crew_prompt = ChatRequest(
        (ChatMessage("system", "Use the format ... Final Answer: ..."), ChatMessage("user", "Current Task: x"))
    )
    answer = await provider.complete(crew_prompt)
    assert (answer.content or "").startswith("Thought: I now can give a great answer\nFinal Answer: ")
    again = await provider.complete(crew_prompt)
    assert again.content == answer.content  # deterministic


async def test_a_registry_configured_from_configs_feeds_the_gateway() -> None:
    registry = InMemoryProviderRegistry()
    registry.configure("acme", [ProviderConfig("offline", "scripted", "scripted-model", price=Price(1, 1))])
    gateway = Gateway(registry)
    response = await gateway.complete(ask("what is up"), CallScope("acme"))
    assert "what is up" in (response.content or "")
    assert response.cost > 0
    await registry.close()
