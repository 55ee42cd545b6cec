"""Parsing one HTML copy for the checklist: elements, visible texts with their colours, nesting.

One pass of the standard library's html.parser (no regular-expression soup): every element with
its attributes and inherited text colour, background and visibility; every text node; comments
(for Outlook's conditional comments); the CSS of <style> blocks; nesting problems. Also the
Finding type every lint module reports with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

MUST = "MUST"  # a failing check: `newsletter lint` exits 1, tests fail
SHOULD = "SHOULD"  # a warning the user sees


@dataclass(frozen=True)
class Finding:
    """One checklist item that does not hold: its number (H1, M9...), level and what is wrong."""

    code: str
    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.level}: {self.message}"


VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr",
        "base", "param", "track"}
OPTIONAL_END = {"p", "li", "td", "th", "tr", "tbody", "thead", "tfoot", "option", "dt", "dd"}
NOT_IN_P = {"p", "div", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
            "pre", "hr", "dl", "center"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    color: tuple[int, int, int]
    background: tuple[int, int, int]
    hidden: bool


@dataclass
class Document(HTMLParser):
    """One pass over the HTML: elements, texts with their colours, nesting problems, comments."""

    source: str
    elements: list[Node] = field(default_factory=list)
    texts: list[tuple[str, Node]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    nesting: list[str] = field(default_factory=list)
    doctype: bool = False
    body_first: Node | None = None

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[Node] = []
        self.in_body = False
        self.feed(self.source)
        self.close()
        for node in self.stack:
            if node.tag not in OPTIONAL_END | {"html", "body", "head"}:
                self.nesting.append(f"<{node.tag}> is never closed")

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower().startswith("doctype")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): v or "" for k, v in attrs}
        parent = self.stack[-1] if self.stack else None
        if tag in NOT_IN_P and parent is not None and parent.tag == "p":
            self.nesting.append(f"<{tag}> inside <p>")
        style = parse_style(values.get("style", ""))
        color = parse_color(style.get("color", "")) or (parent.color if parent else (0, 0, 0))
        background = (
            parse_color(style.get("background-color", "") or style.get("background", ""))
            or parse_color(values.get("bgcolor", ""))
            or (parent.background if parent else (255, 255, 255))
        )
        hidden = bool(parent and parent.hidden) or style.get("display", "").strip() == "none" or (
            "hidden" in values
        )
        node = Node(tag, values, color, background, hidden)
        self.elements.append(node)
        if self.in_body and self.body_first is None:
            self.body_first = node
        if tag == "body":
            self.in_body = True
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID and self.stack and self.stack[-1].tag == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        open_tags = [n.tag for n in self.stack]
        if tag not in open_tags:
            self.nesting.append(f"</{tag}> closes nothing")
            return
        while self.stack:
            node = self.stack.pop()
            if node.tag == tag:
                break
            if node.tag not in OPTIONAL_END:
                self.nesting.append(f"</{tag}> closes <{tag}> while <{node.tag}> is still open")

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1].tag == "style":
            self.styles.append(data)
        elif data.strip() and self.stack:
            self.texts.append((data.strip(), self.stack[-1]))

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    def visible_text(self) -> str:
        return " ".join(t for t, n in self.texts if not n.hidden and n.tag not in {"title", "style"})


def parse_style(style: str) -> dict[str, str]:
    """An inline style attribute as {property: value} (the last declaration wins)."""
    declarations: dict[str, str] = {}
    for part in style.split(";"):
        name, colon, value = part.partition(":")
        if colon:
            declarations[name.strip().lower()] = value.replace("!important", "").strip().lower()
    return declarations


NAMED = {"white": (255, 255, 255), "black": (0, 0, 0), "red": (255, 0, 0), "gray": (128, 128, 128),
         "grey": (128, 128, 128), "silver": (192, 192, 192), "blue": (0, 0, 255)}


def parse_color(value: str) -> tuple[int, int, int] | None:
    value = value.strip().lower().split(" ")[0] if value else ""
    if value in NAMED:
        return NAMED[value]
    if re.fullmatch(r"#[0-9a-f]{3}", value):
        return tuple(int(c * 2, 16) for c in value[1:])  # type: ignore[return-value]
    if re.fullmatch(r"#[0-9a-f]{6}", value):
        return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    match = re.fullmatch(r"rgba?\((\d+),\s*(\d+),\s*(\d+)(?:,[^)]*)?\)", value)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """The WCAG contrast ratio of two colours: 1 (same) to 21 (black on white)."""

    def luminance(rgb: tuple[int, int, int]) -> float:
        def channel(c: int) -> float:
            s = c / 255
            return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

        r, g, bl = (channel(c) for c in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * bl

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


