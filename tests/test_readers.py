"""The readers package: every essay source is read there, and reading never touches the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_architecture import ROOT, importers_of, imports_of

READERS = sorted((ROOT / "pipeline" / "readers").glob("*.py"))
DATABASE = ("sqlmodel", "sqlalchemy", "pipeline.db", "pipeline.models", "subscribers.model")


@pytest.mark.parametrize("path", READERS, ids=lambda p: p.name)
def test_a_reader_imports_nothing_of_the_database(path: Path) -> None:
    offending = sorted(n for n in imports_of(path) if n.startswith(DATABASE))
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"


def test_markdown_it_enters_only_through_the_markdown_reader() -> None:
    # yaml and feedparser have theirs in test_markdown_essay.py and test_architecture.py.
    assert importers_of("markdown_it") == {"pipeline/readers/markdown_essay.py"}
