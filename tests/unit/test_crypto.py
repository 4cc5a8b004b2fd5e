"""AES-256-GCM secret cipher: round trip, tampering, wrong keys, rotation, and secrets never leaking."""

from __future__ import annotations

import base64
import os
import pickle

import pytest

from crewflow.adapters.crypto import AesGcmCipher, generate_key, parse_keyring
from crewflow.ports.secrets import DecryptionFailed, SecretCipher, SecretKeyMisconfigured, UnknownKeyId, mask

pytestmark = pytest.mark.unit

API_KEY = "sk-proj-0123456789abcdefSECRETTAIL"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def old_raw() -> bytes:
    return os.urandom(32)


@pytest.fixture
def new_raw() -> bytes:
    return os.urandom(32)


def test_a_secret_round_trips_and_the_token_names_the_current_key() -> None:
    cipher: SecretCipher = AesGcmCipher.from_setting(generate_key("k1"))
    token = cipher.encrypt(API_KEY)
    assert API_KEY not in token
    assert token.isascii()
    assert cipher.key_id_of(token) == "k1" == cipher.current_key_id
    assert cipher.decrypt(token) == API_KEY


def test_two_encryptions_of_the_same_secret_differ_because_each_uses_a_fresh_nonce() -> None:
    cipher = AesGcmCipher.from_setting(generate_key())
    assert cipher.encrypt(API_KEY) != cipher.encrypt(API_KEY)


def test_unicode_and_empty_secrets_round_trip() -> None:
    cipher = AesGcmCipher.from_setting(generate_key())
    for secret in ("", "clé-🔑-ключ"):
        assert cipher.decrypt(cipher.encrypt(secret)) == secret


def test_a_tampered_token_fails_authentication() -> None:
    cipher = AesGcmCipher.from_setting(generate_key())
    token = cipher.encrypt(API_KEY)
    prefix, body = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for index in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        forged = prefix + "." + base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("=")
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(forged)


def test_truncated_and_malformed_tokens_are_rejected() -> None:
    cipher = AesGcmCipher.from_setting(generate_key())
    token = cipher.encrypt(API_KEY)
    for bad in (token[:20], "", "v2" + token[2:], "plain-text-key", token.replace(".", "", 1)):
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(bad)


def test_a_token_sealed_for_one_context_does_not_open_in_another() -> None:
    cipher = AesGcmCipher.from_setting(generate_key())
    token = cipher.encrypt(API_KEY, context="tenant-a/openai")
    assert cipher.decrypt(token, context="tenant-a/openai") == API_KEY
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(token, context="tenant-b/openai")


def test_the_wrong_key_under_the_same_id_fails(old_raw: bytes, new_raw: bytes) -> None:
    token = AesGcmCipher({"k1": old_raw}, "k1").encrypt(API_KEY)
    with pytest.raises(DecryptionFailed):
        AesGcmCipher({"k1": new_raw}, "k1").decrypt(token)


def test_a_token_whose_key_was_retired_names_the_missing_key_id(old_raw: bytes, new_raw: bytes) -> None:
    token = AesGcmCipher({"old": old_raw}, "old").encrypt(API_KEY)
    with pytest.raises(UnknownKeyId) as info:
        AesGcmCipher({"new": new_raw}, "new").decrypt(token)
    assert info.value.key_id == "old"


def test_relabelling_a_token_with_another_key_id_fails(old_raw: bytes, new_raw: bytes) -> None:
    both = AesGcmCipher({"new": new_raw, "old": old_raw}, "new")
    token = AesGcmCipher({"old": old_raw}, "old").encrypt(API_KEY)
    with pytest.raises(DecryptionFailed):
        both.decrypt(token.replace(".old.", ".new.", 1))


def test_rotation_decrypts_an_old_token_by_its_key_id_and_reseals_it_with_the_current_key(
    old_raw: bytes, new_raw: bytes
) -> None:
    before = AesGcmCipher.from_setting(f"old:{_b64(old_raw)}")
    old_token = before.encrypt(API_KEY, context="t1/p")
    after = AesGcmCipher.from_setting(f"new:{_b64(new_raw)},old:{_b64(old_raw)}")
    assert after.current_key_id == "new"
    assert after.needs_rotation(old_token)
    new_token = after.encrypt(after.decrypt(old_token, context="t1/p"), context="t1/p")
    assert after.key_id_of(new_token) == "new"
    assert not after.needs_rotation(new_token)
    # once every token is re-sealed the old key can leave the keyring
    only_new = AesGcmCipher.from_setting(f"new:{_b64(new_raw)}")
    assert only_new.decrypt(new_token, context="t1/p") == API_KEY
    with pytest.raises(UnknownKeyId):
        only_new.decrypt(old_token, context="t1/p")


def test_the_first_keyring_entry_is_current(old_raw: bytes, new_raw: bytes) -> None:
    current, keys = parse_keyring(f" a:{_b64(old_raw)} , b:{_b64(new_raw)} ")
    assert current == "a"
    assert keys == {"a": old_raw, "b": new_raw}


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("", "empty"),
        ("k1", "form"),
        ("k1:%%%not-base64%%%", "base64"),
        ("k1:" + _b64(b"short-key-material"), "32"),
        ("bad id!:" + _b64(b"x" * 32), "key id"),
        ("k1:" + _b64(b"y" * 32) + ",k1:" + _b64(b"z" * 32), "more than once"),
    ],
)
def test_a_malformed_keyring_is_refused_with_a_clear_error_that_never_echoes_it(setting: str, complaint: str) -> None:
    with pytest.raises(SecretKeyMisconfigured) as info:
        AesGcmCipher.from_setting(setting)
    message = str(info.value)
    assert complaint in message
    assert "CREWFLOW_SECRET_KEY" in message or "current key" in message
    for part in setting.replace(",", ":").split(":"):
        if len(part) >= 8:
            assert part not in message


def test_a_missing_setting_says_how_to_make_one() -> None:
    with pytest.raises(SecretKeyMisconfigured, match="CREWFLOW_SECRET_KEY is not set"):
        AesGcmCipher.from_env({})
    assert AesGcmCipher.from_env({"CREWFLOW_SECRET_KEY": generate_key("env")}).current_key_id == "env"


def test_key_material_and_plaintexts_never_show_in_repr_str_errors_or_pickles(old_raw: bytes) -> None:
    setting = f"k1:{_b64(old_raw)}"
    cipher = AesGcmCipher.from_setting(setting)
    token = cipher.encrypt(API_KEY, context="ctx")
    shown = repr(cipher) + str(cipher)
    assert _b64(old_raw) not in shown
    assert old_raw.hex() not in shown
    assert "k1" in shown
    with pytest.raises(DecryptionFailed) as info:
        cipher.decrypt(token, context="other")
    assert API_KEY not in str(info.value)
    assert token.rsplit(".", 1)[1] not in str(info.value)
    assert info.value.__cause__ is None
    with pytest.raises(TypeError):
        pickle.dumps(cipher)


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        ("sk-proj-0123456789abcdefABCD", "sk-…ABCD"),
        ("sk-ant-api03-abcdefghijklmnop9876", "sk-…9876"),
        ("AIzaSyA0123456789wxyz", "…wxyz"),
        ("sk-short", "sk-…"),
        ("tiny", "…"),
        ("", ""),
        (None, ""),
    ],
)
def test_mask_shows_at_most_a_vendor_prefix_and_the_last_four(secret: str | None, shown: str) -> None:
    assert mask(secret) == shown
