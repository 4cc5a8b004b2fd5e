"""The API process serves the built canvas at / (public, never cached) and its hashed assets."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from crewflow.entrypoints.http.canvas import canvas_handlers

pytestmark = pytest.mark.integration


async def test_the_canvas_index_and_assets_are_served(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<div id="root"></div><script src="/assets/app-1.js"></script>')
    (tmp_path / "assets" / "app-1.js").write_text("console.log(1)")
    async with AsyncTestClient(Litestar(route_handlers=canvas_handlers(tmp_path))) as client:
        index = await client.get("/")
        assert index.status_code == 200
        assert 'id="root"' in index.text
        assert index.headers["cache-control"] == "no-cache"
        asset = await client.get("/assets/app-1.js")
        assert asset.status_code == 200
        assert asset.text == "console.log(1)"
        assert (await client.get("/assets/../index.html")).status_code == 404


def test_nothing_is_served_when_the_canvas_is_not_built(tmp_path: Path) -> None:
    assert canvas_handlers(tmp_path) == []


async def test_the_api_docs_page_uses_the_vendored_swagger_ui_not_a_cdn(tmp_path: Path) -> None:
    from litestar.openapi import OpenAPIConfig

    from crewflow.entrypoints.http.canvas import docs_render_plugins

    (tmp_path / "index.html").write_text('<div id="root"></div>')
    (tmp_path / "api-docs").mkdir()
    for name in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        (tmp_path / "api-docs" / name).write_text("/* vendored */")
    app = Litestar(route_handlers=canvas_handlers(tmp_path),
                   openapi_config=OpenAPIConfig(title="t", version="1", path="/schema",
                                                render_plugins=docs_render_plugins(tmp_path)))
    async with AsyncTestClient(app) as client:
        page = await client.get("/schema/swagger")
        assert page.status_code == 200
        assert 'src="/api-docs/swagger-ui-bundle.js"' in page.text
        assert "cdn.jsdelivr.net/npm/swagger-ui" not in page.text
        assert (await client.get("/api-docs/swagger-ui.css")).status_code == 200
