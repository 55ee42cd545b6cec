"""The scheduled job with a controllable clock: empty weeks, late starts, expiry, the scheduler."""

from __future__ import annotations

import json
import socket
import threading
import time as wallclock
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline import db
from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.issues import compose
from pipeline.models import Delivery, Essay, Issue
from pipeline.periods import Action, Outcome, due_period
from pipeline.schedule import FOLLOW_UP_MINUTES, JOB_ID, make_scheduler
from pipeline.weekly import run_due
from subscribers.model import Subscriber, SubscriberStatus
from tests.conftest import PUBLIC_WEB, SMTPServer, write_config

UTC = UTC
# Monday 23 November 2026, 07:00 Berlin (CET) = 06:00 UTC: week 48's digest is due.
DUE = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
KEY = "weekly-2026-W48"


# When the test essays were imported: well before any week these tests make due (a week due
# before the first import had nothing to send, and is not missed).
IMPORTED = DUE - timedelta(days=60)


def add_essays(engine: Engine, count: int, prefix: str = "essay") -> list[int]:
    """Essays written here for the tests (not the corpus), none sent yet, imported at IMPORTED."""
    with db.session_scope(engine) as session:
        essays = [
            Essay(
                slug=f"{prefix}-{i}",
                title=f"On keeping a garden, part {i}",
                dek=f"What the beans taught me in week {i}.",
                body=[{"kind": "p", "text": f"The beans came up in row {i}. " * 5}],
                url=f"https://essays.example.org/{prefix}-{i}",
                content_hash=f"{i:064d}",
                imported_at=IMPORTED,
            )
            for i in range(1, count + 1)
        ]
        session.add_all(essays)
        session.flush()
        return [e.id for e in essays if e.id is not None]


def add_subscribers(engine: Engine, count: int) -> list[str]:
    """Active subscribers, created directly; returns their addresses."""
    emails = [f"reader{i}@example.net" for i in range(count)]
    with db.session_scope(engine) as session:
        session.add_all(
            Subscriber(email=e, email_normalized=e, name=f"Reader {i}",
                       status=SubscriberStatus.ACTIVE.value, source="test")
            for i, e in enumerate(emails)
        )
    return emails


def issues(engine: Engine) -> list[Issue]:
    with Session(engine) as session:
        return list(session.exec(select(Issue).order_by(Issue.id)).all())


def unsent(engine: Engine) -> int:
    with Session(engine) as session:
        return len(session.exec(select(Essay).where(col(Essay.sent_in_issue_id).is_(None))).all())


@pytest.fixture(params=["sqlite", "postgresql"])
def smtp_settings(request: pytest.FixtureRequest, tmp_path: Path, smtp_server: SMTPServer) -> Settings:
    """Settings on SQLite and again on PostgreSQL: the scheduler's guarantees hold on both."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return load_settings(write_config(
        tmp_path,
        database_url=url,
        schedule={"weekday": "monday", "time": "07:00", "timezone": "Europe/Berlin",
                  "grace_hours": 12, "expire_after_hours": 72},
        delivery={"transport": "smtp", "smtp_tls": "none", "smtp_host": smtp_server.host,
                  "smtp_port": smtp_server.port},
        web=PUBLIC_WEB,
    ))


@pytest.fixture
def smtp_engine(smtp_settings: Settings) -> Engine:
    engine = db.connect(smtp_settings.database.url)
    yield engine
    engine.dispose()


def test_an_empty_week_is_recorded_as_skipped_and_sends_nothing(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    add_subscribers(smtp_engine, 3)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(minutes=1))
    assert (outcome.key, outcome.status) == (KEY, "skipped")
    assert "no unsent essays" in outcome.message
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "skipped")]
    # The week is done: later runs in the same week do nothing, even once essays arrive.
    add_essays(smtp_engine, 2)
    again = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=2))
    assert again.action is Action.DONE
    assert len(issues(smtp_engine)) == 1
    assert smtp_server.received == []
    with Session(smtp_engine) as session:
        assert session.exec(select(Delivery)).all() == []


def test_before_the_scheduled_time_nothing_is_due(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    add_essays(smtp_engine, 2)
    add_subscribers(smtp_engine, 2)
    # Last week's issue went out; this week's is due in a minute.
    with db.session_scope(smtp_engine) as session:
        session.add(Issue(key="weekly-2026-W47", status="sent"))
    outcome = run_due(smtp_settings, smtp_engine, DUE - timedelta(minutes=1))
    assert outcome.action is Action.NOT_DUE
    assert outcome.next_due_at.astimezone(UTC) == DUE
    assert [i.key for i in issues(smtp_engine)] == ["weekly-2026-W47"]
    assert smtp_server.received == []


def test_a_late_start_past_the_grace_time_is_expired_not_sent(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    add_essays(smtp_engine, 2)
    add_subscribers(smtp_engine, 2)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=12, minutes=1))
    assert outcome.action is Action.EXPIRE_MISSED
    assert "grace time" in outcome.message and "expired" in outcome.message
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "expired")]
    assert smtp_server.received == []
    assert unsent(smtp_engine) == 2  # the essays wait for next week's digest
    assert run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=13)).action is Action.DONE


def test_a_draft_left_by_a_crash_is_not_started_after_the_grace_time(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    add_essays(smtp_engine, 2)
    add_subscribers(smtp_engine, 2)
    with db.session_scope(smtp_engine) as session:  # composed at 07:00, then the machine died
        compose(session, smtp_settings, key=KEY)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=13))
    assert outcome.action is Action.EXPIRE_MISSED
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "expired")]
    assert smtp_server.received == [] and unsent(smtp_engine) == 2


def test_an_issue_stuck_sending_past_its_expiry_is_expired_and_reported(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    with db.session_scope(smtp_engine) as session:
        issue = Issue(key=KEY, subject="Stuck", status="sending", started_at=DUE)
        session.add(issue)
        session.flush()
        for i, status in enumerate(["sent", "sent", "pending", "pending", "unknown"]):
            session.add(Delivery(issue_id=issue.id, email=f"r{i}@example.net", status=status,
                                 message_id=f"<m{i}@example.org>"))
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=72))
    assert outcome.action is Action.EXPIRE_STUCK
    assert outcome.status == "expired"
    assert outcome.counts == {"sent": 2, "pending": 2, "unknown": 1}
    assert "2 sent, 3 never will be" in outcome.message
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "expired")]
    assert smtp_server.received == []


def test_an_older_weeks_unfinished_issue_is_expired_when_the_job_next_runs(
    smtp_settings: Settings, smtp_engine: Engine
) -> None:
    with db.session_scope(smtp_engine) as session:
        session.add(Issue(key="weekly-2026-W46", status="sending"))
        session.add(Issue(key="weekly-2026-W47", status="draft"))
        session.add(Issue(key="manual-abc", status="sending"))  # by hand: not the scheduler's
    run_due(smtp_settings, smtp_engine, DUE + timedelta(minutes=5))
    statuses = {i.key: i.status for i in issues(smtp_engine)}
    assert statuses["weekly-2026-W46"] == statuses["weekly-2026-W47"] == "expired"
    assert statuses["manual-abc"] == "sending"
    assert statuses[KEY] == "skipped"


def test_a_dry_run_changes_nothing(smtp_settings: Settings, smtp_engine: Engine) -> None:
    add_essays(smtp_engine, 1)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=1), dry_run=True)
    assert outcome.action is Action.COMPOSE
    assert outcome.message.startswith(f"would compose and send {KEY}")
    late = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=20), dry_run=True)
    assert late.action is Action.EXPIRE_MISSED
    assert issues(smtp_engine) == []


def test_a_late_start_inside_the_grace_time_sends_once(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    essay_ids = add_essays(smtp_engine, 2)
    emails = add_subscribers(smtp_engine, 3)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=11, minutes=59))
    assert outcome.action is Action.COMPOSE
    assert (outcome.key, outcome.status) == (KEY, "sent")
    assert outcome.counts == {"sent": 3}
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(emails)
    assert all("On keeping a garden" in m.message["Subject"] for m in smtp_server.received)
    with Session(smtp_engine) as session:
        issue = session.exec(select(Issue).where(Issue.key == KEY)).one()
        carried = session.exec(select(Essay).where(Essay.id.in_(essay_ids))).all()
        assert {e.sent_in_issue_id for e in carried} == {issue.id}
    # A second firing in the same week (another timer, a restart) sends nothing more.
    assert run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=12)).action is Action.DONE
    assert len(smtp_server.received) == 3 and len(issues(smtp_engine)) == 1


def test_the_scheduler_job_catches_up_and_is_configured_for_hours_of_grace(
    smtp_settings: Settings, smtp_engine: Engine
) -> None:
    scheduler = make_scheduler(smtp_settings, smtp_engine, clock=lambda: DUE + timedelta(hours=1))
    scheduler.get_job(JOB_ID).func()  # what `schedule run` does once at start
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "skipped")]
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        deadline = wallclock.monotonic() + 20
        while not scheduler.running and wallclock.monotonic() < deadline:
            wallclock.sleep(0.02)
        job = scheduler.get_job(JOB_ID)
        assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 12 * 3600)
        assert str(job.trigger) == "weekly on monday at 07:00 Europe/Berlin"
        next_run = job.next_run_time
        assert (next_run.strftime("%A %H:%M"), str(next_run.tzinfo)) == ("Monday 07:00",
                                                                        "Europe/Berlin")
    finally:
        scheduler.shutdown(wait=True)
        thread.join(10)
    assert not thread.is_alive()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SMTP_DOWN = {"transport": "smtp", "smtp_tls": "none", "smtp_host": "127.0.0.1",
             "smtp_port": closed_port(), "smtp_timeout": 2}


def test_an_unfinished_run_brings_the_next_run_forward(tmp_path: Path) -> None:
    # The SMTP server is down (nothing listens on the port): the send pauses, the issue stays
    # owed, and the scheduler comes back in minutes instead of next week.
    settings = load_settings(write_config(tmp_path, delivery=SMTP_DOWN, web=PUBLIC_WEB))
    engine = db.connect(settings.database.url)
    add_essays(engine, 1)
    add_subscribers(engine, 2)
    now = datetime.now(UTC)
    due_at = due_period(settings.schedule, now).due_at
    scheduler = make_scheduler(settings, engine, clock=lambda: due_at)
    scheduler.get_job(JOB_ID).func()
    [issue] = issues(engine)
    assert issue.status in ("draft", "sending")
    soon = scheduler.get_job(JOB_ID).next_run_time - datetime.now(UTC)
    assert timedelta(minutes=FOLLOW_UP_MINUTES - 1) < soon <= timedelta(minutes=FOLLOW_UP_MINUTES)
    engine.dispose()


def utc_schedule_due(ago: timedelta) -> dict[str, object]:
    """A [schedule] whose digest fell due `ago` before the real now (for CLI runs)."""
    moment = datetime.now(UTC) - ago
    return {"weekday": moment.strftime("%A").lower(), "time": moment.strftime("%H:%M"),
            "timezone": "UTC", "grace_hours": 12, "expire_after_hours": 72}


def test_cli_next_lists_local_and_utc_times(tmp_path: Path, run_cli) -> None:
    run_cli.config_file = write_config(
        tmp_path, schedule={"weekday": "sunday", "time": "07:00", "timezone": "Europe/Berlin"})
    result = run_cli("schedule", "next", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert len(runs) == 3
    for run in runs:
        local, utc = datetime.fromisoformat(run["local"]), datetime.fromisoformat(run["utc"])
        assert local == utc and local.strftime("%A %H:%M") == "Sunday 07:00"
        assert utc.utcoffset() == timedelta(0) and utc.hour in (5, 6)
        assert run["key"] == due_period(load_settings(run_cli.config_file).schedule, utc).key
    latest = json.loads(result.output)["latest"]
    assert latest["status"] is None  # a new database: nothing has been sent
    assert datetime.fromisoformat(latest["due_at"]) < datetime.fromisoformat(runs[0]["utc"])
    table = run_cli("schedule", "next", "-n", "2")
    assert table.exit_code == 0 and runs[0]["key"] in table.output and "UTC" in table.output
    assert f"Latest due: {latest['key']}" in table.output


def test_cli_run_due_exit_codes(tmp_path: Path, run_cli) -> None:
    run_cli.config_file = write_config(tmp_path, schedule=utc_schedule_due(timedelta(hours=13)))
    add_essays(db.connect(load_settings(run_cli.config_file).database.url), 1)
    dry = run_cli("schedule", "run-due", "--dry-run")
    assert dry.exit_code == 0 and "[dry run] would record" in dry.output
    expired = run_cli("schedule", "run-due", "--json")
    assert expired.exit_code == 3  # flagged once, for cron mail
    assert json.loads(expired.output)["status"] == "expired"
    again = run_cli("schedule", "run-due")
    assert again.exit_code == 0 and "already expired" in again.output


def test_a_new_newsletter_does_not_start_with_a_week_recorded_as_missed(tmp_path: Path, run_cli) -> None:
    # Set up on a Tuesday, past Monday's grace time: that week fell due before the first essay
    # was imported, so there was nothing to send. The first cron run said "expired", exit 3.
    run_cli.config_file = write_config(tmp_path, schedule=utc_schedule_due(timedelta(hours=13)))
    assert run_cli("essays", "import", str(PROJECT_ROOT / "examples" / "essays")).exit_code == 0
    for args in (("--dry-run",), ()):
        first = run_cli("schedule", "run-due", *args)
        assert first.exit_code == 0, first.output
        said = " ".join(first.output.split())
        assert "nothing missed" in said and "before the first essay was imported" in said
    assert json.loads(run_cli("issues", "list", "--json").output) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schedulers_racing_in_threads_make_one_issue_on_either_database(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_server: SMTPServer, backend: str
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = load_settings(write_config(tmp_path, database_url=url, delivery={
        "transport": "smtp", "smtp_tls": "none", "smtp_host": smtp_server.host,
        "smtp_port": smtp_server.port}, web=PUBLIC_WEB))
    engine = db.connect(settings.database.url)
    add_essays(engine, 2)
    emails = add_subscribers(engine, 12)
    now = due_period(settings.schedule, datetime.now(UTC)).due_at + timedelta(minutes=1)

    def race(moment: datetime) -> list[Outcome]:
        start = threading.Barrier(4)
        outcomes = []

        def scheduler() -> None:
            start.wait()
            outcomes.append(run_due(settings, engine, moment))

        threads = [threading.Thread(target=scheduler) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(outcomes) == 4
        return outcomes

    outcomes = race(now)
    assert len(issues(engine)) == 1 and issues(engine)[0].status == "sent"
    assert {o.issue_id for o in outcomes} == {issues(engine)[0].id}
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(emails)
    # A week later nothing is unsent: the racers record one skipped period between them.
    race(now + timedelta(days=7))
    assert [i.status for i in issues(engine)] == ["sent", "skipped"]
    assert len(smtp_server.received) == len(emails)
    engine.dispose()


def test_cli_run_due_with_the_mail_server_down_exits_4_and_resumes_later(
    tmp_path: Path, run_cli, smtp_server: SMTPServer
) -> None:
    schedule = utc_schedule_due(timedelta(hours=1))
    run_cli.config_file = write_config(tmp_path, schedule=schedule, delivery=SMTP_DOWN, web=PUBLIC_WEB)
    engine = db.connect(load_settings(run_cli.config_file).database.url)
    add_essays(engine, 1)
    emails = add_subscribers(engine, 3)
    down = run_cli("schedule", "run-due")
    assert down.exit_code == 4, down.output
    # Nothing went out: "started", not "sent" (which it said, with 0 delivered).
    assert "started: issue sending, 0 delivered, 3 still owed" in " ".join(down.output.split())
    # The server is back (the config now points at a live one): the same issue completes.
    run_cli.config_file = write_config(tmp_path, schedule=schedule,
                                       delivery={"transport": "smtp", "smtp_tls": "none",
                                                 "smtp_host": smtp_server.host,
                                                 "smtp_port": smtp_server.port}, web=PUBLIC_WEB)
    back = run_cli("schedule", "run-due")
    assert back.exit_code == 0, back.output
    assert "resumed and sent" in back.output
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(emails)
    assert [(i.status) for i in issues(engine)] == ["sent"]
    engine.dispose()


def test_a_database_error_at_the_scheduled_minute_brings_the_run_forward_not_a_week_on(
        tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The database failing as the job runs (a restart, a failover: here its connection is killed
    while it waits on the issue table) escaped the job as a raw SQLAlchemy error: APScheduler
    logged it and the next run was next week's, so this week's digest was lost."""
    from tests.test_db_faults import killed_when_it_waits

    settings = load_settings(write_config(tmp_path, database_url=postgres_url, web=PUBLIC_WEB))
    engine = db.connect(postgres_url)
    add_essays(engine, 1)
    add_subscribers(engine, 2)
    due_at = due_period(settings.schedule, datetime.now(UTC)).due_at
    scheduler = make_scheduler(settings, engine, clock=lambda: due_at)
    killed_when_it_waits(postgres_url, "issue")
    with caplog.at_level("ERROR", logger="newsletter.schedule"):
        scheduler.get_job(JOB_ID).func()  # raised the driver's error
    assert any("the digest run failed" in r.getMessage() and "the database failed" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    soon = scheduler.get_job(JOB_ID).next_run_time - datetime.now(UTC)
    assert timedelta(minutes=FOLLOW_UP_MINUTES - 1) < soon <= timedelta(minutes=FOLLOW_UP_MINUTES)
    engine.dispose()


def test_a_catch_up_that_runs_past_the_due_time_still_sends_that_week(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler starts a moment before the digest is due; its catch-up first sends the
    sign-ups' confirmations through a slow relay, and is past the due time when it asks what is
    due. It asked with the time it started at (not due yet), and the scheduler then reckoned its
    first wait from after the due time: next week's. That week's digest was never made."""
    from pipeline.schedule import catch_up

    settings = load_settings(write_config(tmp_path, web=PUBLIC_WEB))
    engine = db.connect(settings.database.url)
    add_essays(engine, 1)
    add_subscribers(engine, 2)
    due_at = due_period(settings.schedule, datetime.now(UTC)).due_at
    # The clock reads 2 s before the due time until the confirmations (a slow relay) are sent,
    # 4 s after it from then on.
    from pipeline import confirmations

    sent: list[bool] = []
    real_send_queued = confirmations.send_queued

    def slow_send_queued(*args: object, **kwargs: object) -> object:
        sent.append(True)
        return real_send_queued(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(confirmations, "send_queued", slow_send_queued)
    scheduler = make_scheduler(settings, engine, clock=lambda: due_at + timedelta(seconds=4 if sent else -2))
    catch_up(scheduler, due_at)
    assert [(i.key, i.status) for i in issues(engine)] == [(due_period(settings.schedule, due_at).key, "sent")]

    # Had it found nothing due, the first wait ends at the due time, not a week on.
    idle = make_scheduler(settings, engine, clock=lambda: due_at - timedelta(seconds=2))
    catch_up(idle, due_at + timedelta(days=7))
    assert idle.get_job(JOB_ID).next_run_time == due_at + timedelta(days=7)
    engine.dispose()


def test_the_week_s_run_sends_the_draft_prepared_by_hand(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    """An essayist composed the week's issue by hand and gave it a subject of their own; the
    scheduler composed its own issue of the same essays beside it and sent that, so their words
    never went out and the draft was left with nobody to go to. The newest draft is the week's."""
    from pipeline.editorial import edit

    add_essays(smtp_engine, 2)
    emails = add_subscribers(smtp_engine, 2)
    with Session(smtp_engine, expire_on_commit=False) as session:
        draft = compose(session, smtp_settings)
        edit(session, smtp_settings, draft.key, subject="This week: two gardens")
        session.commit()
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(minutes=1))
    assert (outcome.key, outcome.status) == (KEY, "sent")
    assert [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "sent")]
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(emails)
    assert {m.message["Subject"] for m in smtp_server.received} == {"This week: two gardens"}


def test_the_week_s_draft_is_not_sent_while_it_carries_a_held_essay(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The week's issue was composed at 07:00 and not sent (the send check refused it, say);
    then the essayist held one of its essays. The next run resumed the draft and mailed the held
    essay. It is refused and logged, the scheduler comes back, and once the essay is released
    the draft goes out."""
    from pipeline.errors import Refused
    from pipeline.essays import set_held

    add_essays(smtp_engine, 2)
    emails = add_subscribers(smtp_engine, 2)
    with db.session_scope(smtp_engine) as session:
        compose(session, smtp_settings, key=KEY)
        set_held(session, "essay-1", True)
    with pytest.raises(Refused) as refused:
        run_due(smtp_settings, smtp_engine, DUE + timedelta(minutes=30))
    said = " ".join(str(refused.value).split())
    assert f"{KEY} was not sent: it carries essay-1, held" in said
    assert f"`newsletter issues edit {KEY} --remove-essay essay-1`" in said
    assert "`newsletter essays release essay-1`" in said
    assert smtp_server.received == [] and [(i.key, i.status) for i in issues(smtp_engine)] == [(KEY, "draft")]

    scheduler = make_scheduler(smtp_settings, smtp_engine, clock=lambda: DUE + timedelta(minutes=40))
    with caplog.at_level("ERROR", logger="newsletter.schedule"):
        scheduler.get_job(JOB_ID).func()  # what `schedule run` does once at start
    assert any("essay-1, held" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    soon = scheduler.get_job(JOB_ID).next_run_time - datetime.now(UTC)
    assert soon <= timedelta(minutes=FOLLOW_UP_MINUTES)  # the essayist's fix is picked up then
    assert smtp_server.received == []

    with db.session_scope(smtp_engine) as session:
        set_held(session, "essay-1", False)
    outcome = run_due(smtp_settings, smtp_engine, DUE + timedelta(hours=1))
    assert (outcome.key, outcome.status) == (KEY, "sent")
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(emails)


def test_run_due_exits_1_on_a_week_s_draft_carrying_a_held_essay(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from tests.test_essays import write_essays

    run_cli.config_file = write_config(tmp_path, schedule=utc_schedule_due(timedelta(hours=1)))
    settings = load_settings(run_cli.config_file)
    key = due_period(settings.schedule, datetime.now(UTC)).key
    assert run_cli("essays", "import", str(write_essays(tmp_path / "e", "rivers", "bread"))).exit_code == 0
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    assert run_cli("issues", "new", "--key", key).exit_code == 0
    held = run_cli("essays", "hold", "rivers")
    assert (f"the draft {key} carries it: the scheduler and `send --latest` refuse that draft while it is "
            f"held (`newsletter send {key}` sends it as it is)") in " ".join(held.output.split())
    refused = run_cli("schedule", "run-due")
    assert refused.exit_code == 1, refused.output
    assert f"{key} was not sent: it carries rivers, held" in " ".join(refused.output.split())
    assert json.loads(run_cli("issues", "show", key, "--json").output)["status"] == "draft"
    assert run_cli("issues", "edit", key, "--remove-essay", "rivers").exit_code == 0
    sent = run_cli("schedule", "run-due")
    assert sent.exit_code == 0, sent.output
    shown = json.loads(run_cli("issues", "show", key, "--json").output)
    assert shown["status"] == "sent" and [e["slug"] for e in shown["essays"]] == ["bread"]


def test_a_draft_carrying_an_essay_another_issue_is_sending_is_not_adopted(
    smtp_settings: Settings, smtp_engine: Engine, smtp_server: SMTPServer
) -> None:
    """An essay still going out in one issue must not go out in another meanwhile: the readers
    that issue has not reached yet would get it twice. Such a draft stays a draft."""
    from pipeline.issues import issue_essays

    add_essays(smtp_engine, 2)
    add_subscribers(smtp_engine, 2)
    with Session(smtp_engine, expire_on_commit=False) as session:
        sending = compose(session, smtp_settings, key="2026-11-20")
        sending.status = "sending"
        session.add(sending)
        session.commit()
        slugs = [e.slug for e in issue_essays(session, sending)]
        draft = compose(session, smtp_settings, slugs=slugs[:1], resend=True, key="2026-11-21")
        session.commit()
    run_due(smtp_settings, smtp_engine, DUE + timedelta(minutes=1))
    with Session(smtp_engine) as session:
        assert session.get(Issue, draft.id).key == "2026-11-21"  # type: ignore[union-attr]
