"""HTML (a feed entry's content) reduced to the paragraphs and headings every reader produces.

    html_blocks("<h2>Dawn</h2><p>I walk <em>early</em>.</p>")
    -> [{"kind": "h", "text": "Dawn"}, {"kind": "p", "text": "I walk early."}]

Parsed with the standard library's HTML parser (a tolerant tokenizer, so broken markup still
reads), never with patterns over the text. h1 to h3 become headings; p, li, blockquote, pre,
h4 to h6 and any text between block elements become paragraphs; inline markup (links,
emphasis) keeps its text. script, style, iframes, forms, embedded media, SVG and known
newsletter furniture (subscribe boxes, share rows) are dropped with everything inside them.
Every text goes through parsed_essay.clean(), so control characters and terminal escapes never
reach the database. Pure.
"""

from __future__ import annotations

from html.parser import HTMLParser

from pipeline.readers.parsed_essay import clean

HEADINGS = frozenset({"h1", "h2", "h3"})
# Tags whose start or end closes the text before it: it becomes a block of its own.
BLOCKS = frozenset(
    "p div li ul ol dl dt dd blockquote pre h1 h2 h3 h4 h5 h6 figure figcaption section "
    "article header footer aside main nav table thead tbody tr td th hr address details "
    "summary".split()
)
# Dropped with their content: code, furniture and embeds carry no essay text.
DROPPED = frozenset(
    "script style iframe noscript template svg math object embed form button select "
    "textarea video audio canvas head title".split()
)
# These never have an end tag, so they must not open a dropped region or a heading.
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


# Newsletter furniture inside posts (Substack's subscribe box, "share" and "button" rows):
# an element with one of these classes is dropped like a script.
FURNITURE_CLASSES = frozenset({
    "subscription-widget-wrap", "subscription-widget-wrap-editor", "subscribe-widget",
    "button-wrapper", "share-dialog", "sharedaddy", "jp-relatedposts", "kg-signup-card",
})


def html_blocks(html: str, skip_links_to: str | None = None) -> list[dict[str, str]]:
    """The paragraphs and headings of an HTML fragment, in order; empty ones left out.

    A link to `skip_links_to` is left out with its text: a summary's "Continue reading" link
    back to the entry itself is no part of the summary.
    """
    parser = _BlockParser(skip_links_to)
    parser.feed(html)
    parser.close()
    parser.flush()
    return parser.blocks


def html_text(html: str, skip_links_to: str | None = None) -> str:
    """An HTML fragment as one line of plain text (for titles and summaries)."""
    return clean(" ".join(block["text"] for block in html_blocks(html, skip_links_to)))


class _BlockParser(HTMLParser):
    def __init__(self, skip_links_to: str | None) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_links_to = skip_links_to
        self.blocks: list[dict[str, str]] = []
        self.text: list[str] = []
        self.dropped: list[str] = []  # open elements inside a dropped one; text counts when empty
        self.heading = 0  # open h1-h3 elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            self.handle_startendtag(tag, attrs)
            return
        if self.dropped or tag in DROPPED or self._is_furniture(tag, dict(attrs)):
            self.dropped.append(tag)  # every element inside is tracked, so nesting closes right
        elif tag in BLOCKS:
            self.flush()
            if tag in HEADINGS:
                self.heading += 1

    def _is_furniture(self, tag: str, attrs: dict[str, str | None]) -> bool:
        classes = set((attrs.get("class") or "").split())
        if classes & FURNITURE_CLASSES:
            return True
        return tag == "a" and self.skip_links_to is not None and attrs.get("href") == self.skip_links_to

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>, <img/>, or a self-closed <iframe/>: nothing is opened.
        if self.dropped:
            return
        if tag == "br":
            self.text.append(" ")
        elif tag == "hr":
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if self.dropped:
            if tag in self.dropped:
                # Close up to the matching start: a missing end tag inside is forgiven.
                while self.dropped and self.dropped.pop() != tag:
                    pass
            return
        if tag in BLOCKS:
            self.flush()
            if tag in HEADINGS and self.heading:
                self.heading -= 1

    def handle_data(self, data: str) -> None:
        if not self.dropped:
            self.text.append(data)

    def flush(self) -> None:
        """The text gathered since the last block boundary becomes a block, if it has any."""
        text = clean("".join(self.text))
        self.text = []
        if any(c.isalnum() for c in text):  # a lone emoji or rule of dashes is no paragraph
            self.blocks.append({"kind": "h" if self.heading else "p", "text": text})
