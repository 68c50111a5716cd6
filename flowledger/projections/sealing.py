"""Projections' copies of what handlers wrote, encrypted like the log (ADR 0022).

A projection that keeps a copy of a payload, a failure's reason or a cost's
label seals it with the store's column cipher (deterministic: a rebuilt
projection equals the live one) when the store is encrypted, so that
nothing a user's automation read or wrote lies in clear in the store. Ids,
names from the definition, statuses, counts and times stay in clear: the
engine's queries select and order by them.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

SEALED_TEXT = "enc:v1:"  # how a sealed text column's value starts


class Cipher(Protocol):
    """The store's column cipher (infrastructure.encryption.ColumnCipher)."""

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...


class Seal:
    """Seals and opens column values; with no cipher, both leave values as they are."""

    def __init__(self, cipher: Cipher | None = None) -> None:
        self.cipher = cipher

    def seal_bytes(self, data: bytes | None) -> bytes | None:
        if data is None or self.cipher is None:
            return data
        return self.cipher.encrypt(bytes(data))

    def open_bytes(self, data: Any) -> Any:
        if data is None or self.cipher is None:
            return data
        return self.cipher.decrypt(bytes(data))

    def seal_text(self, text: str | None) -> str | None:
        if text is None or self.cipher is None:
            return text
        return SEALED_TEXT + base64.b64encode(self.cipher.encrypt(text.encode())).decode()

    def open_text(self, text: str | None) -> str | None:
        if text is None or self.cipher is None or not text.startswith(SEALED_TEXT):
            return text
        try:
            return self.cipher.decrypt(base64.b64decode(text[len(SEALED_TEXT):])).decode()
        except ValueError:  # written in clear (a scratch database folded without a key)
            return text


NO_SEAL = Seal()
