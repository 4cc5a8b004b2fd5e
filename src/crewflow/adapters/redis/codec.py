"""Execution events on the wire (pub/sub messages and stream entries): msgspec JSON arrays."""

from __future__ import annotations

from typing import Any

import msgspec

from crewflow.domain.events import EventKind, ExecutionEvent

__all__ = ["decode_event", "encode_event"]


class _WireEvent(msgspec.Struct, array_like=True, frozen=True):
    execution_id: str
    seq: int
    kind: str
    at: float
    node_id: str | None
    data: dict[str, Any]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_WireEvent)


def encode_event(event: ExecutionEvent) -> bytes:
    return _encoder.encode(_WireEvent(event.execution_id, event.seq, str(event.kind), event.at, event.node_id,
                                      dict(event.data)))  # fmt: skip


def decode_event(raw: bytes) -> ExecutionEvent:
    """Raises ``msgspec.ValidationError``/``DecodeError`` (or ``ValueError`` for an unknown kind) on garbage."""
    wire = _decoder.decode(raw)
    return ExecutionEvent(wire.execution_id, wire.seq, EventKind(wire.kind), wire.at, wire.node_id, wire.data)
