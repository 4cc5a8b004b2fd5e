from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crewflow.domain.errors import PermissionDenied
from crewflow.domain.tenancy import PERMISSIONS, Permission, Role, Tenant, User, schema_name_for

pytestmark = pytest.mark.unit

SEED_MATRIX = {
    Role.MEMBER: {"agents:read", "agents:write", "flows:read", "flows:write", "flows:execute", "executions:read"},
    Role.VIEWER: {"agents:read", "flows:read", "executions:read"},
}
ADMIN_ONLY = [
    Permission.USERS_MANAGE,
    Permission.PROVIDERS_READ,
    Permission.PROVIDERS_WRITE,
    Permission.TOOLS_READ,
    Permission.TOOLS_WRITE,
    Permission.AUDIT_READ,
]


def test_the_permission_matrix_is_exactly_the_seed() -> None:
    assert PERMISSIONS[Role.ADMIN] == {"*"}
    assert {str(p) for p in PERMISSIONS[Role.MEMBER]} == SEED_MATRIX[Role.MEMBER]
    assert {str(p) for p in PERMISSIONS[Role.VIEWER]} == SEED_MATRIX[Role.VIEWER]
    assert set(PERMISSIONS) == set(Role)


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
@pytest.mark.parametrize("permission", list(Permission))
def test_members_and_viewers_are_allowed_exactly_their_seed_permissions(role: Role, permission: Permission) -> None:
    assert role.allows(permission) is (str(permission) in SEED_MATRIX[role])
    assert role.allows(str(permission)) is (str(permission) in SEED_MATRIX[role])


@pytest.mark.parametrize("permission", [*Permission, "anything:else"])
def test_admin_is_allowed_everything(permission: str) -> None:
    assert Role.ADMIN.allows(permission)
    Role.ADMIN.require(permission)


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
@pytest.mark.parametrize("permission", ADMIN_ONLY)
def test_members_and_viewers_cannot_manage_users_providers_or_tools(role: Role, permission: Permission) -> None:
    assert not role.allows(permission)
    with pytest.raises(PermissionDenied) as caught:
        role.require(permission)
    assert caught.value.permission == str(permission)


def test_a_non_admin_role_is_not_granted_the_wildcard_itself() -> None:
    assert not Role.MEMBER.allows("*")


def test_viewers_cannot_write_or_execute() -> None:
    for permission in (Permission.AGENTS_WRITE, Permission.FLOWS_WRITE, Permission.FLOWS_EXECUTE):
        assert not Role.VIEWER.allows(permission)
    assert Role.MEMBER.allows(Permission.FLOWS_EXECUTE)


def test_an_inactive_user_can_do_nothing() -> None:
    admin = User(id="u1", tenant_id="t1", email="a@x.io", role=Role.ADMIN)
    assert admin.can(Permission.USERS_MANAGE)
    retired = User(id="u1", tenant_id="t1", email="a@x.io", role=Role.ADMIN, is_active=False)
    assert not retired.can(Permission.FLOWS_READ)


@pytest.mark.parametrize(
    ("tenant_id", "schema"),
    [("acme", "tenant_acme"), ("0b7e-4c1d", "tenant_0b7e_4c1d"), ("a" * 55, "tenant_" + "a" * 55)],
)
def test_schema_name_for_a_tenant(tenant_id: str, schema: str) -> None:
    assert schema_name_for(tenant_id) == schema
    assert len(schema) <= 63  # PostgreSQL identifier limit


@pytest.mark.parametrize("tenant_id", ["", "a" * 56, "Acme", "a_b", "a b", "a;drop schema x", "a\n", "tenant.x", "é"])
def test_ids_that_would_be_folded_or_unsafe_cannot_name_a_schema(tenant_id: str) -> None:
    with pytest.raises(ValueError, match="cannot name a schema"):
        schema_name_for(tenant_id)


def test_distinct_tenant_ids_never_share_a_schema() -> None:
    # regression: "a-b"/"a_b" and "acme"/"ACME" used to map to one schema
    ids = ["a-b", "ab", "a-b-", "-ab", "0", "00", "a--b"]
    schemas = []
    for tenant_id in [*ids, "a_b", "A-b", "ACME"]:
        try:
            schemas.append(schema_name_for(tenant_id))
        except ValueError:
            continue
    assert len(schemas) == len(ids)
    assert len(set(schemas)) == len(schemas)


@pytest.mark.parametrize("slug", ["acme", "a", "acme-2", "0" * 48])
def test_valid_tenant_slugs(slug: str) -> None:
    assert Tenant(id="t", slug=slug, name="Acme", db_schema="tenant_t", created_at=datetime.now(UTC)).slug == slug


@pytest.mark.parametrize("slug", ["", "-acme", "acme-", "Acme", "a_b", "a" * 49, "acme\n"])
def test_invalid_tenant_slugs_are_refused(slug: str) -> None:
    with pytest.raises(ValueError, match="tenant slug"):
        Tenant(id="t", slug=slug, name="Acme", db_schema="tenant_t", created_at=datetime.now(UTC))
