"""The Litestar application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from crewflow import __version__
from crewflow.adapters.telemetry import configure_tracing
from crewflow.entrypoints.http.agents import AgentController
from crewflow.entrypoints.http.audit_routes import AuditController
from crewflow.entrypoints.http.auth_routes import AuthController
from crewflow.entrypoints.http.canvas import canvas_handlers, docs_render_plugins
from crewflow.entrypoints.http.chats import ChatController
from crewflow.entrypoints.http.crews import CrewController
from crewflow.entrypoints.http.executions import ExecutionController, FlowExecutionController
from crewflow.entrypoints.http.flows import FlowController
from crewflow.entrypoints.http.limits import RateLimitMiddleware, security_headers
from crewflow.entrypoints.http.observability import (
    IdentityLogContext,
    default_readiness_checks,
    healthz,
    instrument_app,
    metrics_endpoint,
    readyz,
)
from crewflow.entrypoints.http.problems import problem_details_plugin, unexpected_error_handler
from crewflow.entrypoints.http.providers import ProviderController
from crewflow.entrypoints.http.security import TokenAuthMiddleware
from crewflow.entrypoints.http.tools import ToolController
from crewflow.entrypoints.http.users import UserController
from crewflow.entrypoints.http.webhooks import WebhookController
from crewflow.entrypoints.http.ws import chat_events, execution_events

if TYPE_CHECKING:
    from crewflow.bootstrap import ApiContainer
    from crewflow.settings import Settings

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/v1"
PUBLIC_PATHS = [r"^/api/v1/schema", r"^/api/v1/auth/(register|login)$", r"^/healthz$", r"^/readyz$", r"^/metrics$",
                r"^/$", r"^/assets/", r"^/api-docs/"]
MAX_BODY_BYTES = 2 * 1024 * 1024


def create_app(container: ApiContainer | None = None, *, settings: Settings | None = None,
               route_handlers: list[Any] | None = None) -> Litestar:  # fmt: skip
    """With a ``container`` (tests, embedding) the app uses it; otherwise it builds one from ``settings`` at
    start-up (each server worker process builds its own) and closes it at shutdown.

    Tracing starts here when the environment asks for it (``configure_tracing``: before any CrewAI import);
    request ids, HTTP metrics and spans wrap the whole app (``instrument_app``); ``/readyz`` probes the
    container's dependencies (``default_readiness_checks``)."""
    configure_tracing(service_name="crewflow-api")  # OTEL_SERVICE_NAME wins
    api = Router(path=API_PREFIX, route_handlers=[AgentController, AuthController, UserController, AuditController,
                                                     *(route_handlers or [])])  # fmt: skip
    for resource in (CrewController, FlowController, ProviderController, ToolController):
        api.register(resource)
    api.register(FlowExecutionController)
    api.register(WebhookController)
    api.register(ExecutionController)
    api.register(execution_events)
    api.register(ChatController)
    api.register(chat_events)
    state = State({"container": container, "readiness": [], "readiness_closers": []})

    async def on_startup() -> None:
        if state.container is None:
            from crewflow.bootstrap import build_api_container

            state.container = await build_api_container(settings)
        await state.container.start()  # queue and chores run in this process (stopped by the container's aclose)
        state.readiness, state.readiness_closers = default_readiness_checks(state.container)
        if state.container.settings.extra.get("CREWFLOW_DEMO") == "1":
            from crewflow.entrypoints.http.demo import seed_demo_workspace

            await seed_demo_workspace(state.container)

    async def on_shutdown() -> None:
        for close in state.readiness_closers:
            await close()
        state.readiness_closers = []
        if state.container is not None:
            await state.container.aclose()

    app = Litestar(
        route_handlers=[api, healthz, readyz, metrics_endpoint, *canvas_handlers()],
        plugins=[problem_details_plugin()],
        exception_handlers={Exception: unexpected_error_handler},
        # (request id, metrics, server span: around the whole app, see instrument_app) → authentication →
        # the caller in the log context → rate limits (keyed by the verified user and tenant; ADR 0008)
        middleware=[DefineMiddleware(TokenAuthMiddleware, exclude=PUBLIC_PATHS, exclude_from_auth_key="public"),
                    IdentityLogContext(), RateLimitMiddleware()],
        before_send=[security_headers],
        compression_config=CompressionConfig(backend="gzip", minimum_size=1024),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="crewflow API", version=__version__, path=f"{API_PREFIX}/schema",
            render_plugins=docs_render_plugins(),
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
            }),
            security=[{"bearer": []}],
        ),
        state=state,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        debug=False,
    )
    instrument_app(app)
    return app
