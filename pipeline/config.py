"""Read config.toml once into typed, frozen settings, naming the key of any wrong value.

The settings types and which key fills which field live here; the checks each value goes
through (and the list of problems reported in one run) live in pipeline/config_reader.py.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.config_reader import PASSWORD_ENV, ConfigReader, syntax_error
from pipeline.errors import ConfigError

CONFIG_ENV = "NEWSLETTER_CONFIG"
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent


def _builtin_templates() -> Path:
    """The shipped templates: pipeline/templates in a wheel, templates/ beside it in a checkout."""
    installed = PACKAGE_DIR / "templates"
    return installed if installed.is_dir() else PROJECT_ROOT / "templates"


BUILTIN_TEMPLATES = _builtin_templates()
# docs/ ships as pipeline/docs likewise (the preview serves the email checklist from it).
BUILTIN_DOCS = BUILTIN_TEMPLATES.parent / "docs"
DEFAULT_DATABASE = "sqlite:///newsletter.db"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Upper bounds of settings that have no natural one: far beyond any use, short of an overflow.
HOURS_MAX = 24 * 366  # a year
WEEK_HOURS = 7 * 24 - 1  # the longest window that ends before the next week's digest
COUNT_MAX = 1_000_000_000


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
    smtp_pipelining: bool  # send the envelope in one write when the relay offers PIPELINING
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
    timeout_seconds: float  # one feed's whole fetch, the download included


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
        # utf-8-sig: an editor that starts the file with a byte-order mark (Notepad) is no error.
        text = config_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: no such config file (`newsletter init` writes one here; "
            f"or use --config PATH or set {CONFIG_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(syntax_error(config_path, text, exc)) from None
    return parse_settings(raw, config_path)


def parse_settings(raw: dict[str, Any], config_path: Path) -> Settings:
    """Turn a parsed TOML document into Settings (pure; `config_path` anchors relative paths)."""
    r = ConfigReader(raw, config_path)
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
    database = DatabaseSettings(url=r.database_url("database.url", DEFAULT_DATABASE, base))
    schedule = ScheduleSettings(
        weekday=r.choice("schedule.weekday", WEEKDAYS, "monday", transform=str.lower),
        time=r.clock_time("schedule.time", "07:00"),
        timezone=r.convert("schedule.timezone", ZoneInfo, 'an IANA timezone like "Europe/Berlin"',
                           "UTC"),
        # Above 0: the job runs a moment after its time, and a grace of 0 expired every week.
        # Under a week: a window reaching into the next week's digest leaves the older issue to
        # a run that never resumes it.
        grace_hours=r.number("schedule.grace_hours", 12, minimum=0.1, maximum=WEEK_HOURS),
        expire_after_hours=r.number("schedule.expire_after_hours", 72, minimum=0.1, maximum=WEEK_HOURS),
        enqueue=r.boolean("schedule.enqueue", False),
    )
    if schedule.expire_after_hours < schedule.grace_hours:
        r.problem(f"schedule.expire_after_hours: {schedule.expire_after_hours:g} is less than "
                  f"schedule.grace_hours ({schedule.grace_hours:g}): a late start must come before expiry")
    templates = r.text("digest.templates", "", allow_empty=True)
    if templates and not (base / templates).is_dir():  # else the built-in ones would apply silently
        r.problem(f"digest.templates: the folder {base / templates} does not "
                  'exist (create it, or set templates = "" for the built-in ones)')
    digest = DigestSettings(
        max_essays=r.integer("digest.max_essays", 5, minimum=1, maximum=1000),
        excerpt_length=r.integer("digest.excerpt_length", 300, minimum=40, maximum=100_000),
        related_per_essay=r.integer("digest.related_per_essay", 3, minimum=0, maximum=50),
        subject_one=_subject(r, "digest.subject_one", "{title}"),
        subject_many=_subject(r, "digest.subject_many", "{title} and {more} more"),
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
        smtp_timeout=r.number("delivery.smtp_timeout", 30, minimum=1, maximum=3600),
        smtp_pipelining=r.boolean("delivery.smtp_pipelining", True),
        connections=r.integer("delivery.connections", 1, minimum=1, maximum=64),
        batch_size=r.integer("delivery.batch_size", 50, minimum=1, maximum=100_000),
        rate_per_second=r.number("delivery.rate_per_second", 0, minimum=0, maximum=100_000),
        rate_per_hour=r.integer("delivery.rate_per_hour", 0, minimum=0, maximum=COUNT_MAX),
        rate_per_day=r.integer("delivery.rate_per_day", 0, minimum=0, maximum=COUNT_MAX),
        retry_hours=r.number("delivery.retry_hours", 24, minimum=0, maximum=HOURS_MAX),
        lease_seconds=r.integer("delivery.lease_seconds", 600, minimum=1, maximum=7 * 86_400),
        dkim_key=(base / dkim_key) if dkim_key else None,
        dkim_selector=r.text("delivery.dkim_selector", "", allow_empty=True),
    )
    if delivery.dkim_key is not None and not delivery.dkim_selector:
        r.problem("delivery.dkim_selector: needed when dkim_key is set")
    if delivery.outbox_dir.exists() and not delivery.outbox_dir.is_dir():  # else found mid-send
        r.problem(f"delivery.outbox_dir: {delivery.outbox_dir} is a file, not a folder")
    if 0 < delivery.rate_per_second < 1 / 3600:  # fewer than one a hour: a window of years
        r.problem(f"delivery.rate_per_second: {delivery.rate_per_second:g} is under one message an hour; "
                  "use rate_per_hour or rate_per_day for slow limits")
    sources = SourceSettings(
        feeds=tuple(dict.fromkeys(r.url_list("sources.feeds", []))),
        first_poll_days=r.integer("sources.first_poll_days", 7, minimum=0, maximum=36_500),
        timeout_seconds=r.number("sources.timeout_seconds", 20, minimum=1, maximum=3600),
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


def _bounce_settings(r: ConfigReader, base: Path, sender: str) -> BounceSettings:
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
    warn = r.number("bounces.complaint_warn_rate", 0.001, minimum=0, maximum=1)
    pause = r.number("bounces.complaint_pause_rate", 0.003, minimum=0, maximum=1)
    if pause and warn > pause:
        r.fail("bounces.complaint_warn_rate", f"a rate <= complaint_pause_rate ({pause:g})", warn)
    return BounceSettings(
        enabled=enabled,
        return_path=return_path,
        mailbox=mailbox,
        imap_username=r.text("bounces.imap_username", "", allow_empty=True),
        imap_password=os.environ.get(password_env) or None,
        soft_bounce_limit=r.integer("bounces.soft_bounce_limit", 2, minimum=1, maximum=1000),
        soft_bounce_days=r.number("bounces.soft_bounce_days", 30, minimum=0, maximum=3660),
        complaint_warn_rate=warn,
        complaint_pause_rate=pause,
        interval_minutes=r.number("bounces.interval_minutes", 15, minimum=1, maximum=7 * 1440),
    )


SUBJECT_FIELDS = ("title", "more", "count")


def _subject(r: ConfigReader, key: str, default: str) -> str:
    """A subject pattern, checked when the config loads rather than when an issue is composed:
    only {title}, {more} and {count}, no attribute or index ({more.x}), and no width that would
    make a subject of gigabytes ({more:>99999999999})."""
    pattern = r.text(key, default)
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:  # a lone "{" or "}"
        r.problem(f"{key}: {pattern!r} is not a pattern: {exc} (write {{{{ and }}}} for braces)")
        return default
    for name, spec in fields:
        if name not in SUBJECT_FIELDS or any(len(run) > 3 for run in re.findall(r"\d+", spec or "")):
            r.problem(f"{key}: {pattern!r} can use only {{title}}, {{more}} and {{count}}, with at most "
                      f"a short format such as {{more:>3}} (found {{{name}{':' + spec if spec else ''}}})")
            return default
    return pattern
