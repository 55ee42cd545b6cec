"""The render cache: a second preview or send run reuses the render, and any edit renders anew."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlmodel import Session

from pipeline.config import BUILTIN_TEMPLATES, Settings, load_settings
from pipeline.copies import rendered_issue
from pipeline.errors import ConfigError
from pipeline.issue_view import issue_view
from pipeline.issues import compose, issue_essays
from pipeline.models import Issue
from pipeline.render import RenderedIssue, render_view
from pipeline.render_cache import cached_render, folder, render_key
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, digest_essays, make_essay, mark_sent

BASE = "https://letters.example.org"


def an_issue(session: Session, settings: Settings) -> Issue:
    add_essays(session, *digest_essays(4))
    issue = compose(session, settings)
    session.commit()
    return issue


def counted(session: Session, settings: Settings, issue: Issue, calls: list[int]) -> RenderedIssue:
    def render() -> RenderedIssue:
        calls.append(1)
        return render_view(settings, issue_view(session, settings, issue))
    return cached_render(session, settings, issue, render)


def test_a_second_render_of_an_unchanged_issue_is_read_back(session: Session, settings: Settings) -> None:
    issue = an_issue(session, settings)
    calls: list[int] = []
    first = counted(session, settings, issue, calls)
    again = counted(session, settings, issue, calls)
    assert calls == [1]  # the related-links index and premailer ran once
    assert again == first
    assert len(list(folder(settings).glob("*.json"))) == 1


def test_an_edited_essay_renders_anew(session: Session, settings: Settings) -> None:
    issue = an_issue(session, settings)
    before = rendered_issue(session, settings, issue)
    essay = issue_essays(session, issue)[0]
    essay.title, essay.content_hash = "A title rewritten since the last preview", "edited"
    session.add(essay)
    session.commit()
    after = rendered_issue(session, settings, issue)
    assert "A title rewritten since the last preview" in after.html
    assert "A title rewritten since the last preview" not in before.html


def test_an_essay_of_the_archive_sent_since_renders_anew(session: Session, settings: Settings) -> None:
    # Related links prefer, on equal scores, essays already published (an issue carried them):
    # an archive essay sent since the last render may change which link an equal score gets.
    issue = an_issue(session, settings)
    other = add_essays(session, make_essay(40, slug="sent-elsewhere"))[0]
    session.commit()
    before = render_key(session, settings, issue)
    mark_sent(session, other, "elsewhere")
    assert render_key(session, settings, issue) != before


def test_an_edited_intro_note_renders_anew(session: Session, settings: Settings) -> None:
    issue = an_issue(session, settings)
    before = rendered_issue(session, settings, issue)
    issue.intro = "A note written after the last preview."
    session.add(issue)
    session.commit()
    after = rendered_issue(session, settings, issue)
    assert "A note written after the last preview." in after.html
    assert "A note written after the last preview." not in before.html


def test_an_essay_added_to_the_archive_changes_the_key(session: Session, settings: Settings) -> None:
    # Related links are picked from the whole archive, not only the issue's essays.
    issue = an_issue(session, settings)
    key = render_key(session, settings, issue)
    add_essays(session, make_essay(40))
    session.commit()
    assert render_key(session, settings, issue) != key


def test_an_edited_template_renders_anew(tmp_path: Path, session: Session) -> None:
    mine = tmp_path / "my-templates" / "email"
    mine.mkdir(parents=True)
    template = (BUILTIN_TEMPLATES / "email" / "digest.html").read_text(encoding="utf-8")
    (mine / "digest.html").write_text(template, encoding="utf-8")
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"templates": "my-templates"}))
    issue = an_issue(session, settings)
    before = rendered_issue(session, settings, issue)
    (mine / "digest.html").write_text(template.replace("</body>", "<p>Edited footer line</p></body>"),
                                      encoding="utf-8")
    after = rendered_issue(session, settings, issue)
    assert "Edited footer line" in after.html and "Edited footer line" not in before.html


def test_a_template_that_cannot_be_read_is_named_not_a_traceback(tmp_path: Path, session: Session) -> None:
    # Mode 000 stops a user, not root: a link to /proc/self/mem, which fails on read for anyone.
    mine = tmp_path / "my-templates" / "email"
    mine.mkdir(parents=True)
    (mine / "footer.html").symlink_to("/proc/self/mem")
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"templates": "my-templates"}))
    issue = an_issue(session, settings)
    with pytest.raises(ConfigError, match=r"cannot read the template .*footer\.html: "):
        rendered_issue(session, settings, issue)


def test_a_changed_setting_renders_anew(tmp_path: Path, session: Session) -> None:
    first = load_settings(write_config(tmp_path, web={"base_url": BASE}))
    issue = an_issue(session, first)
    rendered_issue(session, first, issue)
    moved = load_settings(write_config(tmp_path, web={"base_url": "https://moved.example.org"}))
    assert "https://moved.example.org" in rendered_issue(session, moved, issue).html


def test_an_unreadable_entry_is_a_miss(session: Session, settings: Settings) -> None:
    issue = an_issue(session, settings)
    calls: list[int] = []
    first = counted(session, settings, issue, calls)
    for entry in folder(settings).glob("*.json"):
        entry.write_text("{half an entr", encoding="utf-8")
    assert counted(session, settings, issue, calls) == first
    assert calls == [1, 1]


def _render_in_a_process(config: str, key: str, out: str) -> None:
    from pipeline import db  # noqa: PLC0415

    settings = load_settings(config)
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        from pipeline.issues import find_issue  # noqa: PLC0415

        Path(out).write_text(rendered_issue(session, settings, find_issue(session, key)).html, encoding="utf-8")
    engine.dispose()


def test_processes_rendering_at_once_share_one_whole_entry(session: Session, settings: Settings) -> None:
    issue = an_issue(session, settings)
    context = multiprocessing.get_context("spawn")
    outs = [settings.base_dir / f"render-{n}.html" for n in range(3)]
    workers = [context.Process(target=_render_in_a_process, args=(str(settings.path), issue.key, str(out)))
               for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    htmls = {out.read_text(encoding="utf-8") for out in outs}
    assert htmls == {rendered_issue(session, settings, issue).html}
    assert len(list(folder(settings).glob("*.json"))) == 1
    assert list(folder(settings).glob("*.tmp")) == []  # no half-written file left behind
