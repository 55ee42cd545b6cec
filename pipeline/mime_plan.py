"""Quoted-printable bodies planned once per issue: constant lines encoded once, personal lines per copy.

The stdlib `EmailMessage` needs about 3 ms to build and serialise a 27 KB digest, which would cap
sending near 300 messages a second per core. A plan made from two probe renders splits a part into
runs of lines that hold no personal value (encoded once, here) and the few lines that do (encoded
per subscriber with the C codecs in `binascii`); pipeline/message.py assembles the parts.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

# Every line break str.splitlines() knows, which is what the stdlib's body encoder splits on.
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# A line up to (not including) its break: one scan of a character class, 3x faster per line
# than searching for _LINE_BREAK's alternation.
_LINE_BODY = re.compile("[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]*")
CHECK = 24  # characters after each personal line that must match the plan (a cheap guard)


def qp(text: str) -> bytes:
    """Quoted-printable of text whose lines end in CRLF (the trailing CRLF makes b2a_qp use CRLF)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True)


@dataclass(frozen=True)
class PartPlan:
    """One body part: pre-encoded constant runs of lines and where the personal lines sit."""

    chunks: tuple[bytes, ...]  # len(dynamic) + 1 encoded runs (each b"" or ending in CRLF)
    dynamic: tuple[tuple[int, int, str], ...]  # (start, length, what follows) per personal line
    probe_length: int


def plan_part(probe_a: str, probe_b: str) -> PartPlan | None:
    """Split a probe output into constant and personal lines; None when it cannot be planned."""
    spans_a = _line_spans(probe_a)
    spans_b = _line_spans(probe_b)
    if len(spans_a) != len(spans_b):
        return None
    chunks: list[bytes] = []
    spans: list[tuple[int, int]] = []
    run: list[str] = []
    for (sa, ea), (sb, eb) in zip(spans_a, spans_b, strict=True):
        line = probe_a[sa:ea]
        if line != probe_b[sb:eb] or "zq" in line.lower():
            chunks.append(qp("".join(x + "\r\n" for x in run)))
            spans.append((sa, ea))
            run = []
        else:
            run.append(line)
    chunks.append(qp("".join(x + "\r\n" for x in run)))
    # What follows each personal line up to the next one: constant, so it must match.
    starts = [start for start, _ in spans[1:]] + [len(probe_a)]
    dynamic = tuple((sa, ea - sa, probe_a[ea:min(ea + CHECK, nxt)])
                    for (sa, ea), nxt in zip(spans, starts, strict=True))
    return PartPlan(tuple(chunks), dynamic, len(probe_a))


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line of `text`, without its line break."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _LINE_BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def dynamic_lines(plan: PartPlan, text: str) -> list[str] | None:
    """The personal lines of a fully personalised part, found by the probe's offsets."""
    lines: list[str] = []
    shift = 0
    for start, length, follows in plan.dynamic:
        start += shift
        found = _LINE_BODY.match(text, start)
        assert found is not None  # the pattern matches the empty string
        end = found.end()
        if not text.startswith(follows, end):
            return None
        lines.append(text[start:end])
        shift += (end - start) - length
    return lines if len(text) == plan.probe_length + shift else None


def assemble(plan: PartPlan, lines: list[str]) -> bytes:
    """The encoded part: the plan's constant runs with the personal lines encoded between them."""
    out = [plan.chunks[0]]
    for line, chunk in zip(lines, plan.chunks[1:], strict=True):
        out.append(qp(line + "\r\n"))
        out.append(chunk)
    out.append(b"\r\n")  # the CRLF before a boundary belongs to the boundary, not the content
    return b"".join(out)


def encode_whole(text: str) -> bytes:
    """A personalisation that changed the line structure: encode it all (slow, correct)."""
    return qp("".join(line + "\r\n" for line in text.splitlines())) + b"\r\n"
