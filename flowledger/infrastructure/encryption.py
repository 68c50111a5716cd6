"""What protects a store: its cipher key, its compression, its chain key (ADR 0022, 0023).

Settled once, when an engine (or `copy`, or `verify`) opens a store: an
explicit argument wins over the environment, the environment is read only
through the names documented here, and the library's own environment
variables (`CIPHER_KEY`, `FLOWLEDGER_CIPHER_TOPIC`, `COMPRESSOR_TOPIC`, ...)
are ignored: a variable meant for another application, or one of them set
without the others, must never half-configure the log's cipher.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

from flowledger.domain.errors import EncryptionKeyError

KEY_ENV = "FLOWLEDGER_CIPHER_KEY"
COMPRESS_ENV = "FLOWLEDGER_COMPRESS"
CHAIN_KEY_ENV = "FLOWLEDGER_CHAIN_KEY"

# The library's cipher (AES-GCM from the `cryptography` package) and compressor.
CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"
COMPRESSOR_TOPIC = "eventsourcing.compressor:ZlibCompressor"
# The library's settings that decide how event bodies are written: taken from
# the process environment by the library (bare or prefixed with the
# application's name), they are removed and set from `Protection` only.
LIBRARY_SETTINGS = ("CIPHER_KEY", "CIPHER_TOPIC", "COMPRESSOR_TOPIC", "TRANSCODER_TOPIC",
                    "MAPPER_TOPIC")
KEY_SIZES = (16, 24, 32)
NEW_KEY_HINT = ("make one with `flowledger keygen` (32 random bytes in base64) and keep it "
                "outside the store")


def new_key() -> str:
    """A fresh AES-256 key, base64, for FLOWLEDGER_CIPHER_KEY or `cipher_key=`."""
    return base64.b64encode(os.urandom(32)).decode()


def decode_key(value: str, what: str) -> bytes:
    """The key that `value` (base64) holds; EncryptionKeyError, naming `what`, if none."""
    try:
        key = base64.b64decode(value.strip().encode(), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise EncryptionKeyError(
            f"{what} is not a key: it must be base64 (16, 24 or 32 random bytes); "
            f"{NEW_KEY_HINT}") from None
    if len(key) not in KEY_SIZES:
        raise EncryptionKeyError(
            f"{what} decodes to {len(key)} bytes; an AES key is 16, 24 or 32 bytes; "
            f"{NEW_KEY_HINT}")
    return key


@dataclass(frozen=True)
class Protection:
    """How a store's bodies are written and its chain keyed, as the caller asked.

    `cipher_key`: base64 AES key (None: bodies in clear). `compress`: True/False
    as asked, None to follow what the store records. `chain_key`: the HMAC key
    of the tamper-evident chain (None: derived from the cipher key, or an
    unkeyed SHA-256 chain when there is no key at all).
    """

    cipher_key: str | None = None
    compress: bool | None = None
    chain_key: bytes | None = None
    key_source: str = ""  # where the cipher key came from, for messages

    @property
    def encrypted(self) -> bool:
        return self.cipher_key is not None

    def library_env(self) -> dict[str, str]:
        """The library's settings for this protection (see LIBRARY_SETTINGS)."""
        env: dict[str, str] = {}
        if self.cipher_key is not None:
            env["CIPHER_TOPIC"] = CIPHER_TOPIC
            env["CIPHER_KEY"] = self.cipher_key
        if self.compress:
            env["COMPRESSOR_TOPIC"] = COMPRESSOR_TOPIC
        return env

    def column_cipher(self) -> ColumnCipher | None:
        """The projections' cipher (see ColumnCipher), None in clear."""
        if self.cipher_key is None:
            return None
        raw = base64.b64decode(self.cipher_key)
        return ColumnCipher(hmac.new(raw, b"flowledger projection columns v1",
                                     hashlib.sha256).digest())

    def hmac_key(self) -> bytes | None:
        """The chain's key: the one given, else one derived from the cipher key
        (so that one secret is enough), else None (an unkeyed chain)."""
        if self.chain_key is not None:
            return self.chain_key
        if self.cipher_key is not None:
            raw = base64.b64decode(self.cipher_key)
            return hmac.new(raw, b"flowledger chain key v1", hashlib.sha256).digest()
        return None


def protection(cipher_key: str | None = None, compress: bool | None = None,
               chain_key: str | None = None,
               environ: Mapping[str, str] | None = None) -> Protection:
    """The protection asked for: arguments first, then FLOWLEDGER_CIPHER_KEY,
    FLOWLEDGER_COMPRESS and FLOWLEDGER_CHAIN_KEY. `cipher_key=""` says "no key",
    whatever the environment holds."""
    env = os.environ if environ is None else environ
    source = "cipher_key="
    if cipher_key is None:
        cipher_key, source = env.get(KEY_ENV) or None, KEY_ENV
    if cipher_key == "":
        cipher_key = None
    if cipher_key is not None:
        if not isinstance(cipher_key, str):
            raise EncryptionKeyError(f"cipher_key must be a base64 str, got "
                                     f"{type(cipher_key).__name__}; {NEW_KEY_HINT}")
        raw = decode_key(cipher_key, source)
        cipher_key = base64.b64encode(raw).decode()  # one spelling of the key
        if importlib.util.find_spec("cryptography") is None:
            raise EncryptionKeyError(
                f"a cipher key was given ({source}), and encryption needs the `cryptography` "
                "package: pip install 'flowledger[crypto]'")
    if compress is None:
        asked = env.get(COMPRESS_ENV, "").strip().lower()
        if asked in ("zlib", "1", "yes", "true"):
            compress = True
        elif asked in ("none", "0", "no", "false"):
            compress = False
        elif asked:
            raise EncryptionKeyError(f"{COMPRESS_ENV}={asked!r} is not understood; use zlib "
                                     "or none (or leave it unset to follow the store)")
    chain: bytes | None = None
    chain_text = chain_key if chain_key is not None else env.get(CHAIN_KEY_ENV) or None
    if chain_text:
        chain = decode_key(chain_text, "chain_key=" if chain_key else CHAIN_KEY_ENV)
    return Protection(cipher_key, compress, chain, source if cipher_key else "")


def scrubbed(env: Mapping[str, str], name: str) -> dict[str, str]:
    """`env` without the library's body settings, bare or prefixed with `name`."""
    prefix = name.upper() + "_"
    drop = {*LIBRARY_SETTINGS, *(prefix + s for s in LIBRARY_SETTINGS)}
    return {k: v for k, v in env.items() if k not in drop}


_COLUMN_NONCE = bytes(12)


class ColumnCipher:
    """Seals the projections' copies (ADR 0022): AES-GCM-SIV under a key derived
    from the cipher key, with a fixed nonce, so it is deterministic — a value
    seals to the same bytes every time, and a projection rebuilt from the log
    equals the one maintained as it went (DESIGN §2.4), byte for byte. GCM-SIV
    is made for this: reusing the nonce reveals only that two sealed values are
    equal, never the key or the text. Event bodies keep the library's random
    nonces."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

        self._aead = AESGCMSIV(key)

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._aead.encrypt(_COLUMN_NONCE, plaintext, None)

    def decrypt(self, ciphertext: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(_COLUMN_NONCE, ciphertext, None)
        except InvalidTag:
            raise ValueError("a sealed projection value does not open with this store's "
                             "key (changed outside flowledger?)") from None
