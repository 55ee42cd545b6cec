"""The error tree of the newsletter; every error a user can cause is one of these.

    NewsletterError                 anything this project raises on purpose
    ├── ConfigError                 config.toml is missing, unreadable or holds a wrong value
    ├── DatabaseError               the database cannot be reached or migrated
    ├── ImportProblem               one input file or row could not be taken (names it)
    │   └── FeedError               a feed could not be fetched or read (says why)
    ├── NotFound                    an essay, issue or subscriber that does not exist
    ├── RenderError                 a template failed or an issue cannot be rendered
    ├── LookupFailed                the DNS could not answer (timeout, server failure)
    ├── DeliveryError               sending failed
    │   ├── TransientDeliveryError  the server said "try later" (4xx, 552)
    │   ├── PermanentDeliveryError  the server refused the recipient for good (5xx)
    │   ├── AmbiguousDeliveryError  the message was handed over but no reply came: maybe delivered
    │   └── TransportUnavailable    no connection or no login: pause, do not burn attempts
    └── Refused                     harmful unless asked for plainly (--force, --resend)

The audience package has its own root, subscribers.errors.SubscriberError (it may not import
from pipeline). The CLI turns both into messages and exit codes; nothing else catches them wholesale.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Anything this project raises on purpose."""


class ConfigError(NewsletterError):
    """config.toml is missing, unreadable or holds a wrong value."""


class DatabaseError(NewsletterError):
    """The database cannot be reached or migrated."""


class ImportProblem(NewsletterError):
    """One input file or row could not be taken; the message names it."""


class FeedError(ImportProblem):
    """A feed could not be fetched (timeout, HTTP error) or read (not a feed, malformed XML)."""


class NotFound(NewsletterError):
    """An essay, issue or subscriber that does not exist."""


class RenderError(NewsletterError):
    """A template failed, or an issue cannot be rendered."""


class LookupFailed(NewsletterError):
    """The DNS could not answer (timeout, server failure); a name that does not exist is an answer."""


class DeliveryError(NewsletterError):
    """Sending failed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientDeliveryError(DeliveryError):
    """The server said "try later" (4xx, and 552 which many servers use for "mailbox full")."""


class PermanentDeliveryError(DeliveryError):
    """The server refused the recipient for good (5xx other than 552)."""


class AmbiguousDeliveryError(DeliveryError):
    """The whole message, final dot included, was handed over and then the connection dropped
    or timed out before the server's reply: it may have been delivered. Never retried by
    itself (that could be a second copy); the ledger records it as `unknown`."""


class TransportUnavailable(DeliveryError):
    """No connection, or the login failed: pause the run instead of failing every recipient."""


class Refused(NewsletterError):
    """An action that would do harm unless asked for plainly: a repeat send of an essay, a send
    whose message fails the checklist, a key that is taken. The message says how to ask."""


def database_words(exc: BaseException) -> str:
    """What the database said, in one line: its driver's words (SQLAlchemy keeps them in `orig`)
    without the SQL they quote on the lines after, nor the statement and its values."""
    said = getattr(exc, "orig", None) or exc
    return (str(said).strip().splitlines() or ["no reason given"])[0]
