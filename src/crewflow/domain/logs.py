"""Records kept by the log store: chat messages and audit entries (execution events live in events.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["AuditEntry", "ChatMessageRecord", "Page"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChatMessageRecord:
    id: str
    chat_id: str
    role: str  # user | assistant | system
    content: str
    created_at: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    action: str  # e.g. "flow.create", "auth.login.failed"
    created_at: float
    actor_id: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    request_id: str | None = None
    client_addr: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list. ``next_cursor`` is opaque; None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None = None
