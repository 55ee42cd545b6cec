"""The scraped-page reader: each header variation, noise dropped, headings by shape, related."""

from __future__ import annotations

import itertools
from datetime import date

import pytest

from pipeline.readers.scraped_page import is_noise, parse_page

TITLE = "How a slow rise changes the crumb of a country loaf"
DEK = "Time, not yeast, is what gives an ordinary loaf its character and its keeping quality."
P1 = (
    "Most home bakers rush the first rise. They put the bowl somewhere warm, watch it double in "
    "an hour and move on, and the loaf that comes out tastes of very little beyond salt. A longer "
    "rise in a cooler room gives the bacteria in the dough time to make acids and aromas."
)
P2 = (
    "The difference shows in the crumb as well as the taste. Slowly risen dough has more "
    "irregular holes, a slightly glossy interior and a crust that blisters in the oven. It also "
    "keeps for days longer, because the acids slow down staling and mould."
)
HEADING = "Planning the rise around the day."
P3 = (
    "Start the dough in the evening and let it sit overnight in the coolest room of the house. "
    "In the morning it will have risen by half, smelling faintly sour, ready to shape."
)


def page(
    *header: str, body: tuple[str, ...] = (P1, P2, HEADING, P3), tail: tuple[str, ...] = ()
) -> str:
    return "\n".join([*header, *body, *tail]) + "\n"


def texts(draft, kind: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [b["text"] for b in draft.body if b["kind"] == kind]


def test_full_page_with_noise_headings_and_related() -> None:
    text = page(
        TITLE,
        DEK,
        "July 19, 2025",
        "Facebook X Reddit",
        body=(P1, "ADVERTISEMENT", "ADVERTISEMENT", P2, HEADING, P3),
        tail=(
            "Related Articles",
            "A summary of another loaf.",
            "July 31, 2025",
            "A second summary about starters.",
            "August 02, 2025",
        ),
    )
    draft = parse_page(text)
    assert (draft.title, draft.dek, draft.published_on) == (TITLE, DEK, date(2025, 7, 19))
    assert draft.body == [
        {"kind": "p", "text": P1},
        {"kind": "p", "text": P2},
        {"kind": "h", "text": HEADING},
        {"kind": "p", "text": P3},
    ]
    assert draft.source_related == [
        {"summary": "A summary of another loaf.", "date": "2025-07-31"},
        {"summary": "A second summary about starters.", "date": "2025-08-02"},
    ]
    assert draft.warnings == []


@pytest.mark.parametrize(
    "date_line, expected",
    [
        ("July 22, 2025", date(2025, 7, 22)),
        ("Published July 22, 2025", date(2025, 7, 22)),
        ("Published August 05, 2025", date(2025, 8, 5)),
        ("August 07, 2025", date(2025, 8, 7)),
        ("August 12, 2025 - 3 min Read", date(2025, 8, 12)),
        ("Sep 3, 2025", date(2025, 9, 3)),
    ],
)
def test_date_line_variants(date_line: str, expected: date) -> None:
    draft = parse_page(page(TITLE, DEK, date_line, "Facebook X Reddit"))
    assert (draft.title, draft.dek, draft.published_on) == (TITLE, DEK, expected)
    assert draft.body[0]["text"] == P1


@pytest.mark.parametrize(
    "byline", [("Published by Ana Ribeiro",), ("Published by", "Ana Ribeiro"), ("By Ana Ribeiro",)]
)
def test_byline_on_the_same_or_the_next_line_is_dropped(byline: tuple[str, ...]) -> None:
    draft = parse_page(page(TITLE, DEK, "July 22, 2025", *byline, "Facebook X Reddit"))
    assert draft.title == TITLE
    assert all("Ana Ribeiro" not in b["text"] for b in draft.body)
    assert draft.body[0]["text"] == P1


def test_byline_before_the_date() -> None:
    draft = parse_page(page(TITLE, DEK, "Published by", "Ana Ribeiro", "July 22, 2025"))
    assert (draft.title, draft.published_on) == (TITLE, date(2025, 7, 22))
    assert draft.body[0]["text"] == P1


NETWORKS = ["Facebook", "X", "Reddit", "Whatsapp", "Linkedin", "Email", "Pinterest"]


@pytest.mark.parametrize(
    "share",
    [
        " ".join(c)
        for n in (3, 4, 5, 6)
        for c in itertools.islice(itertools.permutations(NETWORKS, n), 0, 400, 97)
    ],
)
def test_share_lines_of_three_to_six_networks_in_any_order(share: str) -> None:
    draft = parse_page(page(TITLE, DEK, "July 22, 2025", share))
    assert draft.body[0]["text"] == P1
    assert is_noise(share)


def test_share_line_without_a_date_still_ends_the_header() -> None:
    draft = parse_page(page(TITLE, DEK, "Reddit Facebook X"))
    assert (draft.title, draft.dek, draft.published_on) == (TITLE, DEK, None)


def test_no_date_and_no_share_line() -> None:
    draft = parse_page(page(TITLE, DEK))
    assert (draft.title, draft.dek, draft.published_on) == (TITLE, DEK, None)
    assert texts(draft, "p")[0] == P1


def test_no_header_at_all_takes_the_title_from_the_first_sentence_and_warns() -> None:
    draft = parse_page(page())
    assert draft.title == "Most home bakers rush the first rise"
    assert draft.dek == ""
    assert draft.body[0]["text"] == P1
    assert any("no title" in w for w in draft.warnings)


def test_category_line_before_the_title_becomes_a_tag() -> None:
    draft = parse_page(page("Bread & baking", TITLE, DEK, "August 12, 2025 - 3 min Read"))
    assert (draft.title, draft.dek, draft.tags) == (TITLE, DEK, ["Bread & baking"])


def test_curly_quotes_and_accents_survive() -> None:
    title = "Why the boulanger’s “pâte fermentée” matters"
    draft = parse_page(page(title, "A dek about crème fraîche and the café.", "July 22, 2025"))
    assert draft.title == title
    assert draft.dek == "A dek about crème fraîche and the café."


def test_text_cut_off_mid_word_ends_in_a_paragraph_not_a_heading() -> None:
    draft = parse_page(
        page(TITLE, DEK, "July 22, 2025", body=(P1, P2, HEADING, P3, "The next paragr"))
    )
    assert draft.body[-1] == {"kind": "p", "text": "The next paragr"}
    cut_heading = parse_page(page(TITLE, DEK, body=(P1, P2, "Shaping the lo")))
    assert cut_heading.body[-1]["kind"] == "p"


def test_heading_needs_a_paragraph_before_it_and_one_sentence() -> None:
    two_sentences = "It rose. Then it fell."
    draft = parse_page(page(TITLE, DEK, "July 22, 2025", body=(P1, two_sentences, P2)))
    assert texts(draft, "h") == []
    headings = parse_page(
        page(TITLE, DEK, "July 22, 2025", body=(P1, "Without a full stop", P2, HEADING, P3))
    )
    assert texts(headings, "h") == ["Without a full stop", HEADING]


def test_related_summary_without_a_date_keeps_null() -> None:
    draft = parse_page(
        page(
            TITLE,
            DEK,
            tail=("Related Articles", "First summary.", "Second summary.", "July 1, 2025"),
        )
    )
    assert draft.source_related == [
        {"summary": "First summary.", "date": None},
        {"summary": "Second summary.", "date": "2025-07-01"},
    ]


def test_windows_line_endings_and_blank_lines() -> None:
    text = page(TITLE, DEK, "July 22, 2025").replace("\n", "\r\n\r\n")
    draft = parse_page(text)
    assert (draft.title, draft.published_on) == (TITLE, date(2025, 7, 22))
    assert len(draft.body) == 4


@pytest.mark.parametrize(
    "line",
    ["ADVERTISEMENT", "Facebook X Reddit", "Published by Jo", "3 min Read", "Related Articles"],
)
def test_noise_lines(line: str) -> None:
    assert is_noise(line)


@pytest.mark.parametrize(
    "line", [P1, HEADING, "By the river the bakery opened at six.", "By contrast", "By noon"]
)
def test_text_is_not_noise(line: str) -> None:
    assert not is_noise(line)
