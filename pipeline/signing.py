"""DKIM for the newsletter's mail: the signing key, the signature over a message, its DNS record.

The dkim library enters the project here (pipeline/message.py signs through `sign`, the doctor
prints `dkim_record`, the lint checks which headers a signature covers against DKIM_HEADERS).
"""

from __future__ import annotations

import binascii
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.errors import ConfigError

# The headers a DKIM signature covers (M14): what a forger would want to change.
DKIM_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
                b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id")
SigningKey = tuple[bytes, bytes, bytes]  # selector, domain, PEM private key

if TYPE_CHECKING:
    from types import ModuleType


def _dkim() -> ModuleType:
    """dkimpy, loaded when a key is configured: with it come dnspython and PyNaCl (about 0.05 s),
    which a newsletter that does not sign never needs."""
    import dkim  # noqa: PLC0415
    import dkim.crypto  # noqa: PLC0415

    module: ModuleType = dkim
    return module


def sign(raw: bytes, key: SigningKey) -> bytes:
    """`raw` with a DKIM-Signature header (relaxed/relaxed) over the DKIM_HEADERS it carries."""
    selector, domain, pem = key
    header: bytes = _dkim().sign(raw, selector, domain, pem, include_headers=list(DKIM_HEADERS),
                              canonicalize=(b"relaxed", b"relaxed"))
    return header + raw


def load_key(settings: Settings) -> SigningKey | None:
    """The configured DKIM selector, domain and private key, checked now; None when none is set."""
    path: Path | None = settings.delivery.dkim_key
    if path is None:
        return None
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"delivery.dkim_key: cannot read {path}: {exc.strerror}") from None
    dkim = _dkim()
    try:  # now, not at the first message: a bad key must not fail every delivery of a send
        dkim.crypto.parse_pem_private_key(key)
    except (dkim.crypto.UnparsableKeyError, dkim.KeyFormatError) as exc:
        raise ConfigError(f"delivery.dkim_key: {path} is not a PEM private key: {exc}") from None
    domain = settings.newsletter.sender_domain.encode("ascii")
    return settings.delivery.dkim_selector.encode("ascii"), domain, key


def dkim_record(settings: Settings) -> tuple[str, str]:
    """The DNS name and TXT value receivers look up to check this newsletter's DKIM signatures.

    Built from the configured private key (RSA), so what it says is what `sign` signs with;
    ConfigError when no key is configured or the key cannot be read.
    """
    loaded = load_key(settings)
    if loaded is None:
        raise ConfigError("delivery.dkim_key: no DKIM key is configured")
    selector, domain, pem = loaded
    key = _dkim().crypto.parse_pem_private_key(pem)
    rsa_public_key = _der(0x30, _der_int(key["modulus"]) + _der_int(key["publicExponent"]))
    rsa_encryption = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    spki = _der(0x30, rsa_encryption + _der(0x03, b"\x00" + rsa_public_key))
    value = "v=DKIM1; k=rsa; p=" + binascii.b2a_base64(spki, newline=False).decode("ascii")
    return f"{selector.decode()}._domainkey.{domain.decode()}", value


def _der(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content (X.690 8.1)."""
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    # One more byte than the bits need: a leading zero keeps a high first bit from meaning negative.
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))
