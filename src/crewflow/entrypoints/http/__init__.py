"""The HTTP API and WebSocket (Litestar). ``create_app(container)`` builds the ASGI app."""

from crewflow.entrypoints.http.app import create_app

__all__ = ["create_app"]
