"""Logging set-up for the command line and servers: structlog key/value events on stderr (stdout stays
for results), readable in a terminal, JSON otherwise or when ``CREWFLOW_LOG_FORMAT=json``."""

from __future__ import annotations

import logging
import sys

import structlog

from crewflow.settings import Settings

__all__ = ["configure_logging"]


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(settings: Settings) -> None:
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    as_json = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolve sys.stderr at each logger creation, not once: whoever replaces the stream later (a test
        # runner's capture, a daemon redirect) must not leave loggers writing to a closed file.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations narrate every step at INFO
    logging.basicConfig(stream=sys.stderr, level=max(level, logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
