"""bcrypt password hashing (cost ≥ 12 in production; tests may lower it through the constructor)."""

from __future__ import annotations

import secrets

import bcrypt

__all__ = ["BcryptHasher"]

MAX_PASSWORD_BYTES = 72  # bcrypt ignores bytes past 72: refuse them at the edge instead of truncating silently


class BcryptHasher:
    def __init__(self, rounds: int = 12) -> None:
        if not 4 <= rounds <= 31:
            raise ValueError("bcrypt rounds must be between 4 and 31")
        self.rounds = rounds
        self._dummy = self.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(self.rounds)).decode()

    def verify(self, password: str, hashed: str) -> bool:
        """A password longer than bcrypt reads is refused, yet still costs one full verification (of its
        first 72 bytes), so its length does not show in the response time either."""
        encoded = password.encode()
        try:
            matches = bcrypt.checkpw(encoded[:MAX_PASSWORD_BYTES], hashed.encode())
        except ValueError:  # a malformed stored hash
            return False
        return matches and len(encoded) <= MAX_PASSWORD_BYTES

    @property
    def dummy_hash(self) -> str:
        return self._dummy
