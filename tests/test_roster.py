"""The subscriber list as `subscribers list` shows it: newest first, by status, never the removed."""

from __future__ import annotations

from sqlmodel import Session

from subscribers import consent, roster


def emails(session: Session, status: str | None = None, limit: int = 0) -> list[str]:
    return [s.email for s in roster.newest_first(session, status, limit)]


def test_newest_first_by_status_and_limited(session: Session) -> None:
    for address in ("ann@example.org", "bob@example.org", "cy@example.org"):
        consent.add(session, address)
    consent.add(session, "dee@example.org", pending=True)
    consent.unsubscribe(session, "bob@example.org")

    assert emails(session) == ["dee@example.org", "cy@example.org", "bob@example.org", "ann@example.org"]
    assert emails(session, "active") == ["cy@example.org", "ann@example.org"]
    assert emails(session, "pending") == ["dee@example.org"]
    assert emails(session, limit=2) == ["dee@example.org", "cy@example.org"]


def test_removed_subscribers_are_never_listed(session: Session) -> None:
    consent.add(session, "ann@example.org")
    consent.add(session, "bob@example.org")
    consent.remove(session, "ann@example.org")

    assert emails(session) == ["bob@example.org"]
    assert emails(session, "removed") == []
