"""The checking reader behind config.py: typed look-ups of dotted keys that note every problem."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pipeline.errors import ConfigError
from pipeline.web_addresses import MAX_URL, url_problem

PASSWORD_ENV = "NEWSLETTER_SMTP_PASSWORD"
T = TypeVar("T")
_MISSING = object()


def address_problem(value: str) -> str | None:
    """Why `value` cannot be a sender or bounce address; None: it can (the full check is the
    relay's; this catches a name, a bare domain or a typo at `init` and in config.toml)."""
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or any(c in value for c in " <>\r\n"):
        return "expected an email address like letters@example.org"
    return None


class ConfigReader:
    """Looks up dotted keys; a wrong or missing value is noted (file, key, want) and a stand-in
    returned, so that one run reports every problem of the file (raise_problems)."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.raw = raw
        self.path = path
        self.read: set[str] = {"delivery.smtp_password"}  # every key looked up; see refuse_unknown_keys
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def raise_problems(self) -> None:
        if len(self.problems) == 1:
            raise ConfigError(f"{self.path}: {self.problems[0]}")
        if self.problems:
            raise ConfigError(f"{self.path}: {len(self.problems)} problems:\n"
                              + "\n".join(f"  {p}" for p in self.problems))

    def refuse_unknown_keys(self) -> None:
        """A key nobody reads is a typo: ignored, its default would apply without a word."""
        sections = {key.partition(".")[0] for key in self.read}
        for section, values in self.raw.items():
            if section not in sections or not isinstance(values, dict):
                what = "section" if isinstance(values, dict) else "key"
                self.unknown(section, sorted(sections), what)
                continue
            for name in values:
                key = f"{section}.{name}"
                if key == "delivery.smtp_password":
                    self.problem(f"{key}: not read from the file: set {PASSWORD_ENV}")
                elif key not in self.read:
                    self.unknown(key, sorted(self.read), "key")

    def unknown(self, key: str, known: list[str], what: str) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        self.problem(f"{key}: unknown {what}" + (f" (did you mean {close[0]}?)" if close else ""))

    def fail(self, key: str, want: str, value: object = _MISSING) -> None:
        got = "it is missing" if value is _MISSING else f"got {_as_written(value)}"
        self.problem(f"{key}: expected {want}, {got}")

    def get(self, key: str, default: object = _MISSING) -> Any:
        """The value at `key`, `default` when absent, or _MISSING (noted) when required."""
        self.read.add(key)
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is _MISSING:
                    self.fail(key, "a value")
                return default
            node = node[part]
        return node

    def text(self, key: str, default: object = _MISSING, allow_empty: bool = False) -> str:
        value = self.get(key, default)
        if value is _MISSING:
            return ""
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            self.fail(key, "a non-empty string" if not allow_empty else "a string", value)
            return ""
        return value.strip()

    def url(self, key: str) -> str:
        value = self.text(key)
        if value and url_problem(value):  # as a feed's or an essay's address is checked
            self.fail(key, f"an http:// or https:// URL with a host name, of at most {MAX_URL} characters", value)
        return value.rstrip("/")

    def url_list(self, key: str, default: object = _MISSING) -> list[str]:
        value = self.get(key, default)
        want = 'a list of http:// or https:// URLs like ["https://example.org/feed.xml"]'
        if not isinstance(value, list):
            self.fail(key, want, value)
            return []
        for item in value:  # checked as `newsletter feeds add` checks one
            problem = "not text" if not isinstance(item, str) else url_problem(item.strip())
            if problem:
                self.fail(key, f"{want} ({problem})", item)
                return []
        return [item.strip() for item in value]

    def address(self, key: str) -> str:
        value = self.text(key)
        if value and address_problem(value):
            self.fail(key, "an email address like letters@example.org", value)
        return value

    def choice(
        self,
        key: str,
        options: tuple[str, ...],
        default: object = _MISSING,
        transform: Callable[[str], str] = str,
    ) -> str:
        value = self.get(key, default)
        if value is _MISSING:
            return options[0]
        if not isinstance(value, str) or transform(value) not in options:
            self.fail(key, "one of " + ", ".join(options), value)
            return options[0]
        return transform(value)

    def integer(self, key: str, default: object = _MISSING, *, minimum: int = 0, maximum: int) -> int:
        """A whole number in [minimum, maximum]: every setting states its range, so no value
        can overflow a date, a database column or a buffer later, mid-send."""
        value = self.get(key, default)
        if value is _MISSING:
            return minimum
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.fail(key, f"a whole number >= {minimum} and <= {maximum:,}", value)
            return minimum
        return value

    def number(self, key: str, default: object = _MISSING, *, minimum: float = 0, maximum: float) -> float:
        """A finite number in [minimum, maximum] (TOML allows nan and inf; no setting does)."""
        value = self.get(key, default)
        if value is _MISSING:
            return float(minimum)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not minimum <= value <= maximum):
            self.fail(key, f"a number >= {minimum:g} and <= {maximum:,g}", value)
            return float(minimum)
        return float(value)

    def boolean(self, key: str, default: object = _MISSING) -> bool:
        value = self.get(key, default)
        if value is _MISSING:
            return False
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
            return False
        return value

    def convert(self, key: str, parse: Callable[[str], T], want: str, default: str) -> T:
        """`parse` of the value; the stand-in for a bad or missing one is parse(default)."""
        value = self.get(key, default)
        if value is _MISSING:
            return parse(default)
        try:
            return parse(value.strip())
        # OSError: zoneinfo reads a name like "Europe" (a folder) or one too long as a file path.
        except (ValueError, ZoneInfoNotFoundError, IndexError, TypeError, AttributeError, OSError):
            self.fail(key, want, value)
            return parse(default)

    def clock_time(self, key: str, default: str) -> time:
        """A 24-hour "HH:MM" (or "HH:MM:00") time."""
        return self.convert(key, _parse_time, 'a 24-hour time like "07:00" (or "07:00:00": a digest '
                            'is due on the minute, so seconds are 00)', default)

    def database_url(self, key: str, default: str, base: Path) -> str:
        """Resolve a relative SQLite path against the config's folder, so cwd does not matter.

        The URL is parsed and its driver imported here, so that a typo or a missing driver is a
        message naming the key instead of a SQLAlchemy traceback at the first query.
        """
        url = self.text(key, default)
        if not url:
            return url  # already reported
        try:
            parsed = make_url(url)
            dialect = parsed.get_dialect()  # NoSuchModuleError (an ArgumentError): unknown scheme
        except (ArgumentError, ValueError):
            self.fail(key, 'a SQLAlchemy URL like "sqlite:///newsletter.db" or '
                      '"postgresql+psycopg://user@host/dbname"', url)
            return url
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            # The URL may carry a password: name the scheme only.
            self.problem(f"{key}: the driver for {parsed.drivername!r} is not "
                         f"installed (no module {exc.name!r}); use sqlite:/// or postgresql+psycopg://")
            return url
        if parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
            # Each command would open a fresh, empty database and lose it on leaving.
            self.problem(f"{key}: {url!r} is a database in memory, gone when the command ends; "
                         "name a file, e.g. sqlite:///newsletter.db")
            return url
        prefix = "sqlite:///"
        if url.startswith(prefix):
            path = base / url[len(prefix):]  # an absolute path stays as it is
            if not path.parent.is_dir():  # else SQLite says only "unable to open database file"
                self.problem(f"{key}: the folder {path.parent} does not exist "
                             "(create it, or fix the path)")
            elif path.is_dir():
                self.problem(f"{key}: {path} is a folder: name a file in it, "
                             f"e.g. sqlite:///{path / 'newsletter.db'}")
            return prefix + str(path)
        return url


def _as_written(value: object) -> str:
    """A wrong value as the file gives it. TOML reads an unquoted 07:00:00 or 2026-01-05 as a time
    or a date, which Python would show as "datetime.time(7, 0)": neither what the file says nor
    why it is wrong, so it is shown in TOML's form, with what TOML took it for."""
    if isinstance(value, (date, time)):  # a datetime is a date too
        kind = "date-time" if isinstance(value, datetime) else "date" if isinstance(value, date) else "time"
        return f"{value.isoformat()}, which TOML reads as a {kind} since it has no quotes"
    return repr(value)


def _parse_time(value: str) -> time:
    """"HH:MM", or "HH:MM:SS" with seconds 00: every place that shows the schedule shows minutes,
    so other seconds are refused rather than kept unseen (or dropped unsaid)."""
    hours, minutes, *seconds = value.split(":")
    if len(seconds) > 1 or (seconds and (not seconds[0].isdigit() or int(seconds[0]) != 0)):
        raise ValueError(f"{value!r}: seconds other than 00")
    return time(int(hours), int(minutes))


_ERROR_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_UNQUOTED_TIME = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*(\d{1,2}:\d{2})\s*(#.*)?")
# The password of a URL's user:password@ (a database URL), which a line shown must not print.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
SHOWN_LINE = 200  # characters of the offending line shown: a long one is cut


def syntax_error(path: Path, text: str, error: ValueError) -> str:
    """The message for a file TOML cannot read: the parser's words (which give the line number
    only), the line itself, and for `key = 07:00` what to write instead: TOML reads a time only
    with seconds, and then as a time, where the settings want text."""
    message = f"{path}: not valid TOML: {error}"
    found = _ERROR_LINE.search(str(error))
    lines = text.split("\n")  # as TOML counts them: U+2028 or NEL in a comment is no line break
    if found is None or not 1 <= int(found.group(1)) <= len(lines):
        return message  # "at end of document": no one line to show
    number = int(found.group(1))
    line = _URL_PASSWORD.sub(r"\1***@", lines[number - 1].strip())
    message += f"\n  line {number}: {line[:SHOWN_LINE]}{' ...' if len(line) > SHOWN_LINE else ''}"
    unquoted = _UNQUOTED_TIME.fullmatch(lines[number - 1])
    if unquoted:
        message += f'\n  put the time in quotes: {unquoted.group(1)} = "{unquoted.group(2)}"'
    return message
