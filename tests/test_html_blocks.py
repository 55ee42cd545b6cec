"""Feed HTML to paragraphs and headings: structure kept, furniture and code dropped, text clean."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.readers.html_blocks import html_blocks, html_text


def test_headings_paragraphs_lists_and_quotes_keep_their_order() -> None:
    html = ("<h1>One</h1><p>First <em>para</em>graph.</p><h3>Three</h3><h4>Four</h4>"
            "<ul><li>item a</li><li><p>item b</p></li></ul><blockquote><p>quoted</p></blockquote>"
            "<pre><code>x = 1</code></pre>loose text<hr>after the rule")
    assert html_blocks(html) == [
        {"kind": "h", "text": "One"}, {"kind": "p", "text": "First paragraph."},
        {"kind": "h", "text": "Three"}, {"kind": "p", "text": "Four"},
        {"kind": "p", "text": "item a"}, {"kind": "p", "text": "item b"},
        {"kind": "p", "text": "quoted"}, {"kind": "p", "text": "x = 1"},
        {"kind": "p", "text": "loose text"}, {"kind": "p", "text": "after the rule"},
    ]


def test_scripts_styles_iframes_forms_and_subscribe_boxes_go_with_their_contents() -> None:
    html = ("<p>kept</p><script>alert('x')</script><style>p{color:red}</style>"
            "<iframe src='https://v.example'>fallback</iframe><form><p>your email</p></form>"
            "<div class='subscription-widget-wrap'><div><p>Subscribe now</p></div><p>x</p></div>"
            "<svg><text>drawn</text></svg><p>also <br>kept</p><p>🎉</p>")
    assert html_blocks(html) == [{"kind": "p", "text": "kept"}, {"kind": "p", "text": "also kept"}]


def test_broken_markup_still_reads_and_an_unclosed_script_hides_only_itself() -> None:
    assert html_blocks("<p>one<p>two</div><h2>head") == [
        {"kind": "p", "text": "one"}, {"kind": "p", "text": "two"}, {"kind": "h", "text": "head"}]
    assert html_blocks("<p>before</p><script>never closed <p>hidden") == [
        {"kind": "p", "text": "before"}]
    # As in a browser; the parser gave an unclosed comment back as text ("<!-- never ...").
    assert html_blocks("<p>before</p><!-- never closed <p>hidden") == [{"kind": "p", "text": "before"}]


def test_a_summarys_link_back_to_its_entry_is_left_out() -> None:
    summary = 'It begins. &#8230; <a href="https://x.example/post/">Continue reading</a>'
    assert html_text(summary, skip_links_to="https://x.example/post/") == "It begins. …"
    assert html_text(summary) == "It begins. … Continue reading"


@given(st.text())
def test_no_control_character_survives(text: str) -> None:
    for block in html_blocks(f"<p>{text}</p><h2>{text}</h2>"):
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in block["text"])
