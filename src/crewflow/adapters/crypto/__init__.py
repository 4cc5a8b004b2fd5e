"""Encryption of stored secrets: AES-256-GCM with a rotatable keyring from settings."""

from crewflow.adapters.crypto.aesgcm import AesGcmCipher, generate_key, parse_keyring

__all__ = ["AesGcmCipher", "generate_key", "parse_keyring"]
