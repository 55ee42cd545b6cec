"""`newsletter serve`: the preview pages, the public archive and the subscribe/unsubscribe pages."""

from __future__ import annotations

import socket

import click

from pipeline.commands.base import App, pass_app
from pipeline.confirmations import BackgroundMailer
from pipeline.web import mailer_wake, make_server, preview_open_on


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback turns preview pages off unless a preview token is set.")
@click.option("--port", default=8025, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@pass_app
def serve(app: App, host: str, port: int) -> None:
    """Serve the browser preview, the archive, and the unsubscribe, confirm and subscribe pages.

    Confirmation emails of sign-ups are queued and sent by a background thread of this server.
    Preview pages show drafts and subscriber addresses: they answer only on this machine, or,
    when $NEWSLETTER_PREVIEW_TOKEN is set, to whoever presents that token once with ?token=...
    For a public deployment run the app under a WSGI server instead (see the README, "web").

    \b
    Example:
      newsletter serve                          # http://127.0.0.1:8025/preview/
      newsletter serve --port 9000
      NEWSLETTER_PREVIEW_TOKEN=$(openssl rand -hex 16) newsletter serve --host 0.0.0.0
    """
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as exc:  # werkzeug would print only "Name or service not known"
        raise click.ClickException(f"--host {host}: no such host name ({exc.strerror})") from None
    # A port in use or not allowed: werkzeug says so on stderr and exits with status 1.
    server = make_server(app.settings, host, port, engine=app.engine)
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{server.server_port}"
    if preview_open_on(app.settings, host):
        how = " (with ?token=...)" if app.settings.web.preview_token else ""
        app.console.print(f"Preview:    {base}/preview/{how}")
    else:
        app.err.print(f"[yellow]Preview pages are off: {host} is not loopback and no preview token is set.[/]")
    app.console.print(f"Archive:    {base}/archive/")
    app.console.print(f"Subscribe:  {base}/subscribe")
    if base != app.settings.web.base_url:
        app.err.print(f"[dim]Links in emails point to web.base_url = {app.settings.web.base_url}[/]")
    app.console.print("Press Ctrl-C to stop.")
    # Sign-ups only queue their confirmation emails; this thread sends them.
    mailer = BackgroundMailer(app.settings, app.engine, mailer_wake(server)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        app.console.print("Stopped.")
    finally:
        mailer.stop()
        server.server_close()


commands = [serve]
