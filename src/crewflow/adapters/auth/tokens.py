"""JWT access tokens with PyJWT: HS256 only (algorithm pinned), issuer and audience checked, ``jti`` for
revocation, ``exp``/``iat`` required."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import jwt

from crewflow.domain.auth import Identity, Unauthenticated
from crewflow.domain.tenancy import Role
from crewflow.ports.auth import IssuedToken

__all__ = ["JwtTokenService"]

ALGORITHM = "HS256"
MAX_TOKEN_CHARS = 4096
REQUIRED_CLAIMS = ["exp", "iat", "jti", "iss", "aud", "user_id", "tenant_id", "role"]


class JwtTokenService:
    def __init__(self, secret: str | bytes, *, issuer: str = "crewflow", audience: str = "crewflow-api",
                 ttl: float = 24 * 3600, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 32:
            raise ValueError("the JWT signing key must be at least 32 bytes")
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._clock = clock

    def __repr__(self) -> str:
        return f"JwtTokenService(issuer={self.issuer!r}, audience={self.audience!r})"

    def issue(self, user_id: str, tenant_id: str, role: Role) -> IssuedToken:
        now = int(self._clock())
        jti = uuid.uuid4().hex
        expires = now + int(self.ttl)
        claims = {"user_id": user_id, "tenant_id": tenant_id, "role": str(role), "iat": now, "exp": expires,
                  "jti": jti, "iss": self.issuer, "aud": self.audience, "sub": user_id}  # fmt: skip
        return IssuedToken(jwt.encode(claims, self._key, algorithm=ALGORITHM), jti, float(expires))

    def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_CHARS:  # ours are ~400 characters; do not parse arbitrary blobs
            raise Unauthenticated("invalid or expired token")
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS}, leeway=5,
            )  # fmt: skip
            return Identity(
                user_id=str(claims["user_id"]), tenant_id=str(claims["tenant_id"]), role=Role(claims["role"]),
                jti=str(claims["jti"]), expires_at=float(claims["exp"]),
            )  # fmt: skip
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            raise Unauthenticated("invalid or expired token") from None
