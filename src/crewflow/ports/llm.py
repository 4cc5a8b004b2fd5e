"""LLM provider and gateway ports. Providers speak one vendor API; the gateway (application layer) orders
providers, applies the failover policy, records attempts, caches responses and enforces budgets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "CallScope",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "LLMGateway",
    "LLMProvider",
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


@dataclass(frozen=True, slots=True)
class CallScope:
    """Who is calling: the gateway picks providers, budget and cache namespace from this."""

    tenant_id: str
    execution_id: str | None = None
    node_id: str | None = None
    provider: str | None = None  # per-agent override: try this provider first
    cache: bool = True


class LLMProvider(Protocol):
    """One configured provider. Raises ``crewflow.domain.failover.ProviderError`` subclasses on failure."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse: ...

    async def close(self) -> None: ...


class LLMGateway(Protocol):
    async def complete(self, request: ChatRequest, scope: CallScope, *, on_token: TokenCallback | None = None,
                       on_attempt: Callable[[Mapping[str, Any]], None] | None = None) -> ChatResponse:  # fmt: skip
        """Complete with failover; raise ``AllProvidersFailed`` / ``BudgetExceeded`` / a fail-fast request
        error. Every attempt is reported to ``on_attempt`` as a plain mapping."""
        ...
