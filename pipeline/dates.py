"""English month names, the same in every locale: how digests write a date and essays' dates are read."""

from __future__ import annotations

from datetime import date

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
# What an essay may write for a month (any case): the name, its first three letters, or "Sept".
MONTH_NUMBERS = {
    **{name.lower(): number for number, name in enumerate(MONTHS, start=1)},
    **{name[:3].lower(): number for number, name in enumerate(MONTHS, start=1)},
    "sept": 9,
}


def format_date(day: date | None) -> str:
    """"19 July 2025": the same in every locale and process ("" for no date)."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}" if day else ""
