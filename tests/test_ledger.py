"""The ledger on SQLite and PostgreSQL: freeze once, claim without overlap, record, reconcile."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline import db, ledger, ledger_reads
from pipeline.config import Settings, load_settings
from pipeline.db import session_scope
from pipeline.message import message_id_frame
from pipeline.models import Delivery, Issue
from subscribers import consent
from subscribers.model import utcnow
from tests.conftest import write_config


def make_issue(engine: Engine, settings: Settings, subscribers: int) -> int:
    with Session(engine) as session:
        for n in range(subscribers):
            consent.add(session, f"l{n}@example.org", f"L {n}")
        consent.add(session, "waiting@example.org", pending=True)
        issue = Issue(key="ledger-test", subject="s", status="sending", started_at=utcnow())
        session.add(issue)
        session.commit()
        return issue.id


def freeze(engine: Engine, settings: Settings, issue_id: int) -> int:
    with session_scope(engine) as session:
        issue = session.get(Issue, issue_id)
        return ledger.freeze_audience(session, issue, message_id_frame(settings), utcnow())


def test_freezing_twice_adds_nobody_twice(any_engine: Engine, any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 30)
    assert freeze(any_engine, any_settings, issue_id) == 30
    assert freeze(any_engine, any_settings, issue_id) == 0
    with Session(any_engine) as session:
        rows = ledger_reads.rows(session, issue_id)
    assert len(rows) == 30 and len({r.message_id for r in rows}) == 30
    assert "waiting@example.org" not in {r.email for r in rows}
    assert ledger_reads.counts(Session(any_engine), issue_id) == {
        "pending": 30, "sending": 0, "sent": 0, "failed": 0, "unknown": 0, "skipped": 0}


def test_a_frozen_row_copies_the_reader_and_gets_its_own_message_id(any_engine: Engine,
                                                                    any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 3)
    with session_scope(any_engine) as session:
        long_name, _ = consent.add(session, "long@example.org", "N" * 250)
        later = Issue(key="ledger-later", subject="s", status="sending", started_at=utcnow())
        session.add(later)
        session.flush()
        later_id, long_id = later.id, long_name.id
    freeze(any_engine, any_settings, issue_id)
    freeze(any_engine, any_settings, later_id)
    with Session(any_engine) as session:
        first, second = ledger_reads.rows(session, issue_id), ledger_reads.rows(session, later_id)
    domain = re.escape(any_settings.newsletter.sender_domain)
    assert all(re.fullmatch(rf"<[0-9a-f]+\.{r.subscriber_id}@{domain}>", r.message_id) for r in first + second)
    assert not {r.message_id for r in first} & {r.message_id for r in second}
    by_id = {r.subscriber_id: r for r in first}
    assert by_id[long_id].email == "long@example.org" and by_id[long_id].name == "N" * 200
    assert {r.email for r in first} == {"l0@example.org", "l1@example.org", "l2@example.org", "long@example.org"}


def test_concurrent_claimers_never_take_the_same_row(any_engine: Engine, any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 120)
    freeze(any_engine, any_settings, issue_id)
    taken: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        start.wait()
        while True:
            claimed, _ = ledger.claim(any_engine, issue_id, 7, 600, utcnow())
            if not claimed:
                return
            taken[n].extend(c.id for c in claimed)
            time.sleep(0.002)  # as if sending: the others get their turn

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for t in taken for i in t]
    assert len(every) == len(set(every)) == 120
    assert sum(1 for t in taken if t) >= 2  # they really ran side by side


def test_skip_locked_passes_rows_another_sender_holds(postgres_url: str, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, database_url=postgres_url))
    engine = db.connect(postgres_url)
    issue_id = make_issue(engine, settings, 10)
    freeze(engine, settings, issue_id)
    with Session(engine) as holder:  # another sender mid-claim: it holds the first three rows
        held = holder.exec(select(Delivery.id).where(Delivery.issue_id == issue_id)
                           .order_by(Delivery.id).limit(3).with_for_update()).all()
        claimed, _ = ledger.claim(engine, issue_id, 5, 600, utcnow())
        assert not set(held) & {c.id for c in claimed} and len(claimed) == 5
        holder.rollback()
    engine.dispose()


def test_record_reconcile_and_requeue(any_engine: Engine, any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 5)
    freeze(any_engine, any_settings, issue_id)
    now = utcnow()
    claimed, _ = ledger.claim(any_engine, issue_id, 5, 60, now)
    a, b, c, d, e = claimed
    ledger.record(any_engine, [
        ledger.Outcome(a, "sent", now, 250),
        ledger.Outcome(b, "retry", now, 451, "451 later"),
        ledger.Outcome(d, "released", now, None, "relay down"),
    ], deadline=now + timedelta(hours=1))
    # The first backoff is about a minute: past a deadline 30 s away, a retry becomes failed.
    ledger.record(any_engine, [ledger.Outcome(c, "retry", now, 451, "451 later")],
                  deadline=now + timedelta(seconds=30))
    with Session(any_engine) as session:
        rows = {r.id: r for r in ledger_reads.rows(session, issue_id)}
        assert rows[a.id].status == "sent" and rows[a.id].sent_at is not None and rows[a.id].attempts == 1
        assert rows[b.id].status == "pending" and rows[b.id].next_attempt_at > now
        assert rows[b.id].attempts == 1 and rows[b.id].smtp_code == 451
        assert rows[c.id].status == "failed" and rows[c.id].last_error.startswith("gave up after 1")
        assert rows[d.id].status == "pending" and rows[d.id].attempts == 0  # not burnt
        assert rows[e.id].status == "sending"
        assert ledger.reconcile(session, issue_id, now + timedelta(seconds=30)) == 0  # lease holds
        assert ledger.reconcile(session, issue_id, now + timedelta(seconds=61)) == 1
        session.commit()
        assert ledger_reads.rows(session, issue_id, "unknown")[0].id == e.id
        assert ledger.requeue(session, issue_id, ["unknown", "failed"], utcnow()) == 2
        session.commit()
        again = {r.id: r for r in ledger_reads.rows(session, issue_id)}
        assert again[e.id].status == "pending" and again[e.id].message_id == e.message_id


def test_retry_backoff_grows_with_jitter() -> None:
    now = utcnow()
    delays = [(ledger.retry_at(n, now) - now).total_seconds() for n in (1, 2, 3, 4, 10)]
    assert 45 <= delays[0] <= 75 and 90 <= delays[1] <= 150 and 180 <= delays[2] <= 300
    assert delays[4] <= ledger.LONGEST_RETRY * 1.25
    assert len({ledger.retry_at(1, now) for _ in range(20)}) > 1


def test_an_opt_out_after_the_freeze_is_skipped_at_claim(any_engine: Engine, any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 3)
    freeze(any_engine, any_settings, issue_id)
    with Session(any_engine) as session:
        consent.unsubscribe(session, "l1@example.org")
    claimed, skipped = ledger.claim(any_engine, issue_id, 10, 600, utcnow())
    assert skipped == 1 and sorted(c.email for c in claimed) == ["l0@example.org", "l2@example.org"]
    with Session(any_engine) as session:
        assert ledger_reads.rows(session, issue_id, "skipped")[0].email == "l1@example.org"


def test_sent_since_counts_sent_rows_in_the_window(any_engine: Engine, any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 4)
    freeze(any_engine, any_settings, issue_id)
    now = utcnow()
    claimed, _ = ledger.claim(any_engine, issue_id, 4, 600, now)
    ledger.record(any_engine, [ledger.Outcome(c, "sent", now - timedelta(minutes=n * 40)) for n, c in enumerate(claimed)], None)
    with Session(any_engine) as session:
        assert ledger_reads.sent_since(session, now - timedelta(hours=1)) == 2
        assert ledger_reads.sent_since(session, now - timedelta(days=1)) == 4


def test_a_batch_is_recorded_and_the_next_claimed_in_one_transaction(any_engine: Engine,
                                                                     any_settings: Settings) -> None:
    issue_id = make_issue(any_engine, any_settings, 6)
    freeze(any_engine, any_settings, issue_id)
    delivery = replace(any_settings.delivery, batch_size=3)
    first, _, _ = ledger.claim_within_rate(any_engine, issue_id, delivery, utcnow())
    transactions: list[object] = []
    count = transactions.append  # one object, so that it can be removed again
    event.listen(any_engine, "begin", count)
    try:
        done = [ledger.Outcome(c, "sent", utcnow(), 250) for c in first]
        second, _, _ = ledger.claim_within_rate(any_engine, issue_id, delivery, utcnow(), done, None)
    finally:
        event.remove(any_engine, "begin", count)
    assert len(transactions) == 1  # one write lock for both: the sender's batch costs one
    with Session(any_engine) as session:
        status = {r.id: r.status for r in ledger_reads.rows(session, issue_id)}
    assert [status[c.id] for c in first] == ["sent"] * 3
    assert [status[c.id] for c in second] == ["sending"] * 3
