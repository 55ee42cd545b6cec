"""Signed, URL-safe tokens that name one subscriber for one purpose (unsubscribe, confirm).

A token is an itsdangerous signature over the subscriber's id, salted with its purpose: a
confirm token cannot unsubscribe and the other way round, and changing one character of it
makes it worthless. Unsubscribe tokens never expire (a link in a years-old email must still
work) and carry no timestamp, so one subscriber's link is the same in every message: a retry,
a preview and the sent copy are byte-identical. Confirm tokens carry their time and expire after
CONFIRM_MAX_AGE unless the caller asks otherwise; their payload holds the time to the microsecond
too (itsdangerous's own timestamp is whole seconds), so a link made in the same second as, but
before, an unsubscribe is still known to be older.

itsdangerous enters the project only here.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from subscribers.errors import BadToken, ExpiredToken, SubscriberError

UNSUBSCRIBE = "unsubscribe"
CONFIRM = "confirm"
# A bounce token names a delivery row (not a subscriber): it is the VERP part of the envelope
# sender, so a bounce that quotes nothing else still says which issue went to whom.
BOUNCE = "bounce"
PURPOSES = (UNSUBSCRIBE, CONFIRM, BOUNCE)
UNTIMED = (UNSUBSCRIBE, BOUNCE)
# A week to follow a confirmation link: long enough for a holiday, short enough that a link
# forwarded or leaked months later no longer signs somebody up.
CONFIRM_MAX_AGE = 7 * 24 * 3600
SECRET_ENV = "NEWSLETTER_SECRET_KEY"
SECRET_FILE = ".secret_key"
MIN_SECRET = 16  # characters: a key shorter than this could be guessed, and every token forged
# The salt namespace keeps these signatures apart from any other use of the same key.
_SALT_PREFIX = "newsletter.subscribers."
# Ids below this never take itsdangerous's zlib branch: it compresses a payload only when that
# saves 2+ bytes, and zlib's output is at least 9 bytes, so a payload of <= 10 digits stays plain.
_PLAIN_PAYLOAD_BELOW = 10**10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _serializer(secret: str, purpose: str) -> URLSafeSerializer | URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}; expected one of {PURPOSES}")
    if not secret:
        raise SubscriberError("the token-signing secret is empty")
    if purpose in UNTIMED:
        return URLSafeSerializer(secret, salt=_SALT_PREFIX + purpose)
    return URLSafeTimedSerializer(secret, salt=_SALT_PREFIX + purpose)


def make_token(secret: str, purpose: str, subscriber_id: int) -> str:
    """A URL-safe token that says "subscriber `subscriber_id`, for `purpose`", signed with `secret`."""
    if not isinstance(subscriber_id, int) or subscriber_id <= 0:
        raise ValueError(f"a subscriber id is a positive integer, got {subscriber_id!r}")
    if purpose in UNTIMED and subscriber_id < _PLAIN_PAYLOAD_BELOW:
        return _untimed_signer(secret, purpose)(subscriber_id)
    if purpose == CONFIRM:
        micros = (datetime.now(UTC) - _EPOCH) // _MICROSECOND  # exact, unlike a float
        return str(_serializer(secret, purpose).dumps([subscriber_id, micros]))
    token = _serializer(secret, purpose).dumps(subscriber_id)
    return str(token)


@functools.lru_cache(maxsize=8)
def _untimed_signer(secret: str, purpose: str) -> Callable[[int], str]:
    """Unsubscribe (and bounce) tokens the way URLSafeSerializer.dumps makes them, byte for byte, but with the
    key derived and the HMAC keyed once per secret: a send makes one token per message, and
    itsdangerous builds a serializer, a signer and a derived key for every one (~14 us)."""
    serializer = _serializer(secret, purpose)
    signer = serializer.make_signer()
    keyed = hmac.new(signer.derive_key(), digestmod=signer.digest_method)
    separator = signer.sep

    def sign(subscriber_id: int) -> str:
        # An int's compact JSON is its digits; uncompressed (see _PLAIN_PAYLOAD_BELOW).
        payload = base64_encode(str(subscriber_id).encode("ascii"))
        mac = keyed.copy()
        mac.update(payload)
        return (payload + separator + base64_encode(mac.digest())).decode("ascii")

    # A guard against a future itsdangerous that signs differently: then it signs every token.
    if any(sign(probe) != serializer.dumps(probe) for probe in (1, 4711, _PLAIN_PAYLOAD_BELOW - 1)):
        return lambda subscriber_id: str(serializer.dumps(subscriber_id))
    return sign


def read_token(secret: str, purpose: str, token: str, max_age: int | None = None) -> int:
    """The subscriber id a genuine `purpose` token names; BadToken or ExpiredToken otherwise.

    `max_age` (seconds) defaults to CONFIRM_MAX_AGE for confirm tokens; unsubscribe tokens
    have no time in them and never expire.
    """
    if purpose in UNTIMED:
        try:
            value = _serializer(secret, purpose).loads(token)
        except BadSignature:
            raise BadToken(f"this {purpose} link is not valid (altered, or meant for something else)") from None
        return _subscriber_id(value, purpose)
    return read_token_issued(secret, purpose, token, max_age)[0]


def read_token_issued(
    secret: str, purpose: str, token: str, max_age: int | None = None
) -> tuple[int, datetime]:
    """Like read_token, with the time the token was made (UTC, to the microsecond): confirm only.

    A confirm token made before tokens carried microseconds gives the whole second it was made.
    """
    if purpose != CONFIRM:
        raise ValueError(f"only {CONFIRM} tokens carry their time, not {purpose!r}")
    if max_age is None:
        max_age = CONFIRM_MAX_AGE
    serializer = URLSafeTimedSerializer(secret, salt=_SALT_PREFIX + purpose)
    if not secret:
        raise SubscriberError("the token-signing secret is empty")
    try:
        value, issued = serializer.loads(token, max_age=max_age, return_timestamp=True)
    except SignatureExpired:
        raise ExpiredToken(f"this {purpose} link has expired; ask for a new one") from None
    except BadSignature:
        raise BadToken(f"this {purpose} link is not valid (altered, or meant for something else)") from None
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool):
        try:
            issued = _EPOCH + value[1] * _MICROSECOND
        except OverflowError:
            raise BadToken(f"this {purpose} link does not carry a valid time") from None
        value = value[0]
    return _subscriber_id(value, purpose), issued


def _subscriber_id(value: object, purpose: str) -> int:
    # A genuine signature over something else than an id would be our own bug, not the user's.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadToken(f"this {purpose} link does not name a subscriber")
    return value


def load_secret(base_dir: Path, announce: Callable[[str], None] | None = None) -> str:
    """The signing key: $NEWSLETTER_SECRET_KEY, else `base_dir/.secret_key`, created when missing.

    A created file holds a random key, is readable by its owner only (0600) and is kept out of
    git by .gitignore. `announce` is told when a file was created, so the CLI can say so.
    """
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return _strong(from_env, f"${SECRET_ENV}")
    path = Path(base_dir) / SECRET_FILE
    created = _create_secret_file(path)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise SubscriberError(f"cannot read the secret key file {path}: {why}") from None
    if not secret:
        raise SubscriberError(f"{path} is empty: delete it to get a new key, or set ${SECRET_ENV}")
    _strong(secret, str(path))
    if created and announce is not None:
        announce(
            f"Created a new token-signing key in {path} (kept out of git). Back it up: "
            f"unsubscribe links in emails already sent need it. ${SECRET_ENV} overrides it."
        )
    return secret


def _strong(secret: str, where: str) -> str:
    """`secret`, when it can sign tokens nobody can forge: long enough to resist guessing, and
    text (an environment variable can hold bytes that are not)."""
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        raise SubscriberError(f"{where}: the key is not UTF-8 text") from None
    if len(secret) < MIN_SECRET:
        raise SubscriberError(
            f"{where}: the key is {len(secret)} characters; use at least {MIN_SECRET}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'")
    return secret


def _create_secret_file(path: Path) -> bool:
    """Write a random key to `path` unless it exists; True when this call created it."""
    if path.exists():
        return False
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        # link() fails when the name exists: when two processes start at once, one key wins
        # and both read it, and nobody ever reads a half-written file.
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise SubscriberError(f"cannot create the secret key file {path}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return True
