"""Text that cannot steer a terminal: control characters, escape sequences and bidi controls.

Titles, names and tags come from files and forms a stranger may have written. Printed raw, an
ESC sequence can recolour, retitle or clear the terminal (or plant a hyperlink), a NUL or a
carriage return can hide text, and a bidi override (U+202E) makes `gpj.exe` read as `exe.jpg`.
Two helpers, for the two edges:

- `strip_controls` at import: the characters go (escape sequences whole), line breaks and tabs
  stay for the caller to fold, other space-like controls become spaces;
- `printable` at output, for rows stored before that rule: each character is shown as an
  escape (`\\x1b`, `\\u202e`), so nothing is hidden and nothing is obeyed.

`has_controls` says whether a text holds any of them (a value that is refused rather than
cleaned), `xml_text` drops the narrower set XML 1.0 cannot carry at all (a feed), and
`mail_text` what an email's HTML and text parts leave out: that set, DEL and the C1 controls.

It lives in the audience package because both packages use it and this one may not import the
other.
"""

from __future__ import annotations

import re

# Unicode bidi controls: embeddings and overrides (U+202A-202E), isolates (U+2066-2069), the
# marks (U+200E, U+200F) and the Arabic letter mark (U+061C).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
# A whole ECMA-48 sequence, so "\x1b[31m" goes as one rather than leaving "[31m" behind: CSI
# (ESC [ or its 8-bit form U+009B), OSC/DCS/APC/PM/SOS strings up to their terminator (BEL or
# ESC \), and two-character escapes. An unterminated string runs to the end of the line.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_SPACE_LIKE = "\r\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029"  # separators: a space keeps words apart
_CONTROLS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))]
_STRIP = str.maketrans(
    {
        **{c: None for c in _CONTROLS if c not in "\n\t"},
        **{c: " " for c in _SPACE_LIKE},
        **{c: None for c in BIDI_CONTROLS},
    }
)
_SHOW = str.maketrans(
    {c: f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
     for c in (*_CONTROLS, *_SPACE_LIKE, *BIDI_CONTROLS)}
)
_HOSTILE = re.compile("[" + re.escape("".join((*_CONTROLS, *_SPACE_LIKE, *BIDI_CONTROLS))) + "]")
# What XML 1.0 does not allow in a document (lxml refuses it, and with it the whole document):
# the C0 controls but tab and the line breaks, lone surrogates, U+FFFE and U+FFFF.
_NOT_CHARACTERS = "\ud800-\udfff\ufffe\uffff"  # lone surrogates, U+FFFE and U+FFFF: no text at all
_NOT_XML = re.compile("[" + re.escape("".join(c for c in _CONTROLS if c < " " and c not in "\t\n\r"))
                      + _NOT_CHARACTERS + "]")
# What an email leaves out: what XML cannot carry (premailer parses the HTML with lxml), and DEL
# and the C1 controls as well. XML allows those, so a feed keeps them, but HTML counts every C0
# and C1 control and DEL as a control character (a parse error), no mail client shows one, and
# in a plain-text part a terminal mail reader prints them as ^? or obeys them. NEL (U+0085), a
# line break, stays with the others for the caller to fold.
_NOT_IN_MAIL = re.compile("[" + re.escape("".join(c for c in _CONTROLS if c not in "\t\n\r\x85"))
                          + _NOT_CHARACTERS + "]")


def strip_controls(text: str) -> str:
    """`text` without escape sequences, control characters (but \\n and \\t) or bidi controls."""
    if not _HOSTILE.search(text):
        return text  # the common case: one C-speed scan
    return _SEQUENCE.sub("", text).translate(_STRIP)


def printable(text: str) -> str:
    """`text` for one line of a terminal: every control, line break and bidi control escaped."""
    if not _HOSTILE.search(text):
        return text
    return text.translate(_SHOW)


def has_controls(text: str) -> bool:
    """Whether `text` holds a control character, a line break, a tab or a bidi control: what
    `printable` would show escaped."""
    return _HOSTILE.search(text) is not None


def xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry; line breaks, tabs and the C1 controls,
    which it can, stay."""
    return _NOT_XML.sub("", text)


def mail_text(text: str) -> str:
    """`text` without what an email's parts should not carry: what `xml_text` drops, and DEL and
    the C1 controls; line breaks and tabs stay."""
    return _NOT_IN_MAIL.sub("", text)
