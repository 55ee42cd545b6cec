"""Crash recovery: who holds the deliveries in flight, and what becomes of those whose holder is gone.

A sender claims rows as `sending` with a lease and its host:pid (ledger.claim). When it dies
(kill -9, a power cut) the rows stay `sending`. Every command that reads an issue calls
`reconcile` first: rows past their lease, and rows held by a process of this host that no
longer exists, become `unknown` (maybe delivered, maybe not). Nobody is skipped and nobody gets
a second copy by itself; `newsletter sends retry ISSUE --unknown` is the operator's decision.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from pipeline import ledger, ledger_reads
from pipeline.issues import find_issue
from pipeline.models import Issue
from subscribers.model import utcnow

GONE = "the sending process {holder} is gone (it stopped mid-attempt): maybe sent, maybe not"


@dataclass(frozen=True)
class Holder:
    """The `sending` rows of one issue that one process holds."""

    holder: str  # host:pid, or "an unknown process" for rows claimed before holders were kept
    count: int
    lease_until: datetime | None  # the latest lease among them
    alive: bool | None  # checked on this host; None: another host's process, only its lease says


def reconcile(session: Session, issue_id: int, now: datetime) -> int:
    """Rows past their lease, or held by a dead process of this host, become `unknown`;
    returns how many (in the caller's transaction)."""
    count = ledger.reconcile(session, issue_id, now)
    for holder in ledger_reads.holders_on(session, issue_id, socket.gethostname()):
        if not _alive(holder):
            count += ledger.release_holder(session, issue_id, holder, now, GONE.format(holder=holder))
    return count


def settle(session: Session, ref: int | str) -> Issue:
    """The issue `ref` names (id or key), its stopped senders' rows reconciled and committed:
    what every command that reads an issue's ledger calls first."""
    issue = find_issue(session, ref)
    if reconcile(session, issue.id or 0, utcnow()):
        session.commit()
        session.refresh(issue)
    return issue


def in_flight(session: Session, issue_id: int) -> list[Holder]:
    """Who holds the issue's `sending` rows, and until when."""
    host = f"{socket.gethostname()}:"
    return [Holder(holder or "an unknown process", count, until,
                   _alive(holder) if holder and holder.startswith(host) else None)
            for holder, count, until in ledger_reads.holders(session, issue_id)]


def unconfirmed(holders: list[Holder]) -> int:
    """Rows in flight whose holder may be gone (another host's, or a holder never recorded)."""
    return sum(h.count for h in holders if not h.alive)


def describe_in_flight(holders: list[Holder]) -> str:
    """One sentence for `sends status`, run-due and the logs: who holds what, until when."""
    parts = []
    for h in holders:
        until = f" until {h.lease_until:%Y-%m-%d %H:%M:%S} UTC" if h.lease_until else ""
        if h.alive:
            parts.append(f"{h.count} being sent by {h.holder} (running on this host)")
        else:
            parts.append(f"{h.count} held by {h.holder}{until}: if that process has died they "
                         f"become `unknown` then")
    return "; ".join(parts)


def _alive(holder: str) -> bool:
    """Whether the process host:pid (of this host) still runs; a pid that is not a number, or
    one we may not signal, counts as alive (the lease decides then)."""
    try:
        pid = int(holder.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
