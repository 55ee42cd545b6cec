"""Read config.toml once into typed, frozen settings, naming the key of any wrong value."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pipeline.errors import ConfigError

CONFIG_ENV = "NEWSLETTER_CONFIG"
PASSWORD_ENV = "NEWSLETTER_SMTP_PASSWORD"
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def _builtin_templates() -> Path:
    """The shipped templates: pipeline/templates in a wheel, templates/ beside it in a checkout."""
    installed = PACKAGE_DIR / "templates"
    return installed if installed.is_dir() else PROJECT_ROOT / "templates"


BUILTIN_TEMPLATES = _builtin_templates()
# docs/ ships as pipeline/docs likewise (the preview serves the email checklist from it).
BUILTIN_DOCS = BUILTIN_TEMPLATES.parent / "docs"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

T = TypeVar("T")


@dataclass(frozen=True)
class NewsletterSettings:
    name: str
    site_url: str
    sender_name: str
    sender_address: str
    postal_address: str
    language: str
    direction: str

    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2]


@dataclass(frozen=True)
class WebSettings:
    base_url: str
    preview_token: str | None


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class ScheduleSettings:
    weekday: str
    time: time
    timezone: ZoneInfo
    grace_hours: float
    expire_after_hours: float
    enqueue: bool = False  # the scheduled job hands the issue to `newsletter worker` processes


@dataclass(frozen=True)
class DigestSettings:
    max_essays: int
    excerpt_length: int
    related_per_essay: int
    subject_one: str
    subject_many: str
    templates: Path | None


@dataclass(frozen=True)
class SubscriberSettings:
    double_opt_in: bool
    check_deliverability: bool


@dataclass(frozen=True)
class DeliverySettings:
    transport: str
    outbox_dir: Path
    smtp_host: str
    smtp_port: int
    smtp_tls: str
    smtp_username: str
    smtp_password: str | None
    smtp_timeout: float
    connections: int
    batch_size: int
    rate_per_second: float
    rate_per_hour: int
    rate_per_day: int
    retry_hours: float
    lease_seconds: int
    dkim_key: Path | None
    dkim_selector: str


@dataclass(frozen=True)
class SourceSettings:
    feeds: tuple[str, ...]  # RSS/Atom feeds polled besides those added with `feeds add`
    first_poll_days: int  # on a feed's first poll, only entries this recent are new
    timeout_seconds: float  # per feed request


@dataclass(frozen=True)
class BounceSettings:
    """[bounces]: the VERP return path, the bounce mailbox, and the thresholds applied to it."""

    enabled: bool
    return_path: str  # "bounces@letters.example.org": VERP makes bounces+<token>@letters.example.org
    mailbox: str  # a Maildir folder, an mbox file, or imap(s)://host[:port]/folder
    imap_username: str
    imap_password: str | None
    soft_bounce_limit: int
    soft_bounce_days: float
    complaint_warn_rate: float
    complaint_pause_rate: float
    interval_minutes: float

    @property
    def local_part(self) -> str:
        return self.return_path.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.return_path.rpartition("@")[2]

    @property
    def unsubscribe_address(self) -> str:
        """Where the List-Unsubscribe mailto points: the bounce mailbox, so it is read."""
        return f"{self.local_part}+unsubscribe@{self.domain}"


DISABLED_BOUNCES = BounceSettings(False, "", "", "", None, 2, 30.0, 0.001, 0.003, 15.0)


@dataclass(frozen=True)
class Settings:
    """Everything config.toml says, checked and typed; `path` is the file it came from."""

    path: Path
    newsletter: NewsletterSettings
    web: WebSettings
    database: DatabaseSettings
    schedule: ScheduleSettings
    digest: DigestSettings
    subscribers: SubscriberSettings
    delivery: DeliverySettings
    sources: SourceSettings
    bounces: BounceSettings = DISABLED_BOUNCES

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are resolved against."""
        return self.path.parent

    def template_dirs(self) -> list[Path]:
        """The template folders to search, the user's overrides first."""
        dirs = [BUILTIN_TEMPLATES]
        if self.digest.templates is not None:
            dirs.insert(0, self.digest.templates)
        return dirs


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: an explicit path, else $NEWSLETTER_CONFIG, else ./config.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path("config.toml")


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and check a config file; raise ConfigError naming the file and key on any problem."""
    config_path = find_config(path).resolve()
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: no such config file (`newsletter init` writes one here; "
            f"or use --config PATH or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    return parse_settings(raw, config_path)


def parse_settings(raw: dict[str, Any], config_path: Path) -> Settings:
    """Turn a parsed TOML document into Settings (pure; `config_path` anchors relative paths)."""
    r = _Reader(raw, config_path)
    base = config_path.parent
    # Only name, site_url, sender_address and base_url must be decided (`newsletter init`
    # asks for them); every other key has a default, so a minimal config.toml is enough.
    name = r.text("newsletter.name")
    newsletter = NewsletterSettings(
        name=name,
        site_url=r.url("newsletter.site_url"),
        sender_name=r.text("newsletter.sender_name", name or "Newsletter"),
        sender_address=r.address("newsletter.sender_address"),
        # Empty until set: `newsletter lint` and the preview's Checks flag it (H21).
        postal_address=r.text("newsletter.postal_address", "", allow_empty=True),
        language=r.text("newsletter.language", "en"),
        direction=r.choice("newsletter.direction", ("ltr", "rtl"), "ltr"),
    )
    token_env = r.text("web.preview_token_env", "NEWSLETTER_PREVIEW_TOKEN")
    web = WebSettings(
        base_url=r.url("web.base_url"),
        preview_token=os.environ.get(token_env) or None,
    )
    database = DatabaseSettings(url=_database_url(r, r.text("database.url", DEFAULT_DATABASE), base))
    schedule = ScheduleSettings(
        weekday=r.choice("schedule.weekday", WEEKDAYS, "monday", transform=str.lower),
        time=r.convert("schedule.time", _parse_time, 'a 24-hour time like "07:00"', "07:00"),
        timezone=r.convert("schedule.timezone", ZoneInfo, 'an IANA timezone like "Europe/Berlin"',
                           "UTC"),
        grace_hours=r.number("schedule.grace_hours", 12, minimum=0),
        expire_after_hours=r.number("schedule.expire_after_hours", 72, minimum=0),
        enqueue=r.boolean("schedule.enqueue", False),
    )
    templates = r.text("digest.templates", "", allow_empty=True)
    if templates and not (base / templates).is_dir():  # else the built-in ones would apply silently
        r.problem(f"digest.templates: the folder {base / templates} does not "
                  'exist (create it, or set templates = "" for the built-in ones)')
    digest = DigestSettings(
        max_essays=r.integer("digest.max_essays", 5, minimum=1),
        excerpt_length=r.integer("digest.excerpt_length", 300, minimum=40),
        related_per_essay=r.integer("digest.related_per_essay", 3, minimum=0),
        subject_one=r.text("digest.subject_one", "{title}"),
        subject_many=r.text("digest.subject_many", "{title} and {more} more"),
        templates=(base / templates) if templates else None,
    )
    subscribers = SubscriberSettings(
        double_opt_in=r.boolean("subscribers.double_opt_in", True),
        check_deliverability=r.boolean("subscribers.check_deliverability", False),
    )
    dkim_key = r.text("delivery.dkim_key", "", allow_empty=True)
    delivery = DeliverySettings(
        transport=r.choice("delivery.transport", ("outbox", "smtp"), "outbox"),
        outbox_dir=base / r.text("delivery.outbox_dir", "outbox"),
        smtp_host=r.text("delivery.smtp_host", "localhost"),
        smtp_port=r.integer("delivery.smtp_port", 587, minimum=1, maximum=65535),
        smtp_tls=r.choice("delivery.smtp_tls", ("starttls", "tls", "none"), "starttls"),
        smtp_username=r.text("delivery.smtp_username", "", allow_empty=True),
        smtp_password=os.environ.get(PASSWORD_ENV) or None,
        smtp_timeout=r.number("delivery.smtp_timeout", 30, minimum=1),
        connections=r.integer("delivery.connections", 1, minimum=1, maximum=64),
        batch_size=r.integer("delivery.batch_size", 50, minimum=1),
        rate_per_second=r.number("delivery.rate_per_second", 0, minimum=0),
        rate_per_hour=r.integer("delivery.rate_per_hour", 0, minimum=0),
        rate_per_day=r.integer("delivery.rate_per_day", 0, minimum=0),
        retry_hours=r.number("delivery.retry_hours", 24, minimum=0),
        lease_seconds=r.integer("delivery.lease_seconds", 600, minimum=1),
        dkim_key=(base / dkim_key) if dkim_key else None,
        dkim_selector=r.text("delivery.dkim_selector", "", allow_empty=True),
    )
    if delivery.dkim_key is not None and not delivery.dkim_selector:
        r.problem("delivery.dkim_selector: needed when dkim_key is set")
    sources = SourceSettings(
        feeds=tuple(dict.fromkeys(r.url_list("sources.feeds", []))),
        first_poll_days=r.integer("sources.first_poll_days", 7, minimum=0),
        timeout_seconds=r.number("sources.timeout_seconds", 20, minimum=1),
    )
    bounces = _bounce_settings(r, base, newsletter.sender_address)
    r.refuse_unknown_keys()
    r.raise_problems()  # every problem of the file at once, not one per run
    return Settings(
        path=config_path,
        newsletter=newsletter,
        web=web,
        database=database,
        schedule=schedule,
        digest=digest,
        subscribers=subscribers,
        delivery=delivery,
        sources=sources,
        bounces=bounces,
    )


def _bounce_settings(r: _Reader, base: Path, sender: str) -> BounceSettings:
    """[bounces] (optional: without it, or with enabled = false, nothing is read from a mailbox)."""
    enabled = r.boolean("bounces.enabled", False)
    return_path = r.text("bounces.return_path", "", allow_empty=True)
    mailbox = r.text("bounces.mailbox", "", allow_empty=True)
    if return_path:
        r.address("bounces.return_path")
    if "+" in return_path.partition("@")[0]:
        r.fail("bounces.return_path", "an address without '+' (VERP adds +<token>)", return_path)
    return_path = return_path or sender
    if len(return_path.partition("@")[0]) > 20 and (enabled or r.get("bounces.return_path", "")):
        # + "+" + a token of about 43 characters: a local part may have 64 at most (RFC 5321)
        r.fail("bounces.return_path", "a local part of at most 20 characters (VERP adds a "
               "43-character token, and a local part may have 64)", return_path)
    if enabled and not mailbox:
        r.fail("bounces.mailbox", "a Maildir folder, an mbox file or an imaps:// URL when enabled")
    if mailbox and not mailbox.startswith(("imap://", "imaps://")):
        mailbox = str(base / mailbox)
    password_env = r.text("bounces.imap_password_env", "NEWSLETTER_IMAP_PASSWORD")
    warn = r.number("bounces.complaint_warn_rate", 0.001, minimum=0)
    pause = r.number("bounces.complaint_pause_rate", 0.003, minimum=0)
    if pause and warn > pause:
        r.fail("bounces.complaint_warn_rate", f"a rate <= complaint_pause_rate ({pause:g})", warn)
    return BounceSettings(
        enabled=enabled,
        return_path=return_path,
        mailbox=mailbox,
        imap_username=r.text("bounces.imap_username", "", allow_empty=True),
        imap_password=os.environ.get(password_env) or None,
        soft_bounce_limit=r.integer("bounces.soft_bounce_limit", 2, minimum=1),
        soft_bounce_days=r.number("bounces.soft_bounce_days", 30, minimum=0),
        complaint_warn_rate=warn,
        complaint_pause_rate=pause,
        interval_minutes=r.number("bounces.interval_minutes", 15, minimum=1),
    )


def _database_url(r: _Reader, url: str, base: Path) -> str:
    """Resolve a relative SQLite path against the config's folder, so cwd does not matter.

    The URL is parsed and its driver imported here, so that a typo or a missing driver is a
    message naming the key instead of a SQLAlchemy traceback at the first query.
    """
    if not url:
        return url  # already reported
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()  # NoSuchModuleError (an ArgumentError): unknown scheme
    except (ArgumentError, ValueError):
        r.fail("database.url", 'a SQLAlchemy URL like "sqlite:///newsletter.db" or '
               '"postgresql+psycopg://user@host/dbname"', url)
        return url
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        # The URL may carry a password: name the scheme only.
        r.problem(f"database.url: the driver for {parsed.drivername!r} is not "
                  f"installed (no module {exc.name!r}); use sqlite:/// or postgresql+psycopg://")
        return url
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != "sqlite:///:memory:":
        path = base / url[len(prefix):]  # an absolute path stays as it is
        if not path.parent.is_dir():  # else SQLite says only "unable to open database file"
            r.problem(f"database.url: the folder {path.parent} does not exist "
                      "(create it, or fix the path)")
        elif path.is_dir():
            r.problem(f"database.url: {path} is a folder: name a file in it, "
                      f"e.g. sqlite:///{path / 'newsletter.db'}")
        return prefix + str(path)
    return url


DEFAULT_DATABASE = "sqlite:///newsletter.db"


def _parse_time(value: str) -> time:
    hours, _, minutes = value.partition(":")
    return time(int(hours), int(minutes))


_MISSING = object()


class _Reader:
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
        got = "it is missing" if value is _MISSING else f"got {value!r}"
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
        if value and not value.startswith(("https://", "http://")):
            self.fail(key, "an http:// or https:// URL", value)
        return value.rstrip("/")

    def url_list(self, key: str, default: object = _MISSING) -> list[str]:
        value = self.get(key, default)
        want = 'a list of http:// or https:// URLs like ["https://example.org/feed.xml"]'
        if not isinstance(value, list):
            self.fail(key, want, value)
            return []
        for item in value:
            if (not isinstance(item, str) or not item.strip().startswith(("https://", "http://"))
                    or len(item.strip()) > 500):  # the longest URL an essay or feed row holds
                self.fail(key, want + " of at most 500 characters", item)
                return []
        return [item.strip() for item in value]

    def address(self, key: str) -> str:
        value = self.text(key)
        local, at, domain = value.partition("@")
        if value and (not at or not local or "." not in domain or any(c in value for c in " <>\r\n")):
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

    def integer(
        self, key: str, default: object = _MISSING, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.get(key, default)
        if value is _MISSING:
            return minimum
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum
        ):
            limits = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            self.fail(key, f"a whole number {limits}", value)
            return minimum
        return value

    def number(self, key: str, default: object = _MISSING, minimum: float = 0) -> float:
        value = self.get(key, default)
        if value is _MISSING:
            return float(minimum)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            self.fail(key, f"a number >= {minimum:g}", value)
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
        except (ValueError, ZoneInfoNotFoundError, IndexError, TypeError, AttributeError):
            self.fail(key, want, value)
            return parse(default)
