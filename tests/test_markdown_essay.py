"""The Markdown reader: front matter fields, headings, inline Markdown reduced to plain text."""

from __future__ import annotations

import re
from datetime import date

import pytest

from pipeline.errors import ImportProblem
from pipeline.readers import markdown_essay
from pipeline.readers.markdown_essay import parse_markdown
from tests.test_architecture import importers_of

BODY = """
Opening paragraph with a [link](https://example.org/x), *emphasis*, **strong** and `code`
that runs over two lines. ![a photo](photo.jpg)

## A section

Second paragraph.

- first item
- second item

> A quoted line.
"""


def doc(front: str, body: str = BODY) -> str:
    return f"---\n{front.strip()}\n---\n{body}"


def test_front_matter_fields() -> None:
    draft = parse_markdown(doc("""
title: Walking the *old* roads
date: 2026-10-05
dek: Paths older than the town.
tags: [walking, maps]
slug: old-roads
url: https://example.org/essays/old-roads
"""))
    assert draft.title == "Walking the old roads"
    assert draft.published_on == date(2026, 10, 5)
    assert draft.dek == "Paths older than the town."
    assert draft.tags == ["walking", "maps"]
    assert draft.slug == "old-roads"
    assert draft.url == "https://example.org/essays/old-roads"
    assert draft.warnings == []


def test_body_blocks_are_plain_text() -> None:
    draft = parse_markdown(doc("title: T"))
    assert draft.body == [
        {
            "kind": "p",
            "text": "Opening paragraph with a link, emphasis, strong and code "
            "that runs over two lines.",
        },
        {"kind": "h", "text": "A section"},
        {"kind": "p", "text": "Second paragraph."},
        {"kind": "p", "text": "• first item"},
        {"kind": "p", "text": "• second item"},
        {"kind": "p", "text": "A quoted line."},
    ]


@pytest.mark.parametrize(
    "front, dek",
    [
        ("summary: From summary.", "From summary."),
        ("description: From description.", "From description."),
    ],
)
def test_summary_or_description_stand_in_for_dek(front: str, dek: str) -> None:
    assert parse_markdown(doc(f"title: T\n{front}")).dek == dek


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-07-03", date(2026, 7, 3)),
        ('"July 3, 2026"', date(2026, 7, 3)),
        ("2026-07-03 08:30:00", date(2026, 7, 3)),
    ],
)
def test_dates_in_several_spellings(value: str, expected: date) -> None:
    assert parse_markdown(doc(f"title: T\ndate: {value}")).published_on == expected


def test_a_date_that_is_no_date_warns_and_stays_empty() -> None:
    draft = parse_markdown(doc("title: T\ndate: someday"))
    assert draft.published_on is None
    assert any("someday" in w for w in draft.warnings)


def test_tags_as_a_comma_separated_string() -> None:
    assert parse_markdown(doc("title: T\ntags: bread, walking , bread")).tags == [
        "bread",
        "walking",
    ]


def test_leading_h1_is_the_title_without_front_matter() -> None:
    draft = parse_markdown("# The title here\n\nBody text.\n\n## Part two\n\nMore.\n")
    assert draft.title == "The title here"
    assert draft.body[0] == {"kind": "p", "text": "Body text."}
    assert [b["text"] for b in draft.body if b["kind"] == "h"] == ["Part two"]


def test_h1_repeating_the_front_matter_title_is_not_kept_twice() -> None:
    draft = parse_markdown(doc("title: Same", "# Same\n\nText.\n"))
    assert draft.body == [{"kind": "p", "text": "Text."}]


def test_no_title_anywhere_takes_the_first_sentence_and_warns() -> None:
    draft = parse_markdown(doc("date: 2026-01-02", "The dough rose overnight. Then it fell.\n"))
    assert draft.title == "The dough rose overnight"
    assert any("no title" in w for w in draft.warnings)


def test_unknown_keys_are_reported() -> None:
    draft = parse_markdown(doc("title: T\nauthor: Someone"))
    assert any("author" in w for w in draft.warnings)


def test_broken_yaml_names_the_line() -> None:
    # Line 1 is the opening ---, so the third line of the file is the second key.
    with pytest.raises(ImportProblem, match="line 3: mapping values are not allowed"):
        parse_markdown(doc("title: T\nsummary: a: b\ndate: 2026-01-01"))


def test_front_matter_must_be_a_mapping() -> None:
    with pytest.raises(ImportProblem, match="key: value"):
        parse_markdown(doc("- just\n- a list"))


def test_a_list_where_text_is_expected_is_an_error() -> None:
    with pytest.raises(ImportProblem, match="title must be text"):
        parse_markdown(doc("title: [a, b]"))


def test_markdown_without_front_matter() -> None:
    draft = parse_markdown("Just a paragraph.\n")
    assert draft.body == [{"kind": "p", "text": "Just a paragraph."}]
    assert draft.title == "Just a paragraph"


# A "billion laughs" in four levels: 9**4 strings from a few hundred bytes (each extra level
# multiplies by nine; the one that took minutes and gigabytes had more).
ALIAS_BOMB = """
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
tags: [*c, *c, *c, *c, *c, *c, *c, *c, *c]
"""


def test_an_alias_bomb_is_refused_at_its_first_anchor() -> None:
    with pytest.raises(ImportProblem, match=r"line 3: anchors and aliases .* are not allowed"):
        parse_markdown(doc("title: T" + ALIAS_BOMB))


def test_one_anchor_and_alias_are_refused_too() -> None:
    # Not only bombs: the rule is simple to state and front matter never needs them.
    with pytest.raises(ImportProblem, match="line 2: anchors and aliases"):
        parse_markdown(doc("title: &t Walking\ndek: *t"))


def test_front_matter_over_16_kib_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(ImportProblem, match=r"front matter is \d\d,\d{3} bytes \(the limit is 16,384\)"):
        parse_markdown(doc("title: T\n" + "note: padding padding\n" * 1000))


def test_deep_nesting_and_huge_numbers_are_problems_not_crashes() -> None:
    # Both crashed the whole import (RecursionError, ValueError) instead of failing one file.
    with pytest.raises(ImportProblem, match="line 2: nested more than 8 levels deep"):
        parse_markdown(doc("title: " + "[" * 3000))
    with pytest.raises(ImportProblem, match="a value that cannot be read"):
        parse_markdown(doc("title: T\nnumber: !!int " + "9" * 5000))  # untagged, it is text


def test_control_characters_escapes_and_bidi_controls_are_stripped() -> None:
    # YAML's double-quoted "\e", "\0" and "\u202E" are how such characters get into a file.
    draft = parse_markdown(doc(r"""
title: "\e[2J\e]0;pwned\aGood \e[31mbread\e[0m\0"
dek: "evil\u202Egnp.exe \u2066isolated\u2069 \u200Fmark\u061C"
tags: ["\e[5mblink", "ok\x85line"]
slug: "\e[1mold-roads"
""", "Text \x1b[31mred\x1b[0m with a \u202ereversed word.\n"))
    assert draft.title == "Good bread"
    assert draft.dek == "evilgnp.exe isolated mark"
    assert draft.tags == ["blink", "ok line"]
    assert draft.slug == "old-roads"
    assert draft.body == [{"kind": "p", "text": "Text red with a reversed word."}]


@pytest.mark.parametrize("library", ["yaml", "markdown_it"])
def test_yaml_and_markdown_it_enter_only_here(library: str) -> None:
    assert importers_of(library) == {"pipeline/readers/markdown_essay.py"}


# --- values that are no text ----------------------------------------------------------------


def test_a_lone_surrogate_escape_is_refused_naming_its_field() -> None:
    # YAML's "\ud800" makes half of a UTF-16 pair, which no UTF-8 text (nor the database) holds:
    # it crashed the whole import when the essay was fingerprinted.
    with pytest.raises(ImportProblem, match=r"front matter title: .*\\ud800.*surrogate"):
        parse_markdown(doc(r'title: "\ud800 x"'))
    with pytest.raises(ImportProblem, match=r"front matter tags: .*\\udfff"):
        parse_markdown(doc('title: T\ntags: [ok, "a\\udfff"]'))
    with pytest.raises(ImportProblem, match=r"front matter \\ud800: "):
        parse_markdown(doc('title: T\n"\\ud800": x'))


def test_a_surrogate_pair_escape_is_the_character_it_stands_for() -> None:
    # JSON-style "\ud83c\udf5e" is how some tools write a character beyond the BMP.
    draft = parse_markdown(doc(r'title: "Bread \ud83c\udf5e"' + '\ndek: "\\ud83c\\udf5e"'))
    assert (draft.title, draft.dek) == ("Bread \U0001f35e", "\U0001f35e")


# --- front matter that is broken, or not YAML -----------------------------------------------


@pytest.mark.parametrize("fence", ["---", "+++"])
def test_an_unclosed_front_matter_block_is_refused_naming_line_1(fence: str) -> None:
    # It was taken as body text: the title became "title: Unclosed date: ... Body text".
    with pytest.raises(ImportProblem, match=rf"front matter line 1: the {re.escape(fence)} .* is never closed"):
        parse_markdown(f"{fence}\ntitle: Unclosed\ndate: 2026-01-01\n\nBody text.\n")


def test_toml_front_matter_between_plus_lines_is_read() -> None:
    draft = parse_markdown(
        '+++\ntitle = "Walking the *old* roads"\ndate = 2026-10-05\nsummary = "A dek."\n'
        'tags = ["walking", "maps"]\nslug = "old-roads"\nurl = "https://example.org/old"\n+++\n'
        "Body text.\n"
    )
    assert (draft.title, draft.published_on, draft.dek, draft.tags, draft.slug, draft.url) == (
        "Walking the old roads", date(2026, 10, 5), "A dek.", ["walking", "maps"], "old-roads",
        "https://example.org/old",
    )
    assert draft.body == [{"kind": "p", "text": "Body text."}] and draft.warnings == []


def test_broken_toml_front_matter_names_the_line() -> None:
    with pytest.raises(ImportProblem, match="front matter line 3: Invalid value"):
        parse_markdown('+++\ntitle = "T"\nx = = 3\n+++\nBody.\n')
    with pytest.raises(ImportProblem, match="front matter: nested more than 8 levels deep"):
        parse_markdown("+++\ntitle = " + "[" * 3000 + "\n+++\nBody.\n")
    with pytest.raises(ImportProblem, match="front matter: nested more than 8 levels deep"):
        parse_markdown("+++\ntitle = " + "[" * 20 + "]" * 20 + "\n+++\nBody.\n")


@pytest.mark.parametrize("value", ["2026-02-30", '"2026-02-30"', "2026-02-30 08:30:00", "'2026-13-01'"])
def test_a_date_shaped_value_that_is_no_date_warns_quoted_or_not(value: str) -> None:
    # Unquoted, YAML itself read it as a date and failed the whole file with no field named.
    draft = parse_markdown(doc(f"title: T\ndate: {value}"))
    assert draft.published_on is None and draft.title == "T"
    assert draft.warnings == [f"front matter: date {value.strip(chr(34) + chr(39))!r} is not a date; left empty"]


# --- raw HTML in the Markdown -----------------------------------------------------------------


def test_inline_script_and_style_go_with_their_contents() -> None:
    draft = parse_markdown("Before <script>track('TOKEN')</script>after, <style>p{}</style>and on.\n")
    assert draft.body == [{"kind": "p", "text": "Before after, and on."}]


def test_a_comment_or_script_never_closed_hides_the_rest_and_warns() -> None:
    commented = parse_markdown(doc("title: T", "Kept.\n\n<!-- a draft note\n\nnot for readers\n"))
    assert commented.body == [{"kind": "p", "text": "Kept."}]
    assert commented.warnings == ["raw HTML: <!-- is never closed; the text after it is left out"]
    script = parse_markdown(doc("title: T", "Kept.\n\n<div>\n<script>\nvar a = 1;\n\nvar TOKEN = 2;\n"))
    assert script.body == [{"kind": "p", "text": "Kept."}]
    assert script.warnings == ["raw HTML: <script> is never closed; the text after it is left out"]


def test_markdown_structure_reads_as_before_through_the_html_reader() -> None:
    # Every heading level is a heading, list items keep their markers (each paragraph of a
    # loose item), and a paragraph of symbols alone is the author's, not page furniture.
    draft = parse_markdown(
        "Text.\n\n#### Small heading\n\n⁂\n\n1. one\n2. two\n   - inner\n\n- loose\n\n  again\n\n"
        "```\n<p>code</p>\n```\n"
    )
    assert draft.body == [
        {"kind": "p", "text": "Text."}, {"kind": "h", "text": "Small heading"},
        {"kind": "p", "text": "⁂"}, {"kind": "p", "text": "1. one"}, {"kind": "p", "text": "2. two"},
        {"kind": "p", "text": "• inner"}, {"kind": "p", "text": "• loose"},
        {"kind": "p", "text": "• again"}, {"kind": "p", "text": "<p>code</p>"},
    ]


# --- the work Markdown's links take ----------------------------------------------------------


def test_a_few_brackets_before_a_long_paragraph_are_refused_naming_the_line() -> None:
    # Not a count of brackets: 20 "[" that never close each look ahead over the whole paragraph.
    with pytest.raises(ImportProblem, match=r"^line 8: too many \[ that never close"):
        parse_markdown(doc("title: T", "Body text.\n\n## Notes\n\n" + "[" * 20 + "! " * 50_000 + "\n"))


@pytest.mark.parametrize("images", ["![alt](x.png)", "![a](x.png) ![b](y.png)", "![a ![b](y.png)](x.png)"])
def test_images_before_the_runaway_paragraph_do_not_move_the_line_named(
    images: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An image's alt text is parsed as inline Markdown of its own, from inside its paragraph.
    monkeypatch.setattr(markdown_essay, "MAX_LINK_STEPS", 2_000)
    body = f"Para {images} one.\n\n" + "[" * 300 + "\n\nlast\n\nmore\n"
    with pytest.raises(ImportProblem, match=r"^line 7: too many \[ that never close"):
        parse_markdown(doc("title: T", "\n" + body))


def test_an_essay_dense_with_links_and_nested_brackets_is_read_in_full() -> None:
    links = " ".join(f"[see [note {n}] here](https://example.org/{n}) and [{n}] [x *y* `z`]" for n in range(2_000))
    draft = parse_markdown(doc("title: T", f"{links}\n\n[[[[unclosed, as a writer may leave it.\n"))
    assert draft.body[0]["text"].startswith("see [note 0] here and [0] [x y z] see [note 1] here")
    assert draft.body[1] == {"kind": "p", "text": "[[[[unclosed, as a writer may leave it."}
    assert draft.warnings == []


# --- front matter values are the text written ----------------------------------------------


@pytest.mark.parametrize(
    "front, field, expected",
    [
        # YAML 1.1 read these as false, 570 (base 60), 3.1, 1000, 8 (octal), 31, and
        # the tags as [True, False, 1.0, 1].
        ("title: No", "title", "No"),
        ("title: 9:30", "title", "9:30"),
        ("title: 3.10", "title", "3.10"),
        ("title: 1_000", "title", "1_000"),
        ("title: T\ndek: null", "dek", ""),  # as site generators write a field left empty
        ("title: T\ndek: ~", "dek", ""),
        ("title: T\nslug: 010", "slug", "010"),
        ("title: T\ndek: 0x1F", "dek", "0x1F"),
        ("title: T\ntags: [on, off, yes, no, 1.0, 1]", "tags", ["on", "off", "yes", "no", "1.0", "1"]),
        ("title: T\ndek:\ntags:", "dek", ""),  # an empty value is still no value
    ],
)
def test_front_matter_scalars_stay_the_text_written(front: str, field: str, expected: object) -> None:
    draft = parse_markdown(doc(front))
    assert getattr(draft, field) == expected
    assert draft.warnings == []


def test_a_yaml_date_is_still_a_date_and_a_date_shaped_title_stays_text() -> None:
    draft = parse_markdown(doc("title: 2026-10-05\ndate: 2026-10-05"))
    assert (draft.title, draft.published_on) == ("2026-10-05", date(2026, 10, 5))
