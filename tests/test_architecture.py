"""The dependency rules, checked by reading the imports of every module (no import is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function-level imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package the file is in
                package = path.relative_to(ROOT).parent.parts
                base = ".".join(package[: len(package) - node.level + 1])
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def importers_of(library: str) -> set[str]:
    """Project modules (pipeline/ and subscribers/) that import `library`."""
    return {
        str(path.relative_to(ROOT))
        for package in ("pipeline", "subscribers")
        for path in modules(package)
        if any(name == library or name.startswith(library + ".") for name in imports_of(path))
    }


@pytest.mark.parametrize("path", modules("subscribers"), ids=lambda p: p.name)
def test_subscribers_imports_nothing_from_pipeline(path: Path) -> None:
    offending = sorted(n for n in imports_of(path) if n == "pipeline" or n.startswith("pipeline."))
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    # Guard against a scanner that never finds anything (and so could never fail).
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pipeline.db\nfrom pipeline import models\n"
        "def later():\n    from pipeline.errors import NotFound\n",
        encoding="utf-8",
    )
    assert imports_of(sample) == {"pipeline.db", "pipeline", "pipeline.errors"}
    assert "subscribers.errors" in imports_of(ROOT / "subscribers" / "consent.py")


def test_itsdangerous_enters_only_through_tokens() -> None:
    assert importers_of("itsdangerous") == {"subscribers/tokens.py"}


def test_email_validator_enters_only_through_addresses() -> None:
    assert importers_of("email_validator") == {"subscribers/addresses.py"}


def test_dnspython_enters_only_through_dns_records() -> None:
    assert importers_of("dns") == {"pipeline/dns_records.py"}


def test_smtplib_enters_only_through_transports() -> None:
    assert importers_of("smtplib") == {"pipeline/transports.py"}


def test_feedparser_enters_only_through_the_feed_reader() -> None:
    assert importers_of("feedparser") == {"pipeline/readers/feed.py"}
