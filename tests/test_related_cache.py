"""The related-links index kept on disk gives the links a fresh build gives, and a send reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.config import Settings
from pipeline.essays import all_essays, import_paths
from pipeline.models import Essay
from pipeline.related import RelatedIndex, related_for_essay, related_for_issue
from pipeline.related_cache import CachedIndex, cached_index, folder
from tests.conftest import CLI
from tests.smtp_faults import add_audience

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = PROJECT_ROOT / "examples" / "essays"


def picked(links: dict[int, list[Essay]]) -> dict[int, list[int | None]]:
    return {essay_id: [e.id for e in chosen] for essay_id, chosen in links.items()}


def check_same_links(session: Session, where: Path) -> None:
    """Every essay alone and in 5-essay issues: the stored index links exactly like a new build."""
    archive = all_essays(session)
    built = RelatedIndex(archive)
    cached_index(session, where)  # builds and stores
    assert len(list(where.glob("*.json"))) == 1
    stored = cached_index(session, where)  # read back from the file
    assert isinstance(stored, CachedIndex)
    for essay in archive:
        alone = related_for_essay(session, essay, 3)
        assert [(s.essay.id, s.score) for s in related_for_essay(session, essay, 3, lambda: stored)] == [
            (s.essay.id, s.score) for s in alone
        ]
        assert [(s.essay.id, s.score) for s in stored.suggestions(essay)] == [
            (s.essay.id, s.score) for s in built.suggestions(essay)
        ]
    for start in range(0, len(archive), 5):
        issue = archive[start:start + 5]
        ids = {e.id for e in issue}
        for essay in issue:
            assert [(s.essay.id, s.score) for s in stored.suggestions(essay, exclude=ids)] == [
                (s.essay.id, s.score) for s in built.suggestions(essay, exclude=ids)
            ]
        assert picked(related_for_issue(session, issue, 3, lambda: stored)) == picked(
            related_for_issue(session, issue, 3)
        )


def test_the_stored_index_links_like_a_new_build_on_the_examples(
    engine: Engine, session: Session, tmp_path: Path
) -> None:
    import_paths(engine, [EXAMPLES])
    check_same_links(session, tmp_path / "related")
    # Sending gives essays a page (a tie-breaker) without changing the key: read live, still equal.
    for essay in all_essays(session)[::2]:
        essay.url = essay.url or f"https://example.org/{essay.slug}"
    session.commit()
    check_same_links(session, tmp_path / "related-after-send")


def test_the_stored_index_links_like_a_new_build_on_the_corpus(
    engine: Engine, session: Session, tmp_path: Path, corpus_dir: Path
) -> None:
    import_paths(engine, [corpus_dir])
    check_same_links(session, tmp_path / "related")


def test_an_edited_essay_gets_a_new_index_not_the_stale_one(
    engine: Engine, session: Session, settings: Settings
) -> None:
    import_paths(engine, [EXAMPLES])
    where = folder(settings)
    first, second = all_essays(session)[:2]
    before = [s.essay.id for s in cached_index(session, where).suggestions(first)]
    assert second.id not in before
    # The second essay rewritten to be about the first: the links must follow the edit.
    second.title, second.dek, second.body = first.title + " again", first.dek, first.body
    second.content_hash = "edited"
    session.commit()
    after = [s.essay.id for s in cached_index(session, where).suggestions(first)]
    assert after[0] == second.id
    assert after == [s.essay.id for s in RelatedIndex(all_essays(session)).suggestions(first)]
    assert len(list(where.glob("*.json"))) == 2


PROBE = """
import sys
from pipeline.cli import cli
try:
    cli(["--config", sys.argv[1], "send", "--latest", "--yes"], standalone_mode=False)
finally:  # the command ends with SystemExit(0) when all went out
    print("LOADED", *sorted({"sklearn", "scipy", "numpy", "yaml", "markdown_it", "dkim",
                             "sqlalchemy.dialects.postgresql", "rich.progress"} & set(sys.modules)))
"""


def send_in_fresh_process(config: Path) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=180)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith("LOADED")][-1]


def test_a_send_after_an_import_does_not_import_scikit_learn(
    run_cli: CLI, engine: Engine, settings: Settings
) -> None:
    add_audience(engine, 2)
    assert run_cli("essays", "import", str(EXAMPLES)).exit_code == 0
    assert list(folder(settings).glob("*.json"))  # warmed by the import
    assert run_cli("issues", "new").exit_code == 0
    # Nor NumPy, nor the Markdown essay reader (YAML, markdown-it): the essays are in the database;
    # nor dkimpy: this newsletter signs nothing; nor the PostgreSQL dialect on SQLite, nor
    # Rich's progress bar with no terminal to draw it on.
    assert send_in_fresh_process(run_cli.config_file) == "LOADED"
    assert len(list(settings.delivery.outbox_dir.glob("*.eml"))) == 2


def test_a_send_after_an_edit_outside_an_import_builds_the_index_again(
    run_cli: CLI, engine: Engine, settings: Settings
) -> None:
    add_audience(engine, 2)
    assert run_cli("essays", "import", str(EXAMPLES)).exit_code == 0
    with Session(engine) as session:  # edited in the database directly: no warm-up
        essay = session.exec(select(Essay)).first()
        assert essay is not None
        essay.dek = "A new dek written straight into the database."
        session.commit()
    assert run_cli("issues", "new").exit_code == 0
    # (scikit-learn itself loads Rich's progress module.)
    assert {"numpy", "scipy", "sklearn"} <= set(send_in_fresh_process(run_cli.config_file).split())
    assert len(list(folder(settings).glob("*.json"))) == 2  # the rebuilt index, kept
