"""Opaque cursors shared by the log store adapters (SQL and MongoDB).

A cursor names the last item of a page by its sort key ``(created_at, id)``; the next page starts strictly
after it (oldest-first lists) or strictly before it (newest-first lists). Ties on ``created_at`` are broken
by ``id`` so no item is skipped or repeated between pages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Protocol

__all__ = ["InvalidCursor", "check_limit", "decode_cursor", "encode_cursor", "next_cursor"]


class InvalidCursor(ValueError):
    """A cursor that this store did not hand out (or one that was altered)."""


def encode_cursor(created_at: float, item_id: str) -> str:
    raw = json.dumps([created_at, item_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, item_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidCursor("malformed page cursor") from None
    if (
        not isinstance(created_at, int | float)
        or isinstance(created_at, bool)
        or not math.isfinite(created_at)
        or not isinstance(item_id, str)
    ):
        raise InvalidCursor("malformed page cursor")
    return float(created_at), item_id


class _Keyed(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> float: ...


def next_cursor(items: Sequence[_Keyed], more: bool) -> str | None:
    """The cursor after the last item of a page, or None when it is the last page."""
    if not more or not items:
        return None
    last = items[-1]
    return encode_cursor(last.created_at, last.id)


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be at least 1")
