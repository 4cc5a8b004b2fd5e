"""Every error as RFC 7807 problem details (``application/problem+json``), mapped from domain errors in one
place. 500s never carry internals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin

from crewflow.application.auth import WrongPassword
from crewflow.application.executions import InvalidArguments
from crewflow.domain.auth import RateLimited, Unauthenticated
from crewflow.domain.errors import Conflict, FlowInvalid, NotFound, PermissionDenied

__all__ = ["PROBLEM_JSON", "problem_details_plugin", "unexpected_error_handler"]

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("crewflow.http")


def _problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
             extra: dict[str, Any] | None = None) -> ProblemDetailsException:  # fmt: skip
    return ProblemDetailsException(status_code=status, title=title, detail=detail, headers=headers, extra=extra,
                                   type_="about:blank")  # fmt: skip


def _not_found(exc: NotFound) -> ProblemDetailsException:
    # The same answer for a missing object and for another tenant's: the id is echoed, nothing else.
    return _problem(404, "Not Found", f"{exc.kind} {exc.ident!r} not found")


def _flow_invalid(exc: FlowInvalid) -> ProblemDetailsException:
    problems = [{"code": p.code, "where": p.where, "message": p.message, "nodes": list(p.node_ids),
                 "edge": list(p.edge) if p.edge else None} for p in exc.problems]  # fmt: skip
    return _problem(422, "Invalid flow", f"{len(problems)} problem(s) in the flow", extra={"errors": problems})


def _validation(exc: ValidationException) -> ProblemDetailsException:
    errors: list[dict[str, Any]] = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, Mapping):
                errors.append({"field": item.get("key"), "message": item.get("message"), "source": item.get("source")})
    return _problem(422, "Unprocessable Content", "the request is invalid", extra={"errors": errors})


def _http(exc: HTTPException) -> ProblemDetailsException:
    status = exc.status_code
    detail = exc.detail if status < 500 else "internal error"
    return _problem(status, _TITLES.get(status, "Error"), detail, headers=exc.headers)


def _recursion(exc: RecursionError) -> ProblemDetailsException:
    if "deserializing" in str(exc):  # msgspec refused a request body nested beyond its limit: the client's doing
        return _problem(400, "Bad Request", "the request body nests too deeply")
    log.error("http.unhandled", error_type="RecursionError", exc_info=exc)
    return _problem(500, "Internal Server Error", "an unexpected error occurred")


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
           429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip

MAPPING: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
    NotFound: _not_found,
    Conflict: lambda e: _problem(409, "Conflict", str(e)),
    PermissionDenied: lambda e: _problem(403, "Forbidden", f"your role does not allow this ({e.permission})"),
    Unauthenticated: lambda e: _problem(401, "Unauthorized", str(e), headers={"WWW-Authenticate": "Bearer"}),
    RateLimited: lambda e: _problem(429, "Too Many Requests", str(e),
                                    headers={"Retry-After": str(max(1, round(e.retry_after)))}),
    FlowInvalid: _flow_invalid,
    InvalidArguments: lambda e: _problem(422, "Unprocessable Content", "the request is invalid", extra={
        "errors": [{"field": p.where, "message": p.message, "source": "body"} for p in e.problems]}),
    WrongPassword: lambda e: _problem(422, "Unprocessable Content", "the request is invalid", extra={
        "errors": [{"field": "current_password", "message": str(e), "source": "body"}]}),
    ValidationException: _validation,
    HTTPException: _http,
    RecursionError: _recursion,
}


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map=MAPPING))


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Anything unmapped: logged with its type (the log keeps the traceback), answered without internals."""
    log.exception("http.unhandled", path=request.url.path, error_type=type(exc).__name__)
    body = {"type": "about:blank", "title": "Internal Server Error", "status": 500,
            "detail": "an unexpected error occurred"}  # fmt: skip
    return Response(body, status_code=500, media_type=PROBLEM_JSON)
