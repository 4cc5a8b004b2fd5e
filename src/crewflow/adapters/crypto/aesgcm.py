"""AES-256-GCM ``SecretCipher`` with a keyring, so keys can be rotated without downtime.

Keyring setting (``CREWFLOW_SECRET_KEY``): ``id1:<base64 of 32 bytes>,id2:<...>``; the first entry is the
current key (new tokens), the others only decrypt older tokens until ``crewflow keys rotate`` re-seals them.

Token: ``v1.<key id>.<base64url(nonce(12) || ciphertext || tag(16))>``, ASCII, fits a text column. The
associated data binds the format version, the key id and the caller's context, so a token moved to another
row (other context) or relabelled with another key id fails to open.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crewflow.ports.secrets import DecryptionFailed, SecretKeyMisconfigured, UnknownKeyId

__all__ = ["ENV_VAR", "AesGcmCipher", "generate_key", "parse_keyring"]

ENV_VAR = "CREWFLOW_SECRET_KEY"
_VERSION = "v1"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def generate_key(key_id: str = "k1") -> str:
    """A fresh keyring entry ``<key_id>:<base64 of 32 random bytes>`` (for setup and tests)."""
    _check_key_id(key_id, 1)
    return f"{key_id}:{base64.b64encode(os.urandom(_KEY_BYTES)).decode('ascii')}"


def _check_key_id(key_id: str, position: int) -> None:
    if not _KEY_ID.match(key_id):
        raise SecretKeyMisconfigured(
            f"{ENV_VAR}: entry {position} has an invalid key id (use 1-32 letters, digits, '_' or '-')"
        )


def parse_keyring(setting: str) -> tuple[str, dict[str, bytes]]:
    """Parse ``id1:<b64>,id2:<b64>`` into (current key id, {id: key}). Errors name the entry's position
    and what is wrong with it, never its value."""
    entries = [part.strip() for part in setting.split(",") if part.strip()]
    if not entries:
        raise SecretKeyMisconfigured(f"{ENV_VAR} is empty: expected 'id1:<base64 of 32 bytes>[,id2:...]'")
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        if not sep:
            raise SecretKeyMisconfigured(f"{ENV_VAR}: entry {position} is not of the form '<key id>:<base64 key>'")
        key_id = key_id.strip()
        _check_key_id(key_id, position)
        if key_id in keys:
            raise SecretKeyMisconfigured(f"{ENV_VAR}: key id {key_id!r} appears more than once")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyMisconfigured(f"{ENV_VAR}: key {key_id!r} is not valid base64") from None
        if len(raw) != _KEY_BYTES:
            raise SecretKeyMisconfigured(
                f"{ENV_VAR}: key {key_id!r} decodes to {len(raw)} bytes; AES-256 needs exactly {_KEY_BYTES}"
            )
        keys[key_id] = raw
    return entries[0].partition(":")[0].strip(), keys


def _aad(key_id: str, context: str) -> bytes:
    return f"crewflow-secret|{_VERSION}|{key_id}|{context}".encode()


class AesGcmCipher:
    """AES-256-GCM with a random 96-bit nonce per token. Implements ``crewflow.ports.secrets.SecretCipher``."""

    __slots__ = ("_aeads", "_current")

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise SecretKeyMisconfigured(f"current key id {current_key_id!r} is not in the keyring")
        aeads: dict[str, AESGCM] = {}
        for position, (key_id, key) in enumerate(keys.items(), start=1):
            _check_key_id(key_id, position)
            if len(key) != _KEY_BYTES:
                raise SecretKeyMisconfigured(f"key {key_id!r} has {len(key)} bytes; AES-256 needs {_KEY_BYTES}")
            aeads[key_id] = AESGCM(key)
        self._aeads = aeads
        self._current = current_key_id

    @classmethod
    def from_setting(cls, setting: str) -> AesGcmCipher:
        current, keys = parse_keyring(setting)
        return cls(keys, current)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AesGcmCipher:
        env = os.environ if environ is None else environ
        setting = env.get(ENV_VAR)
        if not setting:
            raise SecretKeyMisconfigured(
                f"{ENV_VAR} is not set: provider keys cannot be stored or read without it "
                "(generate one with `python -c 'from crewflow.adapters.crypto import generate_key; "
                "print(generate_key())'`)"
            )
        return cls.from_setting(setting)

    @property
    def current_key_id(self) -> str:
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aeads)

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[self._current].encrypt(nonce, plaintext.encode("utf-8"), _aad(self._current, context))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{_VERSION}.{self._current}.{body}"

    def key_id_of(self, token: str) -> str:
        return self._split(token)[0]

    def decrypt(self, token: str, *, context: str = "") -> str:
        key_id, blob = self._split(token)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise UnknownKeyId(key_id)
        try:
            plain = aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(key_id, context))
        except InvalidTag:
            raise DecryptionFailed(
                f"secret sealed with key {key_id!r} failed authentication (tampered, or another context)"
            ) from None
        return plain.decode("utf-8")

    def needs_rotation(self, token: str) -> bool:
        """True when the token was sealed with a key other than the current one."""
        return self.key_id_of(token) != self._current

    def _split(self, token: str) -> tuple[str, bytes]:
        version, _, rest = token.partition(".")
        key_id, _, body = rest.partition(".")
        if version != _VERSION or not _KEY_ID.match(key_id) or not body:
            raise DecryptionFailed("not a crewflow secret token")
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionFailed("secret token body is not valid base64") from None
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionFailed("secret token is truncated")
        return key_id, blob

    def __repr__(self) -> str:
        return f"AesGcmCipher(current_key_id={self._current!r}, key_ids={self.key_ids!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("AesGcmCipher holds key material and cannot be pickled")
