"""An issue's bounces and complaints after sending, and what its complaint rate calls for.

Mailbox providers judge a sender by complaints per delivered message: Gmail's guidance is to stay
under 0.1% and never reach 0.3%. Above `bounces.complaint_warn_rate` the summary warns; above
`bounces.complaint_pause_rate` the scheduler starts no new issue until the operator has looked
(`newsletter send` by hand still works: a person decided).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from pipeline import glance
from pipeline.config import BounceSettings
from pipeline.statuses import BounceKind

if TYPE_CHECKING:
    from sqlmodel import Session


@dataclass(frozen=True)
class IssueFeedback:
    """What the bounce mailbox said about one issue's deliveries."""

    delivered: int  # deliveries sent
    bounced: int  # hard bounces reported after sending
    soft: int
    complained: int

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.delivered if self.delivered else 0.0

    def verdict(self, bounces: BounceSettings) -> tuple[str, str]:
        """("ok" | "warn" | "pause", the sentence that explains it)."""
        rate = self.complaint_rate
        said = f"complaint rate {rate:.2%} ({self.complained} of {self.delivered} delivered)"
        if bounces.complaint_pause_rate and rate > bounces.complaint_pause_rate:
            return "pause", (f"{said} is above {bounces.complaint_pause_rate:.2%} "
                             "(bounces.complaint_pause_rate): the scheduler starts no new issue until "
                             "you look; mailbox providers start to junk or refuse a sender at this "
                             "level. `newsletter send` by hand still works.")
        if rate > bounces.complaint_warn_rate:
            return "warn", (f"{said} is above {bounces.complaint_warn_rate:.2%} "
                            "(bounces.complaint_warn_rate): check the sign-up path and the content; "
                            "providers like Gmail want it under 0.1%.")
        return "ok", said


def issue_feedback(connection: Connection, issue_id: int) -> IssueFeedback:
    delivered, found = glance.feedback_counts(connection, issue_id)
    return IssueFeedback(delivered, found.get(BounceKind.HARD.value, 0),
                         found.get(BounceKind.SOFT.value, 0), found.get(BounceKind.COMPLAINT.value, 0))


def scheduled_sending_paused(session: Session, bounces: BounceSettings) -> str | None:
    """Why the scheduler must not start the next issue (the last issue's complaint rate), or None."""
    if not bounces.enabled or not bounces.complaint_pause_rate:
        return None
    from pipeline import issues  # noqa: PLC0415  (the ORM: only when the scheduler composes)

    last = issues.last_started(session)
    if last is None or last.id is None:
        return None
    verdict, why = issue_feedback(session.connection(), last.id).verdict(bounces)
    return f"issue {last.key}: {why}" if verdict == "pause" else None

