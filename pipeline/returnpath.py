"""The envelope sender of each delivery: a signed VERP address that names the delivery row.

With `[bounces]` enabled every message goes out with MAIL FROM `bounces+<token>@domain`, where
the token is a signature over the delivery's id (subscribers/tokens.py, purpose "bounce"): a
bounce that quotes nothing of the original still says which issue went to which subscriber, and
a forged bounce cannot name a delivery. The token is base64url (letters, digits, `-`, `_`) with
one `.`, all allowed in a dot-atom local part.
"""

from __future__ import annotations

import re

from pipeline.config import Settings
from pipeline.message import list_label
from pipeline.models import Issue
from subscribers.errors import BadToken
from subscribers.tokens import BOUNCE, make_token, read_token

_LABEL = re.compile(r"[^A-Za-z0-9-]+")


def return_path(settings: Settings, secret: str, delivery_id: int) -> str:
    """MAIL FROM for one delivery: VERP when bounces are read, else the sender address."""
    bounces = settings.bounces
    if not bounces.enabled or not delivery_id:
        return settings.newsletter.sender_address
    return f"{bounces.local_part}+{make_token(secret, BOUNCE, delivery_id)}@{bounces.domain}"


def delivery_id_of(settings: Settings, secret: str, address: str) -> int | None:
    """The delivery a VERP address names, or None (not ours, or the signature is wrong)."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base, plus, token = local.partition("+")
    bounces = settings.bounces
    if not plus or not token or domain.lower() != bounces.domain.lower():
        return None
    if base.lower() != bounces.local_part.lower():
        return None
    try:
        return read_token(secret, BOUNCE, token)
    except BadToken:
        return None


def is_unsubscribe_address(unsubscribe_address: str, address: str) -> bool:
    """True when `address` is `unsubscribe_address`, the List-Unsubscribe mailto of this list
    (settings.bounces.unsubscribe_address; "" when none is read: nothing matches)."""
    return bool(unsubscribe_address) and address.strip().strip("<>").lower() == unsubscribe_address.lower()


def feedback_id(settings: Settings, issue: Issue) -> str:
    """`Feedback-ID: <issue>:<list>:newsletter:<sender domain>`, what Gmail's Postmaster Tools
    groups complaint rates by (the last field identifies the sender, the others the campaign); the
    list is named by the label of its List-Id."""
    key = _LABEL.sub("-", issue.key).strip("-") or "issue"
    return f"{key}:{list_label(settings)}:newsletter:{settings.newsletter.sender_domain}"
