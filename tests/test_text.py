"""Text that cannot steer a terminal: what strip_controls drops and printable shows."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscribers.text import BIDI_CONTROLS, printable, strip_controls


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
