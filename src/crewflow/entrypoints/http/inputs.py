"""Request-input helpers of the resource controllers: what the domain or a repository refuses as a
``ValueError`` (a malformed cursor, a value a domain object rejects) is the client's mistake, so it is
answered 422 with per-field messages, never 500."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from litestar.exceptions import ValidationException

from crewflow.domain.errors import Problem

__all__ = ["invalid", "invalid_problems", "refused_as_invalid", "valid_cursor"]

T = TypeVar("T")


def invalid(field: str, message: str, source: str = "body") -> ValidationException:
    return ValidationException(detail="the request is invalid",
                               extra=[{"key": field, "message": message, "source": source}])  # fmt: skip


def invalid_problems(problems: Iterable[Problem]) -> ValidationException:
    errors = [{"key": p.where, "message": p.message, "source": "body"} for p in problems]
    return ValidationException(detail="the request is invalid", extra=errors)


@contextmanager
def refused_as_invalid(field: str = "body", source: str = "body") -> Iterator[None]:
    """Turn a ``ValueError`` raised by a domain constructor inside the block into a 422 naming ``field``.
    Domain messages describe the value (never secrets), so they are passed on."""
    try:
        yield
    except ValueError as exc:
        raise invalid(field, str(exc), source) from None


async def valid_cursor(page: Awaitable[T]) -> T:
    """Await a repository ``list``: a cursor it cannot decode is a 422 on ``cursor``."""
    try:
        return await page
    except ValueError:
        raise invalid("cursor", "invalid cursor", "query") from None
