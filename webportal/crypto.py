"""Secrets the server must read back (a webhook's signing secret), encrypted at rest.

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) with the keys of
FIELD_ENCRYPTION_KEYS: the first encrypts, every one decrypts, so a key is rotated by putting
the new one first and re-saving (`MultiFernet.rotate`). Unset, one key is derived from
SECRET_KEY with HKDF-SHA256: the embedded install needs no extra setting, at the price that
changing SECRET_KEY makes the stored secrets unreadable (the endpoints must be registered
again). A deployment sets FIELD_ENCRYPTION_KEYS (docs/SECURITY.md).
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PREFIX = "fernet:"


class DecryptionFailed(Exception):
    """A stored secret that none of the keys opens (the key changed, or the value was altered)."""


def derived_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hematovision fields")
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


def _fernet() -> MultiFernet:
    keys = list(settings.FIELD_ENCRYPTION_KEYS) or [derived_key(settings.SECRET_KEY).decode()]
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS must hold Fernet keys (urlsafe base64 of 32 bytes), "
            "comma-separated"
        ) from exc


def encrypt(plaintext: str) -> str:
    return PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise DecryptionFailed("The value is not encrypted.")
    try:
        return _fernet().decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise DecryptionFailed(
            "No key of FIELD_ENCRYPTION_KEYS (or the key derived from SECRET_KEY) opens it."
        ) from None
