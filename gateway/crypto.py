"""Envelope encryption of secureJsonData: AES-256-GCM values under data keys wrapped by secret_key."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# PBKDF2 work for the key-encryption key; runs once per data key at start, never per request.
KEK_ITERATIONS = 200_000


class SecretKeyMismatch(Exception):
    """[security] secret_key does not unwrap a stored data key."""


def _kek(secret_key: str, salt: bytes) -> AESGCM:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=KEK_ITERATIONS)
    return AESGCM(kdf.derive(secret_key.encode()))


def wrap_key(secret_key: str, key_id: str, key: bytes) -> tuple[bytes, bytes]:
    """Encrypt a data key under secret_key: returns (salt, nonce + ciphertext)."""
    salt = os.urandom(16)
    nonce = os.urandom(12)
    return salt, nonce + _kek(secret_key, salt).encrypt(nonce, key, key_id.encode())


def unwrap_key(secret_key: str, key_id: str, salt: bytes, wrapped: bytes) -> bytes:
    """Decrypt a data key, or raise SecretKeyMismatch."""
    try:
        return _kek(secret_key, salt).decrypt(wrapped[:12], wrapped[12:], key_id.encode())
    except InvalidTag:
        raise SecretKeyMismatch(key_id) from None


def derive_key(secret_key: str, purpose: str) -> bytes:
    """A 256-bit key for one purpose (the query cache's values in Redis), the same on every replica that
    shares secret_key; HKDF, so no stored salt is needed and other purposes get unrelated keys."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gateway", info=purpose.encode()).derive(
        secret_key.encode())


class SecretBox:
    """Seals and opens secureJsonData values; holds unwrapped data keys, never shows them."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active = active

    def __repr__(self) -> str:
        return f"SecretBox(keys={len(self._ciphers)}, active={self._active!r})"

    @classmethod
    async def load(cls, conn: Any, queries: Mapping[str, str], secret_key: str) -> SecretBox:
        """Unwrap every data key with secret_key, creating the first one on a new database.

        The caller holds the migration lock, so concurrent replicas create one key between them.
        """
        rows = await conn.fetch(queries["list_data_keys"])
        if not rows:
            key_id = "dk" + secrets.token_hex(8)
            key = AESGCM.generate_key(bit_length=256)
            salt, wrapped = wrap_key(secret_key, key_id, key)
            await conn.execute(queries["insert_data_key"], key_id, salt, wrapped)
            return cls({key_id: key}, key_id)
        keys = {row["id"]: unwrap_key(secret_key, row["id"], row["kek_salt"], row["encrypted_key"]) for row in rows}
        active = next(row["id"] for row in rows if row["active"])
        return cls(keys, active)

    def seal(self, field: str, plaintext: str) -> str:
        """Encrypt one value under the active key; the field name is bound as associated data."""
        nonce = os.urandom(12)
        ciphertext = self._ciphers[self._active].encrypt(nonce, plaintext.encode(), field.encode())
        return f"{self._active}.{base64.b64encode(nonce + ciphertext).decode()}"

    def open(self, field: str, sealed: str) -> str:
        """Decrypt one value sealed for `field`."""
        key_id, _, blob = sealed.partition(".")
        raw = base64.b64decode(blob)
        return self._ciphers[key_id].decrypt(raw[:12], raw[12:], field.encode()).decode()

    def seal_all(self, values: Mapping[str, str]) -> dict[str, str]:
        """Seal every non-empty value (an empty value means: remove the secret)."""
        return {field: self.seal(field, value) for field, value in values.items() if value}

    def open_all(self, sealed: Mapping[str, str]) -> dict[str, str]:
        """Decrypt the sealed values of one data source."""
        return {field: self.open(field, value) for field, value in sealed.items()}
