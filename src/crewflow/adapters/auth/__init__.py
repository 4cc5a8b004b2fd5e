"""Password hashing (bcrypt) and tokens (PyJWT, HS256 pinned)."""

from crewflow.adapters.auth.passwords import BcryptHasher
from crewflow.adapters.auth.tokens import JwtTokenService

__all__ = ["BcryptHasher", "JwtTokenService"]
