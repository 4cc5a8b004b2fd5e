"""Authentication and user management use cases: register a tenant, log in and out, manage users.

Every use case takes the ports it needs as ``AuthPorts`` (the API container satisfies it structurally) and
a ``RequestMeta`` (request id, client address) for the audit log. Every write and every login attempt is
recorded with :func:`crewflow.application.audit.record_audit`. bcrypt runs in a worker thread so a login
never blocks the event loop for the hash's ~250 ms (cost 12)."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, cast

import structlog

from crewflow.application.audit import record_audit
from crewflow.domain.auth import Identity, RateLimited, Unauthenticated
from crewflow.domain.errors import Conflict, DomainError, NotFound, PermissionDenied
from crewflow.domain.logs import Page
from crewflow.domain.tenancy import Permission, Role, Tenant, User, schema_name_for
from crewflow.ports.auth import IssuedToken, PasswordHasher, RateLimiter, TokenRevocations, TokenService
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.logstore import LogStore
from crewflow.ports.sessions import SESSION_TTL, LoginSession, SessionStore
from crewflow.ports.uow import PlatformUnitOfWork, UnitOfWorkFactory

__all__ = [
    "MAX_PASSWORD_BYTES",
    "MIN_PASSWORD_CHARS",
    "USER_CHANGED_TTL",
    "AuthPorts",
    "ChangeUser",
    "InviteUser",
    "LoginAttempt",
    "LoginResult",
    "LoginThrottle",
    "RegisterTenant",
    "Registered",
    "RequestMeta",
    "WrongPassword",
    "address_bucket",
    "change_password",
    "change_user",
    "current_user",
    "delete_user",
    "invite_user",
    "list_sessions",
    "list_users",
    "login",
    "logout",
    "password_problem",
    "register_tenant",
    "revoke_all_sessions",
    "revoke_session",
    "session_store",
    "user_changed_marker",
]

log = structlog.get_logger("crewflow.auth")

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further: longer passwords are refused, never truncated silently
# How long a "this user changed" marker stays in the revocation store: longer than any per-process cache
# of user status (see ``security.py``), so every process re-reads the user after a change.
USER_CHANGED_TTL = 120.0
BAD_CREDENTIALS = "invalid e-mail or password"


class WrongPassword(DomainError):
    """The current password given to change it does not match (422 on ``current_password``, not 401: the
    caller's session is fine)."""

    def __init__(self) -> None:
        super().__init__("the current password is wrong")


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable as a new password, or None."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"must be at least {MIN_PASSWORD_CHARS} characters"
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return f"must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8"
    if "\x00" in password:
        return "must not contain NUL characters"
    return None


def address_bucket(addr: str) -> str:
    """The unit a client address is throttled by: the address itself for IPv4, its /64 for IPv6 (one
    subscriber usually holds a whole /64, and would otherwise get a fresh budget per address)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def user_changed_marker(user_id: str) -> str:
    """The key revoked in ``TokenRevocations`` when a user's role or status changes or the user is deleted."""
    return f"user-changed:{user_id}"


class TenantRegistrar(Protocol):
    async def register(self, tenant: Tenant) -> object:
        """Create the tenant's storage and row, all or nothing; ``Conflict`` if the slug is taken."""
        ...

    async def drop(self, tenant_id: str) -> bool: ...


class AuthPorts(Protocol):
    @property
    def uow_factory(self) -> UnitOfWorkFactory: ...
    @property
    def provisioner(self) -> TenantRegistrar: ...
    @property
    def logstore(self) -> LogStore: ...
    @property
    def hasher(self) -> PasswordHasher: ...
    @property
    def tokens(self) -> TokenService: ...
    @property
    def revocations(self) -> TokenRevocations: ...
    @property
    def limiter(self) -> RateLimiter: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def ids(self) -> IdGenerator: ...


@dataclass(frozen=True, slots=True)
class RequestMeta:
    request_id: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """Login attempts (successful or not) allowed per account and per client address in ``window`` seconds.
    The per-account limit stops a distributed guess at one password; it also lets someone slow down one
    account's logins for a window, the accepted price (ADR 0008)."""

    per_account: int = 10
    per_address: int = 50
    window: float = 900.0


def _normalize(email: str) -> str:
    return email.strip().lower()


def _email_digest(email: str) -> str:
    """A short digest to correlate log lines about one address without writing the address itself."""
    return hashlib.sha256(email.encode()).hexdigest()[:12]


def _check_new_password(password: str) -> None:
    if (problem := password_problem(password)) is not None:
        raise ValueError(f"password {problem}")  # the HTTP edge validates first; this is a programming error


async def _audit(ports: AuthPorts, tenant_id: str, action: str, meta: RequestMeta, *, actor_id: str | None,
                 object_type: str | None = None, object_id: str | None = None,
                 details: dict[str, object] | None = None) -> None:  # fmt: skip
    await record_audit(ports.logstore, tenant_id, action, actor_id=actor_id, object_type=object_type,
                       object_id=object_id, request_id=meta.request_id, client_addr=meta.client_addr,
                       details=details, at=ports.clock.now())  # fmt: skip


# -- registration --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegisterTenant:
    tenant_name: str
    slug: str
    email: str
    password: str


@dataclass(frozen=True, slots=True)
class Registered:
    tenant: Tenant
    admin: User


async def register_tenant(cmd: RegisterTenant, ports: AuthPorts, meta: RequestMeta) -> Registered:
    """Create a tenant (its storage and row) and its first admin. A taken slug or e-mail is ``Conflict``
    and leaves nothing behind: when adding the admin fails, the new tenant is dropped again."""
    _check_new_password(cmd.password)
    email = _normalize(cmd.email)
    async with ports.uow_factory.platform() as uow:
        if await _email_taken(uow, email):
            raise Conflict("the slug or the e-mail address is already taken")
    password_hash = await asyncio.to_thread(ports.hasher.hash, cmd.password)
    tenant_id = ports.ids.new_id()
    now = datetime.fromtimestamp(ports.clock.now(), UTC)
    tenant = Tenant(tenant_id, cmd.slug, cmd.tenant_name, schema_name_for(tenant_id), now)
    try:
        await ports.provisioner.register(tenant)
    except Conflict:
        raise Conflict("the slug or the e-mail address is already taken") from None
    admin = User(ports.ids.new_id(), tenant_id, email, Role.ADMIN, password_hash, True, now)
    try:
        async with ports.uow_factory.platform() as uow:
            await uow.users.add(admin)
            await uow.commit()
    except Exception as exc:
        await ports.provisioner.drop(tenant_id)
        if isinstance(exc, Conflict):  # the same e-mail registered concurrently
            raise Conflict("the slug or the e-mail address is already taken") from None
        raise
    await _audit(ports, tenant_id, "tenant.register", meta, actor_id=admin.id, object_type="tenant",
                 object_id=tenant_id, details={"slug": tenant.slug})  # fmt: skip
    log.info("tenant.registered", tenant_id=tenant_id, user_id=admin.id)
    return Registered(tenant, admin)


async def _email_taken(uow: PlatformUnitOfWork, email: str) -> bool:
    try:
        await uow.users.get_by_email(email)
    except NotFound:
        return False
    return True


# -- login / logout ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoginAttempt:
    email: str
    password: str
    user_agent: str | None = None  # recorded with the session (shown in the session list), never trusted


MAX_USER_AGENT = 256


def session_store(ports: object) -> SessionStore | None:
    """The deployment's login session store (``ApiContainer.sessions``), when it has one. Without one,
    logins are not recorded and the session list is empty; tokens still work and logout still revokes."""
    return cast("SessionStore | None", getattr(ports, "sessions", None))


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: IssuedToken
    user: User


async def _throttle(ports: AuthPorts, key: str, limit: int, window: float) -> None:
    decision = await ports.limiter.hit(key, limit, window)
    if not decision.allowed:
        raise RateLimited(decision.retry_after, "login attempts")


async def login(cmd: LoginAttempt, ports: AuthPorts, meta: RequestMeta,
                throttle: LoginThrottle = LoginThrottle()) -> LoginResult:  # fmt: skip
    """Check the credentials and issue a token. Exactly one bcrypt verification runs whether or not the
    account exists (against the hasher's dummy hash when it does not), and every failure gives the same
    ``Unauthenticated``; attempts beyond ``throttle`` are ``RateLimited`` before any verification."""
    email = _normalize(cmd.email)
    if meta.client_addr:
        await _throttle(ports, f"login:addr:{address_bucket(meta.client_addr)}", throttle.per_address,
                        throttle.window)  # fmt: skip
    await _throttle(ports, f"login:account:{_email_digest(email)}", throttle.per_account, throttle.window)
    user: User | None
    try:
        async with ports.uow_factory.platform() as uow:
            user = await uow.users.get_by_email(email)
    except NotFound:
        user = None
    hashed = user.password_hash if user is not None and user.password_hash else ports.hasher.dummy_hash
    verified = await asyncio.to_thread(ports.hasher.verify, cmd.password, hashed)
    if user is None:
        log.info("auth.login.failed", reason="unknown_account", email_digest=_email_digest(email),
                 request_id=meta.request_id, client_addr=meta.client_addr)  # fmt: skip
        raise Unauthenticated(BAD_CREDENTIALS)
    if not verified or not user.is_active or not user.password_hash:
        reason = "inactive" if verified and not user.is_active else "bad_password"
        await _audit(ports, user.tenant_id, "auth.login.failed", meta, actor_id=user.id, object_type="user",
                     object_id=user.id, details={"reason": reason})  # fmt: skip
        raise Unauthenticated(BAD_CREDENTIALS)
    issued = ports.tokens.issue(user.id, user.tenant_id, user.role)
    if (sessions := session_store(ports)) is not None:
        now = ports.clock.now()
        agent = cmd.user_agent[:MAX_USER_AGENT] if cmd.user_agent else None
        await sessions.record(LoginSession(issued.jti, user.id, user.tenant_id, now,
                                           min(issued.expires_at, now + SESSION_TTL), agent))  # fmt: skip
    await _audit(ports, user.tenant_id, "auth.login", meta, actor_id=user.id, object_type="user",
                 object_id=user.id)  # fmt: skip
    return LoginResult(issued, user)


async def logout(identity: Identity, ports: AuthPorts, meta: RequestMeta) -> None:
    """Revoke the caller's token (its ``jti``) until it would have expired anyway, and forget its session."""
    await ports.revocations.revoke(identity.jti, identity.expires_at)
    if (sessions := session_store(ports)) is not None:
        await sessions.remove(identity.tenant_id, identity.user_id, identity.jti)
    await _audit(ports, identity.tenant_id, "auth.logout", meta, actor_id=identity.user_id, object_type="user",
                 object_id=identity.user_id)  # fmt: skip


async def list_sessions(identity: Identity, ports: AuthPorts) -> list[LoginSession]:
    """The caller's live login sessions, newest first."""
    sessions = session_store(ports)
    return [] if sessions is None else await sessions.list_for_user(identity.tenant_id, identity.user_id)


async def revoke_session(identity: Identity, jti: str, ports: AuthPorts, meta: RequestMeta) -> None:
    """End one of the caller's sessions: its token is revoked until it would have expired. A token id that
    is not a live session of the caller (another user's, another tenant's, or gone) is ``NotFound``."""
    sessions = session_store(ports)
    removed = None if sessions is None else await sessions.remove(identity.tenant_id, identity.user_id, jti)
    if removed is None:
        raise NotFound("session", jti)
    await ports.revocations.revoke(removed.jti, removed.expires_at)
    await _audit(ports, identity.tenant_id, "auth.session.revoke", meta, actor_id=identity.user_id,
                 object_type="user", object_id=identity.user_id)  # fmt: skip


async def revoke_all_sessions(tenant_id: str, user_id: str, ports: AuthPorts) -> int:
    """End every recorded session of a user (e.g. after a compromise): each token is revoked until it would
    have expired. Returns how many sessions ended. The caller audits."""
    sessions = session_store(ports)
    if sessions is None:
        return 0
    removed = await sessions.remove_all(tenant_id, user_id)
    for session in removed:
        await ports.revocations.revoke(session.jti, session.expires_at)
    return len(removed)


async def change_password(identity: Identity, current: str, new: str, ports: AuthPorts, meta: RequestMeta,
                          throttle: LoginThrottle = LoginThrottle()) -> None:  # fmt: skip
    """Replace the caller's password after checking the current one. Guesses share the login throttle of
    the account. Other sessions of the user stay valid until they expire (ADR 0008)."""
    _check_new_password(new)
    try:
        async with ports.uow_factory.platform() as uow:
            user = await uow.users.get(identity.user_id)
    except NotFound:
        raise Unauthenticated("invalid or expired token") from None
    await _throttle(ports, f"login:account:{_email_digest(user.email)}", throttle.per_account, throttle.window)
    if not await asyncio.to_thread(ports.hasher.verify, current, user.password_hash or ports.hasher.dummy_hash):
        await _audit(ports, user.tenant_id, "auth.password.failed", meta, actor_id=user.id, object_type="user",
                     object_id=user.id)  # fmt: skip
        raise WrongPassword()
    new_hash = await asyncio.to_thread(ports.hasher.hash, new)
    async with ports.uow_factory.platform() as uow:
        fresh = await uow.users.get(user.id)
        await uow.users.update(replace(fresh, password_hash=new_hash))
        await uow.commit()
    await _audit(ports, user.tenant_id, "auth.password.change", meta, actor_id=user.id, object_type="user",
                 object_id=user.id)  # fmt: skip


async def current_user(identity: Identity, ports: AuthPorts) -> tuple[User, Tenant]:
    async with ports.uow_factory.platform() as uow:
        user = await uow.users.get(identity.user_id)
        if user.tenant_id != identity.tenant_id:
            raise Unauthenticated("invalid or expired token")
        return user, await uow.tenants.get(identity.tenant_id)


# -- users (admin) -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InviteUser:
    """An admin creates an account with an initial password they hand over out of band."""

    email: str
    role: Role
    password: str


@dataclass(frozen=True, slots=True)
class ChangeUser:
    user_id: str
    role: Role | None = None
    is_active: bool | None = None


def _require_admin(actor: Identity) -> None:
    if not actor.can(Permission.USERS_MANAGE):
        raise PermissionDenied(str(Permission.USERS_MANAGE))


async def _user_of_tenant(uow: PlatformUnitOfWork, user_id: str, tenant_id: str) -> User:
    """The user if it belongs to ``tenant_id``; another tenant's user is the same ``NotFound`` as none."""
    user = await uow.users.get(user_id)
    if user.tenant_id != tenant_id:
        raise NotFound("user", user_id)
    return user


async def _other_active_admins(uow: PlatformUnitOfWork, tenant_id: str, user_id: str) -> int:
    count = 0
    cursor: str | None = None
    while True:
        page = await uow.users.list_for_tenant(tenant_id, cursor, 100)
        count += sum(1 for u in page.items if u.id != user_id and u.is_active and u.role is Role.ADMIN)
        if count or page.next_cursor is None:
            return count
        cursor = page.next_cursor


async def list_users(actor: Identity, ports: AuthPorts, cursor: str | None, limit: int) -> Page[User]:
    _require_admin(actor)
    async with ports.uow_factory.platform() as uow:
        return await uow.users.list_for_tenant(actor.tenant_id, cursor, limit)


async def invite_user(cmd: InviteUser, actor: Identity, ports: AuthPorts, meta: RequestMeta) -> User:
    _require_admin(actor)
    _check_new_password(cmd.password)
    password_hash = await asyncio.to_thread(ports.hasher.hash, cmd.password)
    now = datetime.fromtimestamp(ports.clock.now(), UTC)
    user = User(ports.ids.new_id(), actor.tenant_id, _normalize(cmd.email), cmd.role, password_hash, True, now)
    async with ports.uow_factory.platform() as uow:
        try:
            await uow.users.add(user)
        except Conflict:
            raise Conflict("the e-mail address is already taken") from None
        await uow.commit()
    await _audit(ports, actor.tenant_id, "user.invite", meta, actor_id=actor.user_id, object_type="user",
                 object_id=user.id, details={"role": str(cmd.role)})  # fmt: skip
    return user


async def change_user(cmd: ChangeUser, actor: Identity, ports: AuthPorts, meta: RequestMeta) -> User:
    """Change a user's role or active flag. The tenant always keeps at least one active admin: demoting or
    deactivating the last one is ``Conflict``."""
    _require_admin(actor)
    async with ports.uow_factory.platform() as uow:
        user = await _user_of_tenant(uow, cmd.user_id, actor.tenant_id)
        changed = replace(user, role=cmd.role if cmd.role is not None else user.role,
                          is_active=cmd.is_active if cmd.is_active is not None else user.is_active)  # fmt: skip
        loses_admin = user.role is Role.ADMIN and user.is_active and (changed.role is not Role.ADMIN
                                                                      or not changed.is_active)  # fmt: skip
        if loses_admin and not await _other_active_admins(uow, actor.tenant_id, user.id):
            raise Conflict("a tenant must keep at least one active admin")
        await uow.users.update(changed)
        await uow.commit()
    await ports.revocations.revoke(user_changed_marker(user.id), ports.clock.now() + USER_CHANGED_TTL)
    details: dict[str, object] = {}
    if changed.role is not user.role:
        details["role"] = {"from": str(user.role), "to": str(changed.role)}
    if changed.is_active != user.is_active:
        details["is_active"] = changed.is_active
    await _audit(ports, actor.tenant_id, "user.update", meta, actor_id=actor.user_id, object_type="user",
                 object_id=user.id, details=details)  # fmt: skip
    return changed


async def delete_user(user_id: str, actor: Identity, ports: AuthPorts, meta: RequestMeta) -> None:
    _require_admin(actor)
    async with ports.uow_factory.platform() as uow:
        user = await _user_of_tenant(uow, user_id, actor.tenant_id)
        if user.role is Role.ADMIN and user.is_active and not await _other_active_admins(uow, actor.tenant_id,
                                                                                         user.id):  # fmt: skip
            raise Conflict("a tenant must keep at least one active admin")
        await uow.users.delete(user_id)
        await uow.commit()
    await ports.revocations.revoke(user_changed_marker(user_id), ports.clock.now() + USER_CHANGED_TTL)
    await _audit(ports, actor.tenant_id, "user.delete", meta, actor_id=actor.user_id, object_type="user",
                 object_id=user_id)  # fmt: skip
