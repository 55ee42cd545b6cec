"""Removing essays imported by mistake (`newsletter essays remove`): what may go, what stays and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.models import Essay, Issue, IssueEssay
from pipeline.removal import remove_essays
from tests.conftest import CLI
from tests.digest_fixtures import add_essays, make_essay, mark_sent
from tests.test_essays import EXAMPLES, essays, write_essays


def test_cli_remove_asks_then_deletes_only_what_no_issue_carries(
    run_cli: CLI, engine: Engine, tmp_path: Path
) -> None:
    """An essay imported by mistake goes; one that went out, or that a draft carries, is refused
    with what to do instead, and the others named still go."""
    folder = write_essays(tmp_path / "e", "typo", "sent", "in-draft", "kept")
    assert run_cli("essays", "import", str(folder)).exit_code == 0
    with Session(engine) as session:
        mark_sent(session, session.exec(select(Essay).where(Essay.slug == "sent")).one(), "2026-11-02")
    assert run_cli("issues", "new", "--essay", "in-draft", "--key", "by-hand").exit_code == 0

    dry = run_cli("essays", "remove", "typo", "--dry-run")
    assert dry.exit_code == 0 and "would remove typo" in dry.stdout and "nothing was removed" in dry.stdout
    declined = run_cli("essays", "remove", "typo", input="n\n")
    assert declined.exit_code == 1 and "Remove 1 essay (typo)" in declined.output
    assert sorted(essays(engine)) == ["in-draft", "kept", "sent", "typo"]

    removed = run_cli("essays", "remove", "typo", "sent", "in-draft", "no-such-essay", "--yes")
    assert removed.exit_code == 1
    assert "removed typo" in removed.stdout
    assert f"{folder / 'typo.md'}" in removed.stdout  # the file stays: a later import brings it back
    assert "cannot remove 'sent': it went out in issue 2026-11-02" in removed.stderr
    assert "newsletter essays hold" in removed.stderr and "--archive" in removed.stderr
    assert "cannot remove 'in-draft': the draft by-hand carries it" in removed.stderr
    assert "newsletter issues edit by-hand --remove-essay in-draft" in removed.stderr
    assert "no essay with slug 'no-such-essay'" in removed.stderr
    assert sorted(essays(engine)) == ["in-draft", "kept", "sent"]
    assert run_cli("essays", "show", "typo").exit_code == 1


def test_a_removed_essay_is_never_linked_again(run_cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    """The related-links index and the render are kept on disk, keyed by the archive: after a
    removal, neither `essays show` nor a digest, the draft rendered before included, links to it."""
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli("essays", "import", str(EXAMPLES)).exit_code == 0

    def related(slug: str) -> list[str]:
        return [link["slug"] for link in json.loads(run_cli("essays", "show", slug, "--json").stdout)["related_links"]]

    assert "a-city-map-from-1890" in related("stairs-as-shortcuts")  # by similarity
    assert related("the-long-way-to-the-bakery") == ["walking-the-canal-at-dawn"]  # by its page's hint
    assert run_cli("issues", "new", "--essay", "stairs-as-shortcuts", "--essay", "the-long-way-to-the-bakery",
                   "--key", "links").exit_code == 0
    before = run_cli("preview", "links", "--text").stdout
    assert "A city map from 1890" in before and "Walking the canal at dawn" in before

    gone = run_cli("essays", "remove", "a-city-map-from-1890", "walking-the-canal-at-dawn", "--yes")
    assert gone.exit_code == 0, gone.output
    assert "a-city-map-from-1890" not in related("stairs-as-shortcuts")
    assert "walking-the-canal-at-dawn" not in related("the-long-way-to-the-bakery")
    after = run_cli("preview", "links", "--text").stdout
    for gone_text in ("1890", "a-city-map", "canal"):
        assert gone_text not in after


def test_an_essay_an_issue_carried_stays_whatever_became_of_the_issue(session: Session) -> None:
    """An issue that expired half-sent never marks its essays sent, yet some readers had them."""
    kept, typo = add_essays(session, make_essay(1), make_essay(2))
    expired = Issue(key="weekly-2026-W40", status="expired")
    session.add(expired)
    session.flush()
    session.add(IssueEssay(issue_id=expired.id or 0, position=0, essay_id=kept.id or 0))
    session.commit()
    report = remove_essays(session, ["essay-001", "essay-002"])
    assert [e.slug for e in report.removed] == ["essay-002"]
    assert report.refused == ["cannot remove 'essay-001': issue weekly-2026-W40 (expired) carried it, and some "
                              "readers may have it. `newsletter essays hold essay-001` keeps it out of the "
                              "digests instead"]
    session.commit()
    assert session.exec(select(Essay.slug)).all() == ["essay-001"]
