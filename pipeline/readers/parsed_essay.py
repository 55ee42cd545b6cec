"""What a reader makes of one essay source before it reaches the database: a ParsedEssay.

Every reader (readers/scraped_page.py, readers/markdown_essay.py, readers/feed.py) returns a
ParsedEssay; pipeline/essays.py turns them into Essay rows. Also the limits every essay is held
to and the text helpers the readers share. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pipeline.dates import MONTH_NUMBERS
from pipeline.errors import ImportProblem
from pipeline.excerpt import sentence_ends
from pipeline.web_addresses import MAX_URL
from subscribers.text import strip_controls

_MONTH = "|".join(sorted(MONTH_NUMBERS, key=len, reverse=True))
# "July 19, 2025", "Jul 9 2025", "19 July 2025", "2025-07-19".
DATE_PATTERN = (
    rf"(?:(?P<m1>{_MONTH})\.?\s+(?P<d1>\d{{1,2}}),?\s+(?P<y1>\d{{4}})"
    rf"|(?P<d2>\d{{1,2}})\s+(?P<m2>{_MONTH})\.?,?\s+(?P<y2>\d{{4}})"
    rf"|(?P<y3>\d{{4}})-(?P<m3>\d{{2}})-(?P<d3>\d{{2}}))"
)
_DATE = re.compile(DATE_PATTERN, re.I)
TITLE_LIMIT = 120  # a title taken from a first sentence is cut (between words) to this
# What one essay may hold, whichever reader made it. Generous for an essay (the sample and
# corpus titles stay under 150 characters), and small enough that a hostile file cannot make
# every `essays list` or digest slow: these bound what is stored, not just what is shown.
MAX_TITLE = 300
MAX_DEK = 1_000
MAX_SLUG = 200  # Essay.slug's column
MAX_TAGS = 50
MAX_TAG = 64


@dataclass
class ParsedEssay:
    """One essay as read from a file, before it is matched against the database."""

    title: str
    body: list[dict[str, str]]
    dek: str = ""
    published_on: date | None = None
    slug: str | None = None  # only when the file says so (front matter); else from the file name
    url: str | None = None
    source_url: str | None = None
    source_related: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    draft: str = ""  # why the file is a draft not to import ("draft: true"), else ""

    def content_hash(self, slug: str) -> str:
        """A fingerprint of everything stored from the file: equal hash, nothing to update."""
        fields = {
            "slug": slug,
            "title": self.title,
            "dek": self.dek,
            "body": self.body,
            "published_on": self.published_on.isoformat() if self.published_on else None,
            "url": self.url,
            "source_url": self.source_url,
            "source_related": self.source_related,
            "tags": self.tags,
        }
        canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_date(text: str) -> date | None:
    """The first date written in `text` ("July 19, 2025", "19 July 2025", "2025-07-19"), or None."""
    match = _DATE.search(text)
    if not match:
        return None
    g = match.groupdict()
    try:
        if g["y3"]:
            return date(int(g["y3"]), int(g["m3"]), int(g["d3"]))
        month = MONTH_NUMBERS[(g["m1"] or g["m2"]).lower()]
        return date(int(g["y1"] or g["y2"]), month, int(g["d1"] or g["d2"]))
    except ValueError:  # "February 30": a date-shaped string that is no date
        return None


def to_date(value: object) -> date | None:
    """A front-matter value as a date: YAML dates and datetimes, or a string parse_date reads."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return parse_date(value)
    return None


def clean(text: str) -> str:
    """NFC-normalised text with runs of whitespace (and no-break spaces) as single spaces.

    Every reader passes its text through here, so control characters, terminal escape
    sequences and bidi controls never reach the database (subscribers/text.py says why).
    """
    return re.sub(r"\s+", " ", strip_controls(unicodedata.normalize("NFC", text))).strip()


def check_limits(parsed: ParsedEssay) -> None:
    """ImportProblem naming the first field over its limit (MAX_TITLE, MAX_TAGS, ...)."""
    for name, value, limit in (
        ("title", parsed.title, MAX_TITLE),
        ("dek", parsed.dek, MAX_DEK),
        ("slug", parsed.slug or "", MAX_SLUG),
        ("url", parsed.url or "", MAX_URL),
    ):
        if len(value) > limit:
            raise ImportProblem(f"{name} is {len(value):,} characters long (the limit is {limit:,})")
    if len(parsed.tags) > MAX_TAGS:
        raise ImportProblem(f"{len(parsed.tags):,} tags (the limit is {MAX_TAGS})")
    for tag in parsed.tags:
        if len(tag) > MAX_TAG:
            raise ImportProblem(
                f"tag {tag[:20]!r}… is {len(tag):,} characters long (the limit is {MAX_TAG})"
            )


def slugify(text: str, limit: int = 80) -> str:
    """Lower case, words joined by hyphens, in ASCII where the text has Latin letters or digits:
    "Café Walks, 2" -> "cafe-walks-2". Text with no Latin letter keeps its own ("Прогулка на
    рассвете" -> "прогулка-на-рассвете"): an essay in Cyrillic, Arabic or Japanese had no slug
    and could not be imported. The ASCII form comes first, unchanged, so no existing essay's
    slug (its identity on the next import) changes."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if not re.search("[a-z]", slug):  # none, or only digits: "Глава 1" made "1"
        # Letters, digits and the marks that belong to them (Arabic vowels, Devanagari signs).
        kept = "".join(c if unicodedata.category(c)[0] in "LNM" else "-"
                       for c in unicodedata.normalize("NFKC", text).lower())
        slug = re.sub(r"-+", "-", kept).strip("-")
    if len(slug) > limit:
        slug = slug[:limit].rsplit("-", 1)[0]
    return slug


def first_sentence(text: str) -> str:
    """The first sentence of `text`, without its full stop, cut between words if very long."""
    ends = sentence_ends(text)
    sentence = text[: ends[0]] if ends else text
    sentence = sentence.rstrip().rstrip(".").rstrip()
    if len(sentence) > TITLE_LIMIT:
        sentence = sentence[: TITLE_LIMIT + 1].rsplit(None, 1)[0].rstrip(",;:—–-") + "…"
    return sentence


def title_from_body(parsed_body: list[dict[str, str]]) -> str:
    """A title for an essay that has none: the first sentence of its first paragraph."""
    for block in parsed_body:
        if block["kind"] == "p" and block["text"].strip():
            return first_sentence(block["text"])
    return ""
