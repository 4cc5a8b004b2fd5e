"""The canvas (the built single-page app) served by the API process at ``/`` (ADR 0009).

Where the built files are: ``CREWFLOW_STATIC_DIR``, else ``crewflow/static`` inside the installed package,
else ``frontend/dist`` of a source checkout (``npm ci && npm run build``; ``make run`` does it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.static_files import create_static_files_router

__all__ = ["canvas_directory", "canvas_handlers", "docs_render_plugins"]

_PACKAGE = Path(__file__).resolve().parents[2]


def canvas_directory() -> Path | None:
    candidates = [Path(os.environ["CREWFLOW_STATIC_DIR"])] if os.environ.get("CREWFLOW_STATIC_DIR") else []
    candidates += [_PACKAGE / "static", _PACKAGE.parents[1] / "frontend" / "dist"]
    return next((c for c in candidates if (c / "index.html").is_file()), None)


def canvas_handlers(directory: Path | None = None) -> list[Any]:
    """``/`` (index.html, never cached: it names the hashed assets) and ``/assets/*``; nothing when the
    canvas is not built (the API works without it)."""
    directory = directory if directory is not None else canvas_directory()
    if directory is None or not (directory / "index.html").is_file():
        return []
    index = (directory / "index.html").read_bytes()

    @get("/", opt={"public": True}, include_in_schema=False)
    async def canvas_index() -> Response[bytes]:
        return Response(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    handlers: list[Any] = [canvas_index]
    for folder in ("assets", "api-docs"):
        if (directory / folder).is_dir():
            handlers.append(create_static_files_router(
                path=f"/{folder}", directories=[directory / folder], opt={"public": True}, include_in_schema=False,
                name=f"canvas-{folder}",
            ))
    return handlers


def docs_render_plugins(directory: Path | None = None) -> list[Any]:
    """The interactive API docs page at ``/api/v1/schema/swagger`` (and ``/api/v1/schema``): Swagger UI from
    the files the canvas build vendors (no CDN: servers may be offline), else Scalar from its CDN."""
    from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

    directory = directory if directory is not None else canvas_directory()
    if directory is not None and (directory / "api-docs" / "swagger-ui-bundle.js").is_file():
        return [SwaggerRenderPlugin(
            js_url="/api-docs/swagger-ui-bundle.js", css_url="/api-docs/swagger-ui.css",
            standalone_preset_js_url="/api-docs/swagger-ui-standalone-preset.js", path=["/", "/swagger"],
        )]
    return [ScalarRenderPlugin()]
