"""The digest as spam filters and an HTML validator see it: SpamAssassin (local rules) and html-validate.

Both tools are outside Python: `.ci/run` installs Debian's spamassassin and html-validate (into
.ci/node); where one is absent its tests skip and say why. The message checked is the one a send
makes for one subscriber (`personal_copy`), so what passes here is what goes out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.copies import personal_copy
from pipeline.issues import compose
from subscribers.consent import add
from subscribers.tokens import load_secret
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, digest_essays

BASE = "https://letters.example.org"
# The rules the issue names: each is a sign of spam or of a badly built message.
FORBIDDEN = re.compile(r"HTML_FONT_LOW_CONTRAST|HTML_IMAGE_ONLY_\w+|MIME_HTML_ONLY|HTML_MIME_NO_HTML_TAG"
                       r"|MPART_ALT_DIFF\w*|T_REMOTE_IMAGE|BODY_URI_ONLY")
HTML_VALIDATE = PROJECT_ROOT / ".ci" / "node" / "node_modules" / ".bin" / "html-validate"
SHAPES = [(1, False), (3, False), (5, True)]  # one essay; several; several with long titles
# The rules .htmlvalidate.json turns off (JSON holds no comments, so the reasons live here, and a
# test keeps this list and the file the same): each is what email clients need, not a mistake.
ALLOWED = {
    "no-inline-style": "mail clients drop or mangle <style>; premailer inlines every rule on purpose",
    "no-deprecated-attr": "bgcolor, cellpadding, cellspacing, width and align are what Outlook's Word "
                          "engine and old Gmail read instead of CSS (email-checklist H4-H6)",
    "no-conditional-comment": "the <!--[if mso]> ghost table is how Outlook gets a 600 px column",
}


@pytest.fixture
def https_settings(tmp_path: Path, engine: Engine) -> Settings:
    return load_settings(write_config(tmp_path, web={"base_url": BASE}))


def sent_copy(session: Session, settings: Settings, count: int, long: bool) -> bytes:
    """The bytes a send makes for a real subscriber of an issue of `count` essays."""
    add_essays(session, *digest_essays(count, long))
    issue = compose(session, settings, key=f"spam-{count}-{long}")
    subscriber, _ = add(session, "ana@example.org", "Ana Núñez")
    session.commit()
    return personal_copy(session, settings, load_secret(settings.base_dir), issue, subscriber)


def html_part(raw: bytes) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def spamassassin(raw: bytes, prefs: Path) -> tuple[float, list[str]]:
    """Score and rule names from `spamassassin -L -t` (local tests only: no DNS, no network)."""
    if shutil.which("spamassassin") is None:
        pytest.skip("spamassassin is not installed (Debian: apt-get install spamassassin; .ci/run does)")
    prefs.write_text("", encoding="utf-8")  # the user's own ~/.spamassassin must not change the result
    done = subprocess.run(["spamassassin", "-L", "-t", "-p", str(prefs)], input=raw,
                          capture_output=True, timeout=120, check=True)
    headers = done.stdout.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    status = re.search(r"^X-Spam-Status: (.*(?:\n[ \t].*)*)", headers, re.MULTILINE)
    assert status, f"no X-Spam-Status header in spamassassin's output:\n{headers}"
    # The header is folded after any comma of the rule list: drop all whitespace, then split.
    value = "".join(status.group(1).split())
    score = re.search(r"score=(-?[\d.]+)", value)
    tests = re.search(r"tests=([\w,]*?)(?:autolearn=|version=|$)", value)
    assert score and tests, value
    return float(score.group(1)), [t for t in tests.group(1).split(",") if t]


@pytest.mark.slow
@pytest.mark.parametrize(("count", "long"), SHAPES)
def test_spamassassin_scores_the_digest_below_zero(
    session: Session, https_settings: Settings, tmp_path: Path, count: int, long: bool
) -> None:
    raw = sent_copy(session, https_settings, count, long)
    score, rules = spamassassin(raw, tmp_path / "user_prefs")
    assert not [r for r in rules if FORBIDDEN.fullmatch(r)], rules
    assert score < 0, (score, rules)


@pytest.mark.slow
def test_spamassassin_sees_a_preheader_coloured_like_its_background(
    session: Session, https_settings: Settings, tmp_path: Path
) -> None:
    """The rule this suite guards against does fire on the old preheader: the check can fail."""
    raw = sent_copy(session, https_settings, 1, False)
    coloured = raw.replace(b'class=3D"preheader" style=3D"', b'class=3D"preheader" style=3D"color:#f4f1ea; ')
    assert coloured != raw
    _, rules = spamassassin(coloured, tmp_path / "user_prefs")
    assert "HTML_FONT_LOW_CONTRAST" in rules


def html_validate(html: str, folder: Path) -> list[dict[str, object]]:
    """html-validate's findings on `html` with the project's email profile (.htmlvalidate.json)."""
    binary = Path(os.environ.get("HTML_VALIDATE", HTML_VALIDATE))
    if not binary.is_file() or shutil.which("node") is None:
        pytest.skip(f"html-validate is not installed at {binary} "
                    "(npm install --prefix .ci/node html-validate; .ci/run does)")
    page = folder / "digest.html"
    page.write_text(html, encoding="utf-8")
    done = subprocess.run([str(binary), "--config", str(PROJECT_ROOT / ".htmlvalidate.json"),
                           "--formatter", "json", str(page)],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=False)
    if done.returncode not in (0, 1):
        raise AssertionError(f"html-validate failed: {done.stderr}")
    return [m for result in json.loads(done.stdout or "[]") for m in result["messages"]]


@pytest.mark.parametrize(("count", "long"), SHAPES)
def test_html_validate_reports_nothing_on_the_digest(
    session: Session, https_settings: Settings, tmp_path: Path, count: int, long: bool
) -> None:
    html = html_part(sent_copy(session, https_settings, count, long))
    messages = html_validate(html, tmp_path)
    assert messages == [], [(m["ruleId"], m["line"], m["message"]) for m in messages]


def test_html_validate_still_sees_what_the_profile_does_not_allow(tmp_path: Path) -> None:
    """The email profile turns off three rules, not the validator: a long title and a bare <tr> fail."""
    html = ("<!DOCTYPE html><html lang=\"en\"><head><title>" + "x" * 80 + "</title></head><body>"
            "<table role=\"presentation\"><tr><td>a</td></tr></table></body></html>")
    rules = {m["ruleId"] for m in html_validate(html, tmp_path)}
    assert {"long-title", "prefer-tbody"} <= rules


def test_every_allowance_of_the_email_profile_is_explained() -> None:
    config = json.loads((PROJECT_ROOT / ".htmlvalidate.json").read_text(encoding="utf-8"))
    assert config["extends"] == ["html-validate:recommended"]
    assert {rule for rule, level in config["rules"].items() if level == "off"} == set(ALLOWED)
    assert set(config["rules"]) == set(ALLOWED)  # nothing weakened in another way
