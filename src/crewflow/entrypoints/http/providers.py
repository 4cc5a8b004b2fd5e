"""/api/v1/providers — the tenant's LLM providers (admins). API keys are write-only: a request may set or
replace one, no response ever contains it, only its masked form (``sk-…abcd``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.params import JSONBody, QueryParameter

from crewflow.application.providers import (
    KEY_HINT,
    NewProvider,
    ProviderDeps,
    create_provider,
    delete_provider,
    key_hint,
    reorder_providers,
    update_provider,
)
from crewflow.domain.auth import Identity
from crewflow.domain.execution import LLMProviderConfig
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import NO_CONTROL_CHARS, PathId, refused_as_invalid, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["ProviderController", "ProviderIn", "ProviderOut", "ProviderPatch", "ProviderReorder"]

Kind = Literal["openai", "azure", "vllm", "lmstudio", "ollama", "anthropic", "scripted"]
ProviderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Model = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_CONTROL_CHARS)]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\x00-\x1f\x7f]+$", max_length=500)]
ApiKey = Annotated[str, msgspec.Meta(max_length=4096, pattern=NO_CONTROL_CHARS)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
PricePer1K = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
BudgetAmount = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
ProviderId = PathId
Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


class ProviderSettings(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How the gateway talks to the provider (each optional)."""

    timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] | None = None
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    api_version: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_CONTROL_CHARS)] | None = None


class ProviderIn(msgspec.Struct, forbid_unknown_fields=True):
    name: ProviderName
    kind: Kind
    model: Model
    api_key: ApiKey | None = None
    base_url: Url | None = None
    priority: Priority = 100
    price_input_per_1k: PricePer1K = 0.0
    price_output_per_1k: PricePer1K = 0.0
    budget: BudgetAmount | None = None
    is_active: bool = True
    settings: ProviderSettings = msgspec.field(default_factory=ProviderSettings)

    def __repr__(self) -> str:  # never print the key
        return f"ProviderIn(name={self.name!r}, kind={self.kind!r})"


class ProviderPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Only the fields sent change. ``api_key`` replaces the key when sent (``""`` removes it)."""

    name: ProviderName | msgspec.UnsetType = msgspec.UNSET
    kind: Kind | msgspec.UnsetType = msgspec.UNSET
    model: Model | msgspec.UnsetType = msgspec.UNSET
    api_key: ApiKey | msgspec.UnsetType = msgspec.UNSET
    base_url: Url | msgspec.UnsetType | None = msgspec.UNSET
    priority: Priority | msgspec.UnsetType = msgspec.UNSET
    price_input_per_1k: PricePer1K | msgspec.UnsetType = msgspec.UNSET
    price_output_per_1k: PricePer1K | msgspec.UnsetType = msgspec.UNSET
    budget: BudgetAmount | msgspec.UnsetType | None = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET
    settings: ProviderSettings | msgspec.UnsetType = msgspec.UNSET

    def __repr__(self) -> str:
        return "ProviderPatch(...)"


class ProviderReorder(msgspec.Struct, forbid_unknown_fields=True):
    """Provider ids in failover order; those not listed follow, in their current order."""

    order: Annotated[list[Annotated[str, msgspec.Meta(max_length=64, pattern=NO_CONTROL_CHARS)]],
                     msgspec.Meta(min_length=1, max_length=100)]


class ProviderOut(msgspec.Struct):
    id: str
    name: str
    kind: str
    model: str
    base_url: str | None
    priority: int
    price_input_per_1k: float
    price_output_per_1k: float
    budget: float | None
    is_active: bool
    has_key: bool
    api_key: str | None  # masked (``sk-…abcd``), never the key
    settings: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, p: LLMProviderConfig) -> ProviderOut:
        settings = {k: v for k, v in p.config.items() if k != KEY_HINT}
        return cls(p.id, p.name, p.provider_type, p.model, p.base_url, p.priority, p.price_input_per_1k,
                   p.price_output_per_1k, p.budget, p.is_active, p.has_key, key_hint(p), settings, p.created_at,
                   p.updated_at)  # fmt: skip


def _deps(request: Request[Identity, Any, Any]) -> ProviderDeps:
    c = request.app.state.container
    return ProviderDeps(c.uow_factory, c.cipher, c.clock, c.ids, c.provider_registry)


def _settings(settings: ProviderSettings) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(settings).items() if v is not None}


_FIELDS = {"kind": "provider_type", "settings": "config"}


class ProviderController(Controller):
    path = "/providers"
    tags = ["providers"]

    @get("/", guards=[require(Permission.PROVIDERS_READ)])
    async def list_providers(self, request: Request[Identity, Any, Any], cursor: Cursor = None,
                             limit: Limit = 20) -> PageOut[ProviderOut]:  # fmt: skip
        """In failover order (priority, lowest first)."""
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return page_out(await valid_cursor(uow.providers.list(cursor, limit)), ProviderOut.of)

    @post("/", guards=[require(Permission.PROVIDERS_WRITE)])
    async def create_provider(self, request: Request[Identity, Any, Any], data: JSONBody[ProviderIn]) -> ProviderOut:
        new = NewProvider(name=data.name, provider_type=data.kind, model=data.model, api_key=data.api_key,
                          base_url=data.base_url, priority=data.priority,
                          price_input_per_1k=data.price_input_per_1k, price_output_per_1k=data.price_output_per_1k,
                          budget=data.budget, is_active=data.is_active,
                          config=_settings(data.settings))  # fmt: skip
        with refused_as_invalid():
            provider = await create_provider(_deps(request), request.user.tenant_id, new)
        await audit_request(request, "provider.create", object_type="provider", object_id=provider.id,
                            details={"name": provider.name, "with_key": provider.has_key})  # fmt: skip
        return ProviderOut.of(provider)

    @put("/order", guards=[require(Permission.PROVIDERS_WRITE)])
    async def reorder(self, request: Request[Identity, Any, Any], data: JSONBody[ProviderReorder]) -> list[ProviderOut]:
        """Set the failover order; answers every provider in the new order."""
        with refused_as_invalid("order"):
            providers = await reorder_providers(_deps(request), request.user.tenant_id, data.order)
        await audit_request(request, "provider.reorder", object_type="provider",
                            details={"order": [p.id for p in providers]})  # fmt: skip
        return [ProviderOut.of(p) for p in providers]

    @get("/{provider_id:str}", guards=[require(Permission.PROVIDERS_READ)])
    async def get_provider(self, request: Request[Identity, Any, Any], provider_id: ProviderId) -> ProviderOut:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return ProviderOut.of(await uow.providers.get(provider_id))

    @patch("/{provider_id:str}", guards=[require(Permission.PROVIDERS_WRITE)])
    async def update_provider(self, request: Request[Identity, Any, Any], provider_id: ProviderId,
                              data: JSONBody[ProviderPatch]) -> ProviderOut:  # fmt: skip
        sent = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        api_key = sent.pop("api_key", None)
        if "settings" in sent:
            sent["settings"] = _settings(sent["settings"])
        changes = {_FIELDS.get(k, k): v for k, v in sent.items()}
        with refused_as_invalid():
            provider = await update_provider(_deps(request), request.user.tenant_id, provider_id, changes, api_key)
        await audit_request(request, "provider.update", object_type="provider", object_id=provider_id,
                            details={"fields": sorted(sent), "key_replaced": api_key is not None})  # fmt: skip
        return ProviderOut.of(provider)

    @delete("/{provider_id:str}", guards=[require(Permission.PROVIDERS_WRITE)])
    async def delete_provider(self, request: Request[Identity, Any, Any], provider_id: ProviderId) -> None:
        await delete_provider(_deps(request), request.user.tenant_id, provider_id)
        await audit_request(request, "provider.delete", object_type="provider", object_id=provider_id)
