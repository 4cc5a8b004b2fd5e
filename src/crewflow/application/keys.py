"""Provider API keys: sealing, opening and rotating them (ports only).

A provider's key is sealed by the ``SecretCipher`` with the context ``"<tenant id>/llm_providers/<provider
id>"``: the sealed blob opens only for that provider of that tenant, so a blob copied to another row or
tenant is useless. ``encrypted_key`` holds the cipher's ASCII token as bytes; ``key_id`` repeats the key id
the token names, so an operator can see (and index) which master key each row still depends on.

Only the LLM gateway should call ``open_provider_key``; anything shown to people uses ``mask``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from crewflow.domain.errors import NotFound
from crewflow.domain.execution import LLMProviderConfig
from crewflow.ports.secrets import DecryptionFailed, SecretCipher
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = [
    "RotationFailure",
    "RotationReport",
    "open_provider_key",
    "provider_key_context",
    "rotate_keys",
    "seal_provider_key",
]

_PAGE = 100


def provider_key_context(tenant_id: str, provider_id: str) -> str:
    return f"{tenant_id}/llm_providers/{provider_id}"


def seal_provider_key(cipher: SecretCipher, tenant_id: str, provider: LLMProviderConfig,
                      api_key: str) -> LLMProviderConfig:  # fmt: skip
    """The provider with ``api_key`` sealed under the cipher's current key (nothing else changes)."""
    token = cipher.encrypt(api_key, context=provider_key_context(tenant_id, provider.id))
    return dataclasses.replace(provider, encrypted_key=token.encode("ascii"), key_id=cipher.key_id_of(token))


def open_provider_key(cipher: SecretCipher, tenant_id: str, provider: LLMProviderConfig) -> str | None:
    """The provider's API key in clear (``None`` if it has none). Raises ``DecryptionFailed``."""
    if provider.encrypted_key is None:
        return None
    return cipher.decrypt(_token(provider.encrypted_key), context=provider_key_context(tenant_id, provider.id))


def _token(blob: bytes) -> str:
    try:
        return blob.decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionFailed("stored provider key is not a sealed token") from None


@dataclass(frozen=True, slots=True)
class RotationFailure:
    tenant_id: str
    provider_id: str | None  # None: the tenant itself could not be reached (e.g. its storage is missing)
    reason: str  # never contains a key, a token or a plaintext


@dataclass(slots=True)
class RotationReport:
    current_key_id: str
    tenants: int = 0
    rotated: int = 0
    already_current: int = 0
    without_key: int = 0
    failures: list[RotationFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


async def rotate_keys(
    uow_factory: UnitOfWorkFactory,
    cipher: SecretCipher,
    *,
    tenant_ids: Iterable[str] | None = None,
    on_tenant: Callable[[str, int], None] | None = None,
) -> RotationReport:
    """Re-seal every provider key that is not under the cipher's current key, tenant by tenant.

    One transaction per tenant, committed when all of that tenant's providers are done. Idempotent and
    resumable: keys already under the current key are left alone, so running it again after a crash only
    finishes the rest. A key that cannot be opened (tampered, or its master key left the keyring too early)
    is reported in ``failures`` and left unchanged; the other keys are still rotated. ``tenant_ids``
    limits the run (default: every tenant of the platform); ``on_tenant(tenant_id, rotated)`` reports
    progress.
    """
    report = RotationReport(current_key_id=cipher.current_key_id)
    targets = list(tenant_ids) if tenant_ids is not None else await _all_tenant_ids(uow_factory)
    for tenant_id in targets:
        try:
            rotated = await _rotate_tenant(uow_factory, cipher, tenant_id, report)
        except NotFound as exc:  # the tenant's storage is gone: nothing to rotate there, say so
            report.failures.append(RotationFailure(tenant_id, None, str(exc)))
            continue
        report.tenants += 1
        if on_tenant is not None:
            on_tenant(tenant_id, rotated)
    return report


async def _all_tenant_ids(uow_factory: UnitOfWorkFactory) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    async with uow_factory.platform() as uow:
        while True:
            page = await uow.tenants.list(cursor=cursor, limit=_PAGE)
            ids.extend(tenant.id for tenant in page.items)
            cursor = page.next_cursor
            if cursor is None:
                return ids


async def _rotate_tenant(uow_factory: UnitOfWorkFactory, cipher: SecretCipher, tenant_id: str,
                         report: RotationReport) -> int:  # fmt: skip
    rotated = 0
    async with uow_factory.for_tenant(tenant_id) as uow:
        providers: list[LLMProviderConfig] = []
        cursor: str | None = None
        while True:
            page = await uow.providers.list(cursor=cursor, limit=_PAGE)
            providers.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        for provider in providers:
            if provider.encrypted_key is None:
                report.without_key += 1
                continue
            try:
                token = _token(provider.encrypted_key)
                if cipher.key_id_of(token) == cipher.current_key_id:
                    report.already_current += 1
                    continue
                api_key = cipher.decrypt(token, context=provider_key_context(tenant_id, provider.id))
            except DecryptionFailed as exc:
                report.failures.append(RotationFailure(tenant_id, provider.id, str(exc)))
                continue
            await uow.providers.update(seal_provider_key(cipher, tenant_id, provider, api_key))
            rotated += 1
        await uow.commit()
    report.rotated += rotated
    return rotated
