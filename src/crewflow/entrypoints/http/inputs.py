"""Request-input helpers of the resource controllers: what the domain or a repository refuses as a
``ValueError`` (a malformed cursor, a value a domain object rejects) is the client's mistake, so it is
answered 422 with per-field messages, never 500."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from litestar.exceptions import ValidationException
from litestar.params import PathParameter

from crewflow.domain.errors import Problem

__all__ = [
    "MAX_JSON_DEPTH",
    "NO_CONTROL_CHARS",
    "NO_NUL",
    "PathId",
    "check_json",
    "invalid",
    "invalid_problems",
    "refused_as_invalid",
    "valid_cursor",
]

T = TypeVar("T")
# PostgreSQL refuses NUL in text and in jsonb: refused at the edge, a 422 rather than a database error.
NO_NUL = r"^[^\x00]*$"
MAX_JSON_DEPTH = 64
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
# An object id in a path: anything an id can be, never a control character (404 when it names nothing).
PathId = Annotated[str, PathParameter(pattern=r"^[^\x00-\x1f\x7f]{1,128}$")]


def invalid(field: str, message: str, source: str = "body") -> ValidationException:
    return ValidationException(detail="the request is invalid",
                               extra=[{"key": field, "message": message, "source": source}])  # fmt: skip


def invalid_problems(problems: Iterable[Problem]) -> ValidationException:
    errors = [{"key": p.where, "message": p.message, "source": "body"} for p in problems]
    return ValidationException(detail="the request is invalid", extra=errors)


def check_json(value: Any, field: str = "body") -> None:
    """422 if a JSON document nests deeper than ``MAX_JSON_DEPTH`` (storing and reading it back recurses) or
    carries a NUL character anywhere, keys included."""
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise invalid(field, f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            if "\x00" in item:
                raise invalid(where, "must not contain NUL characters")
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and "\x00" in key:
                    raise invalid(where, "keys must not contain NUL characters")
                stack.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{index}]", depth + 1) for index, child in enumerate(item))


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
