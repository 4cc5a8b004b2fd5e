"""ASGI entry point for servers: ``uvicorn --factory crewflow.entrypoints.http.asgi:app``."""

from __future__ import annotations

from litestar import Litestar

from crewflow.entrypoints.http.app import create_app
from crewflow.entrypoints.logs import configure_logging
from crewflow.settings import Settings

__all__ = ["app"]


def app() -> Litestar:
    settings = Settings.from_env()
    configure_logging(settings)
    return create_app(settings=settings)
