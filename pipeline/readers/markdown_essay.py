"""A reader for essays kept as Markdown with YAML front matter: the format writers keep.

    ---
    title: Why the starter wins
    date: 2026-10-05
    dek: A jar of paste runs my week.      (or "summary:")
    tags: [bread, fermentation]            (or "bread, fermentation")
    slug: why-the-starter-wins             (optional; else the file name)
    url: https://example.org/essays/why-the-starter-wins
    ---
    Body in Markdown. `#`/`##` headings become headings; paragraphs, list items and quotes become
    paragraphs of plain text (links keep their text, emphasis and code marks go, images go).
    Raw HTML in the body is read by readers/html_blocks.py, as a feed's HTML is.

YAML values are the text written (`title: No` is "No", `slug: 010` is "010"), dates and
`~`/`null` (no value) aside.
TOML front matter between `+++` lines (as Hugo writes it) is read too, with the same keys. Front
matter opened on line 1 and never closed is refused, not taken as text.

Front matter is data from a file anyone may have written, so it is read with limits: at most
FRONT_MATTER_MAX bytes, no anchors or aliases (`&a` / `*a`: a few hundred bytes of them expand
to gigabytes, the "billion laughs"), nesting at most MAX_DEPTH deep; pipeline/readers/parsed_essay.py then
bounds each field. Breaking a rule fails that file with the line and the reason.

The body is bounded too, where Markdown's cost lies: from each `[` markdown-it looks ahead over
the rest of the paragraph for where a link's text ends, up to 20 unclosed `[` deep. That is
linear, but some 20 steps a character: 2 MB of `[` took half a minute. A file is refused past
MAX_LINK_STEPS steps of that look-ahead (see _LinkLookahead).

markdown-it-py (CommonMark) and PyYAML enter the project here and nowhere else.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from datetime import date
from typing import Any, cast

import yaml
from markdown_it import MarkdownIt
from markdown_it.parser_inline import ParserInline
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token

from pipeline.errors import ImportProblem
from pipeline.readers.html_blocks import BlockReader, html_blocks
from pipeline.readers.parsed_essay import ParsedEssay, clean, title_from_body, to_date

FRONT_MATTER_MAX = 16 * 1024  # bytes; real front matter is a few hundred
MAX_DEPTH = 8  # a tag list in a mapping is depth 2; deeper is no essay's front matter
# Steps of looking ahead for links' ends in one file: 5,000 links with brackets and marks in
# their text take 70,000, and a million is about half a second.
MAX_LINK_STEPS = 1_000_000
DEK_KEYS = ("dek", "summary", "description")  # the first one present is the dek
KNOWN_KEYS = frozenset({"title", "date", "dek", "summary", "description", "tags", "slug", "url", "draft",
                        "published"})
# How site generators' front matter says yes and no (YAML values stay the text written).
_YES, _NO = frozenset({"true", "yes", "on"}), frozenset({"false", "no", "off"})
# YAML between --- lines (or ending with YAML's own "..."), or TOML between +++ lines (Hugo's).
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*$\r?\n?", re.S | re.M)
_TOML_FRONT = re.compile(r"\A\+\+\+[ \t]*\r?\n(.*?)^\+\+\+[ \t]*$\r?\n?", re.S | re.M)
# A first line that opens front matter: without its closing line, the block is broken, not text.
_OPENING = re.compile(r"\A(---|\+\+\+)[ \t]*\r?\n")
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)$")
# YAML's "\ud83c\udf5e" (as JSON writes a character beyond U+FFFF) makes two UTF-16 halves.
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")
_NEWLINES = re.compile(r"\r\n?")  # as markdown-it reads them: its line numbers count these
# Keys of markdown-it's `env` (one per document parsed) that _LinkLookahead keeps its count in.
_FIRST_LINE, _LINE, _STEPS = "essay_first_line", "essay_line", "essay_link_steps"


class _LinkLookahead(ParserInline):
    """markdown-it's inline parser, held to MAX_LINK_STEPS of looking ahead for links' ends.

    skipToken is that look-ahead: markdown-it calls it only from a `[`, to find the `]` that
    ends a link's text. Counted per document (in its env), so neither one long paragraph nor
    many short ones get past the limit; the error names the line of the paragraph it ran out in
    (which _parse_inline_blocks notes).
    """

    def skipToken(self, state: StateInline) -> None:
        state.env[_STEPS] = state.env.get(_STEPS, 0) + 1
        if state.env[_STEPS] > MAX_LINK_STEPS:
            raise ImportProblem(
                f"line {state.env[_LINE]}: too many [ that never close: finding where each link's text "
                f"ends takes more than {MAX_LINK_STEPS:,} steps (the limit; an essay takes a few thousand); "
                "put a backslash before each [ that is text"
            )
        super().skipToken(state)


def _parse_inline_blocks(state: StateCore) -> None:
    """markdown-it's core `inline` rule, noting each block's first line in the file before its
    parse. Noted here, not in the inline parser: an image's alt text is parsed by a nested call
    from inside its paragraph, which must not count as the next block."""
    first = state.env.get(_FIRST_LINE, 1)
    for token in state.tokens:
        if token.type == "inline":
            state.env[_LINE] = first + token.map[0] if token.map else 0
            if token.children is None:
                token.children = []
            state.md.inline.parse(token.content, state.md, state.env, token.children)


def _essay_markdown() -> MarkdownIt:
    """CommonMark as markdown-it reads it, with _LinkLookahead as its inline parser."""
    md = MarkdownIt("commonmark")
    md.inline = _LinkLookahead()
    md.configure("commonmark")  # the preset's inline rules, in the new parser
    md.core.ruler.at("inline", _parse_inline_blocks)
    return md


_MD = _essay_markdown()  # essays from files, and the project's own docs
_MD_NO_HTML = MarkdownIt("commonmark", {"html": False})  # an issue's intro, which the operator writes


def markdown_html(text: str, raw_html: bool = True) -> str:
    """A trusted Markdown document of the project (docs/) as HTML, for the preview pages; with
    `raw_html=False` (an issue's intro note, mailed to everyone) HTML in it is shown as text."""
    return str((_MD if raw_html else _MD_NO_HTML).render(text))


def parse_markdown(text: str) -> ParsedEssay:
    """The essay in a Markdown file; raises ImportProblem for broken front matter."""
    meta, body_text = split_front_matter(text)
    body, h1, body_warnings = body_blocks(body_text, first_line=text.count("\n", 0, len(text) - len(body_text)) + 1)
    title = _text_field(meta, "title")
    if not title and h1:
        title = h1  # a leading "# Title" is the title when the front matter has none
    elif h1 and clean(h1) != title:
        body.insert(0, {"kind": "h", "text": h1})  # a different top heading stays in the body

    date_value = meta.get("date")
    published_on = to_date(date_value)
    parsed = ParsedEssay(
        title=title,
        dek=next((_text_field(meta, k) for k in DEK_KEYS if meta.get(k)), ""),
        body=body,
        published_on=published_on,
        slug=_text_field(meta, "slug") or None,
        url=_text_field(meta, "url") or None,
        tags=_tags(meta.get("tags")),
    )
    parsed.warnings.extend(body_warnings)
    parsed.draft = _draft(meta)
    if date_value not in (None, "") and published_on is None:
        parsed.warnings.append(f"front matter: date {date_value!r} is not a date; left empty")
    unknown = sorted(set(meta) - KNOWN_KEYS)
    if unknown:
        parsed.warnings.append(f"front matter: ignored unknown key(s) {', '.join(unknown)}")
    if not parsed.title:
        parsed.title = title_from_body(body)
        if parsed.title:
            parsed.warnings.append(f"no title; took the first sentence: {parsed.title!r}")
    return parsed


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter as a dict, the Markdown after it); no front matter is an empty dict."""
    match = _FRONT.match(text) or _TOML_FRONT.match(text)
    if not match:
        opening = _OPENING.match(text)
        if opening:
            fence = opening.group(1)
            raise ImportProblem(
                f"front matter line 1: the {fence} that opens it is never closed; end the front "
                f"matter with a {fence} line (or, if it is a rule in the text, put text above it)"
            )
        return {}, text
    size = len(match.group(1).encode("utf-8"))
    if size > FRONT_MATTER_MAX:
        raise ImportProblem(
            f"front matter is {size:,} bytes (the limit is {FRONT_MATTER_MAX:,}); "
            "the essay's text goes after the closing ---"
        )
    meta = _load_toml(match.group(1)) if match.re is _TOML_FRONT else _load_yaml(match.group(1))
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ImportProblem("front matter: expected `key: value` lines")
    fields: dict[str, Any] = {}
    for key, value in meta.items():
        name = _valid_text(str(key), str(key).encode("utf-8", "backslashreplace").decode())
        fields[name.lower()] = _valid_text(value, name)
    return fields, text[match.end() :]


def _load_yaml(source: str) -> Any:
    try:
        return yaml.load(source, Loader=_FrontMatterLoader)  # noqa: S506 (safe subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 2}: " if mark is not None else ""  # +1 for 0-based, +1 for ---
        problem = getattr(exc, "problem", None) or str(exc)
        raise ImportProblem(f"front matter {where}{problem}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ImportProblem(f"front matter: a value that cannot be read: {exc}") from None


def _draft(meta: dict[str, Any]) -> str:
    """Why the front matter makes this a draft (Hugo, Jekyll and Eleventy's `draft: true`, or
    `published: false`), else ""."""
    for key, means in (("draft", _YES), ("published", _NO)):
        value = meta.get(key)
        if str(value).strip().lower() in means:
            return f"{key}: {str(value).strip().lower()}"
    return ""


def _load_toml(source: str) -> dict[str, Any]:
    """TOML front matter, held to the rules of YAML's: errors name the file's line, nesting is
    at most MAX_DEPTH deep."""
    too_deep = ImportProblem(f"front matter: nested more than {MAX_DEPTH} levels deep")
    try:
        meta = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        if where is None:
            raise ImportProblem(f"front matter: {message}") from None
        # +1 for the +++ line above the TOML.
        raise ImportProblem(f"front matter line {int(where.group(1)) + 1}: {message[: where.start()]}") from None
    except RecursionError:  # tomllib recurses into each [ : "[[[[..." runs out of stack
        raise too_deep from None
    if _depth(meta) > MAX_DEPTH:
        raise too_deep
    return meta


def _depth(value: object) -> int:
    """How deep lists and tables nest in `value` (a table of text is 1)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _valid_text(value: Any, field: str) -> Any:
    """`value` with every string in it valid Unicode; ImportProblem naming `field` if it cannot be.

    A string that no UTF-8 file, JSON fingerprint or database can hold must stop here, with its
    field named, and not later in a crash that takes the whole import with it. YAML escapes are
    the only way such a string gets in: the file itself was decoded strictly.
    """
    if isinstance(value, str):
        if not _SURROGATE.search(value):
            return value  # the common case
        lone = _LONE_SURROGATE.search(value)
        if lone:
            raise ImportProblem(
                f"front matter {field}: \\u{ord(lone.group()):04x} is half of a UTF-16 surrogate "
                "pair with no other half, not a character; write the character itself"
            )
        return value.encode("utf-16", "surrogatepass").decode("utf-16")  # each pair, one character
    if isinstance(value, list):
        return [_valid_text(item, field) for item in value]
    if isinstance(value, dict):
        return {_valid_text(k, field): _valid_text(v, field) for k, v in value.items()}
    return value


class _FrontMatterLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, and nesting deeper than MAX_DEPTH.

    Checked as each node is composed, so a bomb is refused at its first `&`, before anything
    is expanded.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        # The stubs type a mark as either of PyYAML's two Mark classes; the error takes either.
        mark = cast("yaml.error.Mark | None", event.start_mark)
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None,
                "anchors and aliases (&name, *name) are not allowed",
                mark,
            )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if self._depth >= MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_timestamp(self, node: yaml.ScalarNode) -> date | str:
        """A date-shaped value that is no date ("2026-02-30") stays text, as it would quoted:
        the reader then warns about that one field, instead of the whole file failing."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return str(self.construct_scalar(node))


_TIMESTAMP, _NULL = "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:null"
_FrontMatterLoader.add_constructor(_TIMESTAMP, _FrontMatterLoader.construct_timestamp)
# A plain value stays the text written: YAML 1.1 reads `No` as false, `9:30` as 570, `3.10` as
# 3.1 and `010` as 8, and titles, slugs and tags were silently rewritten. Only a date is typed,
# for the date field (a date-shaped title is the same text again), and `~` or `null` is still
# no value, as site generators write a field left empty (`dek: null`).
_FrontMatterLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag in (_TIMESTAMP, _NULL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def body_blocks(markdown: str, first_line: int = 1) -> tuple[list[dict[str, str]], str, list[str]]:
    """(paragraph and heading blocks, the text of a leading level-1 heading or "", warnings);
    `first_line` is the file's line the Markdown starts on, for errors.

    The Markdown is rendered to HTML and read by the HTML reader, one top-level block at a time:
    raw HTML in it is then read as a feed's HTML is (text in <p> and <div> kept, scripts and
    styles dropped with their contents), as a browser would show it.
    """
    source = _NEWLINES.sub("\n", markdown)
    tokens = _MD.parse(source, {_FIRST_LINE: first_line})
    h1 = ""
    if tokens and tokens[0].type == "heading_open" and tokens[0].tag == "h1":
        h1 = " ".join(b["text"] for b in html_blocks(_render(tokens[:3]), symbols_are_text=True))
        tokens = tokens[3:]
    _keep_markdown_structure(tokens)
    reader = BlockReader(symbols_are_text=True)
    lines = source.split("\n")
    done = 0  # source lines read so far
    for start, stop in _top_level_blocks(tokens):
        where = tokens[start].map  # a top-level block's [first line, line after it]
        end = where[1] if where else done
        if reader.inside_markup:
            # CommonMark ends a <div> block at a blank line even inside its <script> or comment:
            # what follows is still that content, so it is read as the raw text it is. Rendered,
            # an indented "</script>" would become code, escaped, and never close the script.
            reader.feed("\n".join(lines[done:end]) + "\n")
        else:
            reader.feed(_render(tokens[start:stop]))
        done = end
    blocks = reader.finish()
    if not reader.unclosed:
        return blocks, h1, []
    return blocks, h1, [f"raw HTML: {reader.unclosed} is never closed; the text after it is left out"]


def _render(tokens: list[Token]) -> str:
    return str(_MD.renderer.render(tokens, _MD.options, {}))


def _top_level_blocks(tokens: list[Token]) -> Iterator[tuple[int, int]]:
    """(start, stop) of each top-level block's tokens: a paragraph, a list, an HTML block, ..."""
    start = 0
    for i, token in enumerate(tokens):
        if token.level == 0 and token.nesting <= 0:  # a block's closing token, or a leaf block
            yield start, i + 1
            start = i + 1


def _keep_markdown_structure(tokens: list[Token]) -> None:
    """What the HTML reader would otherwise make differently of Markdown: every level of `#`
    is a heading (it takes only h1-h3), and a list item's paragraphs start with its marker
    ("• ", "1. "), since plain text has no other way to show a list."""
    marker = ""
    for i, token in enumerate(tokens):
        if token.type in ("heading_open", "heading_close") and token.tag in ("h4", "h5", "h6"):
            token.tag = "h3"
        elif token.type == "list_item_open":
            marker = f"{token.info}. " if token.info else "• "  # info: an ordered item's number
        elif token.type == "list_item_close":
            marker = ""
        elif token.type == "inline" and marker and tokens[i - 1].type == "paragraph_open":
            children = token.children or []
            if clean(inline_text(children)):  # an item of only an image gets no lone marker
                token.children = [Token("text", "", 0, content=marker), *children]


def inline_text(children: list[Token]) -> str:
    """Plain text of inline Markdown: link text kept, marks dropped, images and HTML removed."""
    parts: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _text_field(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        raise ImportProblem(f"front matter: {key} must be text, got {type(value).__name__}")
    return plain(str(value))


def plain(text: str) -> str:
    """One line of inline Markdown as plain text ("A *dek*" -> "A dek")."""
    # Cleaned first too: markdown-it turns a NUL into U+FFFD, which no later step would remove.
    tokens = _MD.parseInline(clean(text))
    return clean(inline_text(tokens[0].children or [])) if tokens else ""


def _tags(value: object) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    tags: list[str] = []
    for item in items:
        tag = clean(str(item))
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def note_paragraphs(markdown: str) -> list[str]:
    """A short Markdown note (an issue's intro) as plain paragraphs for a text/plain part:
    marks dropped, list items marked, and each link's address kept after its text, since a
    plain-text reader has no other way to follow it."""
    paragraphs: list[str] = []
    prefix = ""
    for token in _MD_NO_HTML.parse(markdown):
        if token.type == "list_item_open":
            prefix = f"{token.info}. " if token.info else "• "
        elif token.type == "inline":
            parts, links = [], []
            for child in token.children or []:
                if child.type in ("text", "code_inline", "html_inline"):
                    parts.append(child.content)
                elif child.type in ("softbreak", "hardbreak"):
                    parts.append(" ")
                elif child.type == "link_open":
                    links.append(str(child.attrs.get("href", "")))
                elif child.type == "link_close" and links:
                    parts.append(f" ({links.pop()})")
            text = clean("".join(parts))
            if text:
                paragraphs.append(prefix + text)
            prefix = ""
    return paragraphs
