"""The email checklist as code: run every check on a rendered copy or a message, sort by level.

    lint_html(html, unsubscribe_url, postal_address)  H1-H24 on one inlined HTML copy
    lint_text(text, html, ...)                         M5: the text part is the same content
    lint_message(raw, sender_domain, postal_address)   M1-M16 on the bytes, and H on its HTML part
    lint_copy(html, text, ...)                         the HTML and text checks together

MUST findings fail `newsletter lint` (exit 1) and the tests; SHOULD findings are warnings.
The checks live in pipeline/lint_html.py and pipeline/lint_message.py, the parser in
pipeline/lint_document.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.lint_document import MUST, SHOULD, Finding
from pipeline.lint_html import lint_html
from pipeline.lint_message import lint_message, lint_text

__all__ = ["MUST", "SHOULD", "Finding", "lint_html", "lint_text", "lint_message", "lint_copy",
           "failures", "warnings"]


def lint_copy(
    html: str, text: str, unsubscribe_url: str | None = None, postal_address: str | None = None
) -> list[Finding]:
    """The HTML checks and the text-part check on one subscriber's copy, in checklist order."""
    findings = lint_html(html, unsubscribe_url, postal_address)
    findings += lint_text(text, html, unsubscribe_url, postal_address)
    return sorted(findings, key=_order)


def failures(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == MUST]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == SHOULD]


def _order(finding: Finding) -> tuple[str, int]:
    return finding.code[0], int(finding.code[1:])
