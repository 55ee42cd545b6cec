"""What every web request shares: the app's settings and engine, rate limits, CSRF, one-message pages."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import abort, current_app, render_template, request, session
from sqlalchemy.engine import Engine

from pipeline.config import Settings


class RateLimiter:
    """At most `limit` events per key within `window` seconds, remembered in this process only."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for `key`; False when that goes over the limit (the event is not kept)."""
        now = self.clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self._events) > 10_000:  # forget idle keys so memory stays bounded
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
            return True


@dataclass
class WebState:
    """What every request needs, made once by the app factory."""

    settings: Settings
    engine: Engine
    secret: str
    # Sign-ups per client address (confirmation emails per address: pipeline/confirmations.py).
    per_client: RateLimiter = field(default_factory=lambda: RateLimiter(5, 3600))
    # Set by a sign-up: wakes `serve`'s confirmation mailer, when one runs.
    wake: threading.Event = field(default_factory=threading.Event)
    web_copies: dict[tuple[int, str], str] = field(default_factory=dict)


def state() -> WebState:
    """The state of the app serving this request."""
    return current_app.extensions["newsletter"]  # type: ignore[no-any-return]


def csrf_token() -> str:
    """The form token of this browser session, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def check_csrf() -> None:
    """Refuse (400) a form POST whose token does not match the one in the session cookie."""
    sent = request.form.get("csrf_token", "")
    kept = session.get("csrf", "")
    if not sent or not kept or not same_secret(str(sent), str(kept)):
        abort(400, "This form has expired or did not come from this site. Reload the page and try again.")


def mask_email(email: str) -> str:
    """The address as `a••@example.org`: enough to recognise, too little to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 2), 6)}@{domain}"


def message(
    heading: str, body: str, status: int = 200, tone: str = "", link: dict[str, str] | None = None
) -> tuple[str, int]:
    """A page that says one thing: the answer of most POSTs, and every error."""
    page = render_template("message.html", heading=heading, body=body, tone=tone, link=link, section="")
    return page, status


def same_secret(given: str, kept: str) -> bool:
    """Whether a token from a request is the one kept, in constant time. As bytes: on strings
    hmac.compare_digest raises for a character beyond ASCII, which anyone can send."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), kept.encode("utf-8", "surrogatepass"))
