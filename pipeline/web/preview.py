"""The preview pages: drafts and the next digest as each subscriber would get them, for the operator only.

Preview pages show drafts and subscriber addresses, so they answer only to a browser on this
machine while the server is bound to loopback, or, when `web.preview_token` is configured, only
to whoever presents that token.
"""

from __future__ import annotations

import hashlib
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from sqlmodel import Session

from pipeline import db, leases, ledger_reads
from pipeline.config import BUILTIN_DOCS
from pipeline.copies import personal_copy
from pipeline.errors import NotFound
from pipeline.issues import compose, issue_by_id, list_issues, subject_for, unsent_essays
from pipeline.lint import failures, lint_message, warnings
from pipeline.lint_help import fix_for
from pipeline.models import DeliveryStatus, Issue, IssueStatus
from pipeline.readers.markdown_essay import markdown_html
from pipeline.web.state import same_secret, state
from pipeline.web_addresses import is_loopback
from subscribers import consent, queries
from subscribers.model import utcnow

TOKEN_COOKIE = "newsletter_preview"
TABS = ("html", "text", "headers", "lint", "status")
LIST_HEADERS = ("list-unsubscribe", "list-unsubscribe-post", "list-id")
PROBLEM_ROWS = 200  # failed/unknown rows shown per status; the CLI lists them all
# The largest id a PostgreSQL integer column holds: a larger one in a URL is a 404, not an
# overflow error from the database (SQLite's limit, 2**63 - 1, is higher still).
ID = "int(max=2147483647)"


bp = Blueprint("preview", __name__, url_prefix="/preview")


def _token_digest(token: str) -> str:
    # The cookie holds a digest, so a copied cookie jar does not reveal the configured token.
    return hashlib.sha256(b"newsletter.preview:" + token.encode()).hexdigest()


def preview_refusal() -> str | None:
    """None when this request may see preview pages, else the reason it may not."""
    refused = host_refusal()
    if refused:
        return refused
    token = state().settings.web.preview_token
    if token:
        given = request.headers.get("X-Preview-Token", "")
        if given and same_secret(given, token):
            return None
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        if cookie and same_secret(cookie, _token_digest(token)):
            return None
        return "Preview pages need the preview token: open this page once with ?token=..."
    if not current_local():
        return ("This server is not bound to localhost and no preview token is set: preview "
                "pages are off. Set the variable named by web.preview_token_env.")
    forwarded = request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded")
    if forwarded or not is_loopback(request.remote_addr or ""):
        return "Preview pages answer only on this machine (or with the preview token)."
    return None


def current_local() -> bool:
    return bool(current_app.extensions["newsletter.local"])


def host_refusal() -> str | None:
    """None when the request's Host names this server: a loopback name, or web.base_url's host.

    A page elsewhere could otherwise point its own host name at 127.0.0.1 (DNS rebinding) and
    read the preview pages with the operator's browser: the browser sends that host name.
    """
    asked = _host_name(request.host)
    public = _host_name(urlsplit(state().settings.web.base_url).netloc)
    if asked is not None and (is_loopback(asked) or asked == public):
        return None
    return "This server answers preview pages only under its own name (localhost or web.base_url)."


def _host_name(host: str) -> str | None:
    """The lower-case name or address of a Host header value, without port or brackets."""
    try:
        return urlsplit("//" + host).hostname
    except ValueError:  # a malformed port or bracket
        return None


@bp.before_request
def _guard() -> Any:
    refused = host_refusal()
    if refused:
        abort(400, refused)
    token = state().settings.web.preview_token
    offered = request.args.get("token")
    if token and offered is not None:
        if not same_secret(offered, token):
            abort(403, "That preview token is not right.")
        # Trade the token in the URL for a cookie, and drop it from the address bar and history.
        rest = {k: v for k, v in request.args.items() if k != "token"}
        response = redirect(request.path + ("?" + urlencode(rest) if rest else ""))
        response.set_cookie(TOKEN_COOKIE, _token_digest(token), httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/preview")
        return response
    reason = preview_refusal()
    if reason:
        abort(403, reason)
    return None


@bp.get("/")
def index() -> str:
    st = state()
    with db.scratch_session(st.engine) as s:
        issues = list_issues(s)
        upcoming = unsent_essays(s, st.settings)
        subject = subject_for(st.settings, upcoming) if upcoming else ""
        counts = {i.id: _nonzero(ledger_reads.counts(s, i.id)) for i in issues if i.id is not None}
    return render_template("preview_index.html", issues=issues, counts=counts, upcoming=upcoming,
                           upcoming_subject=subject, section="preview")


@bp.get("/checklist")
def checklist() -> str:
    """docs/email-checklist.md, so each code in the Checks tab links to its explanation."""
    text = (BUILTIN_DOCS / "email-checklist.md").read_text(encoding="utf-8")
    return render_template("checklist.html", body=markdown_html(text), section="preview")


@bp.get(f"/issue/<{ID}:issue_id>")
def issue_page(issue_id: int) -> str:
    return _issue_page(issue_id)


@bp.get("/next")
def next_issue() -> str:
    return _issue_page(None)


@bp.get(f"/issue/<{ID}:issue_id>.eml")
def issue_eml(issue_id: int) -> Response:
    return _eml(issue_id)


@bp.get("/next.eml")
def next_eml() -> Response:
    return _eml(None)


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def _target(s: Session, issue_id: int | None) -> Issue:
    """The issue asked for, or the next digest composed in this (never committed) session."""
    if issue_id is None:
        try:
            return compose(s, state().settings)
        except NotFound as exc:
            abort(404, str(exc))
    issue = issue_by_id(s, issue_id)
    if issue is None:
        abort(404)
    return issue


def _message(s: Session, issue: Issue, as_email: str) -> tuple[str, bytes]:
    """Who the copy is for, and its bytes, made by the very function that sends."""
    st = state()
    subscriber = None
    if as_email:
        subscriber = consent.find(s, as_email)  # never an erased one
        if subscriber is None:
            abort(404, f"No subscriber with the address {as_email}.")
    raw = personal_copy(s, st.settings, st.secret, issue, subscriber)
    label = f"{subscriber.name} <{subscriber.email}>" if subscriber and subscriber.name else (
        subscriber.email if subscriber else "a sample subscriber")
    return label, raw


def message_view(raw: bytes) -> dict[str, Any]:
    """What the tabs show: decoded parts, every header (list headers marked), sizes."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    html = html_part.get_content() if html_part is not None else ""
    headers = [(k, str(v), k.lower() in LIST_HEADERS) for k, v in msg.items()]
    return {
        "subject": str(msg["Subject"] or "(no subject)"),
        "headers": headers,
        "html": html,
        "text": text_part.get_content() if text_part is not None else "",
        "size": len(raw),
        "size_kb": f"{len(raw) / 1024:.1f}",
        "html_size": len(html.encode()),
        "html_kb": f"{len(html.encode()) / 1024:.1f}",
    }


def _problems(s: Session, issue_id: int) -> list[Any]:
    """The failed rows, then the unknown ones, at most PROBLEM_ROWS in all."""
    found = [row for status in (DeliveryStatus.FAILED.value, DeliveryStatus.UNKNOWN.value)
             for row in ledger_reads.rows(s, issue_id, status, limit=PROBLEM_ROWS)]
    return found[:PROBLEM_ROWS]


def _issue_page(issue_id: int | None) -> str:
    st = state()
    tab = request.args.get("tab", "html")
    tab = tab if tab in TABS else "html"
    width = "mobile" if request.args.get("width") == "mobile" else "desktop"
    as_email = request.args.get("as", "").strip()
    if tab == "status" and issue_id:
        # As `sends status` does: rows a stopped sender left in flight become `unknown` first.
        with db.session_scope(st.engine) as s:
            leases.reconcile(s, issue_id, utcnow())
    with db.scratch_session(st.engine) as s:  # a composed next digest is thrown away
        issue = _target(s, issue_id)
        label, raw = _message(s, issue, as_email)
        view = message_view(raw)
        n = st.settings.newsletter
        found = lint_message(raw, n.sender_domain, n.postal_address) if tab == "lint" else []
        findings = [{"code": f.code, "level": f.level, "message": f.message, "fix": fix_for(f.code)}
                    for f in found]
        counts = _nonzero(ledger_reads.counts(s, issue_id)) if issue_id else {}
        problems = _problems(s, issue_id) if tab == "status" and issue_id else []
        in_flight = (leases.describe_in_flight(leases.in_flight(s, issue_id))
                     if tab == "status" and issue_id else "")
        emails = queries.active_emails(s, 500)
        shown = {"id": issue_id, "key": issue.key if issue_id else "next", "status": issue.status}
    tabs = [("html", "HTML"), ("text", "Text"), ("headers", "Headers"), ("lint", "Checks")]
    if issue_id and shown["status"] in (IssueStatus.SENDING.value, IssueStatus.SENT.value):
        tabs.append(("status", "Send status"))
    args = {"as": as_email, "tab": tab, "width": width}

    def link(**change: str) -> str:
        merged = {k: v for k, v in {**args, **change}.items() if v}
        return "?" + urlencode(merged)

    eml = (url_for("preview.issue_eml", issue_id=issue_id) if issue_id else url_for("preview.next_eml"))
    return render_template(
        "preview_issue.html", issue=shown, view=view, tab=tab, tabs=tabs,
        width=width, as_email=as_email, recipient_label=label, findings=findings, link=link,
        failed=len(failures(found)), warned=len(warnings(found)),
        status_counts=counts, problem_rows=problems, in_flight=in_flight,
        problem_more=counts.get("failed", 0) + counts.get("unknown", 0) - len(problems),
        subscriber_emails=emails, eml_url=eml + (("?" + urlencode({"as": as_email})) if as_email else ""),
        section="preview",
    )


def _eml(issue_id: int | None) -> Response:
    with db.scratch_session(state().engine) as s:
        issue = _target(s, issue_id)
        _, raw = _message(s, issue, request.args.get("as", "").strip())
        name = re.sub(r"[^A-Za-z0-9._-]", "_", issue.key) if issue_id else "next-digest"
    response = Response(raw, mimetype="message/rfc822")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}.eml"'
    return response
