"""`newsletter schedule`: run the weekly digest on its schedule, list run times, run a due one."""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC
from typing import TYPE_CHECKING

import click
from rich.table import Table

from pipeline import glance
from pipeline.commands.base import (
    EXIT_EXPIRED,
    EXIT_OWED,
    EXIT_UNDECIDED,
    App,
    json_option,
    pass_app,
    print_json,
    stop_on_signals,
)
from pipeline.periods import Action, Outcome, next_due
from subscribers.clock import utcnow

# `schedule next` and a `run-due` with nothing to change (cron, every 15 minutes) read through
# glance.py and start without the ORM; the scheduler, the sender and the weekly job load only
# when there is something to do.
if TYPE_CHECKING:
    from pipeline.publish import Report


@click.group("schedule")
def group() -> None:
    """Send the weekly digest on its schedule, exactly once per week.

    The schedule is [schedule] in config.toml: weekday, time, timezone, grace_hours,
    expire_after_hours. Each week's issue has the key weekly-YYYY-Www; the database refuses
    a second one, so any number of schedulers can run.

    \b
    Example:
      newsletter schedule next -n 3
      newsletter schedule run-due --dry-run
    """


@group.command("run")
@pass_app
def run(app: App) -> None:
    """Run the scheduler in the foreground until SIGTERM or Ctrl-C.

    At start it catches up: a digest that is due and not sent yet goes out now if it is
    still within grace_hours. Then it sleeps until the next scheduled time. A stop signal
    lets a running send finish its work first. With [bounces] enabled it also reads the
    bounce mailbox every bounces.interval_minutes, and does not start a new issue while the
    last one's complaint rate is above bounces.complaint_pause_rate.

    \b
    Example:
      newsletter schedule run
      systemctl start newsletter-schedule    # see the README for the unit file
    """
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The scheduler's own chatter and the migration check would drown the digest's lines.
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipeline import schedule as scheduling  # noqa: PLC0415  (APScheduler and the whole pipeline)

    scheduling.run_forever(app.settings, app.engine)


@group.command("next")
@click.option("-n", "count", type=click.IntRange(1, 520), default=5, show_default=True,
              help="How many run times to list.")
@json_option
@pass_app
def next_runs(app: App, count: int, as_json: bool) -> None:
    """List the next times the digest is due, in the configured timezone and in UTC, and
    where the latest due week stands.

    \b
    Example:
      newsletter schedule next
      newsletter schedule next -n 10 --json
    """
    schedule = app.settings.schedule
    now = utcnow()
    # The periods' own arithmetic: tests/test_periods.py holds it equal to APScheduler's fire
    # times (DST changes included), and it needs no scheduler loaded to answer.
    rows = [{"key": p.key, "local": p.due_at, "utc": p.due_at.astimezone(UTC)}
            for p in next_due(schedule, now, count)]
    with app.engine.connect() as connection:
        latest = glance.quiet_week(app.settings, connection, now, dry_run=True)
    assert latest is not None  # a dry run always has its answer there
    if as_json:
        print_json({"timezone": schedule.timezone.key, "runs": rows,
                    "latest": {"key": latest.key, "due_at": latest.due_at,
                               "status": latest.status, "deliveries": latest.counts}})
        return
    table = Table(title=f"Next digests ({schedule.weekday} {schedule.time:%H:%M} "
                        f"{schedule.timezone.key})")
    table.add_column("Issue key")
    table.add_column(f"Local ({schedule.timezone.key})")
    table.add_column("UTC")
    for row in rows:
        table.add_row(str(row["key"]), f"{row['local']:%a %Y-%m-%d %H:%M %Z}",
                      f"{row['utc']:%a %Y-%m-%d %H:%M}")
    app.console.print(table)
    app.console.print(f"Latest due: {latest.key} ({latest.due_at:%a %Y-%m-%d %H:%M %Z}), "
                      f"{latest.status or 'no issue yet'}.", markup=False)
    if latest.action not in (Action.NOT_DUE, Action.DONE):
        app.console.print(f"`newsletter schedule run-due` now {latest.message}.", markup=False)


@group.command("run-due")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change and send nothing.")
@click.option("--force", is_flag=True,
              help="Send over SMTP even when the message fails a MUST check of `newsletter lint` (logged).")
@json_option
@pass_app
def run_due(app: App, dry_run: bool, force: bool, as_json: bool) -> None:
    """Send this week's digest if it is due and not done yet, then exit (for cron, CI timers).

    Exit status: 0 when the digest was sent or skipped or nothing was due; 3 when a period
    had to be recorded as expired (missed past grace_hours, or still sending after
    expire_after_hours); 4 when deliveries are still owed (server down, rate limit, a stop
    signal, rows still held by a sender): the next call resumes them; 5 when this run finished
    the issue but some deliveries are `unknown` (maybe delivered) and need a decision. With
    `schedule.enqueue = true` it composes the issue and hands it to `newsletter worker`
    processes (exit 0; they send it). Over SMTP a message that fails a MUST check of the email
    checklist is not sent: the reasons and fixes are printed, the issue stays unsent for the
    next call, and the exit status is 1. So is a week's draft that carries an essay held with
    `essays hold` (the error names the essays and the fixes).

    \b
    Example:
      newsletter schedule run-due --dry-run
      */15 * * * *  cd /srv/newsletter && newsletter schedule run-due
    """
    with app.engine.connect() as connection:
        outcome = glance.quiet_week(app.settings, connection, utcnow(), dry_run=dry_run)
    if outcome is None:  # something to compose, send, resume or expire
        outcome = _run_due(app, dry_run, force)
    if as_json:
        print_json({"dry_run": dry_run, **outcome.as_dict()})
    else:
        app.console.print(("[dry run] " if dry_run else "") + outcome.message, markup=False)
        app.console.print(
            f"Next digest due {outcome.next_due_at:%a %Y-%m-%d %H:%M %Z} "
            f"({outcome.next_due_at.astimezone(UTC):%H:%M} UTC)."
        )
    if dry_run:
        return
    if outcome.action in (Action.EXPIRE_MISSED, Action.EXPIRE_STUCK):
        sys.exit(EXIT_EXPIRED)
    if outcome.unfinished:
        sys.exit(EXIT_OWED)
    if outcome.undecided and outcome.action in (Action.COMPOSE, Action.RESUME):
        sys.exit(EXIT_UNDECIDED)


def _run_due(app: App, dry_run: bool, force: bool) -> Outcome:
    """The weekly job itself, with a progress bar on a terminal and a clean stop on signals."""
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from pipeline import weekly  # noqa: PLC0415  (the ORM, the renderer and the sender)

    stop = threading.Event()
    columns = (TextColumn("Sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # A bar on a terminal only: under cron the output is mail, and bars are noise there.
    with Progress(*columns, console=app.err, transient=True,
                  disable=dry_run or not app.err.is_terminal) as bar, \
            stop_on_signals(stop, app, "the next run resumes"):
        task = bar.add_task("", total=None)

        def progress(report: Report) -> None:
            bar.update(task, total=report.to_send, completed=report.handled)

        return weekly.run_due(app.settings, app.engine, utcnow(), dry_run=dry_run,
                              stop=stop, progress=progress, force=force)


commands = [group]
