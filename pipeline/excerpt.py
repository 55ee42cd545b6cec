"""A reader-facing excerpt of an essay: its dek, or its opening sentences cut at a boundary.

Pure: no database, no config. The digest calls `excerpt(essay, settings.digest.excerpt_length)`.

Rules, in order:
- The dek when the essay has one (cut by the same rules if it is longer than `length`).
- Otherwise the opening paragraphs: leading headings are skipped, and the excerpt stops at the
  next heading, so it never runs into one.
- Whole sentences are taken while they fit within `length` characters. When not even the first
  sentence fits, the text is cut at the last word boundary that fits, never mid-word.
- An ellipsis ("…") is added only when text was left out of that opening stretch, and the
  result including the ellipsis is never longer than `length`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pipeline.models import Essay

ELLIPSIS = "…"
# A full stop after these is not the end of a sentence ("Mr. Ruiz", "St. Paul's").
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st prof jr sr vs etc no fig vol ch ca cf approx dept est mt ft".split()
)
# A run of stops, then closing quotes and brackets, then a space or the end. It starts only at
# the first stop of a run, and its runs are atomic: otherwise, where no space follows, every
# shorter run from every stop is tried again (quadratic: 94 s for 40,000 dots). Neither changes a
# match: a run that fails from its first stop fails from any later one, and a shorter run ends
# before a stop or a quote, never before a space.
_SENTENCE_END = re.compile(r"(?<![.!?…])(?>[.!?…]+)(?>[\"'”’»)\]]*)(?=\s|\Z)")
# On the reversed text, from where a sentence end starts: the word before it (spaces skipped).
_WORD_BEFORE = re.compile(r"\s*(\S*)")
# From where a sentence end stops: the first character of what follows it (spaces skipped).
_NEXT_CHAR = re.compile(r"\s*(\S?)")
_SPACE = re.compile(r"\s+")


def excerpt(essay: Essay, length: int) -> str:
    """The dek when there is one, else the opening sentences within `length` characters."""
    if essay.dek and essay.dek.strip():
        return shorten(_SPACE.sub(" ", essay.dek).strip(), length)
    return shorten(" ".join(opening_paragraphs(essay.body)), length)


def opening_paragraphs(body: Iterable[dict[str, str]]) -> list[str]:
    """The paragraphs before the first heading that follows some text (leading headings skipped)."""
    paragraphs: list[str] = []
    for block in body:
        text = _SPACE.sub(" ", block.get("text", "")).strip()
        if block.get("kind") == "h":
            if paragraphs:
                break
            continue
        if text:
            paragraphs.append(text)
    return paragraphs


def shorten(text: str, length: int) -> str:
    """`text` if it fits; else whole sentences that fit, else whole words, and an ellipsis."""
    if len(text) <= length:
        return text
    room = length - len(ELLIPSIS) - 1  # a space before the ellipsis after a whole sentence
    kept = ""
    for end in sentence_ends(text):
        if end > room:
            break
        kept = text[:end]
    if kept:
        return f"{kept} {ELLIPSIS}"
    return _cut_words(text, length - len(ELLIPSIS)) + ELLIPSIS


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence's closing punctuation (and closing quotes)."""
    ends: list[int] = []
    # Each end looks only at the word before it and the character after it, never copies the
    # text on either side: linear, however many sentences.
    reversed_text = text[::-1]
    for match in _SENTENCE_END.finditer(text):
        if match.group().startswith("."):
            before = _WORD_BEFORE.match(reversed_text, len(text) - match.start())
            word = before.group(1)[::-1] if before else ""
            if _is_abbreviation(word):
                continue
        following = _NEXT_CHAR.match(text, match.end())
        # "e.g. the" and "3.5 km" are not boundaries: a sentence starts with a capital, digit
        # or opening quote/bracket.
        if following and following.group(1) and not _starts_sentence(following.group(1)):
            continue
        ends.append(match.end())
    return ends


def _starts_sentence(char: str) -> bool:
    # Opening quotes and brackets, and ’ as in "’Tis" (an elision can open a sentence).
    return char.isupper() or char.isdigit() or char in "\"'“‘’«(["


def _is_abbreviation(word: str) -> bool:
    word = word.strip("\"'“‘«([").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _cut_words(text: str, limit: int) -> str:
    """The longest run of whole words within `limit` characters, trailing punctuation removed."""
    if limit <= 0:
        return ""
    cut = text[: limit + 1]
    if len(text) > limit and not text[limit].isspace():
        # The character after the limit continues a word: drop that partial word.
        cut = cut.rsplit(None, 1)[0] if " " in cut.strip() else ""
    return cut[:limit].rstrip().rstrip(",;:—–-([{\"'“‘").rstrip()
