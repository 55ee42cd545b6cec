"""What every command shares: text from files and the database prints as given, whatever markup
the command's own message puts around it."""

from __future__ import annotations

import io

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.commands.base import App, shown
from subscribers.text import printable

# Rich's markup turns on brackets, backslashes, tag names (a-z, #, /, @), `=` and colons (emoji
# codes); drawn often (backslashes, brackets and slashes most), so that the runs that confuse an
# escape come up in every run.
MARKUP_PROSE = st.text(st.one_of(st.sampled_from("\\[]/"), st.sampled_from("[]\\/@#=:abz "), st.characters()),
                       max_size=40)
# Where two fields meet, the end of one (backslashes, a `[`) and the start of the next (a tag
# name, a `]`) can make a tag neither holds; the few characters that do are all this draws.
SEAM = st.text(st.sampled_from("\\[]/b"), max_size=4)

# The ways commands put shown() text into a message: alone (a table cell), between words,
# inside a style, followed by its closing tag, and next to another field.
AROUND = [
    "{a}",
    "Removed {a} (3 entries forgotten).",
    "[bold]{a}[/] {b}",
    "  [red]Failed:[/] {a}: {b}",
    "{a}{b}",
    "[italic]{a}[/italic][bold]{b}[/bold]",
]


def _seen(markup: str) -> str:
    """What the user reads when a command prints `markup`: through the console commands use."""
    console = App(config_path=None).console
    console.file = io.StringIO()
    console.print(markup, soft_wrap=True, end="")
    return console.file.getvalue()


@pytest.mark.parametrize("around", AROUND)
@given(a=MARKUP_PROSE, b=MARKUP_PROSE)
@example(a="\\[", b="")
@example(a="C:\\essays\\", b="[bold]")
@example(a="a\\[1] \\\\[bold] [/] [@click]", b="\\")
@example(a="[b", b="x]")
@example(a="\\[b", b="x]")
@example(a=":smile: :thumbs_up:", b=":warning-emoji:")
@example(a="\\[", b="/]")
@example(a="\\[", b="b]")
def test_shown_text_reads_as_given(around: str, a: str, b: str) -> None:
    _reads_as_given(around, a, b)


# A backslash and a `[` ending one field and `b]` starting the next make a tag across them: rare
# among all characters, so drawn here from the few that matter, and often.
@settings(max_examples=3000)
@given(a=SEAM, b=SEAM)
def test_fields_side_by_side_read_as_given(a: str, b: str) -> None:
    _reads_as_given("{a}{b}", a, b)


def _reads_as_given(around: str, a: str, b: str) -> None:
    printed = _seen(around.format(a=shown(a), b=shown(b)))
    frame = _seen(around.format(a="\ue000", b="\ue001"))  # private-use stand-ins: no markup
    expected = frame.replace("\ue000", printable(a)).replace("\ue001", printable(b))
    assert printed == expected


def test_shown_keeps_controls_escaped() -> None:
    hostile = "[red]x\x1b[2J\\"
    assert _seen(f"[bold]{shown(hostile)}[/]") == "[red]x\\x1b[2J\\"
