"""The render cache: an issue's render kept on disk, keyed by everything the render reads.

Rendering an issue builds the related-links index over the whole archive (TF-IDF) and runs
premailer several times; at a few thousand essays that takes seconds, for every preview, lint
and send run. The output depends only on the issue (its key, subject, preheader and essays in
order), the archive (every essay's identity and content hash), the settings, the template files
and the code, so a hash of all of them names the render: a key found is that exact output, and
any edit (an essay re-imported with new text, a template touched, a setting changed, the program
upgraded) makes a new key, so nothing stale can be served.

The cache is a folder beside the config (`.cache/render/`), not a table: it needs no migration,
it is local to the machine that renders (a worker on another machine fills its own), and losing
it costs one render. Entries are written to a temporary file and renamed into place, so a process
reading never sees half an entry and several processes rendering at once just write the same
bytes; an unreadable entry counts as missing. Only the newest entries are kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from sqlmodel import Session

from pipeline.cache_files import read_entry, write_entry
from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.essays import archive_fingerprint
from pipeline.issue_view import Shape
from pipeline.issues import issue_essays
from pipeline.models import Issue
from pipeline.render import RenderedIssue

KEEP = 32  # entries: a few issues' worth of previews while their essays are being edited
CODE = Path(__file__).resolve().parent  # the pipeline package: a new version renders anew


def folder(settings: Settings) -> Path:
    return settings.base_dir / ".cache" / "render"


def render_key(session: Session, settings: Settings, issue: Issue) -> str:
    """The hash of everything an issue's render depends on."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(repr(value).encode("utf-8"))
        digest.update(b"\0")

    add((issue.id, issue.key, issue.subject, issue.preheader, issue.intro))
    add([essay.id for essay in issue_essays(session, issue)])
    for row in archive_fingerprint(session, sent=True):
        add(row)
    add(settings)
    for root in [d / "email" for d in settings.template_dirs()]:  # edited while `serve` runs
        digest.update(_folder_digest(root))
    digest.update(_code_digest())
    return digest.hexdigest()


def _folder_digest(root: Path) -> bytes:
    """The names and contents of every file below `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:  # an override template nobody may read: name it, no traceback
                raise ConfigError(f"cannot read the template {path}: {exc.strerror}") from None
    return digest.digest()


@cache
def _code_digest() -> bytes:
    """The program's own files, read once per process: the code running cannot change under it
    (an upgrade is a new process), and reading some hundred files per preview was waste."""
    return _folder_digest(CODE)


def cached_render(
    session: Session, settings: Settings, issue: Issue, render: Callable[[], RenderedIssue]
) -> RenderedIssue:
    """The issue's render from the cache, or `render()` stored there for next time."""
    where = folder(settings)
    entry = where / f"{render_key(session, settings, issue)}.json"
    found = _read(entry)
    if found is not None:
        return found
    rendered = render()
    _write(entry, rendered)
    return rendered


def _read(entry: Path) -> RenderedIssue | None:
    data = read_entry(entry)
    try:
        shape = data.pop("shape")
        return RenderedIssue(**data, shape=Shape(**shape) if shape else None)
    except (AttributeError, TypeError, KeyError):  # missing, or written by an older version
        return None


def _write(entry: Path, rendered: RenderedIssue) -> None:
    data = {"subject": rendered.subject, "preheader": rendered.preheader, "html": rendered.html,
            "text": rendered.text, "html_unnamed": rendered.html_unnamed,
            "text_unnamed": rendered.text_unnamed, "placeholders": rendered.placeholders,
            "shape": asdict(rendered.shape) if rendered.shape else None}
    write_entry(entry, data, KEEP)
