"""The one clock: now, aware, in UTC (in a module of its own, so light commands need no model)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, aware, in UTC: SQLModel's datetime columns refuse naive values and return UTC."""
    return datetime.now(UTC)
