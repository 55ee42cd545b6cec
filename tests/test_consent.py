"""Consent rules, on SQLite and PostgreSQL: no path that writes a subscriber can undo an opt-out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.models import Delivery, Issue
from subscribers import consent
from subscribers.addresses import suppression_hash
from subscribers.errors import BadToken, ConsentError, ExpiredToken, InvalidEmail, UnknownSubscriber
from subscribers.importer import import_csv
from subscribers.model import Subscriber, SubscriberStatus, Suppression
from subscribers.tokens import CONFIRM, UNSUBSCRIBE, make_token

SECRET = "consent-test-secret"
OPT_OUTS = ["unsubscribe", "bounce", "complain", "remove"]


@pytest.fixture
def db(any_engine: Engine) -> Iterator[Session]:
    with Session(any_engine, expire_on_commit=False) as session:
        yield session


def opt_out(session: Session, how: str, email: str) -> None:
    """Take `email` off the list the way `how` says."""
    subscriber = consent.find(session, email)
    assert subscriber is not None and subscriber.id is not None
    if how == "unsubscribe":
        assert consent.unsubscribe_by_token(session, SECRET, make_token(SECRET, UNSUBSCRIBE, subscriber.id))
    elif how == "bounce":
        assert consent.mark_bounced(session, subscriber.id)
    elif how == "complain":
        assert consent.mark_complained(session, subscriber.id)
    else:
        consent.remove(session, email)


def status_of(session: Session, email: str) -> str | None:
    session.expire_all()
    subscriber = consent.find(session, email)
    return subscriber.status if subscriber else None


def test_add_makes_an_active_subscriber_and_is_idempotent(db: Session) -> None:
    subscriber, outcome = consent.add(db, "Ann@Example.org", name="Ann")
    assert (outcome, subscriber.status, subscriber.email) == ("added", "active", "Ann@example.org")
    assert subscriber.confirmed_at is not None
    assert consent.add(db, "ann@EXAMPLE.org", name="Ann")[1] == "unchanged"
    assert consent.add(db, "ann@example.org", name="Ann Lee")[1] == "updated"
    assert status_of(db, "ANN@example.org") == "active"
    assert db.exec(select(Subscriber)).all()[0].name == "Ann Lee"


def test_add_pending_then_add_again_activates(db: Session) -> None:
    assert consent.add(db, "p@example.org", pending=True)[0].status == "pending"
    assert consent.add(db, "p@example.org")[1] == "updated"
    assert status_of(db, "p@example.org") == "active"


def test_add_refuses_an_invalid_address(db: Session) -> None:
    with pytest.raises(InvalidEmail):
        consent.add(db, "not an address")
    assert db.exec(select(Subscriber)).all() == []


@pytest.mark.parametrize("how", OPT_OUTS)
def test_add_never_brings_back_an_opted_out_address(db: Session, how: str) -> None:
    consent.add(db, "gone@example.org")
    opt_out(db, how, "gone@example.org")
    before = status_of(db, "gone@example.org")
    for spelling in ("gone@example.org", "GONE@Example.ORG"):
        with pytest.raises(ConsentError):
            consent.add(db, spelling)
        with pytest.raises(ConsentError):
            consent.add(db, spelling, pending=True)
    assert status_of(db, "gone@example.org") == before
    assert consent.is_suppressed(db, "Gone@example.org")
    assert list(consent.active_subscribers(db)) == []


@pytest.mark.parametrize("how", OPT_OUTS)
def test_a_web_sign_up_alone_never_reactivates_even_without_double_opt_in(db: Session, how: str) -> None:
    consent.add(db, "gone@example.org")
    opt_out(db, how, "gone@example.org")
    before = status_of(db, "gone@example.org")
    subscriber, needs_confirmation = consent.subscribe(db, "gone@example.org", double_opt_in=False)
    assert needs_confirmation
    assert subscriber.status != "active"
    # The old status stands until the person confirms (a removed address gets a new pending row).
    assert status_of(db, "gone@example.org") == (before if how != "remove" else "pending")
    assert list(consent.active_subscribers(db)) == []


@pytest.mark.parametrize("how", OPT_OUTS)
def test_a_confirmed_re_subscription_brings_them_back(db: Session, how: str) -> None:
    consent.add(db, "back@example.org")
    opt_out(db, how, "back@example.org")
    subscriber, needs_confirmation = consent.subscribe(db, "back@example.org", name="Back")
    assert needs_confirmation
    token = make_token(SECRET, CONFIRM, subscriber.id or 0)
    confirmed = consent.confirm_by_token(db, SECRET, token)
    assert confirmed.status == "active"
    assert consent.confirm_by_token(db, SECRET, token).status == "active"  # idempotent
    assert not consent.is_suppressed(db, "back@example.org")
    assert [s.email for s in consent.active_subscribers(db)] == ["back@example.org"]


def test_a_confirmation_link_older_than_the_unsubscribe_is_void(
    db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscriber, _ = consent.subscribe(db, "late@example.org")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 60)  # the link was mailed a minute ago
    token = make_token(SECRET, CONFIRM, subscriber.id or 0)
    monkeypatch.undo()
    consent.confirm_by_token(db, SECRET, token)
    assert consent.unsubscribe(db, "late@example.org")
    with pytest.raises(ConsentError, match="older than your unsubscribe"):
        consent.confirm_by_token(db, SECRET, token)
    assert status_of(db, "late@example.org") == "unsubscribed"


@pytest.mark.parametrize("how", ["bounce", "complain"])
def test_a_confirmation_link_older_than_a_later_bounce_or_complaint_is_void(db: Session, how: str) -> None:
    """Unsubscribed, signed up again and confirmed; then a hard bounce or a spam complaint. The
    same confirmation link, followed again, must not make the address active: it is older than
    the latest opt-out, whatever its kind (it used to count only the first)."""
    consent.add(db, "again@example.org")
    opt_out(db, "unsubscribe", "again@example.org")
    subscriber, _ = consent.subscribe(db, "again@example.org")
    time.sleep(0.01)
    token = make_token(SECRET, CONFIRM, subscriber.id or 0)  # mailed after that unsubscribe
    assert consent.confirm_by_token(db, SECRET, token).status == "active"
    time.sleep(0.01)
    opt_out(db, how, "again@example.org")
    with pytest.raises(ConsentError, match="older than"):
        consent.confirm_by_token(db, SECRET, token)
    assert status_of(db, "again@example.org") == {"bounce": "bounced", "complain": "complained"}[how]
    assert consent.is_suppressed(db, "again@example.org")


def test_double_opt_in_keeps_a_new_sign_up_pending_until_confirmed(db: Session) -> None:
    subscriber, needs_confirmation = consent.subscribe(db, "new@example.org", name="New\r\nBcc: x@y")
    assert needs_confirmation and subscriber.status == "pending"
    assert subscriber.name == "New Bcc: x@y"
    assert list(consent.active_subscribers(db)) == []
    assert consent.subscribe(db, "new@example.org")[1]  # asking again: still needs confirming
    assert subscriber.id is not None
    consent.confirm_by_token(db, SECRET, make_token(SECRET, CONFIRM, subscriber.id))
    assert status_of(db, "new@example.org") == "active"


def test_without_double_opt_in_a_new_sign_up_is_active(db: Session) -> None:
    subscriber, needs_confirmation = consent.subscribe(db, "quick@example.org", double_opt_in=False)
    assert not needs_confirmation and subscriber.status == "active"


def test_the_sign_up_form_cannot_rename_an_active_subscriber(db: Session) -> None:
    consent.add(db, "ann@example.org", name="Ann")
    subscriber, needs_confirmation = consent.subscribe(db, "ann@example.org", name="Mallory")
    assert not needs_confirmation and subscriber.name == "Ann"


def test_confirm_refuses_bad_wrong_purpose_and_expired_tokens(db: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    subscriber, _ = consent.subscribe(db, "t@example.org")
    assert subscriber.id is not None
    with pytest.raises(BadToken):
        consent.confirm_by_token(db, SECRET, make_token(SECRET, UNSUBSCRIBE, subscriber.id))
    with pytest.raises(BadToken):
        consent.confirm_by_token(db, "another secret", make_token(SECRET, CONFIRM, subscriber.id))
    token = make_token(SECRET, CONFIRM, subscriber.id)
    later = time.time() + 8 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ExpiredToken):
        consent.confirm_by_token(db, SECRET, token)
    assert status_of(db, "t@example.org") == "pending"


def test_unsubscribe_by_token_is_idempotent_and_says_so(db: Session) -> None:
    subscriber, _ = consent.add(db, "u@example.org")
    assert subscriber.id is not None
    token = make_token(SECRET, UNSUBSCRIBE, subscriber.id)
    assert consent.unsubscribe_by_token(db, SECRET, token) is True
    assert consent.unsubscribe_by_token(db, SECRET, token) is False
    assert status_of(db, "u@example.org") == "unsubscribed"
    with pytest.raises(BadToken):
        consent.unsubscribe_by_token(db, SECRET, token.replace(".", ".X", 1))  # an altered token
    with pytest.raises(UnknownSubscriber):
        consent.unsubscribe_by_token(db, SECRET, make_token(SECRET, UNSUBSCRIBE, 999_999))


def test_a_bounce_is_not_downgraded_to_an_unsubscribe(db: Session) -> None:
    subscriber, _ = consent.add(db, "b@example.org")
    assert subscriber.id is not None
    assert consent.mark_bounced(db, subscriber.id)
    assert consent.unsubscribe(db, "b@example.org") is False
    assert status_of(db, "b@example.org") == "bounced"


def test_remove_erases_personal_data_everywhere_but_keeps_the_hash(db: Session) -> None:
    subscriber, _ = consent.add(db, "Erase.Me@Example.org", name="Erase Me")
    keep, _ = consent.add(db, "keep@example.org", name="Keep")
    issue = Issue(key="manual-test", subject="Hello")
    db.add(issue)
    db.commit()
    assert issue.id is not None and subscriber.id is not None
    for who, status in ((subscriber, "sent"), (keep, "pending")):
        db.add(Delivery(
            issue_id=issue.id, subscriber_id=who.id, email=who.email, name=who.name, status=status,
            message_id=f"<{who.id}.1@example.org>",
        ))
    issue2 = Issue(key="manual-test-2", subject="Again")
    db.add(issue2)
    db.commit()
    assert issue2.id is not None
    db.add(Delivery(
        issue_id=issue2.id, subscriber_id=subscriber.id, email=subscriber.email, name=subscriber.name,
        message_id=f"<{subscriber.id}.2@example.org>",
    ))
    db.commit()

    consent.remove(db, "erase.me@example.org")

    # Nothing anywhere in the database still holds the address or the name.
    for table in ("subscriber", "delivery", "suppression"):
        for row in db.execute(text(f"SELECT * FROM {table}")):
            dump = " ".join(str(value) for value in row).lower()
            assert "erase" not in dump, (table, row)
    rows = db.exec(select(Delivery).where(Delivery.subscriber_id == subscriber.id)).all()
    assert sorted(d.status for d in rows) == ["sent", "skipped"]  # owed sends are skipped
    assert db.exec(select(Delivery).where(Delivery.subscriber_id == keep.id)).one().email == "keep@example.org"
    hashes = db.exec(select(Suppression.email_hash)).all()
    assert suppression_hash("erase.me@example.org") in hashes
    # And no path brings it back without the person's confirmation.
    with pytest.raises(ConsentError):
        consent.add(db, "erase.me@example.org")
    assert consent.subscribe(db, "erase.me@example.org", double_opt_in=False)[1] is True
    # The old id stays taken: an old unsubscribe link cannot reach a new subscriber.
    newcomer, _ = consent.add(db, "newcomer@example.org")
    assert newcomer.id != subscriber.id
    assert consent.unsubscribe_by_token(db, SECRET, make_token(SECRET, UNSUBSCRIBE, subscriber.id)) is False


def test_remove_of_an_unknown_address_still_blocks_it(db: Session) -> None:
    with pytest.raises(UnknownSubscriber, match="'never@example.org'"):
        consent.remove(db, "never@example.org")
    with pytest.raises(ConsentError):
        consent.add(db, "never@example.org")


def test_active_subscribers_streams_every_active_one_in_order(db: Session) -> None:
    for i in range(25):
        consent.add(db, f"s{i:02d}@example.org", pending=(i % 5 == 0))
    streamed = [s.email for s in consent.active_subscribers(db, page=7)]
    assert streamed == [f"s{i:02d}@example.org" for i in range(25) if i % 5]
    assert consent.counts(db)["active"] == 20 and consent.counts(db)["pending"] == 5
    assert consent.counts(db)["bounced"] == 0


@pytest.mark.parametrize("path", ["subscribe", "add"])
def test_two_sign_ups_of_one_address_at_once_give_one_subscriber(
    db: Session, any_engine: Engine, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # The other request inserts between our lookup and our insert: make our lookup miss once.
    with Session(any_engine) as other:
        consent.subscribe(other, "race@example.org", name="First")
    real_find = consent.find
    calls: list[str] = []

    def late_find(session: Session, email: str) -> Subscriber | None:
        calls.append(email)
        return None if len(calls) == 1 else real_find(session, email)

    monkeypatch.setattr(consent, "find", late_find)
    if path == "subscribe":
        subscriber, needs_confirmation = consent.subscribe(db, "Race@example.org", name="Second")
        assert needs_confirmation
    else:
        subscriber, outcome = consent.add(db, "Race@example.org", name="Second")
        assert outcome == "unchanged"
    assert len(calls) == 2  # our lookup missed, the insert collided, the winner was looked up
    assert subscriber.name == "First"
    assert len(db.exec(select(Subscriber)).all()) == 1


ADDRESSES = ["p0@example.org", "P1@example.org", "p2@exämple.org"]
OPERATIONS = ["add", "add_pending", "import", "subscribe", "subscribe_single", "confirm",
              "unsubscribe", "bounce", "complain", "remove"]


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.sampled_from(OPERATIONS), st.sampled_from(ADDRESSES)), max_size=14))
def test_no_sequence_of_actions_reactivates_an_opt_out_without_confirmation(
    session: Session, tmp_path: Path, steps: list[tuple[str, str]]
) -> None:
    """Whatever happens in whatever order, someone who left is active again only by confirming."""
    session.execute(text("DELETE FROM confirmation_request"))
    session.execute(text("DELETE FROM subscriber"))
    session.execute(text("DELETE FROM suppression"))
    session.commit()
    left: set[str] = set()  # the model: addresses that opted out and have not confirmed since
    tokens: dict[str, str] = {}  # the latest confirmation link mailed to each address
    csv_file = tmp_path / "one.csv"
    for operation, email in steps:
        key = email.lower()
        found = consent.find(session, email)
        if operation in ("add", "add_pending"):
            try:
                consent.add(session, email, pending=operation == "add_pending")
                assert key not in left
            except ConsentError:
                assert key in left
        elif operation == "import":
            csv_file.write_text(f"email\n{email}\n", encoding="utf-8")
            report = import_csv(session, csv_file)
            assert bool(report.opted_out) == (key in left)
        elif operation.startswith("subscribe"):
            subscriber, needs = consent.subscribe(session, email, double_opt_in=operation == "subscribe")
            assert needs or key not in left
            if needs:
                tokens[key] = make_token(SECRET, CONFIRM, subscriber.id or 0)
        elif operation == "confirm" and key in tokens:
            try:
                consent.confirm_by_token(session, SECRET, tokens[key])
                left.discard(key)
            except (ConsentError, UnknownSubscriber):
                pass  # an old link: refused, and nothing changed
        elif operation == "remove":
            try:
                consent.remove(session, email)
                assert found is not None
            except UnknownSubscriber:
                assert found is None  # and its hash is recorded all the same
            left.add(key)
        elif found is not None and found.id is not None and operation != "confirm":
            if operation == "unsubscribe":
                consent.unsubscribe(session, email)
            elif operation == "bounce":
                consent.mark_bounced(session, found.id)
            else:
                consent.mark_complained(session, found.id)
            left.add(key)
        session.expire_all()
        active = {s.email_normalized.split("@")[0] for s in consent.active_subscribers(session)}
        assert not active & {a.split("@")[0] for a in left}, (operation, email, left)
        for address in left:
            assert consent.is_suppressed(session, address)


def test_a_confirmation_link_made_in_the_same_second_before_the_unsubscribe_is_void(db: Session) -> None:
    consent.add(db, "same@example.org")
    while time.time() % 1 > 0.5:  # start early in a second, so the link and the unsubscribe share it
        time.sleep(0.05)
    subscriber = consent.find(db, "same@example.org")
    assert subscriber is not None
    token = make_token(SECRET, CONFIRM, subscriber.id or 0)
    assert consent.unsubscribe(db, "same@example.org")
    left = consent.find(db, "same@example.org").unsubscribed_at  # type: ignore[union-attr]
    assert left is not None
    if int(left.timestamp()) != int(time.time()):
        pytest.skip("this machine was too slow: the link and the unsubscribe fell in two seconds")
    with pytest.raises(ConsentError, match="older than your unsubscribe"):
        consent.confirm_by_token(db, SECRET, token)
    assert status_of(db, "same@example.org") == "unsubscribed"


def test_would_opt_out_says_what_each_opt_out_then_does(db: Session) -> None:
    # The dry run of the bounce mailbox reports through would_opt_out: it must foretell the change.
    doing = {SubscriberStatus.UNSUBSCRIBED: "unsubscribe", SubscriberStatus.BOUNCED: "bounce",
             SubscriberStatus.COMPLAINED: "complain"}
    for n, start in enumerate(("pending", "active", "unsubscribe", "bounce", "complain", "remove")):
        for target, how in doing.items():
            email = f"w{n}-{how}@example.org"
            subscriber, _ = consent.add(db, email, pending=start == "pending")
            assert subscriber.id is not None
            if start in OPT_OUTS:
                opt_out(db, start, email)
            db.refresh(subscriber)
            before = subscriber.status
            expected = consent.would_opt_out(before, target)
            if target == SubscriberStatus.UNSUBSCRIBED:
                changed = consent.unsubscribe_by_token(db, SECRET, make_token(SECRET, UNSUBSCRIBE, subscriber.id))
            else:
                mark = consent.mark_bounced if target == SubscriberStatus.BOUNCED else consent.mark_complained
                changed = mark(db, subscriber.id)
            assert changed is expected, (before, target)
            db.refresh(subscriber)
            assert subscriber.status == (target.value if expected else before), (before, target)


def test_a_new_sign_up_of_a_pending_address_gives_it_that_sign_up_s_name(db: Session) -> None:
    """Someone signed Vera up under an advert for a name; her own sign-up, the one whose email
    she follows, names her. An active subscriber is never renamed by the form."""
    consent.subscribe(db, "vera@example.org", name="WIN $500 at http://spam.example/claim")
    subscriber, needs = consent.subscribe(db, "vera@example.org", name="Vera Victim")
    assert needs and subscriber.name == "Vera Victim" and status_of(db, "vera@example.org") == "pending"
    consent.subscribe(db, "vera@example.org", name="\u202e\r\n")  # nothing left once cleaned: kept
    assert consent.find(db, "vera@example.org").name == "Vera Victim"  # type: ignore[union-attr]
    consent.subscribe(db, "vera@example.org", name="Vera\r\nV.")  # the name as a header may carry it
    assert consent.find(db, "vera@example.org").name == "Vera V."  # type: ignore[union-attr]
    consent.add(db, "ann@example.org", name="Ann")
    consent.subscribe(db, "ann@example.org", name="Not Ann")
    assert consent.find(db, "ann@example.org").name == "Ann"  # type: ignore[union-attr]
