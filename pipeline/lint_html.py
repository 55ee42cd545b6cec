"""The HTML checks of the email checklist (H1-H24) on one rendered, inlined copy of an issue.

Parsed with the standard library's html.parser and cssutils, not regular expressions, where it
matters (nesting, visibility, colours, CSS). H23 (determinism) needs two renders and lives in
tests/test_render.py. Each check returns Findings; pipeline/lint.py runs them all. The parsing
lives in pipeline/lint_document.py.
"""

from __future__ import annotations

import logging
import re

import cssutils

from pipeline.lint_document import MUST, SHOULD, Document, Finding, Node, contrast, parse_style

CLIP_BYTES = 102 * 1024  # Gmail clips above this and hides the footer
AIM_BYTES = 90 * 1024
STYLE_BYTES = 16 * 1024
FORBIDDEN_TAGS = {"script", "form", "input", "button", "select", "textarea", "iframe", "object",
                  "embed", "video", "audio", "svg", "base", "applet", "frame", "frameset"}
# Rules that may stay in <style> beside @media: client hacks that cannot be inlined.
CLIENT_HACKS = re.compile(
    r"^(:root|#outlook a|a\[x-apple-data-detectors\]|u \+ #body a|\.ExternalClass.*|"
    r"\[data-ogsc\].*|\[data-ogsb\].*|#MessageViewBody a|body\[data-outlook-cycle\].*)$"
)
SHORTENERS = {"bit.ly", "t.co", "tinyurl.com", "goo.gl", "ow.ly", "is.gd", "buff.ly",
              "rebrand.ly", "cutt.ly", "shorturl.at", "tiny.cc", "lnkd.in"}
UNSUPPORTED_CSS = re.compile(
    r"(?:^|;|\s)(position\s*:|display\s*:\s*(?:inline-)?(?:grid|flex)|[^;]*var\(--|[^;]*url\(\s*['\"]?data:)",
    re.I,
)


def lint_html(
    html: str, unsubscribe_url: str | None = None, postal_address: str | None = None
) -> list[Finding]:
    """Every H check on one copy; pass the expected unsubscribe URL and address to check H21 exactly."""
    doc = Document(html)
    findings: list[Finding] = []
    findings += check_size(html)
    findings += check_css(doc)
    findings += check_elements(doc)
    findings += check_layout(doc)
    findings += check_head(doc, html)
    findings += check_colours(doc)
    findings += check_footer(doc, unsubscribe_url, postal_address)
    return findings


def check_size(html: str) -> list[Finding]:
    size = len(html.encode("utf-8"))
    if size > CLIP_BYTES:
        return [Finding("H1", MUST, f"the HTML is {size / 1024:.1f} KB: Gmail clips above 102 KB")]
    if size > AIM_BYTES:
        return [Finding("H1", SHOULD, f"the HTML is {size / 1024:.1f} KB: aim under 90 KB")]
    return []


def check_css(doc: Document) -> list[Finding]:
    found: list[Finding] = []
    css = "\n".join(doc.styles)
    if len(css.encode("utf-8")) > STYLE_BYTES:
        found.append(Finding("H2", MUST, f"<style> holds {len(css) / 1024:.1f} KB of CSS (max 16 KB)"))
    sheet, errors = _parse_css(css)
    found += [Finding("H2", MUST, f"CSS does not parse: {e}") for e in errors]
    for rule in sheet.cssRules:
        if rule.type == rule.MEDIA_RULE:
            for inner in rule.cssRules:
                if inner.type != inner.STYLE_RULE:
                    found.append(Finding("H2", MUST, f"at-rule nested in @media {rule.media.mediaText}"))
                    continue
                for prop in inner.style:
                    if prop.priority != "important":
                        found.append(Finding("H4", MUST, f"@media {rule.media.mediaText}: "
                                             f"{inner.selectorText} {{{prop.name}}} lacks !important"))
        elif rule.type == rule.IMPORT_RULE:
            found.append(Finding("H6", MUST, f"@import {rule.href}"))
        elif rule.type == rule.STYLE_RULE:
            if not all(CLIENT_HACKS.match(s.selectorText.strip()) for s in rule.selectorList):
                found.append(Finding("H3", MUST, f"rule left in <style> after inlining: {rule.selectorText}"))
        elif rule.type == rule.FONT_FACE_RULE:
            found.append(Finding("H7", SHOULD, "@font-face: web fonts need a fallback stack"))
        elif rule.type not in (rule.COMMENT, rule.CHARSET_RULE):
            found.append(Finding("H3", MUST, f"at-rule left in <style>: {rule.cssText[:60]}"))
    if "var(--" in css or "position:" in css.replace(" ", "").lower():
        found.append(Finding("H7", SHOULD, "<style> uses CSS variables or position"))
    return found


def _parse_css(css: str) -> tuple[cssutils.css.CSSStyleSheet, list[str]]:
    """The sheet, and cssutils' ERROR log lines while parsing it (unknown properties are only
    warnings)."""
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = Collect(level=logging.ERROR)
    log = logging.getLogger("CSSUTILS")
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.ERROR)
    try:
        sheet = cssutils.parseString(css, validate=False)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    return sheet, errors


def check_elements(doc: Document) -> list[Finding]:
    found: list[Finding] = []
    ids: set[str] = set()
    for node in doc.elements:
        tag, attrs = node.tag, node.attrs
        if tag in FORBIDDEN_TAGS:
            found.append(Finding("H5", MUST, f"<{tag}> is not allowed in email"))
        for name, value in attrs.items():
            if name.startswith("on"):
                found.append(Finding("H5", MUST, f"<{tag} {name}=...>: event handlers are not allowed"))
            if name in {"href", "src"} and value.strip().lower().startswith("javascript:"):
                found.append(Finding("H5", MUST, f"<{tag} {name}={value!r}>: javascript: URL"))
        if tag == "link" and "stylesheet" in attrs.get("rel", "").lower():
            found.append(Finding("H6", MUST, f"external stylesheet {attrs.get('href')}"))
        style = attrs.get("style", "")
        if "{" in style or "}" in style:
            found.append(Finding("H24", MUST, f"<{tag} style=...> holds a {{...}} block: {style[:60]}"))
        if "@import" in style:
            found.append(Finding("H6", MUST, f"<{tag}> style uses @import"))
        if UNSUPPORTED_CSS.search(style):
            found.append(Finding("H7", SHOULD, f"<{tag}> style uses CSS mail clients lack: {style[:60]}"))
        if "id" in attrs:
            if attrs["id"] in ids:
                found.append(Finding("H20", MUST, f"duplicate id {attrs['id']!r}"))
            ids.add(attrs["id"])
        if tag == "img":
            found += _check_image(attrs)
        if tag == "a" and "href" in attrs:
            found += _check_link(attrs["href"])
        if tag in {"table", "td", "th", "body"} and "background-color" in parse_style(style) and "bgcolor" not in attrs:
            found.append(Finding("H17", SHOULD, f"<{tag} class={attrs.get('class', '')!r}> has "
                                 "background-color but no bgcolor attribute"))
    found += [Finding("H20", MUST, f"bad nesting: {problem}") for problem in doc.nesting]
    return found


def _check_image(attrs: dict[str, str]) -> list[Finding]:
    found = []
    src = attrs.get("src", "")
    if "alt" not in attrs:
        found.append(Finding("H9", MUST, f"<img src={src!r}> has no alt attribute"))
    if not attrs.get("width", "").isdigit():
        found.append(Finding("H10", MUST, f"<img src={src!r}> needs an integer width attribute"))
    if src.startswith("http://"):
        found.append(Finding("H22", SHOULD, f"image over plain http: {src}"))
    if src.startswith("data:"):
        found.append(Finding("H7", SHOULD, f"base64 image: {src[:40]}..."))
    elif not src.startswith("https://"):
        found.append(Finding("H11", MUST, f"image URL is not absolute https: {src!r}"))
    return found


def _check_link(href: str) -> list[Finding]:
    found = []
    if not href.startswith(("https://", "mailto:", "tel:")):
        found.append(Finding("H11", MUST, f"link is not absolute https/mailto/tel: {href!r}"))
    host = href.split("//", 1)[-1].split("/", 1)[0].lower()
    if host in SHORTENERS:
        found.append(Finding("H22", SHOULD, f"URL shortener: {href}"))
    return found


def check_layout(doc: Document) -> list[Finding]:
    found: list[Finding] = []
    tables = [n for n in doc.elements if n.tag == "table"]
    mso_tables = [Document(c).elements for c in doc.comments if c.lstrip().startswith("[if mso")]
    every_table = tables + [n for nodes in mso_tables for n in nodes if n.tag == "table"]
    for table in every_table:
        wanted = {"role": "presentation", "border": "0", "cellpadding": "0", "cellspacing": "0"}
        wrong = [f'{k}="{v}"' for k, v in wanted.items() if table.attrs.get(k) != v]
        if wrong:
            found.append(Finding("H8", MUST, f"<table class={table.attrs.get('class', '')!r}> lacks "
                                 + " ".join(wrong)))
    if not any(t.attrs.get("width") == "100%" for t in tables):
        found.append(Finding("H8", MUST, "no 100% wide wrapper table"))
    if not any(_max_width(t) is not None and _max_width(t) <= 600 for t in tables):  # type: ignore[operator]
        found.append(Finding("H8", MUST, "no content table of at most 600 px"))
    if not any(t.attrs.get("width", "").isdigit() and int(t.attrs["width"]) <= 600
               for nodes in mso_tables for t in nodes if t.tag == "table"):
        found.append(Finding("H8", MUST, "no fixed-width Outlook table in <!--[if mso]>"))
    opened = sum(c.count("[if ") for c in doc.comments)
    closed = sum(c.count("[endif]") for c in doc.comments)
    if opened != closed:
        found.append(Finding("H16", SHOULD, f"{opened} MSO conditionals opened, {closed} closed"))
    return found


def _max_width(table: Node) -> int | None:
    width = table.attrs.get("width", "")
    if width.isdigit():
        return int(width)
    style = parse_style(table.attrs.get("style", ""))
    match = re.fullmatch(r"(\d+)px", style.get("max-width", "") or style.get("width", ""))
    return int(match[1]) if match else None


def check_head(doc: Document, html: str) -> list[Finding]:
    found: list[Finding] = []
    root = next((n for n in doc.elements if n.tag == "html"), None)
    if root is None or not root.attrs.get("lang") or root.attrs.get("dir") not in {"ltr", "rtl", "auto"}:
        found.append(Finding("H12", MUST, "<html> needs lang and dir attributes"))
    head = html.encode("utf-8")[:1024].decode("utf-8", "ignore").lower()
    if not re.search(r"<meta[^>]+charset=[\"']?utf-8", head):
        found.append(Finding("H13", MUST, "no utf-8 charset declared in the first 1024 bytes"))
    if not doc.doctype:
        found.append(Finding("H14", SHOULD, "no <!DOCTYPE html>"))
    title = next((t for t, n in doc.texts if n.tag == "title"), "")
    if not title:
        found.append(Finding("H14", SHOULD, "empty or missing <title>"))
    metas = {n.attrs.get("name", "").lower(): n.attrs.get("content", "") for n in doc.elements if n.tag == "meta"}
    if "viewport" not in metas:
        found.append(Finding("H14", SHOULD, "no viewport meta"))
    first = doc.body_first
    if first is None or not first.hidden or not any(n is first for _, n in doc.texts):
        found.append(Finding("H15", SHOULD, "the body does not open with a hidden preheader"))
    if "light" not in metas.get("color-scheme", "") or "supported-color-schemes" not in metas:
        found.append(Finding("H18", SHOULD, "no color-scheme / supported-color-schemes metas"))
    if not any("prefers-color-scheme" in s for s in doc.styles):
        found.append(Finding("H18", SHOULD, "no @media (prefers-color-scheme: dark) overrides"))
    return found


def check_colours(doc: Document) -> list[Finding]:
    found: list[Finding] = []
    for text, node in doc.texts:
        if node.hidden or node.tag in {"title", "style"}:
            continue
        ratio = contrast(node.color, node.background)
        if ratio < 1.5:
            found.append(Finding("H19", MUST, f"text {text[:40]!r} is nearly invisible "
                                 f"(contrast {ratio:.2f} against its background)"))
    return found


def check_footer(doc: Document, unsubscribe_url: str | None, postal_address: str | None) -> list[Finding]:
    found: list[Finding] = []
    # A link counts when it has visible text of its own (an empty <a> is not a link to a reader).
    links = [(text, n) for text, n in doc.texts if n.tag == "a" and not n.hidden]
    if unsubscribe_url is not None:
        ok = any(n.attrs.get("href") == unsubscribe_url for _, n in links)
    else:
        ok = any("unsubscribe" in text.lower() for text, _ in links)
    if not ok:
        found.append(Finding("H21", MUST, "no visible unsubscribe link"
                             + (f" to {unsubscribe_url}" if unsubscribe_url else "")))
    text = " ".join(doc.visible_text().split())
    if postal_address is not None and not postal_address.strip():
        found.append(Finding("H21", MUST, "no postal address: set newsletter.postal_address in config.toml"))
    elif postal_address is not None and " ".join(postal_address.split()) not in text:
        found.append(Finding("H21", MUST, f"the postal address {postal_address!r} is not shown"))
    return found
