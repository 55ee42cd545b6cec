"""Config: the shipped file loads, and each kind of wrong value names its key."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.config import PROJECT_ROOT, load_settings
from pipeline.errors import ConfigError
from tests.conftest import CLI, write_config


def test_shipped_config_loads_with_sqlite_beside_it() -> None:
    settings = load_settings(PROJECT_ROOT / "config.toml")
    assert settings.database.url == f"sqlite:///{PROJECT_ROOT / 'newsletter.db'}"
    assert settings.schedule.weekday == "monday"
    assert settings.schedule.time == time(7, 0)
    assert str(settings.schedule.timezone) == "Europe/Berlin"
    assert settings.delivery.transport == "outbox"
    assert settings.newsletter.sender_domain == "essays.example.org"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("schedule", "weekday", "Caturday", "schedule.weekday: expected one of monday"),
        ("schedule", "timezone", "Mars/Olympus", "schedule.timezone: expected an IANA timezone"),
        ("schedule", "time", "7 o'clock", "schedule.time: expected a 24-hour time"),
        ("digest", "max_essays", 0, "digest.max_essays: expected a whole number >= 1"),
        ("digest", "max_essays", "five", "digest.max_essays: expected a whole number"),
        ("delivery", "transport", "pigeon", "delivery.transport: expected one of outbox, smtp"),
        ("delivery", "smtp_port", 70000, "delivery.smtp_port: expected a whole number"),
        ("newsletter", "sender_address", "nobody", "newsletter.sender_address: expected an email"),
        ("newsletter", "site_url", "essays.example.org", "newsletter.site_url: expected an http"),
        ("subscribers", "double_opt_in", "yes", "subscribers.double_opt_in: expected true or false"),
        # Out of any sensible range: each crashed later, mid-send or mid-schedule, with a traceback.
        ("schedule", "grace_hours", float("nan"), "schedule.grace_hours: expected a number >= 0.1 and <="),
        ("schedule", "grace_hours", 1e308, "schedule.grace_hours: expected a number >= 0.1 and <="),
        # The job runs a moment after its time, so a grace of 0 expired every week; a week or more
        # overlaps the next week's digest, whose run never resumes the older issue.
        ("schedule", "grace_hours", 0, "schedule.grace_hours: expected a number >= 0.1 and <= 167"),
        ("schedule", "grace_hours", 168, "schedule.grace_hours: expected a number >= 0.1 and <= 167"),
        ("schedule", "expire_after_hours", 0, "schedule.expire_after_hours: expected a number >= 0.1 and <= 167"),
        ("schedule", "expire_after_hours", 240, "schedule.expire_after_hours: expected a number >= 0.1"),
        ("schedule", "expire_after_hours", 6, "schedule.expire_after_hours: 6 is less than schedule.grace_hours (12)"),
        # A name that is a folder of the timezone database, or too long for a file name.
        ("schedule", "timezone", "Europe", "schedule.timezone: expected an IANA timezone"),
        ("schedule", "timezone", "A" * 300, "schedule.timezone: expected an IANA timezone"),
        ("delivery", "retry_hours", float("inf"), "delivery.retry_hours: expected a number >= 0 and <="),
        ("delivery", "lease_seconds", 99_999_999_999_999_999, "delivery.lease_seconds: expected a whole number"),
        ("delivery", "batch_size", 10**20, "delivery.batch_size: expected a whole number >= 1 and <="),
        ("digest", "max_essays", 10**20, "digest.max_essays: expected a whole number >= 1 and <="),
        ("delivery", "rate_per_second", 1e-300, "delivery.rate_per_second: 1e-300 is under one message an hour"),
        # A URL without a host: every unsubscribe link was unusable, every delivery failed.
        ("web", "base_url", "http://", "web.base_url: expected an http:// or https:// URL with a host name"),
        ("newsletter", "site_url", "https://", "newsletter.site_url: expected an http:// or https:// URL with a"),
        # Subject patterns are checked as the config loads, not when an issue is composed.
        ("digest", "subject_many", "{title} {more.x}", "digest.subject_many: '{title} {more.x}' can use only"),
        ("digest", "subject_many", "{more:>99999999999}", "(found {more:>99999999999})"),
        ("digest", "subject_one", "{title", "digest.subject_one: '{title' is not a pattern"),
    ],
)
def test_wrong_value_names_the_key(
    tmp_path: Path, section: str, key: str, value: object, expected: str
) -> None:
    path = write_config(tmp_path, **{section: {key: value}})
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('site_url = "https://essays', '# site_url = "'))
    with pytest.raises(ConfigError, match="newsletter.site_url: expected a value, it is missing"):
        load_settings(path)


def test_minimal_config_works_with_every_other_key_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[newsletter]\nname = "Notes"\nsite_url = "https://notes.example.org"\n'
                    'sender_address = "me@notes.example.org"\n'
                    '[web]\nbase_url = "https://letters.example.org"\n', encoding="utf-8")
    settings = load_settings(path)
    assert settings.newsletter.sender_name == "Notes"
    assert settings.database.url == f"sqlite:///{tmp_path / 'newsletter.db'}"
    assert settings.delivery.transport == "outbox"
    assert settings.delivery.outbox_dir == tmp_path / "outbox"
    assert settings.schedule.weekday == "monday" and str(settings.schedule.timezone) == "UTC"


def test_every_config_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[newsletter]\nname = "Notes"\n[delivery]\nsmtp_port = "587"\ntransprot = "smtp"\n'
                    '[schedule]\ntime = "7 am"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    for expected in ("newsletter.site_url: expected a value, it is missing",
                     "newsletter.sender_address: expected a value, it is missing",
                     "web.base_url: expected a value, it is missing",
                     "delivery.smtp_port: expected a whole number",
                     "schedule.time: expected a 24-hour time",
                     "delivery.transprot: unknown key (did you mean delivery.transport?)"):
        assert expected in message
    assert message.startswith(f"{path}: 6 problems:")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[newsletter\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_password_only_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "s3cret")
    assert load_settings(write_config(tmp_path)).delivery.smtp_password == "s3cret"


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, newsletter={"name": "Other Letter"})
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(path))
    assert load_settings().newsletter.name == "Other Letter"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "database.url: expected a SQLAlchemy URL"),
        ("carrier-pigeon://coop/letters", "database.url: expected a SQLAlchemy URL"),
        ("mysql://user:hunter2@db/letters", "database.url: the driver for 'mysql' is not installed"),
        ("sqlite://", "database.url: 'sqlite://' is a database in memory, gone when the command ends"),
        ("sqlite:///:memory:", "database.url: 'sqlite:///:memory:' is a database in memory"),
    ],
)
def test_wrong_database_url_is_an_error_not_a_traceback(tmp_path: Path, url: str, expected: str) -> None:
    config = write_config(tmp_path, database_url=url)
    with pytest.raises(ConfigError, match=expected):
        load_settings(config)
    result = CLI(config, CliRunner())("essays", "list")  # catch_exceptions=False: a traceback fails here
    assert result.exit_code == 1 and f"Error: {config}: {expected}" in result.output
    assert "hunter2" not in result.output  # a password in the URL is not printed


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("schedule", "time", time(7, 0),
         'schedule.time: expected a 24-hour time like "07:00" (or "07:00:00": a digest is due on the minute, '
         "so seconds are 00), got 07:00:00, which TOML reads as a time since it has no quotes"),
        ("newsletter", "name", date(2026, 1, 5),
         "newsletter.name: expected a non-empty string, got 2026-01-05, which TOML reads as a date since"),
        ("schedule", "weekday", datetime(2026, 1, 5, 7, 0, tzinfo=UTC),
         "schedule.weekday: expected one of monday, tuesday, wednesday, thursday, friday, saturday, sunday, "
         "got 2026-01-05T07:00:00+00:00, which TOML reads as a date-time since it has no quotes"),
    ],
)
def test_an_unquoted_toml_date_or_time_is_named_as_written(
        tmp_path: Path, section: str, key: str, value: object, expected: str) -> None:
    """TOML reads `time = 07:00:00` as a time, not text: the error said "got datetime.time(7, 0)",
    Python's name for it, which is not what the file says nor why it is wrong."""
    config = write_config(tmp_path, **{section: {key: value}})
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1 and f"Error: {config}: {expected}" in result.output
    assert "datetime" not in result.output


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [
        ("digest", "max_esays", "digest.max_esays: unknown key (did you mean digest.max_essays?)"),
        ("delivery", "smtp_usrname", "delivery.smtp_usrname: unknown key (did you mean delivery.smtp_username?)"),
        ("delivery", "smtp_password", "delivery.smtp_password: not read from the file: set NEWSLETTER_SMTP_PASSWORD"),
    ],
)
def test_misspelled_key_is_named_not_ignored(tmp_path: Path, section: str, key: str, expected: str) -> None:
    # A typo used to be dropped silently, so the default applied and nobody was told.
    config = write_config(tmp_path, **{section: {key: 3}})
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1 and f"Error: {config}: {expected}" in result.output


def test_misspelled_section_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[dilevery]\nbatch_size = 10\n')
    with pytest.raises(ConfigError, match=r"dilevery: unknown section \(did you mean delivery\?\)"):
        load_settings(config)


def test_sqlite_file_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path, database_url="sqlite:///no-such-folder/letters.db")
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1
    assert f"database.url: the folder {tmp_path / 'no-such-folder'} does not exist" in result.output
    assert not (tmp_path / "no-such-folder").exists()  # nothing made behind the user's back


def test_templates_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    # Before, a typo here silently rendered the built-in templates instead of the user's.
    config = write_config(tmp_path, digest={"templates": "my-templatse"})
    with pytest.raises(ConfigError, match=r"digest.templates: the folder .*my-templatse does not exist"):
        load_settings(config)
    (tmp_path / "my-templatse").mkdir()
    assert load_settings(config).digest.templates == tmp_path / "my-templatse"


def test_sqlite_path_that_is_a_folder_says_to_name_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = write_config(tmp_path, database_url="sqlite:///data")
    with pytest.raises(ConfigError, match=r"database.url: .*data is a folder: name a file in it"):
        load_settings(config)


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # Notepad starts a UTF-8 file with one; it was "Invalid statement (line 1, column 1)".
    path = write_config(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_settings(path).newsletter.name


def test_an_outbox_that_is_a_file_is_refused_with_the_config(tmp_path: Path) -> None:
    # Found only by a send, after the audience was frozen, as "Paused ... File exists".
    (tmp_path / "outbox").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError, match="delivery.outbox_dir: .*outbox is a file, not a folder"):
        load_settings(write_config(tmp_path))


def test_an_unquoted_hh_mm_time_is_shown_with_its_line_and_the_quoted_form(tmp_path: Path) -> None:
    """`time = 07:00` is no TOML value at all (a TOML time needs seconds): the error said
    "Expected newline or end of document after a statement (at line 35, column 9)", naming
    neither the key nor what to write."""
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace('time = "07:00"', "time = 07:00"),
                      encoding="utf-8")
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1
    assert f"Error: {config}: not valid TOML" in result.output and "(at line 35, column 9)" in result.output
    assert "line 35: time = 07:00" in result.output
    assert 'put the time in quotes: time = "07:00"' in result.output


def test_a_toml_syntax_error_shows_the_line_it_is_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace('weekday = "monday"', 'weekday = "monday'),
                      encoding="utf-8")
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1 and 'line 34: weekday = "monday' in result.output
    assert "in quotes" not in result.output


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_line_separator_toml_takes_as_text_does_not_move_the_line_shown(tmp_path: Path, separator: str) -> None:
    # TOML ends a line at "\n" only: a Unicode line or paragraph separator, or NEL, in a comment
    # is text of that line.
    config = tmp_path / "config.toml"
    config.write_text(f"# the letter{separator}of the week\n[newsletter]\nname = \"Letters\n", encoding="utf-8")
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1 and "(at line 3, column" in result.output
    assert 'line 3: name = "Letters' in result.output


def test_a_shown_line_keeps_a_password_in_a_url_out(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace(
        "[database]\n", "[database]\nurl = postgresql+psycopg://letters:hunter2@db/letters\n", 1), encoding="utf-8")
    result = CLI(config, CliRunner())("essays", "list")
    assert result.exit_code == 1 and "url = postgresql+psycopg://letters:***@db/letters" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize(("value", "expected"), [("07:30:00", time(7, 30)), ("7:05", time(7, 5))])
def test_the_schedule_time_may_have_seconds_of_00(tmp_path: Path, value: str, expected: time) -> None:
    assert load_settings(write_config(tmp_path, schedule={"time": value})).schedule.time == expected


def test_schedule_time_seconds_other_than_00_are_refused_not_dropped(tmp_path: Path) -> None:
    config = write_config(tmp_path, schedule={"time": "07:30:15"})
    result = CLI(config, CliRunner())("schedule", "next")
    assert result.exit_code == 1
    assert ("schedule.time: expected a 24-hour time like \"07:00\" (or \"07:00:00\": a digest is due on "
            "the minute, so seconds are 00), got '07:30:15'") in result.output
