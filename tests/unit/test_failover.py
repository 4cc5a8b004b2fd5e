"""The failover rules: error classification, policy decisions, circuit breaker, budget, and property tests of
the gateway loop driven by the policy (fake providers through the port, fake time)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crewflow.adapters.llm.registry import InMemoryProviderRegistry
from crewflow.application.gateway import Gateway
from crewflow.domain.failover import (
    AllProvidersFailed,
    AuthError,
    Budget,
    BudgetExceeded,
    CircuitBreaker,
    CircuitState,
    ConnectionFailed,
    CostLedger,
    ErrorKind,
    Failover,
    FailoverPolicy,
    GiveUp,
    MalformedResponse,
    Price,
    ProviderError,
    RateLimited,
    RequestRejected,
    Retry,
    ServerError,
    Timeout,
    error_class,
    error_for_status,
    parse_retry_after,
    redact,
)
from crewflow.ports.llm import CallScope, ChatMessage, ChatRequest, ChatResponse, ProviderConfig, ProviderEntry, Usage

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------ classification


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, RateLimited),
        (401, AuthError),
        (403, AuthError),
        (408, Timeout),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (529, ServerError),
        (400, RequestRejected),
        (404, RequestRejected),
        (413, RequestRejected),
        (422, RequestRejected),
    ],
)
def test_http_statuses_map_to_typed_errors(status: int, expected: type[ProviderError]) -> None:
    err = error_for_status(status, "boom", provider="p")
    assert type(err) is expected
    assert err.status == status
    assert "p" in str(err)


def test_retry_after_is_parsed_as_seconds_and_garbage_is_ignored() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-2") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_redact_hides_every_occurrence_of_a_secret() -> None:
    assert redact("key sk-123456 and sk-123456 again", ["sk-123456"]) == "key *** and *** again"
    assert redact("short k", ["k"]) == "short k"  # too short to be a key; redacting it would mangle text


def test_every_error_kind_has_a_class() -> None:
    for kind in ErrorKind:
        assert error_class(kind).kind is kind


# ----------------------------------------------------------------------------------------- policy

POLICY = FailoverPolicy(max_attempts=6, attempts_per_provider=2, base_delay=0.2, max_delay=5, jitter=0.0)


def test_a_bad_request_gives_up_at_once_since_every_provider_would_reject_it() -> None:
    decision = POLICY.next_step(
        RequestRejected("too long"), attempt=1, provider_attempt=1, has_alternative=True, rand=0
    )
    assert isinstance(decision, GiveUp)
    assert decision.fail_fast


def test_rejected_credentials_mark_the_provider_unhealthy_and_fail_over() -> None:
    decision = POLICY.next_step(AuthError("no"), attempt=1, provider_attempt=1, has_alternative=True, rand=0)
    assert decision == Failover("credentials rejected", mark_unhealthy=True)
    alone = POLICY.next_step(AuthError("no"), attempt=1, provider_attempt=1, has_alternative=False, rand=0)
    assert isinstance(alone, GiveUp)
    assert not alone.fail_fast


@pytest.mark.parametrize("error", [ServerError("x"), ConnectionFailed("x"), MalformedResponse("x"), RateLimited("x")])
def test_transient_errors_retry_the_same_provider_then_fail_over(error: ProviderError) -> None:
    first = POLICY.next_step(error, attempt=1, provider_attempt=1, has_alternative=True, rand=0)
    assert isinstance(first, Retry)
    second = POLICY.next_step(error, attempt=2, provider_attempt=2, has_alternative=True, rand=0)
    assert isinstance(second, Failover)
    last = POLICY.next_step(error, attempt=2, provider_attempt=2, has_alternative=False, rand=0)
    assert isinstance(last, GiveUp)


def test_a_timeout_fails_over_at_once_when_another_provider_is_there() -> None:
    assert isinstance(
        POLICY.next_step(Timeout("x"), attempt=1, provider_attempt=1, has_alternative=True, rand=0), Failover
    )
    assert isinstance(
        POLICY.next_step(Timeout("x"), attempt=1, provider_attempt=1, has_alternative=False, rand=0), Retry
    )


def test_retry_after_zero_gets_the_policy_floor_and_huge_values_the_cap() -> None:
    zero = POLICY.next_step(
        RateLimited("x", retry_after=0.0), attempt=1, provider_attempt=1, has_alternative=False, rand=0
    )
    assert isinstance(zero, Retry)
    assert zero.delay >= POLICY.retry_after_floor
    huge = POLICY.next_step(
        RateLimited("x", retry_after=10_000), attempt=1, provider_attempt=1, has_alternative=False, rand=0
    )
    assert isinstance(huge, Retry)
    assert huge.delay == POLICY.retry_after_cap


def test_a_long_retry_after_fails_over_instead_of_waiting_when_another_provider_is_there() -> None:
    decision = POLICY.next_step(
        RateLimited("x", retry_after=20), attempt=1, provider_attempt=1, has_alternative=True, rand=0
    )
    assert isinstance(decision, Failover)


def test_retry_after_longer_than_the_backoff_is_honoured() -> None:
    decision = POLICY.next_step(
        RateLimited("x", retry_after=1.5), attempt=1, provider_attempt=1, has_alternative=True, rand=0
    )
    assert decision == Retry(1.5)


def test_max_attempts_is_a_hard_limit() -> None:
    policy = FailoverPolicy(max_attempts=2)
    assert isinstance(
        policy.next_step(ServerError("x"), attempt=2, provider_attempt=1, has_alternative=True, rand=0), GiveUp
    )


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    delays = [POLICY.backoff(i, rand=0.0) for i in range(1, 10)]
    assert delays[:4] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert max(delays) == POLICY.max_delay
    assert delays == sorted(delays)


@given(retry=st.integers(1, 30), rand=st.floats(0, 1))
def test_jitter_stays_within_its_fraction_of_the_delay(retry: int, rand: float) -> None:
    policy = FailoverPolicy(jitter=0.5)
    full = min(policy.max_delay, policy.base_delay * policy.multiplier ** (retry - 1))
    assert full * 0.5 <= policy.backoff(retry, rand) <= full


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        FailoverPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        FailoverPolicy(jitter=2)
    with pytest.raises(ValueError, match="retry_after_floor"):
        FailoverPolicy(retry_after_floor=5, retry_after_cap=1)
    with pytest.raises(ValueError, match="finite"):
        FailoverPolicy(max_delay=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        CircuitBreaker(cool_down=float("inf"), max_cool_down=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        Budget(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        Price(input_per_1k=-1)


# -------------------------------------------------------------------------------- circuit breaker


def test_the_circuit_opens_after_consecutive_failures_and_lets_one_probe_through_after_the_cool_down() -> None:
    b = CircuitBreaker(failure_threshold=3, cool_down=10, max_cool_down=40)
    for _ in range(2):
        b.record_failure(0.0)
    assert b.allow(0.0)
    b.record_failure(0.0)
    assert b.state is CircuitState.OPEN
    assert not b.allow(9.9)
    assert b.allow(10.0)  # the probe
    assert b.state is CircuitState.HALF_OPEN
    assert not b.allow(10.0)  # only one probe at a time
    b.record_failure(10.5)
    assert b.state is CircuitState.OPEN
    assert not b.allow(29.0)  # cool-down doubled: 20 s
    assert b.allow(30.5)
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert b.allow(30.5)


def test_a_success_resets_the_consecutive_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2)
    b.record_failure(0.0)
    b.record_success()
    b.record_failure(0.0)
    assert b.state is CircuitState.CLOSED


def test_retry_after_keeps_the_provider_out_until_then() -> None:
    b = CircuitBreaker(failure_threshold=5)
    b.record_failure(100.0, retry_after=2.0)
    assert not b.allow(101.0)
    assert b.allow(102.0)


def test_an_unhealthy_provider_stays_out_for_the_unhealthy_cool_down() -> None:
    b = CircuitBreaker(unhealthy_cool_down=300)
    b.mark_unhealthy(0.0)
    assert b.unhealthy
    assert not b.allow(299.0)
    assert b.allow(300.0)


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    b = CircuitBreaker(failure_threshold=1, cool_down=1)
    b.record_failure(0.0)
    assert b.allow(1.0)
    b.release_probe()
    assert b.allow(1.0)


# ----------------------------------------------------------------------------------------- budget


def test_price_is_per_thousand_tokens() -> None:
    assert Price(input_per_1k=0.5, output_per_1k=1.5).cost(2000, 1000) == pytest.approx(2.5)


def test_the_ledger_refuses_a_call_that_would_exceed_the_budget_counting_calls_in_flight() -> None:
    ledger = CostLedger()
    budget = Budget(1.0)
    first = ledger.reserve("t", 0.6, budget)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve("t", 0.6, budget)  # 0.6 in flight + 0.6 > 1.0
    assert info.value.tenant_id == "t"
    ledger.settle(first, 0.2)
    assert ledger.total("t") == pytest.approx(0.2)
    ledger.reserve("t", 0.6, budget)  # 0.2 spent + 0.6 fits
    ledger.reserve("other", 0.9, budget)  # budgets are per tenant


# ------------------------------------------------------------------- property tests of the loop


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


OUTCOMES = ["ok", "429", "429-0", "500", "timeout", "conn", "malformed", "401", "400"]


def make_error(outcome: str, name: str) -> ProviderError:
    if outcome == "429":
        return RateLimited("slow down", provider=name, status=429, retry_after=1.0)
    if outcome == "429-0":
        return RateLimited("slow down", provider=name, status=429, retry_after=0.0)
    if outcome == "500":
        return ServerError("boom", provider=name, status=500)
    if outcome == "timeout":
        return Timeout("hung", provider=name)
    if outcome == "conn":
        return ConnectionFailed("refused", provider=name)
    if outcome == "malformed":
        return MalformedResponse("bad json", provider=name)
    if outcome == "401":
        return AuthError("bad key", provider=name, status=401)
    return RequestRejected("context too long", provider=name, status=400)


class ScriptedFake:
    """Answers from a cyclic list of outcomes; checks its own circuit at every call."""

    def __init__(self, name: str, outcomes: Sequence[str], gateway_box: list[Gateway], log: list[str]) -> None:
        self._name = name
        self._outcomes = list(outcomes)
        self._i = 0
        self._box = gateway_box
        self._log = log
        self.called_while_open = 0

    @property
    def name(self) -> str:
        return self._name

    async def complete(self, request: ChatRequest, on_token: object = None) -> ChatResponse:
        if self._box[0].breaker("t", self._name).state is CircuitState.OPEN:
            self.called_while_open += 1
        self._log.append(self._name)
        outcome = self._outcomes[self._i % len(self._outcomes)]
        self._i += 1
        if outcome != "ok":
            raise make_error(outcome, self._name)
        return ChatResponse(content="fine", model="m", provider=self._name, usage=Usage(10, 5))

    async def close(self) -> None:
        return None


@given(
    scripts=st.lists(st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=6), min_size=1, max_size=4),
    max_attempts=st.integers(1, 8),
    per_provider=st.integers(1, 3),
    threshold=st.integers(1, 4),
    gaps=st.lists(st.floats(0, 20), min_size=1, max_size=12),
)
async def test_the_gateway_loop_respects_circuits_and_attempt_limits_and_always_ends_typed(
    scripts: list[list[str]], max_attempts: int, per_provider: int, threshold: int, gaps: list[float]
) -> None:
    clock = FakeClock()
    box: list[Gateway] = []
    log: list[str] = []
    fakes = [ScriptedFake(f"p{i}", s, box, log) for i, s in enumerate(scripts)]
    registry = InMemoryProviderRegistry()
    registry.set_tenant(
        "t", [ProviderEntry(ProviderConfig(f.name, "scripted", "m", priority=i), f) for i, f in enumerate(fakes)]
    )
    policy = FailoverPolicy(max_attempts=max_attempts, attempts_per_provider=per_provider, max_retry_wait=1.5)
    gateway = Gateway(
        registry,
        policy=policy,
        breaker=lambda: CircuitBreaker(failure_threshold=threshold, cool_down=5, max_cool_down=30),
        monotonic=clock.now,
        sleep=clock.sleep,
        rand=lambda: 0.5,
    )
    box.append(gateway)
    request = ChatRequest((ChatMessage("user", "hi"),))
    for gap in gaps:
        clock.t += gap
        before = len(log)
        reported: list[dict[str, object]] = []
        outcome: ChatResponse | AllProvidersFailed | RequestRejected
        try:
            outcome = await gateway.complete(request, CallScope("t", cache=False), on_attempt=reported.append)
        except (AllProvidersFailed, RequestRejected) as exc:
            outcome = exc
        made = log[before:]
        if isinstance(outcome, ChatResponse):
            assert [a["provider"] for a in outcome.attempts] == made
            assert outcome.attempts[-1]["outcome"] == "success"
        elif isinstance(outcome, AllProvidersFailed):
            assert [a.provider for a in outcome.attempts] == made
            assert all(not a.ok for a in outcome.attempts)
        else:
            assert [a.provider for a in outcome.attempts] == made
            assert outcome.attempts[-1].outcome == "request_rejected"
        assert len(made) <= max_attempts
        assert [r["provider"] for r in reported] == made
    assert sum(f.called_while_open for f in fakes) == 0


@given(outcomes=st.lists(st.sampled_from(["429", "500", "timeout", "conn"]), min_size=1, max_size=5))
async def test_an_open_circuit_is_never_called_before_its_cool_down(outcomes: list[str]) -> None:
    clock = FakeClock()
    box: list[Gateway] = []
    log: list[str] = []
    bad = ScriptedFake("bad", outcomes, box, log)
    good = ScriptedFake("good", ["ok"], box, log)
    registry = InMemoryProviderRegistry()
    registry.set_tenant(
        "t",
        [
            ProviderEntry(ProviderConfig("bad", "scripted", "m", priority=0), bad),
            ProviderEntry(ProviderConfig("good", "scripted", "m", priority=1), good),
        ],
    )
    gateway = Gateway(
        registry,
        breaker=lambda: CircuitBreaker(failure_threshold=2, cool_down=60, max_cool_down=60),
        monotonic=clock.now,
        sleep=clock.sleep,
        rand=lambda: 0.0,
    )
    box.append(gateway)
    request = ChatRequest((ChatMessage("user", "hi"),))
    for _ in range(20):
        response = await gateway.complete(request, CallScope("t", cache=False))
        assert response.provider == "good"
    # at most two calls (attempts_per_provider) before the circuit opened; then none for 60 s
    assert log.count("bad") <= 2
    assert bad.called_while_open == 0
