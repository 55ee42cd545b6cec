"""The public web pages: the archive, one-click unsubscribe (RFC 8058), confirm and subscribe.

Nothing here shows the subscriber list or any personal data beyond a masked address to the
holder of its signed link. Forms carry a CSRF token kept in Flask's signed session; the
RFC 8058 one-click POST carries none (mail providers send it without cookies), which is safe
because the signed token in the URL is itself the proof.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, session, url_for
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline import db
from pipeline.config import Settings
from pipeline.models import Issue, IssueStatus
from pipeline.digest import issue_view
from pipeline.render import render_web_page
from subscribers import consent
from subscribers.errors import BadToken, ConsentError, ExpiredToken, InvalidEmail
from subscribers.model import OPTED_OUT, Subscriber, SubscriberStatus
from subscribers.tokens import CONFIRM, UNSUBSCRIBE, read_token

bp = Blueprint("public", __name__)

# What a web copy may be: an issue that has started going out (its "view in browser" link is
# in mailboxes from the first message on). Drafts stay private.
PUBLISHED = (IssueStatus.SENDING.value, IssueStatus.SENT.value)


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
    if not sent or not kept or not hmac.compare_digest(str(sent), str(kept)):
        abort(400, "This form has expired or did not come from this site. Reload the page and try again.")


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "settings": state().settings}


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


def _subscriber(session_: Session, purpose: str, token: str) -> Subscriber | None:
    """The subscriber a genuine token names (None when since removed); 400/410 for a bad one."""
    try:
        subscriber_id = read_token(state().secret, purpose, token)
    except ExpiredToken:
        abort(410, "This link has expired. Subscribe again to get a new one.")
    except BadToken:
        abort(400, "This link is not valid: it may have been cut short or altered. Copy the whole link from the email.")
    return session_.get(Subscriber, subscriber_id)


@bp.get("/archive/")
def archive() -> str:
    with db.session_scope(state().engine) as s:
        issues = s.exec(
            select(Issue).where(Issue.status == IssueStatus.SENT.value)
            .order_by(col(Issue.finished_at).desc(), col(Issue.id).desc())
        ).all()
    return render_template("archive.html", issues=issues, section="archive")


@bp.get("/archive/<key>")
def web_copy(key: str) -> Any:
    """The issue as a web page with no personal data: where "view in browser" leads."""
    st = state()
    with db.session_scope(st.engine) as s:
        issue = s.exec(select(Issue).where(Issue.key == key)).first()
        if issue is None or issue.status not in PUBLISHED:
            abort(404)
        cache_key = (issue.id or 0, issue.status)
        if cache_key not in st.web_copies:
            st.web_copies[cache_key] = render_web_page(st.settings, issue_view(s, st.settings, issue))
    return st.web_copies[cache_key]


@bp.route("/u/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> Any:
    """GET: a page with a button. POST: unsubscribe, by that button or by RFC 8058 one-click."""
    one_click = request.method == "POST" and request.form.get("List-Unsubscribe") == "One-Click"
    with db.session_scope(state().engine) as s:
        subscriber = _subscriber(s, UNSUBSCRIBE, token)
        if request.method in ("GET", "HEAD"):  # HEAD: link checkers, answered like GET
            if subscriber is None or subscriber.status in OPTED_OUT:
                return message("Already unsubscribed", "This address gets no more issues.")
            return render_template("unsubscribe.html", token=token, masked_email=mask_email(subscriber.email),
                                   section="")
        if not one_click:
            check_csrf()
        changed = subscriber is not None and consent.unsubscribe_by_token(s, state().secret, token)
    if not changed:
        return message("Already unsubscribed", "This address was already unsubscribed; nothing changed.", tone="ok")
    return message(
        "You are unsubscribed",
        f"You will get no more issues of {state().settings.newsletter.name}. Sorry to see you go.",
        tone="ok",
        link={"url": url_for("public.subscribe"), "label": "Changed your mind? Subscribe again."},
    )


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> Any:
    """GET: a page with a button (link scanners follow GETs, people press buttons). POST: confirm."""
    with db.session_scope(state().engine) as s:
        subscriber = _subscriber(s, CONFIRM, token)
        if subscriber is None or subscriber.status == SubscriberStatus.REMOVED:
            abort(404, "This subscription no longer exists. Subscribe again.")
        if subscriber.status == SubscriberStatus.ACTIVE:
            return message("Already confirmed", "You are subscribed; the next issue will reach you.", tone="ok")
        if request.method in ("GET", "HEAD"):
            return render_template("confirm.html", token=token, masked_email=mask_email(subscriber.email), section="")
        check_csrf()
        try:
            consent.confirm_by_token(s, state().secret, token)
        except ConsentError as exc:
            abort(409, str(exc))
    return message("You are subscribed", "Thank you. The next issue will reach you.", tone="ok")


@bp.route("/subscribe", methods=["GET", "POST"])
def subscribe() -> Any:
    """A sign-up form: a pending subscriber and a confirmation email (double opt-in)."""
    st = state()
    email, name = request.form.get("email", "").strip(), request.form.get("name", "").strip()
    if request.method == "GET":
        return render_template("subscribe.html", email="", name="", error=None, section="subscribe")
    check_csrf()
    # One answer whatever the address's history, so the form cannot be used to probe the list.
    done = message(
        "Check your inbox",
        f"If {email} is new here or needs to confirm, a message with a link is on its way to it. "
        "The link works for 7 days.",
        tone="ok",
    ) if st.settings.subscribers.double_opt_in else message(
        "Thank you",
        f"{email} is on the list. If it unsubscribed before, a message with a link to confirm is "
        "on its way to it first.",
        tone="ok",
    )
    if request.form.get("website"):  # the hidden honeypot field: only robots fill it in
        return done
    if not st.per_client.allow(request.remote_addr or "?"):
        return message("Too many sign-ups", "Too many sign-ups from your address; try again in an hour.", 429, "bad")
    try:
        with db.session_scope(st.engine) as s:
            # Queues a confirmation for every valid address, subscribed or not: the mailer, not
            # this request, decides whether it goes out, so every answer takes the same work.
            consent.subscribe(s, email, name=name, source="web",
                              double_opt_in=st.settings.subscribers.double_opt_in,
                              check_deliverability=st.settings.subscribers.check_deliverability)
    except InvalidEmail as exc:
        page = render_template("subscribe.html", email=email, name=name, error=str(exc), section="subscribe")
        return page, 400
    except ConsentError:
        return done
    st.wake.set()  # `serve`'s mailer thread; elsewhere the worker or the scheduler sends it
    return done
