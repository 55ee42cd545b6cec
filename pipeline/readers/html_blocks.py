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

The Markdown reader (readers/markdown_essay.py) reads its rendered HTML here too, in pieces, with
BlockReader: raw HTML in an essay's Markdown is then read exactly as a feed's HTML is.
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


def html_blocks(
    html: str, skip_links_to: str | None = None, *, symbols_are_text: bool = False
) -> list[dict[str, str]]:
    """The paragraphs and headings of an HTML fragment, in order; empty ones left out.

    A link to `skip_links_to` is left out with its text: a summary's "Continue reading" link
    back to the entry itself is no part of the summary. A block of symbols alone (a lone emoji,
    a rule of dashes) is left out as furniture, unless `symbols_are_text` (see BlockReader).
    """
    reader = BlockReader(skip_links_to, symbols_are_text=symbols_are_text)
    reader.feed(html)
    return reader.finish()


def html_text(html: str, skip_links_to: str | None = None) -> str:
    """An HTML fragment as one line of plain text (for titles and summaries)."""
    return clean(" ".join(block["text"] for block in html_blocks(html, skip_links_to)))


class BlockReader(HTMLParser):
    """html_blocks for HTML that arrives in pieces: feed() each piece, then finish().

    `symbols_are_text`: in a feed a block without a letter or digit is a share row's separator;
    in an author's own Markdown it is theirs (a "⁂" between sections), so it is kept there.
    """

    def __init__(self, skip_links_to: str | None = None, *, symbols_are_text: bool = False) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_links_to = skip_links_to
        self.symbols_are_text = symbols_are_text
        self.blocks: list[dict[str, str]] = []
        self.text: list[str] = []
        self.dropped: list[str] = []  # open elements inside a dropped one; text counts when empty
        self.heading = 0  # open h1-h3 elements
        self.unclosed = ""  # after finish(): "<script>" or "<!--" left open at the end, if any

    @property
    def inside_markup(self) -> bool:
        """Whether the HTML so far ends inside a dropped element (a script, a style, ...) or a
        comment or tag: what comes next is its content, whatever it looks like."""
        return bool(self.dropped or self.rawdata)  # rawdata: what the parser holds unfinished

    def finish(self) -> list[dict[str, str]]:
        """The blocks of everything fed; an element or comment still open hid the rest."""
        if self.rawdata.startswith("<!--"):
            # A comment never closed runs to the end, as in a browser; the parser would give
            # it back as text, and a commented-out draft would reach the readers.
            self.rawdata = ""
            self.unclosed = "<!--"
        self.close()
        self.flush()
        if self.dropped:
            self.unclosed = f"<{self.dropped[0]}>"
        return self.blocks

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
        # A lone emoji or rule of dashes is no paragraph in a feed (see symbols_are_text).
        if any(c.isalnum() for c in text) or (self.symbols_are_text and text):
            self.blocks.append({"kind": "h" if self.heading else "p", "text": text})
