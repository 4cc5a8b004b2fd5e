"""Encryption of stored secrets (provider API keys) and their masked display.

A ``SecretCipher`` turns a plaintext into an opaque text token that names the key it was sealed with,
so keys can be rotated: old tokens still decrypt by their key id, new ones use the current key.
The keys themselves come from settings, never from the database, and never appear in a repr, a log
line or an error message; neither does a plaintext.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "DecryptionFailed",
    "SecretCipher",
    "SecretError",
    "SecretKeyMisconfigured",
    "UnknownKeyId",
    "mask",
]


class SecretError(Exception):
    """Base class of secret-handling errors. Messages never carry a key, a token or a plaintext."""


class SecretKeyMisconfigured(SecretError):
    """The configured key material is malformed (the message says what is wrong, never the value)."""


class DecryptionFailed(SecretError):
    """A token could not be decrypted: tampered with, truncated, sealed for another context or key."""


class UnknownKeyId(DecryptionFailed):
    """A token names a key id that is not in the configured keyring (it was retired too early)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no key with id {key_id!r} in the configured keyring")


class SecretCipher(Protocol):
    """Authenticated encryption of short secrets.

    ``context`` is associated data bound to the token (e.g. ``"<tenant_id>/<provider name>"``): a token
    decrypts only with the same context, so a ciphertext copied to another row or tenant is useless.
    """

    @property
    def current_key_id(self) -> str:
        """The id of the key new tokens are sealed with."""
        ...

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        """Seal ``plaintext``; the returned token is ASCII and names the key id it was sealed with."""
        ...

    def decrypt(self, token: str, *, context: str = "") -> str:
        """Open a token sealed by ``encrypt`` with any key of the keyring; raises ``DecryptionFailed``."""
        ...

    def key_id_of(self, token: str) -> str:
        """The key id a token was sealed with (no decryption); raises ``DecryptionFailed`` if malformed."""
        ...


_MASK = "…"


def mask(secret: str | None) -> str:
    """A display form of a secret that reveals at most a short vendor prefix and the last four characters.

    ``mask("sk-proj-abcdefghijklmnop1234") == "sk-…1234"``. Secrets shorter than 12 characters reveal
    nothing but the prefix, so a short secret cannot be guessed from its tail.
    """
    if not secret:
        return ""
    head, dash, _ = secret.partition("-")
    prefix = head + dash if dash and 1 <= len(head) <= 3 and head.isalnum() else ""
    if len(secret) < 12:
        return prefix + _MASK
    return f"{prefix}{_MASK}{secret[-4:]}"
