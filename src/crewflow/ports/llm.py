"""LLM provider and gateway ports. Providers speak one vendor API; the gateway (application layer) orders
providers, applies the failover policy, records attempts, caches responses and enforces budgets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crewflow.domain.failover import Budget, Price

__all__ = [
    "AttemptCallback",
    "CallScope",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "LLMGateway",
    "LLMProvider",
    "ProviderConfig",
    "ProviderEntry",
    "ProviderRegistry",
    "TenantLLMConfig",
    "TokenCallback",
    "Usage",
]

TokenCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()  # OpenAI shape: {"id", "type": "function", "function": {...}}
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    model: str | None = None  # None: the provider's configured model
    temperature: float | None = None
    max_tokens: int | None = None
    tools: tuple[Mapping[str, Any], ...] = ()  # OpenAI "tools" entries (JSON Schema parameters)
    stop: tuple[str, ...] = ()
    stream: bool = False
    tool_choice: str | Mapping[str, Any] | None = None  # OpenAI shape: "auto" | "none" | "required" | {...}
    extra: Mapping[str, Any] = field(default_factory=dict)  # other body fields, passed through as they are


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResponse:
    content: str | None
    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    finish_reason: str | None = None
    # Filled by the gateway: every attempt made for this answer (plain mappings, see AttemptRecord), the
    # cost of the successful attempt, and whether the answer came from the response cache.
    attempts: tuple[Mapping[str, Any], ...] = ()
    cost: float = 0.0
    cached: bool = False


@dataclass(frozen=True, slots=True)
class CallScope:
    """Who is calling: the gateway picks providers, budget and cache namespace from this."""

    tenant_id: str
    execution_id: str | None = None
    node_id: str | None = None
    provider: str | None = None  # per-agent override: try this provider first
    cache: bool = True


AttemptCallback = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How to reach one provider. ``kind``: ``openai`` (any OpenAI-compatible server: OpenAI, vLLM, LM
    Studio, Ollama ``/v1``), ``azure`` (Azure OpenAI style URL and ``api-key`` header), ``anthropic``
    (Messages API) or ``scripted`` (offline). ``base_url`` ends before ``/chat/completions`` for OpenAI
    style (e.g. ``https://api.openai.com/v1``) and before ``/v1/messages`` for Anthropic. The key is kept
    out of ``repr``."""

    name: str
    kind: str
    model: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    priority: int = 0  # lower first
    price: Price = field(default_factory=Price)
    timeout: float = 60.0  # seconds for a whole non-streamed call / between two stream chunks
    connect_timeout: float = 5.0
    max_connections: int = 100
    api_version: str | None = None  # azure: ?api-version=...; anthropic: anthropic-version header
    headers: Mapping[str, str] = field(default_factory=dict)


class LLMProvider(Protocol):
    """One configured provider. Raises ``crewflow.domain.failover.ProviderError`` subclasses on failure."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """A configured provider ready to call: its config (priority, model, price) and the adapter."""

    config: ProviderConfig
    provider: LLMProvider

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True, slots=True)
class TenantLLMConfig:
    """A tenant's providers, in priority order, and its budget (``None``: unlimited)."""

    providers: tuple[ProviderEntry, ...]
    budget: Budget | None = None


class ProviderRegistry(Protocol):
    """Where the gateway finds a tenant's providers. The composition root fills it (from the tenant's
    ``llm_providers`` with decrypted keys); it must be cheap: it is called on every LLM call."""

    async def for_tenant(self, tenant_id: str) -> TenantLLMConfig:
        """Raise ``NotFound`` if the tenant has no provider configured."""
        ...


class LLMGateway(Protocol):
    async def complete(self, request: ChatRequest, scope: CallScope, *, on_token: TokenCallback | None = None,
                       on_attempt: AttemptCallback | None = None) -> ChatResponse:  # fmt: skip
        """Complete with failover; raise ``AllProvidersFailed`` / ``BudgetExceeded`` / a fail-fast request
        error. Every attempt is reported to ``on_attempt`` as a plain mapping."""
        ...
