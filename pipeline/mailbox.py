"""Read the bounce mailbox: a Maildir folder, an mbox file or an IMAP folder, one message at a time.

A source yields (handle, raw bytes) for every message not handled yet and is told `done(handle)`
once a message's finding is recorded: a Maildir message then moves to the `.Processed` folder
beside it, an IMAP message gets the \\Seen flag and the `NewsletterProcessed` keyword. An mbox
file is never rewritten (another program may be appending to it): its messages are skipped
by the Message-IDs recorded in the database. imaplib enters the project only here.
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from pipeline.config import BounceSettings
from pipeline.errors import NewsletterError
from pipeline.web_addresses import is_loopback

PROCESSED_FOLDER = "Processed"
PROCESSED_KEYWORD = "NewsletterProcessed"
LOCK_TRIES, LOCK_WAIT = 50, 0.1  # an mbox locked by a delivery: wait up to 5 s


class MailboxError(NewsletterError):
    """The bounce mailbox cannot be opened or read."""


class Source(Protocol):
    """Messages of one mailbox; `done` marks one handled so the next run does not read it."""

    description: str

    def messages(self) -> Iterator[tuple[str, bytes]]: ...

    def done(self, handle: str) -> None: ...

    def close(self) -> None: ...


def open_source(bounces: BounceSettings, location: str | None = None) -> Source:
    """The source `location` (default: bounces.mailbox) names: imap(s):// URL, folder or file."""
    where = location or bounces.mailbox
    if not where:
        raise MailboxError("no bounce mailbox: set bounces.mailbox in config.toml or pass --mailbox")
    if where.startswith(("imap://", "imaps://")):
        return IMAPSource(where, bounces.imap_username, bounces.imap_password)
    path = Path(where)
    if path.is_dir():
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise MailboxError(f"{path} is a folder but not a Maildir (it has no cur/ and new/)")
        return MaildirSource(path)
    if path.is_file():
        return MboxSource(path)
    raise MailboxError(f"{path}: no such Maildir folder or mbox file")


class MaildirSource:
    """A Maildir; handled messages move to its `.Processed` subfolder (Maildir++)."""

    def __init__(self, path: Path) -> None:
        self.description = f"Maildir {path}"
        self.path = path
        self.box = mailbox.Maildir(path, factory=None, create=False)

    def messages(self) -> Iterator[tuple[str, bytes]]:
        for key in sorted(self.box.keys()):
            try:
                yield key, self.box.get_bytes(key)
            except (KeyError, FileNotFoundError):  # taken by another reader meanwhile
                continue

    def done(self, handle: str) -> None:
        folder = self.box.add_folder(PROCESSED_FOLDER)
        try:
            raw = self.box.get_bytes(handle)
        except (KeyError, FileNotFoundError):
            return
        # The bytes move as they are, never parsed: a message the parser chokes on (thousands of
        # nested parts) must leave the mailbox too, and re-generating a parsed message may change
        # it. Delivered to new/ then renamed into cur/ as Seen, as a mail client reading it would.
        key = folder.add(raw)
        processed = self.path / f".{PROCESSED_FOLDER}"
        os.replace(processed / "new" / key, processed / "cur" / f"{key}{self.box.colon}2,S")
        self.box.discard(handle)

    def close(self) -> None:
        self.box.close()


class MboxSource:
    """An mbox file, read and never rewritten."""

    def __init__(self, path: Path) -> None:
        self.description = f"mbox {path}"
        self.box = mailbox.mbox(path, factory=None, create=False)

    def messages(self) -> Iterator[tuple[str, bytes]]:
        try:
            keys = self._whole_messages()
        except (OSError, mailbox.Error) as exc:
            raise MailboxError(f"{self.description}: cannot read: {exc}") from None
        for key in keys:
            yield str(key), self.box.get_bytes(key)

    def _whole_messages(self) -> list[str]:
        """The keys of the messages written whole. A mail server appends to an mbox under its
        lock (fcntl and a dotlock), so the list is read under the same lock and no message is
        seen half-delivered; a last message without its final newline is one a writer that does
        not lock is still writing: it waits for the next run (judged now, it would be recorded
        as handled and lost). Messages before the end never change, so they are read unlocked."""
        locked = self._lock()
        try:
            keys = list(self.box.keys())
            if keys and not self.box.get_bytes(keys[-1]).endswith(b"\n"):
                keys.pop()
        finally:
            if locked:
                self.box.unlock()
        return keys

    def _lock(self) -> bool:
        """Take the mbox lock (a delivery in progress has a moment to finish); False when this
        process may not lock the file (read-only), so it reads without."""
        for _ in range(LOCK_TRIES):
            try:
                self.box.lock()
                return True
            except mailbox.ExternalClashError:
                time.sleep(LOCK_WAIT)
            except OSError:
                return False
        raise MailboxError(f"{self.description}: locked by another program for "
                           f"{LOCK_TRIES * LOCK_WAIT:.0f} s (a delivery stuck?): try again later")

    def done(self, handle: str) -> None:
        pass  # the recorded Message-ID is the mark (see the module docstring)

    def close(self) -> None:
        self.box.close()


class IMAPSource:
    """An IMAP folder: imaps:// over TLS, or imap:// to a loopback port only (no password in clear)."""

    def __init__(self, url: str, username: str, password: str | None) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        self.description = f"IMAP {parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}/{folder}"
        if not host:
            raise MailboxError(f"bounces.mailbox: {url!r} names no host")
        if parts.scheme == "imap" and not is_loopback(host):
            raise MailboxError(f"bounces.mailbox: imap:// (no TLS) is only for a local port; use imaps://{host}")
        user = unquote(parts.username or "") or username
        secret = unquote(parts.password or "") if parts.password else password
        if not user or secret is None:
            raise MailboxError(f"{self.description}: set bounces.imap_username and the password's "
                               f"environment variable (bounces.imap_password_env)")
        try:
            if parts.scheme == "imaps":
                self.imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, parts.port or 993,
                                                             ssl_context=ssl.create_default_context(),
                                                             timeout=30)
            else:
                self.imap = imaplib.IMAP4(host, parts.port or 143, timeout=30)
            self.imap.login(user, secret)
            status, _ = self.imap.select(_quote(folder))
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            raise MailboxError(f"{self.description}: cannot connect: {exc}") from None
        except imaplib.IMAP4.error as exc:
            raise MailboxError(f"{self.description}: {_text(exc)}") from None
        if status != "OK":
            raise MailboxError(f"{self.description}: no such folder {folder!r}")

    def messages(self) -> Iterator[tuple[str, bytes]]:
        status, data = self.imap.uid("SEARCH", "UNKEYWORD", PROCESSED_KEYWORD)
        if status != "OK":
            raise MailboxError(f"{self.description}: SEARCH failed: {_text(data)}")
        for uid in (data[0] or b"").decode("ascii").split():
            status, fetched = self.imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((item[1] for item in fetched if isinstance(item, tuple)), None)
            if status == "OK" and isinstance(raw, bytes):
                yield uid, raw

    def done(self, handle: str) -> None:
        self.imap.uid("STORE", handle, "+FLAGS", f"(\\Seen {PROCESSED_KEYWORD})")

    def close(self) -> None:
        try:
            self.imap.close()
            self.imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
