"""Essays in: find the files, read each one safely, store it as an Essay in its own transaction.

    import_paths(engine, ["examples/essays", "new.md"]) -> ImportReport

- Folders are searched recursively for *.txt (scraped pages, pipeline/readers/scraped_page.py) and *.md /
  *.markdown (front matter, pipeline/readers/markdown_essay.py); hidden files and folders, and README or
  LICENSE files found there, are skipped.
- A file's slug is its front matter `slug`, else its file name: editing the title keeps the slug,
  so an edited file updates its essay instead of adding a second one. A moved file (its old
  path gone) updates its essay too; a second live file with the same slug is refused.
- Re-importing an unchanged file changes nothing (content_hash over every stored field).
  An update never touches `sent_in_issue_id`: a sent essay stays sent.
- `dry_run` reads and compares everything and writes nothing.
- A file that cannot be taken (missing, not a regular file, empty, binary, not UTF-8, over
  MAX_BYTES, broken front matter, no text) is reported with the reason and writes nothing; the
  other files still import.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError
from sqlmodel import Session, col, select

from pipeline.db import session_scope
from pipeline.errors import ImportProblem, NotFound
from pipeline.excerpt import excerpt
from pipeline.models import Essay, Feed, FeedEntry, Issue
from pipeline.readers.parsed_essay import ParsedEssay, check_limits, slugify
from subscribers.model import utcnow

# The reader of each kind of file, a module of pipeline/readers/. Loaded on the first file of
# its kind: a send or a preview reads essays from the database and needs neither YAML nor
# Markdown nor the page scraper (about 0.15 s of imports).
READERS: dict[str, str] = {".txt": "scraped_page", ".md": "markdown_essay", ".markdown": "markdown_essay"}
# Found in a folder, these document the folder rather than being essays (named, they import).
# Not essays, in a folder scan: a repository's notes, and Hugo's section pages (_index.md).
NOT_ESSAYS = frozenset({"readme", "license", "changelog", "contributing", "_index"})
MAX_BYTES = 2 * 1024 * 1024  # an essay is a few dozen KB; anything this big is the wrong file
ImportChange = Literal["added", "updated", "unchanged"]
Progress = Callable[[int, int, Path], None]  # (files done, files in all, the file just done)


def _reader(name: str) -> Callable[[str], ParsedEssay]:
    if name == "scraped_page":
        from pipeline.readers.scraped_page import parse_page  # noqa: PLC0415  (see READERS)

        return parse_page
    from pipeline.readers.markdown_essay import parse_markdown  # noqa: PLC0415  (see READERS)

    return parse_markdown


@dataclass
class Failure:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did, by slug; failures and warnings name their file."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": [{"file": str(f.path), "reason": f.reason} for f in self.failed],
            "warnings": self.warnings,
        }


def _scan(folder: Path, report: ImportReport) -> list[Path]:
    """The essay files under `folder`, in order; what looks like one but cannot be taken (a broken
    link, a link loop, a link leading out of the folder, a folder that cannot be read) goes to
    report.failed by name, rather than being passed over without a word. Pipes and devices are
    kept, for read_essay to refuse as it does when they are named."""
    root = folder.resolve()
    found: list[Path] = []

    def unreadable(error: OSError) -> None:
        report.failed.append(Failure(Path(error.filename or folder), f"cannot read this folder: {error.strerror}"))

    for where, folders, names in os.walk(folder, onerror=unreadable):  # linked folders are not walked
        here = Path(where)
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in folders:
            if (here / name).is_symlink():
                report.warnings.append(f"{here / name}: a link to a folder, not followed; name it to import "
                                       "its essays")
        for name in sorted(names):
            candidate = here / name
            if name.startswith(".") or candidate.suffix.lower() not in READERS or \
                    candidate.stem.lower() in NOT_ESSAYS:
                continue
            problem = _not_an_essay_file(candidate, root)
            if problem:
                report.failed.append(Failure(candidate, problem))
            else:
                found.append(candidate)
    return found


def _not_an_essay_file(path: Path, root: Path) -> str | None:
    """Why a folder's entry cannot be read as an essay file (None: it can)."""
    try:
        if path.is_symlink():
            target = path.resolve(strict=True)
            if root != target and root not in target.parents:
                return (f"a link to {target}, outside the folder: name it to import it "
                        "(a folder's essays are the files in it)")
        path.stat()  # a pipe or a device is read_essay's to refuse, as when it is named
    except FileNotFoundError:
        if not path.is_symlink():  # a file gone between the folder's listing and this look
            return "it was removed while the folder was read"
        return f"a broken link (to {os.readlink(path)})"
    except RuntimeError:  # pathlib's word for ELOOP
        return "a link that leads back to itself (a loop)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that leads back to itself (a loop)"
        return f"cannot check it: {exc.strerror}"
    return None


def import_paths(
    engine: Engine,
    paths: Iterable[str | Path],
    progress: Progress | None = None,
    dry_run: bool = False,
    archive: bool = False,
) -> ImportReport:
    """Import every essay file in `paths` (files or folders), each in its own transaction.

    With `dry_run`, every file is read and compared with the database exactly as in a real
    import, and each transaction is rolled back: the report says what would change. With
    `archive`, the essays not sent yet are taken as published before the newsletter: related
    links point to them, and no digest takes them by itself.
    """
    report = ImportReport()
    files = collect_files(paths, report)
    taken: dict[str, Path] = {}  # slug -> file, within this import
    for done, path in enumerate(files, start=1):
        _import_one(engine, path, taken, report, dry_run, archive)
        if progress:
            progress(done, len(files), path)
    return report


def _import_one(engine: Engine, path: Path, taken: dict[str, Path], report: ImportReport, dry_run: bool,
                archive: bool) -> None:
    """Import one file in its own transaction; what became of it goes into `report`."""
    try:
        parsed = read_essay(path)
        if parsed.draft:  # not for readers yet: the site itself does not publish it
            report.warnings.append(f"{path}: not imported: {parsed.draft} in its front matter "
                                   "(import it once that is gone)")
            return
        _drop_unsafe_url(parsed)
        slug = slug_for(parsed, path)
        if slug in taken:
            raise ImportProblem(f"slug {slug!r} is also the slug of {taken[slug]}")
        with session_scope(engine) as session:
            outcome = store(session, parsed, slug, path, archive)
            if dry_run:
                session.rollback()
    except ImportProblem as exc:
        report.failed.append(Failure(path, str(exc)))
    except (IntegrityError, DataError) as exc:  # e.g. another process took the slug just now
        report.failed.append(Failure(path, f"the database refused it: {exc.orig}"))
    except OSError as exc:  # the file system refused a look (a folder without permission): this file only
        report.failed.append(Failure(path, f"cannot read it: {exc.strerror or exc}"
                                             + (f" ({exc.filename})" if exc.filename else "")))
    else:
        taken[slug] = path
        getattr(report, outcome).append(slug)
        report.warnings.extend(f"{path}: {warning}" for warning in parsed.warnings)


def _drop_unsafe_url(parsed: ParsedEssay) -> None:
    """The url becomes the digest's link: "javascript:..." or a scheme-less one must not."""
    if parsed.url and not parsed.url.lower().startswith(("https://", "http://")):
        parsed.warnings.append(f"front matter: url {parsed.url!r} is not an http(s) address; ignored "
                              "(the essay links to site_url/slug)")
        parsed.url = None


def collect_files(paths: Iterable[str | Path], report: ImportReport) -> list[Path]:
    """The essay files named or found under the folders named; the rest go to report.failed."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _scan(path, report)
            if not found:
                report.warnings.append(f"{path}: no .txt, .md or .markdown files in this folder")
            files.extend(found)
        elif not path.exists():
            report.failed.append(Failure(path, "no such file or folder"))
        elif path.suffix.lower() not in READERS:
            report.failed.append(Failure(path, "not an essay file (expected .txt, .md, .markdown)"))
        else:
            files.append(path)
    seen: set[Path] = set()
    unique: list[Path] = []
    for path in files:  # a file named twice (or inside a folder also named) is imported once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def read_source(path: Path) -> str:
    """The file's text; ImportProblem when it is no regular file, too big, empty, binary or not UTF-8."""
    try:
        data = _read_capped(path)
    except OSError as exc:
        raise ImportProblem(f"cannot read: {exc.strerror}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return _not_empty(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise ImportProblem("starts like UTF-16 but does not decode as UTF-16") from None
    if b"\x00" in data:
        raise ImportProblem("binary file (it contains NUL bytes), not text")
    try:
        # utf-8-sig also reads plain UTF-8. Windows-1252 is not guessed: it decodes almost any
        # bytes, so a wrong guess would store mojibake silently. The error says how to convert.
        return _not_empty(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportProblem(
            f"not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8, "
            f"e.g. iconv -f windows-1252 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


def _read_capped(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_BYTES; ImportProblem for anything else.

    A FIFO's open waits for a writer (for ever) and a device can be endless (/dev/zero), so the
    kind of file is checked before it is opened, and again on the opened file in case the name
    was swapped in between. The read itself is capped: st_size can be wrong (a /proc file says
    0) or out of date (a file still being written).
    """
    _must_be_regular(path.stat().st_mode)
    # O_NONBLOCK: should a FIFO slip in after the check, its open returns instead of waiting.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(path, flags), "rb") as file:
        info = os.fstat(file.fileno())
        _must_be_regular(info.st_mode)
        if info.st_size > MAX_BYTES:
            raise ImportProblem(f"too large: {info.st_size:,} bytes (the limit is {MAX_BYTES:,})")
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ImportProblem(f"too large: more than {MAX_BYTES:,} bytes (the limit)")
    return data


def _must_be_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a file")
    raise ImportProblem(f"not a regular file ({kind}); an essay is read from an ordinary file")


def _not_empty(text: str) -> str:
    if not text.strip():
        raise ImportProblem("empty file")
    # Universal newlines, as open() in text mode reads: "\r\n" (Windows) and a lone "\r"
    # (classic Mac) end lines too, and the readers see only "\n". A CR-only file's front matter
    # was otherwise one long line, not front matter at all.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_essay(path: Path) -> ParsedEssay:
    """The ParsedEssay in one file, by its suffix; ImportProblem when there is no essay in it."""
    parsed = _reader(READERS[path.suffix.lower()])(read_source(path))
    if not any(block["kind"] == "p" and block["text"] for block in parsed.body):
        raise ImportProblem("no essay text in the file (only a header, front matter or noise)")
    check_limits(parsed)
    return parsed


def slug_for(parsed: ParsedEssay, path: Path) -> str:
    """The front matter's slug, else one made from the file name, else from the title."""
    if parsed.slug:
        slug = slugify(parsed.slug)
        if not slug:
            raise ImportProblem(f"front matter: slug {parsed.slug!r} has no letters or digits")
        return slug
    # A page bundle (walks/stairs/index.md) is named by its folder, as static site tools do.
    stem = path.parent.name if path.stem.lower() == "index" else path.stem
    slug = slugify(stem) or slugify(parsed.title)
    if not slug:
        raise ImportProblem("cannot make a slug from the file name or title; add `slug:`")
    return slug


def store(session: Session, parsed: ParsedEssay, slug: str, path: Path, archive: bool = False) -> ImportChange:
    """Add the essay or update the one with this slug; never touches sent_in_issue_id. With
    `archive`, an essay not sent yet is marked published before the newsletter (never unmarked:
    a later import without it leaves the mark)."""
    digest = parsed.content_hash(slug)
    source_path = str(path.resolve())
    essay = session.exec(select(Essay).where(Essay.slug == slug)).first()
    if essay is not None and essay.content_hash == digest and essay.source_path == source_path:
        if not _archives(essay, archive):
            return "unchanged"
        essay.archive = True
        session.add(essay)
        return "updated"
    renamed = None if essay is not None else session.exec(
        select(Essay).where(Essay.source_path == source_path)).first()
    if renamed is not None:
        # The same file under another slug: its `slug:` was corrected. A second essay would go
        # out in the next digest beside the first (or again, after it was sent).
        parsed.warnings.append(f"slug {renamed.slug!r} of this file is now {slug!r}: its essay is renamed")
        essay, renamed.slug = renamed, slug
        outcome: ImportChange = "updated"
    elif essay is None:
        essay = Essay(slug=slug, title=parsed.title, content_hash=digest)
        outcome = "added"
    else:
        outcome = "updated"
        feed = _feed_of(session, essay) if not essay.source_path else None
        if feed is not None:  # each would overwrite the other at every import and poll
            raise ImportProblem(f"slug {slug!r} belongs to an essay from the feed {feed}; give this file "
                                "its own `slug:` in front matter, or rename it")
        if essay.source_path and essay.source_path != source_path:
            if Path(essay.source_path).exists():  # two live files, one slug: not an edit
                raise ImportProblem(
                    f"slug {slug!r} belongs to {essay.source_path}; give this file its own "
                    "`slug:` in front matter, or rename it"
                )
            # The old file is gone: the essay moved (or was renamed with a fixed slug).
            parsed.warnings.append(f"slug {slug!r} came from {essay.source_path}; updated from here")
    fill(essay, parsed, digest, source_path)
    essay.archive = essay.archive or _archives(essay, archive)
    session.add(essay)
    return outcome


def _archives(essay: Essay, archive: bool) -> bool:
    """Whether an import `--archive` marks this essay now: only one no issue has sent."""
    return archive and not essay.archive and essay.sent_in_issue_id is None


def _feed_of(session: Session, essay: Essay) -> str | None:
    """The address of the feed this essay came from (None: it came from no feed)."""
    return session.exec(select(Feed.url).join(FeedEntry, col(FeedEntry.feed_id) == col(Feed.id))
                        .where(FeedEntry.essay_id == essay.id)).first()


def fill(essay: Essay, parsed: ParsedEssay, digest: str, source_path: str | None) -> None:
    """Copy a parsed essay into a new or existing Essay row; never touches sent_in_issue_id.

    Every reader's parsed essays (files here, feed entries in pipeline/polling.py) go through this.
    """
    if essay.id is not None and essay.sent_in_issue_id is not None:
        parsed.warnings.append(f"{essay.slug!r} was sent already; the edit reaches later copies only")
    essay.title = parsed.title
    essay.dek = parsed.dek
    essay.body = parsed.body
    essay.published_on = parsed.published_on
    essay.url = parsed.url
    essay.source_url = parsed.source_url
    essay.source_path = source_path
    essay.source_related = parsed.source_related
    essay.tags = parsed.tags
    essay.content_hash = digest
    essay.updated_at = utcnow()


def list_essays(session: Session) -> list[tuple[Essay, str | None]]:
    """Every essay with the key of the issue that sent it (None: not sent), newest first."""
    rows = session.exec(
        select(Essay, Issue.key)
        .join(Issue, col(Essay.sent_in_issue_id) == col(Issue.id), isouter=True)
        .order_by(col(Essay.published_on).desc().nulls_last(), col(Essay.slug))
    ).all()
    return [(essay, key) for essay, key in rows]


def all_essays(session: Session) -> list[Essay]:
    """Every essay, oldest first (by id)."""
    return list(session.exec(select(Essay).order_by(col(Essay.id))))


def essays_by_id(session: Session, ids: Iterable[int]) -> dict[int, Essay]:
    """The essays with these ids, by id (those gone are left out)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.exec(select(Essay).where(col(Essay.id).in_(wanted)))
    return {essay.id: essay for essay in rows if essay.id is not None}


def slugs_starting(session: Session, base: str) -> set[str]:
    """The slugs of the essays whose slug starts with `base`."""
    return set(session.exec(select(Essay.slug).where(col(Essay.slug).startswith(base))))


def get_essay(session: Session, slug: str) -> Essay:
    essay = session.exec(select(Essay).where(Essay.slug == slug)).first()
    if essay is None:
        raise NotFound(f"no essay with slug {slug!r} (see `newsletter essays list`)")
    return essay


def set_held(session: Session, slug: str, held: bool) -> tuple[Essay, bool]:
    """Hold the essay back from the digests (`held`), or release it: the essay, and whether
    that changed it. NotFound names an unknown slug."""
    essay = get_essay(session, slug)
    if essay.held == held:
        return essay, False
    essay.held = held
    session.add(essay)
    session.flush()
    return essay, True


def delete_essay(session: Session, essay: Essay) -> None:
    """Delete the essay's row; the caller has made sure that nothing refers to it any more."""
    session.delete(essay)
    session.flush()


def word_count(essay: Essay) -> int:
    return sum(len(block["text"].split()) for block in essay.body if block["kind"] == "p")


def describe_essay(essay: Essay, excerpt_length: int, sent_in: str | None = None) -> dict[str, Any]:
    """What `essays show` prints (and its --json): the essay as a reader and an editor see it."""
    return {
        "slug": essay.slug,
        "title": essay.title,
        "dek": essay.dek,
        "date": essay.published_on,
        "tags": essay.tags,
        "url": essay.url,
        "source_path": essay.source_path,
        "headings": [block["text"] for block in essay.body if block["kind"] == "h"],
        "excerpt": excerpt(essay, excerpt_length),
        "word_count": word_count(essay),
        "sent_in": sent_in,
        "held": essay.held,
        "related": essay.source_related,
    }


def sent_key(session: Session, essay: Essay) -> str | None:
    """The key of the issue that carried the essay, or None."""
    if essay.sent_in_issue_id is None:
        return None
    issue = session.get(Issue, essay.sent_in_issue_id)
    return issue.key if issue else None



def archive_fingerprint(session: Session, sent: bool = False) -> list[tuple[Any, ...]]:
    """Every essay's columns a render reads besides its body (content_hash stands for that), in
    id order: what the render cache keys on, so any edit to the archive renders anew. `sent`
    adds which issue sent each: related links prefer published essays on equal scores, so a
    render depends on it; the related-links index (scores only) does not."""
    columns = (Essay.id, Essay.slug, Essay.title, Essay.dek, Essay.url, Essay.published_on,
               Essay.content_hash, Essay.source_related, Essay.tags, Essay.updated_at,
               *((Essay.sent_in_issue_id,) if sent else ()))
    return [tuple(row) for row in session.execute(select(*(col(c) for c in columns)).order_by(col(Essay.id)))]
