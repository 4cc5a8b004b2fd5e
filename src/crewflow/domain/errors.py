"""Domain errors. The entrypoints map these to HTTP problem details and CLI messages in one place each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Conflict",
    "DomainError",
    "ExpressionError",
    "FlowFormatError",
    "FlowInvalid",
    "NodeExecutionError",
    "NotFound",
    "PermissionDenied",
    "Problem",
    "TemplateError",
    "ToolBuildError",
    "ToolUnavailable",
]


class DomainError(Exception):
    """Base class of every error the domain raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition. ``where`` names the node, edge or field concerned."""

    code: str
    message: str
    where: str = ""
    node_ids: tuple[str, ...] = ()
    edge: tuple[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class FlowInvalid(DomainError):
    """A flow failed validation; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems) or "invalid flow")


class FlowFormatError(FlowInvalid):
    """A flow document could not be read into the domain model (wrong types, missing keys)."""


class ExpressionError(DomainError):
    """A router expression is malformed or uses something the expression language does not allow."""


class TemplateError(DomainError):
    """A ``{{ ... }}`` template refers to something that does not exist."""


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"{kind} {ident!r} not found")


class Conflict(DomainError):
    """The operation conflicts with the current state (stale version, duplicate name, ...)."""


class PermissionDenied(DomainError):
    def __init__(self, permission: str) -> None:
        self.permission = permission
        super().__init__(f"missing permission {permission!r}")


class NodeExecutionError(DomainError):
    """A node's work failed. ``retryable`` tells the scheduler whether its retry policy applies."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class ToolBuildError(DomainError):
    """Building a tool's image failed (bad Dockerfile, a step failed, timeout, context too large). The
    message is readable and safe to show the tool's owner."""


class ToolUnavailable(NodeExecutionError):
    """No sandbox can run this tool here (e.g. it needs Docker and no engine answers). Not retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
