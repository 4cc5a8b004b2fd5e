"""/api/v1/users — the admin manages the tenant's accounts: list, invite, change role or active flag, delete.

An invited user gets an initial password chosen by the admin and handed over out of band (ADR 0008). The
tenant always keeps one active admin: demoting, deactivating or deleting the last one is 409."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter

from crewflow.application import auth as use_cases
from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Permission, Role, User
from crewflow.entrypoints.http.auth_routes import Email, NewPassword, UserOut, check_new_password, container_of
from crewflow.entrypoints.http.limits import invalid_cursor_is_422, request_meta
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["InviteIn", "UserController", "UserPatch"]

UserId = Annotated[str, PathParameter(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class InviteIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    role: Role
    password: NewPassword

    def __post_init__(self) -> None:
        check_new_password(self.password)


class UserPatch(msgspec.Struct, forbid_unknown_fields=True):
    role: Role | None = None
    is_active: bool | None = None


def _out(user: User) -> UserOut:
    return UserOut(user.id, user.email, user.role, user.is_active)


class UserController(Controller):
    path = "/users"
    tags = ["users"]
    guards = [require(Permission.USERS_MANAGE)]

    @get("/")
    async def list_users(self, request: Request[Identity, Any, Any], cursor: FromQuery[str | None] = None,
                         limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
                         ) -> PageOut[UserOut]:  # fmt: skip
        with invalid_cursor_is_422():
            page = await use_cases.list_users(request.user, container_of(request), cursor, limit)
        return page_out(page, _out)

    @post("/")
    async def invite_user(self, request: Request[Identity, Any, Any], data: JSONBody[InviteIn]) -> UserOut:
        cmd = use_cases.InviteUser(data.email, data.role, data.password)
        return _out(await use_cases.invite_user(cmd, request.user, container_of(request),
                                                request_meta(request)))  # fmt: skip

    @patch("/{user_id:str}")
    async def update_user(self, request: Request[Identity, Any, Any], user_id: UserId,
                          data: JSONBody[UserPatch]) -> UserOut:  # fmt: skip
        container = container_of(request)
        cmd = use_cases.ChangeUser(user_id, role=data.role, is_active=data.is_active)
        changed = await use_cases.change_user(cmd, request.user, container, request_meta(request))
        container.user_status.forget(user_id)
        return _out(changed)

    @delete("/{user_id:str}")
    async def delete_user(self, request: Request[Identity, Any, Any], user_id: UserId) -> None:
        container = container_of(request)
        await use_cases.delete_user(user_id, request.user, container, request_meta(request))
        container.user_status.forget(user_id)
