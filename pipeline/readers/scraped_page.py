"""A reader for essay pages as scraped from essay sites: header, body, noise and related list.

The page is plain text, one block per line:

    [category]                    short line, only when a date/share line follows the header
    title
    dek                           one or more sentences
    date line                     "July 19, 2025" | "Published July 22, 2025"
                                  | "August 12, 2025 - 3 min Read"
    Published by NAME             or "Published by" with the name on the next line
    share line                    3 to 6 networks in any order: "Facebook X Reddit"
    body paragraphs and headings  with ADVERTISEMENT lines between them
    Related Articles              then summary / date pairs

Any part of the header may be missing (no date, no share line, or no header at all), and the
text may stop mid-word. Headings carry no marker (most even end with a full stop), so a line is
a heading by its shape and place: short, one sentence at most, after a paragraph and before more
text. tests/test_corpus.py holds that rule against every page of the shared corpus.
"""

from __future__ import annotations

import re
from datetime import date

from pipeline.excerpt import sentence_ends
from pipeline.readers.parsed_essay import DATE_PATTERN, ParsedEssay, clean, parse_date, title_from_body

SHARE_NETWORKS = frozenset(
    "facebook x twitter reddit whatsapp linkedin email e-mail pinterest telegram tumblr "
    "mastodon bluesky threads print copy".split()
)
HEADING_MAX = 120  # the corpus's longest heading has 95 characters, its shortest paragraph 594
CATEGORY_MAX = 40
HEADER_SCAN = 6  # the date/share line, when there is one, sits within the first lines

_ADVERT = re.compile(r"^(advertisement|advertisements|sponsored|ad)$", re.I)
_READING_TIME = r"\d+\s*(?:min|mins|minute|minutes)\.?\s+read"
_DATE_LINE = re.compile(
    rf"^(?:(?:published|posted|updated)(?:\s+on)?:?\s+)?{DATE_PATTERN}"
    rf"(?:\s*[-–—|·•]\s*{_READING_TIME})?$",
    re.I,
)
_READING_LINE = re.compile(rf"^{_READING_TIME}$", re.I)
_BYLINE = re.compile(r"^(?:published\s+)?by(?:\s*:)?(?:\s+(?P<name>.+))?$", re.I)
_RELATED = re.compile(r"^(related articles|related posts|related stories|related reading)$", re.I)
_TERMINAL = re.compile(r"[.!?…][\"'”’)]*$")


def parse_page(text: str) -> ParsedEssay:
    """The essay in one scraped page's text."""
    lines = [line for line in (clean(raw) for raw in text.splitlines()) if line]
    lines = [line for line in lines if not _ADVERT.match(line)]
    lines, related = _split_related(lines)
    header, published_on, lines = _split_header(lines)
    body = _blocks([line for line in lines if not _is_meta(line)])

    category, title, dek = _read_header(header)
    parsed = ParsedEssay(
        title=title,
        dek=dek,
        body=body,
        published_on=published_on,
        source_related=related,
        tags=[category] if category else [],
    )
    if not parsed.title:
        parsed.title = title_from_body(body)
        if parsed.title:
            parsed.warnings.append(f"no title; took the first sentence: {parsed.title!r}")
    return parsed


def is_noise(line: str) -> bool:
    """A line that is page furniture, never essay text: ads, share, byline, date, reading time."""
    line = clean(line)
    return bool(_ADVERT.match(line) or _RELATED.match(line)) or _is_meta(line)


def _is_meta(line: str) -> bool:
    return bool(
        _DATE_LINE.match(line) or _READING_LINE.match(line) or _is_share(line) or _is_byline(line)
    )


def _is_share(line: str) -> bool:
    words = line.lower().replace(",", " ").replace("|", " ").split()
    return 2 <= len(words) <= 8 and all(word in SHARE_NETWORKS for word in words)


def _is_byline(line: str) -> bool:
    match = _BYLINE.match(line)
    if not match:
        return False
    if line.lower().startswith("published"):
        return True
    # "By NAME" must look like a name ("By Ana Ribeiro"), not text ("By contrast, ...").
    words = (match.group("name") or "").split()
    return 1 <= len(words) <= 4 and all(word[:1].isupper() for word in words)


def _split_related(lines: list[str]) -> tuple[list[str], list[dict[str, str | None]]]:
    """The lines before the last "Related Articles" line, and the summaries listed after it."""
    marks = [i for i, line in enumerate(lines) if _RELATED.match(line)]
    if not marks:
        return lines, []
    related: list[dict[str, str | None]] = []
    for line in lines[marks[-1] + 1 :]:
        when = parse_date(line) if _DATE_LINE.match(line) else None
        if when and related and related[-1]["date"] is None:
            related[-1]["date"] = when.isoformat()
        elif not when and not _is_meta(line):
            related.append({"summary": line, "date": None})
    return lines[: marks[-1]], related


def _split_header(lines: list[str]) -> tuple[list[str], date | None, list[str]]:
    """(header lines, the page's date or None, the rest) where the header is title and dek."""
    meta = [i for i, line in enumerate(lines[:HEADER_SCAN]) if _is_meta(line)]
    if meta:
        first = meta[0]
        end = first
        published_on: date | None = None
        while end < len(lines) and (_is_meta(lines[end]) or _byline_name_follows(lines, end)):
            if _DATE_LINE.match(lines[end]) and published_on is None:
                published_on = parse_date(lines[end])
            end += 1
        return lines[:first], published_on, lines[end:]
    # No date or share line: a title and a dek are short lines before a longer paragraph.
    header: list[str] = []
    if len(lines) >= 2 and _is_title_shaped(lines[0]):
        header.append(lines[0])
        if len(lines) >= 3 and len(lines[1]) <= 400 and len(lines[1]) < len(lines[2]):
            header.append(lines[1])
    return header, None, lines[len(header) :]


def _byline_name_follows(lines: list[str], i: int) -> bool:
    # "Published by" alone: the name is the next line; this is that name.
    return i > 0 and re.fullmatch(r"(?:published\s+)?by:?", lines[i - 1], re.I) is not None


def _is_title_shaped(line: str) -> bool:
    return len(line) <= 200 and not _ends(line)


def _ends(line: str) -> list[int]:
    """Where sentences end inside the line (not at its end): two sentences are no heading."""
    return [end for end in sentence_ends(line) if end < len(line)]


def _read_header(header: list[str]) -> tuple[str, str, str]:
    """(category, title, dek) from the lines before the date/share line."""
    if len(header) >= 3 and _is_category(header[0]):
        return header[0], header[1], " ".join(header[2:])
    if not header:
        return "", "", ""
    return "", header[0], " ".join(header[1:])


def _is_category(line: str) -> bool:
    return len(line) <= CATEGORY_MAX and len(line.split()) <= 5 and not _TERMINAL.search(line)


def _blocks(lines: list[str]) -> list[dict[str, str]]:
    """Paragraphs and headings: a heading is a short single sentence after a paragraph."""
    blocks: list[dict[str, str]] = []
    for i, line in enumerate(lines):
        previous = blocks[-1] if blocks else None
        heading = (
            previous is not None
            and previous["kind"] == "p"
            and len(line) <= HEADING_MAX
            and len(line) < len(previous["text"])
            and i + 1 < len(lines)  # a heading heads something; a last short line is cut text
            and not _ends(line)
            and not line.endswith((",", ";", ":"))
        )
        blocks.append({"kind": "h" if heading else "p", "text": line})
    return blocks
