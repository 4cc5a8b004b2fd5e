"""Logging set-up for the command line, servers and workers: structlog key/value events on stderr (stdout
stays for results), readable in a terminal, JSON otherwise or when ``CREWFLOW_LOG_FORMAT=json``.

Every line carries the context variables bound by whoever handles the work (``request_id``, ``tenant_id``,
``user_id``, ``execution_id``, ``node_id``: the HTTP middleware, the job wrapper, the node wrappers) and the
current span's ``trace_id``/``span_id`` when tracing is on. Lines from the standard library's ``logging``
(libraries, the server) go through the same processors.

``redact`` runs last before rendering: values under secret-looking keys (password, token, authorization,
api_key, secret, cookie, ...) become ``[redacted]`` at any depth, and so do bearer tokens, JWTs, ``sk-...``
keys and URL passwords found inside any string, including the event text and formatted exceptions.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import trace

from crewflow.settings import Settings

__all__ = ["REDACTED", "add_trace_ids", "configure_logging", "redact", "redact_value"]

REDACTED = "[redacted]"

# A key names a secret when it contains one of these words, or is "token"/"*_token"/"*-token" (not the
# token *counts* like input_tokens, which are useful).
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|secret|authori[sz]ation|cookie|api[-_]?key|private[-_]?key|access[-_]?key|credential"
    r"|(^|[-_])token$|^token$|signature|dsn$",
    re.IGNORECASE,
)
# Secrets inside free text. Each alternative keeps what identifies the kind of secret and drops the rest.
_SECRET_TEXT = re.compile(
    r"(?P<bearer>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT (header.payload.signature)
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}"  # OpenAI/Anthropic style API keys: sk-..., sk-ant-..., sk-proj-...
    r"|(?P<userinfo>://[^/\s:@]*:)[^/\s@]+(?=@)"  # scheme://user:password@host
    r"|(?P<param>\b(?:password|passwd|pwd|secret|token|api[-_]?key|access_token|client_secret)=)[^&\s\"']+",
    re.IGNORECASE,
)


def _replace(match: re.Match[str]) -> str:
    prefix = match.group("bearer") or match.group("userinfo") or match.group("param") or ""
    return prefix + REDACTED


def redact_value(value: Any) -> Any:
    """``value`` with secrets replaced: strings scanned, mappings by key and value, sequences item by item."""
    if isinstance(value, str):
        return _SECRET_TEXT.sub(_replace, value) if len(value) >= 8 else value
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                else redact_value(v) for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    if isinstance(value, bytes):
        return redact_value(value.decode("utf-8", errors="replace"))
    return value


def redact(_logger: object, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """structlog processor: see the module docstring."""
    for key, value in list(event_dict.items()):
        if value is None or isinstance(value, bool | int | float):
            continue
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


def add_trace_ids(_logger: object, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """structlog processor: the current span's ids, when a span is recording."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler crewflow puts on the root logger: it writes to whatever ``sys.stderr`` is now (a test
    runner's capture, a daemon redirect), like the structlog loggers."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        return None


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Exceptions become text here so that ``redact`` sees them (the console renderer prints the text).
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolve sys.stderr at each logger creation, not once: whoever replaces the stream later (a test
        # runner's capture, a daemon redirect) must not leave loggers writing to a closed file.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations narrate every step at INFO
    # The standard library's records (libraries, the server) through the same chain.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
