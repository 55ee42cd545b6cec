"""Render an issue once into email-safe HTML (Jinja2 + premailer) and text, then personalise cheaply.

Jinja2 and premailer run once per issue, with placeholder tokens where per-subscriber values go
(name, email, unsubscribe URL). `RenderedIssue.personalise(recipient)` then only substitutes
escaped values into precomputed slots: microseconds per subscriber instead of the 10-100 ms that
premailer costs. tests/test_render.py proves with hypothesis that this equals a full render per
subscriber. Greetings differ with and without a name ("Hi Ana," / "Hello,"), so the templates
are rendered in two variants, both once per issue.

A digest whose HTML would pass SIZE_BUDGET (Gmail clips at 102 KB and hides the footer with the
unsubscribe link) is reshaped, never clipped: shorter excerpts, fewer related links, then later
essays as title links only, then a link to the whole issue on the web.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings
from pipeline.errors import RenderError
from pipeline.issue_view import (
    IssueView,
    Shape,
    candidate_shapes,
    clean,
    full_shape,
    template_context,
)

SIZE_BUDGET = 90 * 1024  # bytes of HTML with placeholders; real values add well under 2 KB
FIELDS = ("name", "email", "unsubscribe_url")
SAMPLE_TOKEN = "preview-sample"  # unsigned on purpose: the web refuses it, nobody is unsubscribed
_URL_SAFE = re.compile(r"https?://[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]+")

if TYPE_CHECKING:
    import jinja2
    from premailer import Premailer


@lru_cache(maxsize=1)
def _inliner() -> Premailer:
    """premailer as the email checklist says; its defaults break responsive mail. One instance
    is reused for every issue (it caches parsed CSS); loaded on the first render, since a render
    read back from the cache (pipeline/render_cache.py) needs none."""
    # premailer imports requests (with urllib3 and charset detection: about 0.1 s of every first
    # render) only to fetch linked stylesheets, which allow_network=False forbids: an empty
    # stand-in skips that import (premailer 3.10 uses requests nowhere else), then goes, so
    # whatever imports requests later gets the real one.
    stand_in = "requests" not in sys.modules
    if stand_in:
        sys.modules["requests"] = types.ModuleType("requests")
    try:
        from premailer import Premailer  # noqa: PLC0415
    finally:
        if stand_in:
            del sys.modules["requests"]

    logging.getLogger("CSSUTILS").setLevel(logging.CRITICAL)
    return Premailer(
        strip_important=False,  # else the @media rules lose !important and inline styles win
        allow_network=False,  # never fetch a stylesheet
        disable_basic_attributes=["width", "height"],  # keep img width="536", not width="100%"
        exclude_pseudoclasses=True,  # deterministic output, no {...} blocks in style attributes
        cssutils_logging_level=logging.CRITICAL,
        # cssutils' validation only logs (silenced above) and never changes what is written;
        # it was 40% of the first inline's CPU, the CSS parse every send run pays.
        disable_validation=True,
    )


@dataclass(frozen=True)
class Recipient:
    """Who one copy is for. Names and emails are cleaned of control characters and line breaks."""

    name: str
    email: str
    unsubscribe_url: str

    def values(self) -> dict[str, str]:
        url = self.unsubscribe_url.strip()
        if not _URL_SAFE.fullmatch(url):
            raise RenderError(f"not a usable unsubscribe URL: {url!r}")
        return {"name": clean(self.name), "email": clean(self.email), "unsubscribe_url": url}


@dataclass
class RenderedIssue:
    """An issue rendered once: HTML and text with placeholders, in a named and an unnamed variant."""

    subject: str
    preheader: str
    html: str  # the variant for a subscriber with a name
    text: str
    html_unnamed: str
    text_unnamed: str
    placeholders: dict[str, str]
    shape: Shape | None = None
    _slots: dict[str, list[str | tuple[str, str]]] = field(default_factory=dict, repr=False)

    def personalise(self, recipient: Recipient) -> tuple[str, str]:
        """One subscriber's (html, text): escaped values substituted into the precomputed slots."""
        values = recipient.values()
        named = bool(values["name"])
        html_parts = self._parts("html" if named else "html_unnamed")
        text_parts = self._parts("text" if named else "text_unnamed")
        escaped = {f: _escape_text(v) for f, v in values.items()}
        attr = {f: _escape_attr(v) for f, v in values.items()}
        html = "".join(
            p if isinstance(p, str) else (attr if p[1] == "attr" else escaped)[p[0]] for p in html_parts
        )
        text = "".join(p if isinstance(p, str) else values[p[0]] for p in text_parts)
        return html, text

    def _parts(self, which: str) -> list[str | tuple[str, str]]:
        if which not in self._slots:
            self._slots[which] = split_slots(getattr(self, which), self.placeholders)
        return self._slots[which]

    @cached_property
    def size(self) -> int:
        return len(self.html.encode("utf-8"))


def split_slots(document: str, placeholders: dict[str, str]) -> list[str | tuple[str, str]]:
    """`document` cut at each placeholder into literal text and (field, "attr"|"text") slots."""
    by_token = {token: name for name, token in placeholders.items()}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(by_token, key=len, reverse=True)))
    parts: list[str | tuple[str, str]] = []
    last = 0
    for match in pattern.finditer(document):
        parts.append(document[last : match.start()])
        # Inside a tag when the last "<" before it comes after the last ">" (lxml escapes ">"
        # inside attribute values, so a ">" there always closes a tag).
        in_tag = document.rfind("<", 0, match.start()) > document.rfind(">", 0, match.start())
        parts.append((by_token[match.group()], "attr" if in_tag else "text"))
        last = match.end()
    parts.append(document[last:])
    return parts


def _escape_text(value: str) -> str:
    # What lxml's HTML serializer writes for text nodes: only &, < and > become entities.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(value: str) -> str:
    return _escape_text(value).replace('"', "&quot;")


def render_web_page(settings: Settings, view: IssueView) -> str:
    """The issue as a web page for the archive and "view in browser": no name, email or token."""
    context = template_context(settings, view, full_shape(settings, view), {f: "" for f in FIELDS})
    return _inline(_fill(settings, "web.html", context))


def sample_recipient(settings: Settings) -> Recipient:
    """A made-up subscriber for previews and lint: a name with non-ASCII, and an unsubscribe link
    of the real shape whose token is deliberately unsigned, so clicking it unsubscribes nobody."""
    return Recipient("Zoë Sample", "reader@example.org", inert_unsubscribe_url(settings))


def inert_unsubscribe_url(settings: Settings) -> str:
    """An unsubscribe link of the real shape that names nobody (samples, non-subscribers)."""
    return f"{settings.web.base_url}/u/{SAMPLE_TOKEN}"


def render_view(settings: Settings, view: IssueView) -> RenderedIssue:
    """The placeholder render of the largest shape that fits SIZE_BUDGET (binary search)."""
    placeholders = make_placeholders(settings, view)
    shapes = list(candidate_shapes(settings, view))
    named = dict(placeholders)
    inlined: dict[int, str] = {}

    def fits(i: int) -> bool:
        # Inlining only adds bytes: a template output already over budget needs no premailer.
        html = _fill(settings, "digest.html", template_context(settings, view, shapes[i], named))
        if len(html.encode("utf-8")) > SIZE_BUDGET:
            return False
        inlined[i] = _inline(html)
        return len(inlined[i].encode("utf-8")) <= SIZE_BUDGET

    chosen = 0
    if not fits(0):
        low, high = 1, len(shapes) - 1  # sizes fall along `shapes`: find the first that fits
        if not fits(high):
            raise RenderError(
                f"issue {view.key} does not fit in {SIZE_BUDGET // 1024} KB even with one essay "
                f"shown: shorten the titles or the templates"
            )
        while low < high:
            middle = (low + high) // 2
            if fits(middle):
                high = middle
            else:
                low = middle + 1
        chosen = low
    return _render_shape(settings, view, shapes[chosen], placeholders, inlined[chosen])


def render_view_for(
    settings: Settings, view: IssueView, recipient: Recipient, shape: Shape | None = None
) -> tuple[str, str]:
    """A full render of one subscriber's copy, with real values instead of placeholders."""
    context = template_context(settings, view, shape or full_shape(settings, view), recipient.values())
    html = _inline(_fill(settings, "digest.html", context))
    return html, _fill(settings, "digest.txt", context)


def _render_shape(
    settings: Settings, view: IssueView, shape: Shape, placeholders: dict[str, str], named_html: str
) -> RenderedIssue:
    """Both variants of one shape (the named HTML is already inlined by the size search)."""
    unnamed = dict(placeholders, name="")
    named_context = template_context(settings, view, shape, placeholders)
    unnamed_context = template_context(settings, view, shape, unnamed)
    return RenderedIssue(
        subject=view.subject,
        preheader=view.preheader,
        html=named_html,
        text=_fill(settings, "digest.txt", named_context),
        html_unnamed=_inline(_fill(settings, "digest.html", unnamed_context)),
        text_unnamed=_fill(settings, "digest.txt", unnamed_context),
        placeholders=placeholders,
        shape=shape,
    )


def make_placeholders(settings: Settings, view: IssueView) -> dict[str, str]:
    """Tokens no essay text contains (letters only, so neither escaping nor inlining touches them)."""
    corpus = "\n".join(
        [view.subject, view.preheader, repr(settings.newsletter), settings.web.base_url]
        + [f"{e.title}\n{e.dek}\n{e.body}" for e in view.essays]
        + [link.title for links in view.related for link in links]
    )
    prefix = "XnlslotX"
    while prefix in corpus:
        prefix += "Q"
    return {name: f"{prefix}{name.replace('_', '').upper()}X" for name in FIELDS}


def _inline(html: str) -> str:
    try:
        return str(_inliner().transform(html, pretty_print=True))
    except Exception as exc:  # premailer/lxml/cssutils raise many types; the user needs one
        raise RenderError(f"cannot inline the digest's CSS: {exc}") from exc


def _fill(settings: Settings, name: str, context: dict[str, Any]) -> str:
    """Render one template; any template problem becomes a RenderError naming file and line."""
    import jinja2  # noqa: PLC0415  (see _environment)

    environment = _environment(tuple(d / "email" for d in settings.template_dirs()))
    try:
        return environment.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateNotFound as exc:
        folders = ", ".join(str(d / "email") for d in settings.template_dirs())
        raise RenderError(f"template {exc.name} not found in {folders}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"{_where(exc, name)}: {exc}") from None


def _where(exc: BaseException, name: str) -> str:
    """file:line in the template where rendering failed (Jinja2 rewrites tracebacks to them)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.endswith(".py")]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else name


@lru_cache(maxsize=8)
def _environment(folders: Sequence[Path]) -> jinja2.Environment:
    """Autoescape for .html only (the text part is not HTML); StrictUndefined fails loudly.
    Jinja2 is loaded on the first render (~0.1 s): a render read back from the cache needs none."""
    import jinja2  # noqa: PLC0415

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(f) for f in folders]),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
