"""Weekly periods and the job's decisions with an injected clock; the scheduler's trigger beside them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import WEEKDAYS, ScheduleSettings
from pipeline.periods import (
    Action,
    decide,
    due_period,
    next_due,
    period_key,
    period_of_key,
    period_of_week,
    week_period,
)
from pipeline.schedule import make_trigger, next_fire_times

BERLIN = ZoneInfo("Europe/Berlin")
UTC = UTC


def weekly(weekday: str = "monday", at: str = "07:00", tz: str = "Europe/Berlin",
           grace: float = 12, expire: float = 72) -> ScheduleSettings:
    hour, minute = map(int, at.split(":"))
    return ScheduleSettings(weekday=weekday, time=time(hour, minute), timezone=ZoneInfo(tz),
                            grace_hours=grace, expire_after_hours=expire)


def trigger_times(schedule: ScheduleSettings, start: datetime, count: int) -> list[datetime]:
    """The scheduler's trigger, asked as APScheduler asks it: after `start`, then after each firing."""
    trigger = make_trigger(schedule)
    times, previous = [], None
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, previous or start)
        times.append(previous)
    return times


@pytest.mark.parametrize("index,name", list(enumerate(WEEKDAYS)))
def test_every_weekday_name_fires_on_that_day(index: int, name: str) -> None:
    schedule = weekly(weekday=name)
    fires = next_fire_times(schedule, datetime(2026, 11, 23, tzinfo=UTC), 4)
    assert [f.weekday() for f in fires] == [index] * 4
    assert [f.strftime("%A").lower() for f in fires] == [name] * 4
    assert all((f.hour, f.minute) == (7, 0) for f in fires)


def test_07_00_berlin_stays_07_00_local_across_both_daylight_saving_changes() -> None:
    schedule = weekly(weekday="sunday")  # the changes fall on Sundays: 29 March, 25 October 2026
    for start, offsets in (
        (datetime(2026, 3, 20, tzinfo=UTC), [1, 2, 2]),  # CET, then CEST from 29 March
        (datetime(2026, 10, 16, tzinfo=UTC), [2, 1, 1]),  # CEST, then CET from 25 October
    ):
        fires = trigger_times(schedule, start, 3)
        assert [(f.hour, f.minute) for f in fires] == [(7, 0)] * 3
        assert [f.utcoffset() // timedelta(hours=1) for f in fires] == offsets
        utc_hours = [f.astimezone(UTC).hour for f in fires]
        assert utc_hours == [7 - o for o in offsets]  # 06:00 UTC in winter, 05:00 in summer
        # The wiring the scheduler uses and the pure period math agree with the bare trigger.
        assert next_fire_times(schedule, start, 3) == fires
        assert [p.due_at for p in next_due(schedule, start, 3)] == fires
        assert [p.due_at.astimezone(UTC) for p in next_due(schedule, start, 3)] == [
            f.astimezone(UTC) for f in fires
        ]


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC"])
@pytest.mark.parametrize("weekday,at", [("monday", "07:00"), ("sunday", "23:30"),
                                        ("friday", "00:15")])
def test_period_math_matches_apscheduler_for_two_years(tz: str, weekday: str, at: str) -> None:
    schedule = weekly(weekday=weekday, at=at, tz=tz)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fires = trigger_times(schedule, start, 104)
    periods = next_due(schedule, start, 104)
    assert [p.due_at.astimezone(UTC) for p in periods] == [f.astimezone(UTC) for f in fires]
    keys = [p.key for p in periods]
    assert len(set(keys)) == 104  # one period per week, never two with one key


def test_the_key_is_the_iso_week_of_the_local_run_time() -> None:
    assert period_of_week(weekly(), 2026, 48).key == "weekly-2026-W48"
    assert period_of_week(weekly(), 2026, 48).due_at == datetime(2026, 11, 23, 7, tzinfo=BERLIN)
    # ISO years differ from calendar years at the edges: Monday 30 Dec 2024 is 2025-W01 ...
    assert period_key(datetime(2024, 12, 30, 7, tzinfo=BERLIN)) == "weekly-2025-W01"
    # ... and Friday 1 Jan 2027 is still week 53 of 2026.
    friday = weekly(weekday="friday")
    assert week_period(friday, datetime(2027, 1, 1, 12, tzinfo=UTC)).key == "weekly-2026-W53"
    assert period_of_key(friday, "weekly-2026-W53") == period_of_week(friday, 2026, 53)
    assert period_of_key(friday, "weekly-2025-W53") is None  # 2025 has 52 ISO weeks
    assert period_of_key(friday, "manual-1234") is None


def test_the_week_is_counted_in_the_configured_timezone() -> None:
    # Sunday 23:30 in UTC is already Monday 00:30 in Berlin: Berlin's new week.
    now = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    assert week_period(weekly(tz="Europe/Berlin"), now).key == "weekly-2026-W49"
    assert week_period(weekly(tz="UTC"), now).key == "weekly-2026-W48"


def test_the_due_period_is_this_weeks_once_its_time_has_come() -> None:
    schedule = weekly()  # Monday 07:00 Berlin = 06:00 UTC in November
    assert due_period(schedule, datetime(2026, 11, 23, 5, 59, tzinfo=UTC)).key == "weekly-2026-W47"
    assert due_period(schedule, datetime(2026, 11, 23, 6, 0, tzinfo=UTC)).key == "weekly-2026-W48"
    assert due_period(schedule, datetime(2026, 11, 29, 22, tzinfo=UTC)).key == "weekly-2026-W48"
    with pytest.raises(ValueError, match="naive"):
        due_period(schedule, datetime(2026, 11, 23, 6))


def test_decisions_over_a_week_with_a_controllable_clock() -> None:
    schedule = weekly(grace=12, expire=72)
    period = period_of_week(schedule, 2026, 48)
    due = period.due_at

    def at(hours: float, status: str | None) -> Action:
        return decide(schedule, period, status, due + timedelta(hours=hours))

    assert at(-1, None) is Action.NOT_DUE
    assert at(0, None) is Action.COMPOSE
    assert at(12, None) is Action.COMPOSE  # the last moment of the grace time
    assert at(12.01, None) is Action.EXPIRE_MISSED  # late start outside the grace time
    assert at(100, None) is Action.EXPIRE_MISSED
    assert at(1, "draft") is Action.RESUME  # composed, then the process died
    assert at(13, "draft") is Action.EXPIRE_MISSED  # ... and starting it now would be late
    assert at(71.9, "sending") is Action.RESUME  # killed mid-send: resume, even after grace
    assert at(72, "sending") is Action.EXPIRE_STUCK
    for status in ("sent", "skipped", "expired", "cancelled"):
        assert at(3, status) is Action.DONE
        # Next Monday before 07:00: this period is finished and the next is still ahead.
        assert at(7 * 24 - 1, status) is Action.NOT_DUE


def test_grace_and_expiry_count_elapsed_hours_across_a_clock_change() -> None:
    # Sunday 25 October 2026, 01:00 Berlin (CEST); the clocks go back at 03:00 that night.
    schedule = weekly(weekday="sunday", at="01:00", grace=4, expire=4)
    period = period_of_week(schedule, 2026, 43)
    assert period.due_at.astimezone(UTC) == datetime(2026, 10, 24, 23, tzinfo=UTC)
    assert period.start_until.astimezone(UTC) == datetime(2026, 10, 25, 3, tzinfo=UTC)
    assert (period.start_until.hour, period.start_until.utcoffset()) == (4, timedelta(hours=1))


def test_expire_shorter_than_grace_never_starts_an_issue_that_would_expire_at_once() -> None:
    schedule = weekly(grace=12, expire=2)
    period = period_of_week(schedule, 2026, 48)
    assert decide(schedule, period, None, period.due_at + timedelta(hours=1)) is Action.COMPOSE
    assert decide(schedule, period, None, period.due_at + timedelta(hours=3)) is (
        Action.EXPIRE_MISSED
    )


def test_the_schedule_settings_reach_the_trigger_unchanged() -> None:
    schedule = replace(weekly(), weekday="wednesday", time=time(18, 45),
                       timezone=ZoneInfo("Asia/Tokyo"))
    [fire] = trigger_times(schedule, datetime(2026, 11, 23, tzinfo=UTC), 1)
    assert (fire.strftime("%A"), fire.hour, fire.minute, fire.second) == ("Wednesday", 18, 45, 0)
    assert fire.tzinfo == ZoneInfo("Asia/Tokyo")


def test_a_time_inside_the_clock_change_hour_still_gives_one_digest_per_week() -> None:
    schedule = weekly(weekday="sunday", at="02:30")
    # Spring: 02:30 does not exist on 29 March 2026; the trigger and the period math take the
    # instant 01:30 UTC (03:30 summer time).
    [spring] = trigger_times(schedule, datetime(2026, 3, 28, tzinfo=UTC), 1)
    period = period_of_week(schedule, 2026, 13)
    assert spring.astimezone(UTC) == period.due_at.astimezone(UTC) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC)
    # Autumn: 02:30 happens twice on 25 October 2026; the trigger fires at the first, once (a
    # cron trigger fired at both, and the second firing found the issue sent).
    first, following = trigger_times(schedule, datetime(2026, 10, 24, tzinfo=UTC), 2)
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert following.astimezone(UTC) - first.astimezone(UTC) == timedelta(days=7, hours=1)
    assert period_key(first) == "weekly-2026-W43" and period_key(following) == "weekly-2026-W44"


@pytest.mark.parametrize("tz", ["Europe/Berlin", "Europe/London", "America/New_York", "Australia/Sydney",
                                "America/Santiago"])
@pytest.mark.parametrize("at", ["00:00", "00:30", "02:30", "23:30"])
def test_the_scheduler_fires_once_every_week_through_every_clock_change(tz: str, at: str) -> None:
    """APScheduler's own cron trigger skipped the week after spring-forward for a Monday 00:30
    (it steps in wall-clock time but adds the step in UTC, and rolled over to the next week), and
    fired twice in a repeated hour: the scheduler fires when the period math says, once a week."""
    schedule = weekly(weekday="monday", at=at, tz=tz)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    fires = trigger_times(schedule, start, 60)  # more than a year: both changes, and a new year
    assert fires == [p.due_at for p in next_due(schedule, start, 60)]
    weeks = [period_key(f) for f in fires]
    assert len(set(weeks)) == 60 and all(
        b.astimezone(UTC) - a.astimezone(UTC) in (timedelta(days=7), timedelta(days=7, hours=1),
                                                  timedelta(days=7, hours=-1))
        for a, b in zip(fires, fires[1:], strict=False))
