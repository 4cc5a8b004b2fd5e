"""Cursor pagination at the edge: an opaque cursor and ``limit`` ≤ 100 on every list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from crewflow.domain.logs import Page

__all__ = ["MAX_LIMIT", "PageOut", "page_out"]

MAX_LIMIT = 100
T = TypeVar("T")
U = TypeVar("U")


class PageOut(msgspec.Struct, Generic[T]):
    items: Sequence[T]
    next_cursor: str | None = None


def page_out(page: Page[Any], convert: Callable[[Any], U]) -> PageOut[U]:
    return PageOut(items=[convert(item) for item in page.items], next_cursor=page.next_cursor)
