"""The public web pages: the archive, one-click unsubscribe (RFC 8058), confirm and subscribe.

Nothing here shows the subscriber list or any personal data beyond a masked address to the
holder of its signed link. Forms carry a CSRF token kept in Flask's signed session; the
RFC 8058 one-click POST carries none (mail providers send it without cookies), which is safe
because the signed token in the URL is itself the proof.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template, request, url_for
from sqlmodel import Session

from pipeline import db
from pipeline.archive_feed import FEED_PATH, atom_feed
from pipeline.issue_view import issue_view
from pipeline.issues import find_by_key, sent_issues
from pipeline.models import Issue, IssueStatus
from pipeline.render import render_web_page
from pipeline.web.state import check_csrf, csrf_token, mask_email, message, state
from subscribers import consent, queries
from subscribers.errors import BadToken, ConsentError, ExpiredToken, InvalidEmail
from subscribers.model import OPTED_OUT, Subscriber, SubscriberStatus
from subscribers.tokens import CONFIRM, UNSUBSCRIBE, read_token

bp = Blueprint("public", __name__)

# What a web copy may be: an issue that has started going out (its "view in browser" link is
# in mailboxes from the first message on). Drafts stay private.
PUBLISHED = (IssueStatus.SENDING.value, IssueStatus.SENT.value)


def published(issue: Issue) -> bool:
    """Whether the issue has a web copy: it is going out or went out, or it expired after it
    started (some readers have it, and its link)."""
    return issue.status in PUBLISHED or (issue.status == IssueStatus.EXPIRED.value and issue.started_at is not None)


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "settings": state().settings}


def _subscriber(session_: Session, purpose: str, token: str) -> Subscriber | None:
    """The subscriber a genuine token names (None when since removed); 400/410 for a bad one."""
    try:
        subscriber_id = read_token(state().secret, purpose, token)
    except ExpiredToken:
        abort(410, "This link has expired. Subscribe again to get a new one.")
    except BadToken:
        abort(400, "This link is not valid: it may have been cut short or altered. Copy the whole link from the email.")
    return queries.by_id(session_, subscriber_id)


@bp.get("/archive/")
def archive() -> str:
    with db.session_scope(state().engine) as s:
        issues = sent_issues(s)
    return render_template("archive.html", issues=issues, section="archive")


@bp.get(FEED_PATH)
def archive_feed() -> Any:
    """The archive as an Atom feed, for feed readers: one entry per sent issue."""
    with db.session_scope(state().engine) as s:
        document = atom_feed(state().settings, sent_issues(s))
    return document, 200, {"Content-Type": "application/atom+xml; charset=utf-8"}


@bp.get("/archive/<key>")
def web_copy(key: str) -> Any:
    """The issue as a web page with no personal data: where "view in browser" leads."""
    st = state()
    with db.session_scope(st.engine) as s:
        issue = find_by_key(s, key)
        if issue is None or not published(issue):
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
