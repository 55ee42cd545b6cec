"""The excerpt: dek first, else whole opening sentences, never mid-word, never into a heading."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import PROJECT_ROOT
from pipeline.excerpt import ABBREVIATIONS, ELLIPSIS, excerpt, sentence_ends
from pipeline.models import Essay
from tests.conftest import CORPUS


def essay(*blocks: tuple[str, str], dek: str = "") -> Essay:
    return Essay(
        slug="s",
        title="T",
        dek=dek,
        body=[{"kind": kind, "text": text} for kind, text in blocks],
        content_hash="x",
    )


OPENING = (
    "The starter lives in a jar on the shelf. It wants flour and water twice a day. "
    "Mr. Ortiz, who sold me the jar, said it was older than his shop."
)


def test_the_dek_wins_when_there_is_one() -> None:
    e = essay(("p", OPENING), dek="Why a jar of paste runs my week.")
    assert excerpt(e, 300) == "Why a jar of paste runs my week."


def test_a_long_dek_is_cut_like_body_text() -> None:
    e = essay(("p", OPENING), dek="One sentence here. And a second one that is much longer.")
    assert excerpt(e, 30) == f"One sentence here. {ELLIPSIS}"


def test_whole_opening_that_fits_has_no_ellipsis() -> None:
    assert excerpt(essay(("p", OPENING)), 300) == OPENING


def test_cut_at_a_sentence_boundary_within_the_length() -> None:
    result = excerpt(essay(("p", OPENING)), 100)
    assert result == (
        "The starter lives in a jar on the shelf. It wants flour and water twice a day. " + ELLIPSIS
    )
    assert len(result) <= 100


def test_abbreviation_is_not_a_sentence_end() -> None:
    text = "Ask Mr. Ortiz. He knows."
    assert [text[:end] for end in sentence_ends(text)] == [
        "Ask Mr. Ortiz.",
        "Ask Mr. Ortiz. He knows.",
    ]


def test_lowercase_after_a_full_stop_is_not_a_boundary() -> None:
    text = "Use rye, e.g. the dark kind. Then wait."
    assert [text[:end] for end in sentence_ends(text)] == ["Use rye, e.g. the dark kind.", text]


def test_closing_quotes_stay_with_their_sentence() -> None:
    text = "She said “wait.” Then we waited."
    assert text[: sentence_ends(text)[0]] == "She said “wait.”"


def test_a_first_sentence_too_long_is_cut_between_words() -> None:
    text = "Walking the canal path at dawn shows a city before it has decided what to be today."
    result = excerpt(essay(("p", text)), 40)
    assert result.endswith(ELLIPSIS)
    assert len(result) <= 40
    words = result.removesuffix(ELLIPSIS).split()
    assert words == text.split()[: len(words)], "every kept word is whole"
    assert len(words) >= 5


@pytest.mark.parametrize("length", range(40, 200, 7))
def test_never_mid_word_and_never_longer_than_length(length: int) -> None:
    e = essay(("p", OPENING), ("p", "A second paragraph follows. It is short."))
    result = excerpt(e, length)
    assert len(result) <= length
    body = result.removesuffix(ELLIPSIS).strip()
    full = OPENING + " A second paragraph follows. It is short."
    assert full.startswith(body)
    assert full[len(body) : len(body) + 1] in ("", " "), f"cut inside a word: {body!r}"
    assert result.endswith(ELLIPSIS) == (body != full)


def test_stops_before_a_heading() -> None:
    e = essay(("p", "Short opening."), ("h", "The Heading"), ("p", "After the heading."))
    assert excerpt(e, 300) == "Short opening."


def test_leading_heading_is_skipped() -> None:
    e = essay(("h", "Introduction"), ("p", "First words."), ("p", "More words."), ("h", "Next"))
    assert excerpt(e, 300) == "First words. More words."


def test_several_opening_paragraphs_are_joined_until_the_length() -> None:
    e = essay(("p", "One. Two."), ("p", "Three is a longer sentence than the others."))
    assert excerpt(e, 20) == f"One. Two. {ELLIPSIS}"


def test_empty_essay_gives_empty_excerpt() -> None:
    assert excerpt(essay(), 300) == ""
    assert excerpt(essay(("h", "Only a heading")), 300) == ""


def test_whitespace_is_normalised() -> None:
    assert excerpt(essay(("p", "  Line one\n  continues.  ")), 300) == "Line one continues."


# Words of two letters or more that are no abbreviation: "A." and "etc." end no sentence.
WORDS = st.text(alphabet="abcdeéfghijklmnopqrstuvwxyz’", min_size=2, max_size=12).filter(
    lambda word: word.strip("’") not in ABBREVIATIONS and len(word.strip("’")) > 1
)
SENTENCES = st.builds(
    lambda words, end: " ".join(words).capitalize() + end,
    st.lists(WORDS, min_size=1, max_size=15),
    st.sampled_from([".", "!", "?", "…", ".”"]),
)


@settings(max_examples=200, deadline=None)
@given(
    paragraphs=st.lists(st.lists(SENTENCES, min_size=1, max_size=6), min_size=1, max_size=3),
    length=st.integers(min_value=40, max_value=400),
)
def test_excerpt_properties(paragraphs: list[list[str]], length: int) -> None:
    texts = [" ".join(p) for p in paragraphs]
    full = " ".join(texts)
    result = excerpt(essay(*(("p", t) for t in texts), ("h", "Part 2"), ("p", "After 3.")), length)
    assert len(result) <= length
    assert "Part 2" not in result and "After 3" not in result
    if len(full) <= length:
        assert result == full, "no ellipsis when nothing is left out"
        return
    assert result.endswith(ELLIPSIS)
    kept = result[: -len(ELLIPSIS)].rstrip()
    assert full.startswith(kept)
    assert full[len(kept) : len(kept) + 1] == " ", "never mid-word"
    if len(paragraphs[0][0]) <= length - 2:
        assert kept.endswith((".", "!", "?", "…", "”")), "cut at a sentence end when one fits"


# --- sentence ends in linear time -----------------------------------------------------------


def reference_sentence_ends(text: str) -> list[int]:
    """sentence_ends as first written: plain to read, but quadratic on a long run of dots (the
    pattern retried every shorter run from every dot) and on many sentences (each end copied
    the text before and after it). The rewrite must give exactly its answers."""
    import re  # noqa: PLC0415  (only this reference needs it)

    from pipeline.excerpt import _is_abbreviation, _starts_sentence  # noqa: PLC0415

    ends: list[int] = []
    for match in re.finditer(r"[.!?…]+[\"'”’»)\]]*(?=\s+|$)", text):
        before = text[: match.start()].rsplit(None, 1)
        word = before[-1] if before else ""
        if match.group().startswith(".") and _is_abbreviation(word):
            continue
        following = text[match.end() :].lstrip()
        if following and not _starts_sentence(following[0]):
            continue
        ends.append(match.end())
    return ends


# Short texts dense in what the pattern looks at: runs of stops, closing quotes, spaces of
# several kinds, capitals, digits, abbreviations and single letters.
PIECES = st.sampled_from(
    [".", "..", "!", "?", "…", "?!", "\"", "'", "”", "’", "»", ")", "]", "(", "«", "“",
     " ", "  ", "\n", "\u00a0", "\t", "a", "A", "Mr", "mr", "etc", "e.g", "3", "x", "Word", "ß"]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(PIECES, max_size=30).map("".join))
def test_sentence_ends_gives_the_answers_it_always_gave(text: str) -> None:
    assert sentence_ends(text) == reference_sentence_ends(text)


def test_sentence_ends_unchanged_on_real_essays() -> None:
    # The sample essays always; the shared corpus too when it is here.
    files = [*sorted((PROJECT_ROOT / "examples" / "essays").iterdir()), *sorted(CORPUS.glob("*.txt"))]
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            assert sentence_ends(line) == reference_sentence_ends(line), (path.name, line)


MEGABYTE = 1_000_000
PATHOLOGICAL = {
    "a run of stops": "Hello" + "." * MEGABYTE + "x",
    "a run of closing quotes": "Hello." + "”" * MEGABYTE + "x",
    "stops and quotes": "Hello" + ".”" * MEGABYTE + "x",
    "many sentences": "A b. " * MEGABYTE,
    "many abbreviations": "Mr. " * MEGABYTE,
    "a run of spaces": "Hello." + " " * MEGABYTE + "x.",
}


@pytest.mark.timeout(60)  # a quadratic pass over a megabyte takes hours; linear, about a second
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_sentence_ends_finishes_on_a_megabyte_of_pathological_text(name: str) -> None:
    text = PATHOLOGICAL[name]
    ends = sentence_ends(text)
    assert ends == sorted(set(ends)) and all(0 < end <= len(text) for end in ends)
