"""The audience package's errors (it imports nothing from pipeline, so it has its own root).

    SubscriberError        anything this package raises on purpose
    ├── InvalidEmail       an address that is not valid (the message says why)
    ├── ConsentError       an action the consent rules forbid (e.g. re-activating an opt-out)
    ├── UnknownSubscriber  no subscriber with that address or id
    ├── BadToken           a token that is forged, altered, for another purpose, or expired
    │   └── ExpiredToken   a genuine token past its age limit
    └── UnreadableFile     a CSV file that cannot be read (wrong columns, not text); names it
"""

from __future__ import annotations


class SubscriberError(Exception):
    """Anything the subscribers package raises on purpose."""


class InvalidEmail(SubscriberError):
    """An address that is not valid; the message says why."""


class ConsentError(SubscriberError):
    """An action the consent rules forbid."""


class UnknownSubscriber(SubscriberError):
    """No subscriber with that address or id."""


class BadToken(SubscriberError):
    """A token that is forged, altered, meant for another purpose, or expired."""


class ExpiredToken(BadToken):
    """A genuine token past its age limit."""


class UnreadableFile(SubscriberError):
    """A CSV file that cannot be read as a list of subscribers; the message names file and why."""
