"""`newsletter worker`: a long-running sender that delivers the issues handed to the workers."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

import click

from pipeline.commands.base import EXIT_ERROR, EXIT_UNDECIDED, App, pass_app, stop_on_signals
from pipeline.worker import IDLE_SECONDS, WorkerStats, run_worker


@click.command("worker")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64),
              help="SMTP connections (one thread each) in this worker  [default: delivery.connections]")
@click.option("--once", is_flag=True,
              help="Deliver what is due now, then exit (exit status 1 when the relay or the checklist "
                   "refused, 5 when an issue it finished has unknown deliveries).")
@click.option("--idle", "idle_seconds", type=click.FloatRange(0.1, 3600), default=IDLE_SECONDS,
              show_default=True, help="Seconds between looks for work while there is none.")
@click.option("--force", is_flag=True,
              help="Send over SMTP even when an issue's message fails a MUST check of `newsletter lint` (logged).")
@pass_app
def worker(app: App, concurrency: int | None, once: bool, idle_seconds: float, force: bool) -> None:
    """Deliver every issue in `sending` status, side by side with any number of other workers.

    Run one or more on any hosts that reach the database (PostgreSQL for several hosts) and
    the SMTP relay. `newsletter send ISSUE --enqueue`, or the scheduler with
    `schedule.enqueue = true`, hands an issue to the workers; `newsletter sends status ISSUE`
    shows its progress from any host. SIGTERM or Ctrl-C finishes and records the batch in
    flight, then exits; a second one aborts at once. A worker that dies leaves at most one
    batch, which becomes `unknown` when its lease (delivery.lease_seconds) runs out. Over
    SMTP an issue whose message fails a MUST check of the email checklist is not sent (the
    reasons are logged) unless --force.
    With [bounces] enabled it also reads the bounce mailbox every bounces.interval_minutes.

    \b
    Example:
      newsletter worker
      newsletter worker --concurrency 4
      newsletter worker --once              # deliver what is due now, then exit
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings, engine = app.settings, app.engine
    d = settings.delivery
    relay = f"{d.smtp_host}:{d.smtp_port}" if d.transport == "smtp" else f"the outbox {d.outbox_dir}"
    logging.getLogger("newsletter.worker").info(
        "worker %s:%d started: database %s, sending through %s, %d connection(s), batches of %d, "
        "lease %d s", socket.gethostname(), os.getpid(), engine.url.render_as_string(hide_password=True),
        relay, concurrency or d.connections, d.batch_size, d.lease_seconds)
    stop, stats = threading.Event(), WorkerStats()
    try:
        with stop_on_signals(stop, app):
            run_worker(settings, engine, concurrency=concurrency, once=once, stop=stop,
                       idle_seconds=idle_seconds, force=force, stats=stats)
    finally:  # a run the database ended (--once) sent things too: said before its error
        _summary(app, stats)
    if once and stats.paused:
        app.err.print(f"Paused: {stats.paused}", markup=False)
        raise SystemExit(EXIT_ERROR)
    if once and stats.errors:  # an issue refused or broken: nothing of it went out
        raise SystemExit(EXIT_ERROR)
    if once and stats.undecided:
        raise SystemExit(EXIT_UNDECIDED)


def _summary(app: App, stats: WorkerStats) -> None:
    """What this worker did, however it ended."""
    finished = f"; finished {', '.join(stats.finished)}" if stats.finished else ""
    app.console.print(f"Worker stopped: {stats.sent} sent, {stats.retrying} to retry, "
                      f"{stats.failed} failed, " + (f"{stats.unknown} unknown, " if stats.unknown else "")
                      + f"{stats.skipped} skipped{finished}.", markup=False, soft_wrap=True)
    for key, count in stats.undecided.items():
        app.err.print(f"{key} is finished, but {count} deliveries are unknown (maybe delivered): "
                      f"see `newsletter sends status {key}`.", markup=False)


commands = [worker]
