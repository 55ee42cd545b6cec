"""Email addresses and display names: validated, normalised, and safe to put in a header.

email-validator enters the project here. An address is checked for syntax (and, when asked,
for a domain that accepts mail); its normalised form is what makes two spellings of one
mailbox the same subscriber:

- the domain is lower-cased and IDNA-encoded (`Exämple.COM` -> `xn--exmple-cua.com`);
- the local part is lower-cased too. RFC 5321 lets a server treat `Ann@` and `ann@` as two
  mailboxes, but no real provider does, and a list that mails both (or lets one opt out while
  the other stays subscribed) is worse than that theoretical loss. The address as the person
  typed it is kept beside the normalised one and is what mail is sent to.

Validation is the hot loop of a CSV import, so the common shape (a plain ASCII local part)
takes a fast path: the domain is validated by email-validator once and remembered, and the
local part is checked with a pattern that accepts a strict subset of what email-validator
accepts; every other address goes through email-validator whole. A property test keeps the two
in agreement.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from subscribers.errors import InvalidEmail
from subscribers.text import BIDI_CONTROLS

MAX_NAME = 200
MAX_EMAIL = 254  # RFC 5321 path limit; email-validator enforces the same
# A fixed namespace so the hashes are ours alone (not a plain sha256 of an address that a
# leaked table could be matched against in any other list).
SUPPRESSION_NAMESPACE = "newsletter-suppression-v1:"

_FAST_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*\Z")

@dataclass(frozen=True, slots=True)
class Address:
    """A valid address: as given (domain normalised), and the key that makes it unique."""

    email: str
    normalized: str


def parse_address(raw: str, check_deliverability: bool = False) -> Address:
    """`raw` validated and normalised; InvalidEmail (saying why) when it is not an address."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        raise InvalidEmail("the address is empty")
    local, at, domain = text.rpartition("@")
    if at and len(text) <= MAX_EMAIL and len(local) <= 64 and _FAST_LOCAL.match(local):
        try:
            ascii_domain, unicode_domain = _domain(domain, check_deliverability)
        except EmailNotValidError as exc:  # the domain's reason, with the whole address typed
            raise InvalidEmail(f"{_show(text)} is not a valid address: {exc}") from None
        if len(local) + 1 + len(ascii_domain) <= MAX_EMAIL:
            return Address(f"{local}@{unicode_domain}", f"{local.lower()}@{ascii_domain}")
    try:
        # No SMTPUTF8: the sender does not use it, so a local part beyond ASCII could never be
        # mailed; refused here, where the address comes in, with the reason.
        result = validate_email(text, check_deliverability=check_deliverability, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"{_show(text)} is not a valid address: {exc}") from None
    # ascii_domain is None only for an internationalised domain email-validator cannot encode.
    domain_key = (result.ascii_domain or result.domain).lower()
    return Address(result.normalized, f"{result.local_part.lower()}@{domain_key}")


@lru_cache(maxsize=65536)
def _domain(domain: str, check_deliverability: bool) -> tuple[str, str]:
    """(IDNA form, display form) of a domain, validated once per import and remembered.

    EmailNotValidError propagates: the caller names the whole address in the message.
    """
    result = validate_email(f"x@{domain}", check_deliverability=check_deliverability)
    return (result.ascii_domain or result.domain).lower(), result.domain


def normalize_email(raw: str) -> str:
    """The unique key of an address; for an invalid one, a best effort (trimmed, lower-cased).

    Lookups (is this address suppressed? unsubscribe this address) must not fail just because
    an address that was accepted long ago would not pass today's validator.
    """
    try:
        return parse_address(raw).normalized
    except InvalidEmail:
        return raw.strip().lower()


def suppression_hash(normalized: str) -> str:
    """The one-way hash kept for an address that must never be mailed again."""
    return hashlib.sha256((SUPPRESSION_NAMESPACE + normalized).encode("utf-8")).hexdigest()


def clean_name(raw: str | None) -> str:
    """A display name safe for a header: no control characters, one line, trimmed, at most 200.

    Cleaned rather than refused: `"Eve\\r\\nBcc: x@y"` becomes `"Eve Bcc: x@y"`, a harmless (if
    odd) name, instead of losing the subscriber. Tabs and line breaks become spaces.
    """
    if not raw:
        return ""
    if raw.isprintable() and raw == raw.strip() and "  " not in raw and len(raw) <= MAX_NAME:
        return raw  # the common case, in one C-speed check (bidi controls are not printable)
    # A name loses control characters (CR and LF among them: it goes into a To: header), line
    # and paragraph separators, and the bidi controls that can make it display as another name.
    kept = []
    for char in raw:
        category = unicodedata.category(char)
        if char in BIDI_CONTROLS or category in ("Cc", "Zl", "Zp", "Cs", "Co", "Cn"):
            kept.append(" " if char in "\t\r\n\v\f\u2028\u2029\x85" else "")
        else:
            kept.append(char)
    return " ".join("".join(kept).split())[:MAX_NAME].rstrip()


def _show(text: str) -> str:
    """An address quoted for an error message, with control characters made visible."""
    return repr(text[:100])
