"""The web app: the Flask factory, the security rules every page shares, and how to serve it.

Flask enters the project through this package: the preview pages (pipeline/web/preview.py, for
the operator) and the public pages (pipeline/web/public.py: archive, unsubscribe, confirm,
subscribe) are blueprints this factory registers; pipeline/web/state.py holds what they share.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

from flask import Flask, Response, abort, redirect, request, url_for
from flask.globals import request_ctx
from sqlalchemy.engine import Engine
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server as wsgi_server

from pipeline import db
from pipeline.config import BUILTIN_TEMPLATES, Settings, load_settings
from pipeline.confirmations import BackgroundMailer
from pipeline.web import preview, public
from pipeline.web.preview import preview_refusal
from pipeline.web.state import WebState, message
from pipeline.web_addresses import is_loopback
from subscribers.tokens import load_secret

# Every page: no scripts at all, styles from here (inline ones only for the email in the frame),
# images from https, forms only to here, never framed by another site.
CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' https: data:; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def create_app(
    settings: Settings, *, host: str | None = "127.0.0.1", engine: Engine | None = None
) -> Flask:
    """The WSGI app. `host` is the address the server binds (None: unknown, as under gunicorn)."""
    app = Flask(
        __name__,
        template_folder=str(BUILTIN_TEMPLATES / "web"),
        static_folder=str(BUILTIN_TEMPLATES / "web" / "static"),
    )
    secret = load_secret(settings.base_dir)
    # The session cookie (CSRF tokens only) gets a key of its own, derived from the token key.
    app.secret_key = hashlib.sha256(b"newsletter.web.session:" + secret.encode()).hexdigest()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web.base_url.startswith("https://"),
        MAX_CONTENT_LENGTH=64 * 1024,  # forms are tiny; refuse floods early
    )
    app.extensions["newsletter"] = WebState(
        settings=settings, engine=engine or db.connect(settings.database.url), secret=secret
    )
    app.extensions["newsletter.local"] = host is not None and is_loopback(host)
    app.register_blueprint(public.bp)
    app.register_blueprint(preview.bp)
    app.add_url_rule("/", "home", _home)
    app.before_request(_refuse_nul)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _error_page)
    app.context_processor(lambda: {"can_preview": preview_refusal() is None})
    return app


def wsgi_app(proxies: int = 0, mailer: bool = True) -> Flask:
    """For a WSGI server: settings from $NEWSLETTER_CONFIG or ./config.toml; preview needs the token.

    `proxies`: how many reverse proxies stand in front and set X-Forwarded-For/-Proto; their
    client address is then the one the sign-up rate limit counts (else every reader is the proxy).
    `mailer`: run a thread that sends the confirmation emails sign-ups queue (each WSGI worker
    process runs one; they share the queue safely). Off: `newsletter worker` sends them.
    """
    app = create_app(load_settings(os.environ.get("NEWSLETTER_CONFIG")), host=None)
    if mailer:
        web = app.extensions["newsletter"]
        BackgroundMailer(web.settings, web.engine, web.wake).start()
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    return app


def make_server(settings: Settings, host: str, port: int, engine: Engine | None = None) -> BaseWSGIServer:
    """A threaded HTTP server for `newsletter serve` (and the browser tests); port 0: any free one."""
    return wsgi_server(host, port, create_app(settings, host=host, engine=engine), threaded=True)


def mailer_wake(server: BaseWSGIServer) -> threading.Event:
    """What the server's sign-ups set to wake a confirmation mailer (see `newsletter serve`)."""
    assert isinstance(server.app, Flask)
    wake: threading.Event = server.app.extensions["newsletter"].wake
    return wake


def preview_open_on(settings: Settings, host: str) -> bool:
    """Whether preview pages can answer at all on a server bound to `host`."""
    return bool(settings.web.preview_token) or is_loopback(host)


def _home() -> Any:
    return redirect(url_for("preview.index" if preview_refusal() is None else "public.archive"))


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"  # unsubscribe URLs carry tokens
    response.headers["X-Frame-Options"] = "DENY"
    if request.blueprint == "preview" or request.path.startswith(("/u/", "/confirm/")):
        response.headers["Cache-Control"] = "no-store"
    return response


def _refuse_nul() -> None:
    """A NUL in the path, the query or a form is nobody's address, key or token, and PostgreSQL
    refuses it in text with a driver error (a 500): refused here, before any page looks it up."""
    values = [request.path, *request.args.keys(), *request.args.values()]
    if request.method == "POST":
        values += [*request.form.keys(), *request.form.values()]
    if any("\x00" in value for value in values):
        abort(400, "This address or form holds a character no link or form of this site has.")


def _error_page(error: HTTPException) -> Any:
    if getattr(request_ctx, "url_adapter", None) is None:
        # No URLs can be made for this request (werkzeug could not encode its Host header, say):
        # the page template links to others, so the answer is plain text.
        return Response(f"{error.code} {error.name}\n", error.code or 500, mimetype="text/plain")
    titles = {400: "This link or form is not valid", 403: "Not available here", 404: "Not found",
              410: "This link has expired", 429: "Too many requests"}
    custom = error.description != type(error).description  # ours, not werkzeug's boilerplate
    body = (error.description or "") if custom else (
        "There is nothing at this address." if error.code == 404 else error.description or "")
    return message(titles.get(error.code or 500, error.name), body, error.code or 500, "bad")


