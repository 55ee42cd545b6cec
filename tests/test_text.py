"""Text that cannot steer a terminal: what strip_controls drops, printable shows and has_controls
finds; and what xml_text drops so that XML can carry the rest."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.text import BIDI_CONTROLS, has_controls, mail_text, printable, strip_controls, xml_text


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("a\x1b[31mred\x1b[0m", "ared"),  # the whole sequence goes, not just the ESC
        ("\x1b]8;;https://evil.example\x07link\x1b]8;;\x1b\\", "link"),  # hyperlinks
        ("\x1b]0;new window title", ""),  # an unterminated string runs to the end
        ("\x9b2Jcleared", "cleared"),  # the 8-bit CSI
        ("\x1bcreset", "reset"),
        ("evil\u202egnp.exe\u2066\u2069\u200e\u200f\u061c", "evilgnp.exe"),
        ("nul\x00bs\x08del\x7f", "nulbsdel"),
        ("line\r\nnext\ttab\x85sep\u2028", "line \nnext\ttab sep "),  # breaks stay for the caller
        ("Zoë Ørsted 李 👩‍🍳", "Zoë Ørsted 李 👩‍🍳"),  # zero-width joiners are not controls
    ],
)
def test_strip_controls(raw: str, stripped: str) -> None:
    assert strip_controls(raw) == stripped


def test_printable_shows_each_hostile_character_as_an_escape() -> None:
    assert printable("\x1b[2J\u202eexe\x00\n") == "\\x1b[2J\\u202eexe\\x00\\x0a"
    assert printable("[red]plain text ✓") == "[red]plain text ✓"


@given(st.text())
def test_nothing_hostile_survives(raw: str) -> None:
    for text, allowed in ((strip_controls(raw), "\n\t"), (printable(raw), "")):
        assert not any(
            (unicodedata.category(c) == "Cc" and c not in allowed) or c in BIDI_CONTROLS or c in "\u2028\u2029"
            for c in text
        ), repr(text)


@given(st.text())
def test_has_controls_finds_exactly_what_printable_would_show_escaped(raw: str) -> None:
    assert has_controls(raw) == (printable(raw) != raw)


@pytest.mark.parametrize("raw", ["Notes\x0bweek", "Tabs\tinside", "A\u2028line", "evil\u202egnp.exe", "del\x7f"])
def test_has_controls(raw: str) -> None:
    assert has_controls(raw) and not has_controls("Zoë Ørsted 李 👩‍🍳 [red]")


def _xml_char(c: str) -> bool:
    """XML 1.0's Char production, as the specification writes it."""
    n = ord(c)
    return n in (0x9, 0xA, 0xD) or 0x20 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD or n >= 0x10000


@given(st.text(st.characters(exclude_categories=())))
def test_xml_text_drops_what_xml_cannot_carry_and_keeps_the_rest(raw: str) -> None:
    assert xml_text(raw) == "".join(c for c in raw if _xml_char(c))


def test_xml_text_keeps_line_breaks_and_c1_controls_which_xml_allows() -> None:
    assert xml_text("a\x00b\x0bc\td\ne\rf\x85g\x7f\ud800\ufffe") == "abc\td\ne\rf\x85g\x7f"


@given(st.text(st.characters(exclude_categories=())))
def test_mail_text_is_xml_text_without_del_and_the_c1_controls(raw: str) -> None:
    """An email's parts take what a feed takes, less DEL and the C1 controls (HTML's control
    characters, which no mail client shows); the line break NEL stays for the caller to fold."""
    assert mail_text(raw) == "".join(c for c in xml_text(raw) if not "\x7f" <= c <= "\x9f" or c == "\x85")


def test_mail_text_keeps_line_breaks_and_tabs() -> None:
    assert mail_text("a\x00b\x0bc\td\ne\rf\x85g\x7fh\x9bi\ud800\ufffe") == "abc\td\ne\rf\x85ghi"
