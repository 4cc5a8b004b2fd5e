"""LLM failover rules: typed provider errors, the failover policy, the circuit breaker and the cost ledger.

Pure Python (standard library only). Time and randomness are passed in by the caller, so every decision is
reproducible in tests: ``now`` is a monotonic reading in seconds, ``rand`` a number in ``[0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from crewflow.domain.errors import DomainError

__all__ = [
    "AllProvidersFailed",
    "AttemptRecord",
    "AuthError",
    "Budget",
    "BudgetExceeded",
    "CircuitBreaker",
    "CircuitState",
    "ConnectionFailed",
    "CostLedger",
    "Decision",
    "ErrorKind",
    "Failover",
    "FailoverPolicy",
    "GiveUp",
    "MalformedResponse",
    "Price",
    "ProviderError",
    "RateLimited",
    "RequestRejected",
    "Reservation",
    "Retry",
    "ServerError",
    "Timeout",
    "error_class",
    "error_for_status",
    "estimate_tokens",
    "parse_retry_after",
    "redact",
]


# --------------------------------------------------------------------------------------------- errors


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server_error"
    MALFORMED = "malformed"
    AUTH = "auth"
    REQUEST = "request_rejected"


class ProviderError(DomainError):
    """A provider call failed. Subclasses say how: the failover policy decides on ``kind`` alone.

    Messages must never contain credentials: adapters build them from the status and a redacted excerpt of
    the body (see ``redact``)."""

    kind: ClassVar[ErrorKind] = ErrorKind.SERVER
    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, provider: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:  # fmt: skip
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        # Filled by the gateway when it raises a fail-fast error: every attempt made for the call.
        self.attempts: tuple[AttemptRecord, ...] = ()
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.provider}: " if self.provider else ""
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{where}{self.kind.value}{status}: {self.message}"


class RateLimited(ProviderError):
    """429. ``retry_after`` (seconds) is what the provider asked for, before any floor or cap."""

    kind = ErrorKind.RATE_LIMITED


class Timeout(ProviderError):
    kind = ErrorKind.TIMEOUT


class ConnectionFailed(ProviderError):
    kind = ErrorKind.CONNECTION


class ServerError(ProviderError):
    """5xx, or an error event in the middle of a stream."""

    kind = ErrorKind.SERVER


class MalformedResponse(ProviderError):
    """The provider answered 2xx with something that is not the API's shape (bad JSON, missing fields)."""

    kind = ErrorKind.MALFORMED


class AuthError(ProviderError):
    """401/403: this provider's credentials do not work. Other providers may still answer."""

    kind = ErrorKind.AUTH
    retryable = False


class RequestRejected(ProviderError):
    """Other 4xx (bad request, context too long, content policy): every provider would reject it."""

    kind = ErrorKind.REQUEST
    retryable = False


_BY_KIND: dict[ErrorKind, type[ProviderError]] = {
    cls.kind: cls
    for cls in (RateLimited, Timeout, ConnectionFailed, ServerError, MalformedResponse, AuthError, RequestRejected)
}


def error_for_status(
    status: int, message: str, *, provider: str = "", retry_after: float | None = None
) -> ProviderError:
    """The typed error for a non-2xx HTTP status."""
    cls: type[ProviderError]
    if status == 429:
        cls = RateLimited
    elif status in (401, 403):
        cls = AuthError
    elif status == 408:
        cls = Timeout
    elif status >= 500:
        cls = ServerError
    elif 400 <= status < 500:
        cls = RequestRejected
    else:
        cls = MalformedResponse
    return cls(message, provider=provider, status=status, retry_after=retry_after)


def error_class(kind: ErrorKind) -> type[ProviderError]:
    return _BY_KIND[kind]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``-style already converted) header value.
    HTTP dates are not supported (no clock here): they give ``None`` and the policy uses its own backoff."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each (non-trivial) secret with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------------- attempts


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One call to one provider. ``outcome`` is ``success``, ``cache_hit`` or an ``ErrorKind`` value."""

    provider: str
    model: str
    latency_ms: float
    outcome: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    error: str | None = None
    status: int | None = None
    streamed_tokens: int = 0  # tokens already streamed to the caller by this attempt (a failed one: discard them)

    @property
    def ok(self) -> bool:
        return self.outcome in ("success", "cache_hit")

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "outcome": self.outcome,
            "error": self.error,
            "status": self.status,
            "streamed_tokens": self.streamed_tokens,
        }


class AllProvidersFailed(DomainError):
    """No provider produced an answer. ``attempts`` lists every call made, ``skipped`` the providers not
    called because their circuit was open (or they were marked unhealthy)."""

    def __init__(self, attempts: Sequence[AttemptRecord], skipped: Sequence[str] = (), reason: str = "") -> None:
        self.attempts = tuple(attempts)
        self.skipped = tuple(skipped)
        self.reason = reason
        parts = [f"{a.provider}/{a.model}: {a.outcome}" + (f" ({a.error})" if a.error else "") for a in self.attempts]
        text = f"all LLM providers failed after {len(self.attempts)} attempt(s)"
        if reason:
            text += f" ({reason})"
        if parts:
            text += ": " + "; ".join(parts)
        if self.skipped:
            text += f"; skipped (circuit open): {', '.join(self.skipped)}"
        super().__init__(text)


# --------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class Retry:
    """Call the same provider again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Failover:
    """Move to the next provider by priority; ``mark_unhealthy`` takes this one out of rotation."""

    reason: str
    mark_unhealthy: bool = False


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str
    fail_fast: bool = False  # the request itself is bad: raise the provider's error, not AllProvidersFailed


Decision = Retry | Failover | GiveUp


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """How one call reacts to a provider error.

    - request errors (other 4xx) → give up at once (every provider would reject them);
    - 401/403 → mark the provider unhealthy and fail over;
    - 429, timeout, connection, 5xx, malformed → retry the same provider with exponential backoff and jitter
      (``Retry-After`` honoured, clamped to ``[retry_after_floor, retry_after_cap]``) while it has attempts
      left and the wait is at most ``max_retry_wait``, then fail over;
    - never more than ``max_attempts`` calls in total.

    Timeouts are not retried on the same provider when another one is available (``retry_timeouts``): the
    call already waited a full timeout there.
    """

    max_attempts: int = 6
    attempts_per_provider: int = 2
    base_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.5  # fraction of the delay drawn at random: delay * (1 - jitter + jitter * rand)
    retry_after_floor: float = 0.05
    retry_after_cap: float = 30.0
    max_retry_wait: float = 2.0  # waits longer than this fail over instead (if another provider is there)
    retry_timeouts: bool = False

    def __post_init__(self) -> None:
        numbers = (self.base_delay, self.multiplier, self.max_delay, self.jitter, self.retry_after_floor,
                   self.retry_after_cap, self.max_retry_wait)  # fmt: skip
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError("failover policy numbers must be finite")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_retry_wait < 0:
            raise ValueError("max_retry_wait must be non-negative")
        if self.attempts_per_provider < 1:
            raise ValueError("attempts_per_provider must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays must be non-negative and multiplier at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if self.retry_after_floor < 0 or self.retry_after_cap < self.retry_after_floor:
            raise ValueError("retry_after_floor must be >= 0 and <= retry_after_cap")

    def backoff(self, retry_index: int, rand: float) -> float:
        """Delay before retry number ``retry_index`` (1 = first retry)."""
        raw = min(self.max_delay, self.base_delay * self.multiplier ** max(0, retry_index - 1))
        return raw * (1.0 - self.jitter + self.jitter * min(max(rand, 0.0), 1.0))

    def retry_after(self, requested: float | None) -> float | None:
        """A provider's ``Retry-After`` clamped to the floor and cap (``None`` if it sent none)."""
        if requested is None:
            return None
        return min(self.retry_after_cap, max(self.retry_after_floor, requested))

    def delay_for(self, error: ProviderError, provider_attempt: int, rand: float) -> float:
        backoff = self.backoff(provider_attempt, rand)
        asked = self.retry_after(error.retry_after) if isinstance(error, RateLimited) else None
        return max(backoff, asked) if asked is not None else backoff

    def next_step(self, error: ProviderError, *, attempt: int, provider_attempt: int, has_alternative: bool,
                  rand: float) -> Decision:  # fmt: skip
        """``attempt``: calls made so far for this request (including the failed one); ``provider_attempt``:
        calls made to this provider so far; ``has_alternative``: another provider may still be tried."""
        if isinstance(error, RequestRejected):
            return GiveUp(f"request rejected by {error.provider or 'provider'}", fail_fast=True)
        if attempt >= self.max_attempts:
            return GiveUp(f"max attempts ({self.max_attempts}) reached")
        if isinstance(error, AuthError):
            if has_alternative:
                return Failover("credentials rejected", mark_unhealthy=True)
            return GiveUp("credentials rejected")
        can_retry_here = provider_attempt < self.attempts_per_provider and not (
            isinstance(error, Timeout) and has_alternative and not self.retry_timeouts
        )
        if can_retry_here:
            delay = self.delay_for(error, provider_attempt, rand)
            if delay <= self.max_retry_wait or not has_alternative:
                return Retry(delay)
        if has_alternative:
            return Failover(error.kind.value)
        return GiveUp(f"{error.kind.value} and no other provider")


# ------------------------------------------------------------------------------------- circuit breaker


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Per-provider breaker. Opens after ``failure_threshold`` consecutive failures (at once for auth
    errors, or for the clamped ``Retry-After`` of a 429); after the cool-down one probe call is let through
    (half-open): success closes it, failure re-opens it with a doubled cool-down (up to ``max_cool_down``).
    """

    failure_threshold: int = 3
    cool_down: float = 5.0
    max_cool_down: float = 60.0
    unhealthy_cool_down: float = 300.0
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    open_until: float = 0.0
    current_cool_down: float = 0.0
    probe_in_flight: bool = False
    unhealthy: bool = False

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not all(math.isfinite(n) for n in (self.cool_down, self.max_cool_down, self.unhealthy_cool_down)):
            raise ValueError("cool-downs must be finite")
        if self.cool_down <= 0 or self.max_cool_down < self.cool_down:
            raise ValueError("cool_down must be positive and at most max_cool_down")

    def allow(self, now: float) -> bool:
        """May a call go to this provider now? In half-open state only one probe at a time is allowed;
        a ``True`` from a half-open breaker reserves that probe."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if now < self.open_until:
                return False
            self.state = CircuitState.HALF_OPEN
            self.probe_in_flight = False
        if self.probe_in_flight:
            return False
        self.probe_in_flight = True
        return True

    def would_allow(self, now: float) -> bool:
        """Like ``allow`` but without reserving a probe (for planning, e.g. "is there an alternative?")."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return now >= self.open_until
        return not self.probe_in_flight

    def record_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.current_cool_down = 0.0
        self.probe_in_flight = False
        self.unhealthy = False

    def record_failure(self, now: float, *, retry_after: float | None = None) -> None:
        """A call failed. ``retry_after`` is the (already clamped) wait the provider asked for."""
        self.failures += 1
        self.probe_in_flight = False
        wait = retry_after or 0.0
        if self.failures >= self.failure_threshold:
            if self.state is CircuitState.HALF_OPEN and self.current_cool_down > 0:
                self.current_cool_down = min(self.max_cool_down, self.current_cool_down * 2)
            else:
                self.current_cool_down = max(self.current_cool_down, self.cool_down)
            self._open(now, max(self.current_cool_down, wait))
        elif wait > 0:
            # Honour Retry-After: do not call this provider again before it asked us to.
            self._open(now, wait)
        else:
            self.state = CircuitState.CLOSED

    def mark_unhealthy(self, now: float) -> None:
        """Credentials rejected: out of rotation for ``unhealthy_cool_down`` (then one probe)."""
        self.unhealthy = True
        self.failures += 1
        self.current_cool_down = self.max_cool_down
        self._open(now, self.unhealthy_cool_down)

    def release_probe(self) -> None:
        """The probe ended without an outcome (cancelled): let another call probe."""
        self.probe_in_flight = False

    def _open(self, now: float, duration: float) -> None:
        self.state = CircuitState.OPEN
        self.open_until = max(self.open_until, now + duration)
        self.probe_in_flight = False


# ----------------------------------------------------------------------------------------- cost/budget


@dataclass(frozen=True, slots=True)
class Price:
    """A provider's price per 1,000 input and output tokens (in the tenant's currency unit)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    def __post_init__(self) -> None:
        for value in (self.input_per_1k, self.output_per_1k):
            if not math.isfinite(value) or value < 0:
                raise ValueError("prices must be finite, non-negative numbers")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / 1000.0


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic upper-ish estimate: one token per four characters."""
    return (len(text) + 3) // 4


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's spending limit over the ledger's lifetime (reset by the composition root per period)."""

    limit: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.limit) or self.limit < 0:
            raise ValueError("budget limit must be a finite, non-negative number")


class BudgetExceeded(DomainError):
    def __init__(self, tenant_id: str, limit: float, spent: float, estimate: float) -> None:
        self.tenant_id = tenant_id
        self.limit = limit
        self.spent = spent
        self.estimate = estimate
        super().__init__(
            f"tenant {tenant_id!r}: LLM budget {limit:.6g} would be exceeded "
            f"(spent {spent:.6g}, this call up to {estimate:.6g})"
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    tenant_id: str
    amount: float


@dataclass(slots=True)
class CostLedger:
    """What each tenant spent, plus what calls in flight may still spend (reserved). A call reserves its
    estimated worst-case cost before it starts, so concurrent calls cannot overrun the budget together."""

    spent: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, float] = field(default_factory=dict)

    def reserve(self, tenant_id: str, estimate: float, budget: Budget | None) -> Reservation:
        spent = self.spent.get(tenant_id, 0.0)
        held = self.reserved.get(tenant_id, 0.0)
        if budget is not None and spent + held + estimate > budget.limit:
            raise BudgetExceeded(tenant_id, budget.limit, spent + held, estimate)
        self.reserved[tenant_id] = held + estimate
        return Reservation(tenant_id, estimate)

    def settle(self, reservation: Reservation, actual: float) -> None:
        """Release the reservation and charge the actual cost (0 if the call failed)."""
        tid = reservation.tenant_id
        self.reserved[tid] = max(0.0, self.reserved.get(tid, 0.0) - reservation.amount)
        if actual:
            self.spent[tid] = self.spent.get(tid, 0.0) + actual

    def total(self, tenant_id: str) -> float:
        return self.spent.get(tenant_id, 0.0)

    def snapshot(self) -> Mapping[str, float]:
        return dict(self.spent)
