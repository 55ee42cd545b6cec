"""An issue's view model: its essays with dates, excerpts and related links, and how a digest shrinks.

`issue_view` reads an issue's essays and their related links once; `template_context` turns the
view, a Shape and the per-subscriber values into what the templates see. When a digest is too
big for Gmail, `candidate_shapes` lists ever smaller shapes (shorter excerpts, fewer related
links, later essays as title links only) for pipeline/render.py to choose from.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlmodel import Session

from pipeline.config import Settings
from pipeline.dates import format_date
from pipeline.errors import RenderError
from pipeline.excerpt import excerpt
from pipeline.issues import issue_essays
from pipeline.links import essay_url, webview_url
from pipeline.models import Essay, Issue
from subscribers.text import mail_text

# Invisible filler after the preheader, so clients do not pull body text into the inbox preview.
PREHEADER_FILLER = "\u034f\u200c\u00a0" * 40
_SPACE = re.compile(r"\s+")


def clean(value: str) -> str:
    """One line of printable text: control characters dropped (those XML refuses, which lxml,
    hence premailer, would fail on, and the rest no mail client shows), runs of whitespace
    (line breaks too) made one space."""
    return _SPACE.sub(" ", mail_text(unicodedata.normalize("NFC", value))).strip()


@dataclass(frozen=True)
class Link:
    title: str
    url: str


@dataclass(frozen=True)
class EssayView:
    title: str
    url: str
    date: str
    excerpt: str
    related: tuple[Link, ...]


@dataclass(frozen=True)
class Shape:
    """How much of an issue a copy shows: excerpt length, related links, essays shown in full."""

    excerpt_length: int
    related: int
    full: int  # essays with excerpt and related links
    listed: int  # essays after those, as title links only; the rest are counted and linked


@dataclass(frozen=True)
class IssueView:
    """Everything the templates need about an issue, with no personal data: built once."""

    key: str
    subject: str
    preheader: str
    webview_url: str
    essays: tuple[Essay, ...]
    related: tuple[tuple[Link, ...], ...]
    intro_html: str = ""  # the editor's note (Markdown) as HTML, raw HTML in it escaped
    intro_text: tuple[str, ...] = ()  # the same note as plain paragraphs, for the text part


def issue_view(session: Session, settings: Settings, issue: Issue) -> IssueView:
    """The issue's essays and related links, read from the database once."""
    # Imported here: the related-links code loads numpy, which a render read back from the
    # cache (pipeline/render_cache.py) never needs, though it needs this module's types.
    from pipeline.related import related_for_issue  # noqa: PLC0415
    from pipeline.related_cache import cached_index, folder  # noqa: PLC0415

    essays = issue_essays(session, issue)
    if not essays:
        raise RenderError(f"issue {issue.key} carries no essays")
    related = related_for_issue(session, essays, settings.digest.related_per_essay,
                                lambda: cached_index(session, folder(settings)))
    links = tuple(
        tuple(Link(clean(r.title), essay_url(settings, r)) for r in related.get(e.id or 0, []))
        for e in essays
    )
    intro_html, intro_text = "", tuple[str, ...]()
    if issue.intro.strip():  # Markdown (and its parser) only for an issue with an intro note
        from pipeline.readers.markdown_essay import markdown_html, note_paragraphs  # noqa: PLC0415

        intro_html, intro_text = markdown_html(issue.intro, raw_html=False), tuple(note_paragraphs(issue.intro))
    return IssueView(
        key=issue.key,
        subject=issue.subject,
        preheader=issue.preheader,
        webview_url=webview_url(settings, issue),
        essays=tuple(essays),
        related=links,
        intro_html=intro_html,
        intro_text=intro_text,
    )


def full_shape(settings: Settings, view: IssueView) -> Shape:
    n = len(view.essays)
    return Shape(settings.digest.excerpt_length, settings.digest.related_per_essay, n, 0)


def candidate_shapes(settings: Settings, view: IssueView) -> Iterator[Shape]:
    """Shapes from the fullest to the leanest; each smaller than the one before."""
    shape = full_shape(settings, view)
    yield shape
    for length in (300, 200, 120):
        if length < shape.excerpt_length:
            shape = replace(shape, excerpt_length=length)
            yield shape
    for related in range(min(shape.related, 2), -1, -1):
        shape = replace(shape, related=related)
        yield shape
    n = len(view.essays)
    for full in range(n - 1, 0, -1):  # later essays become title links
        yield replace(shape, full=full, listed=n - full)
    for listed in range(n - 2, -1, -1):  # then fewer title links, the rest counted and linked
        yield replace(shape, full=1, listed=listed)


def template_context(settings: Settings, view: IssueView, shape: Shape, values: dict[str, str]) -> dict[str, Any]:
    n = len(view.essays)
    shown = [
        EssayView(
            title=clean(essay.title),
            url=essay_url(settings, essay),
            date=format_date(essay.published_on),
            excerpt=excerpt(essay, shape.excerpt_length),
            related=view.related[i][: shape.related],
        )
        for i, essay in enumerate(view.essays[: shape.full])
    ]
    also = [
        Link(clean(e.title), essay_url(settings, e))
        for e in view.essays[shape.full : shape.full + shape.listed]
    ]
    return {
        "newsletter": settings.newsletter,
        "issue": {"key": view.key, "subject": view.subject, "preheader": view.preheader},
        "essays": shown,
        "also": also,
        "omitted": n - len(shown) - len(also),
        "webview_url": view.webview_url,
        "archive_url": f"{settings.web.base_url}/archive/",  # the web copy links back to these
        "subscribe_url": f"{settings.web.base_url}/subscribe",
        "intro_html": view.intro_html,
        "intro_text": view.intro_text,
        "recipient": values,
        "preheader_filler": PREHEADER_FILLER,
    }
