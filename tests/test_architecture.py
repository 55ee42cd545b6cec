"""The dependency rules, checked by reading the imports and calls of every module (nothing is executed).

1. Layers: subscribers/ imports nothing from pipeline/; no stage module imports a shell.
2. Each third-party library enters through the modules LIBRARIES names.
3. SQL only in the model/query modules: each table has owners (OWNERS) that alone build SQL on
   it; a few owners read another table in a join (READS); shells build no SQL at all.
"""

from __future__ import annotations

import ast
import sys
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "subscribers")

SHELLS = ("pipeline/cli.py", "pipeline/commands/*.py", "pipeline/web/*.py", "pipeline/schedule.py")
SHELL_MODULES = ("pipeline.cli", "pipeline.commands", "pipeline.web", "pipeline.schedule")
# Story and wiring modules: they call the owners, and build no SQL of their own.
NO_SQL = (*SHELLS, "pipeline/worker.py", "pipeline/weekly.py", "pipeline/publish.py", "pipeline/sender.py")

LIBRARIES: dict[str, set[str]] = {
    "flask": {"pipeline/web/*.py"},
    "werkzeug": {"pipeline/web/*.py"},
    "premailer": {"pipeline/render.py"},
    "jinja2": {"pipeline/render.py"},  # Flask's own templates go through Flask
    "apscheduler": {"pipeline/schedule.py"},
    "smtplib": {"pipeline/transports.py"},
    "sklearn": {"pipeline/related.py"},
    "numpy": {"pipeline/related.py"},  # the similarity matrix scikit-learn returns
    "yaml": {"pipeline/readers/markdown_essay.py"},
    "markdown_it": {"pipeline/readers/markdown_essay.py"},
    "cssutils": {"pipeline/lint_html.py"},
    "dkim": {"pipeline/signing.py"},
    "dns": {"pipeline/dns_records.py"},
    "feedparser": {"pipeline/readers/feed.py"},
    "imaplib": {"pipeline/mailbox.py"},
    "mailbox": {"pipeline/mailbox.py"},
    "flufl": {"pipeline/bounces.py"},
    "feedgen": {"pipeline/archive_feed.py"},
    "itsdangerous": {"subscribers/tokens.py"},
    "email_validator": {"subscribers/addresses.py"},
    "alembic": {"pipeline/db.py", "pipeline/migrations/*.py", "pipeline/migrations/versions/*.py"},
    "click": {"pipeline/cli.py", "pipeline/commands/*.py"},
    "rich": {"pipeline/commands/*.py"},
}
# Everywhere (sessions and engines are passed around); what may BUILD SQL is rule 3.
EVERYWHERE = {"sqlalchemy", "sqlmodel"}

OWNERS: dict[str, set[str]] = {
    "Essay": {"pipeline/essays.py"},
    # issues.py composes and moves an issue through its statuses; editorial.py edits a draft's
    # subject, intro and essays, and discards a draft.
    "Issue": {"pipeline/issues.py", "pipeline/editorial.py"},
    "IssueEssay": {"pipeline/issues.py", "pipeline/editorial.py"},
    # The ledger: ledger.py writes it, ledger_reads.py counts and lists it, history.py reads who
    # had which essay.
    "Delivery": {"pipeline/ledger.py", "pipeline/ledger_reads.py", "pipeline/history.py"},
    "Feed": {"pipeline/feed_list.py"},
    "FeedEntry": {"pipeline/feed_list.py"},
    "BounceEvent": {"pipeline/bounce_log.py"},
    "ProcessedMessage": {"pipeline/bounce_log.py"},
    "Subscriber": {"subscribers/consent.py", "subscribers/importer.py", "subscribers/queries.py",
                   "subscribers/roster.py"},
    "Suppression": {"subscribers/consent.py", "subscribers/importer.py"},
    "ConfirmationRequest": {"subscribers/confirmation_queue.py"},
}
# Joins and look-ups an owner makes on a table it does not own (read only).
READS: dict[str, set[str]] = {
    # The key of the issue that sent each essay; the feed an essay came from (a file must not
    # take it over).
    "pipeline/essays.py": {"Issue", "Feed", "FeedEntry"},
    "pipeline/issues.py": {"Essay"},  # an issue's essays, and the unsent ones
    "pipeline/ledger.py": {"Subscriber"},  # the audience frozen, opt-outs skipped at claim time
    "pipeline/ledger_reads.py": {"Subscriber"},  # the audience before it is frozen
    "pipeline/feed_list.py": {"Essay"},  # an essay at a link no feed entry owns
    "pipeline/history.py": {"Essay", "Issue", "IssueEssay"},  # the essays of the issues a reader got
    "pipeline/editorial.py": {"Delivery"},  # a draft with deliveries is no draft to discard
    # The quick reads of the commands run most (issues list, sends status, run-due with nothing
    # due): read only, over light table clauses, so those commands start without the ORM.
    "pipeline/glance.py": {"Issue", "IssueEssay", "Essay", "Delivery"},
}
MIGRATIONS = ("pipeline/db.py", "pipeline/migrations/*.py", "pipeline/migrations/versions/*.py")
SQL_NAMES = {"select", "update", "delete", "insert", "func", "text", "col", "or_", "and_", "not_",
             "bindparam", "nulls_last", "exists", "literal", "case", "union", "postgresql", "sqlite",
             "table"}


def parse(path: Path) -> ast.Module:
    return _parse(path.read_text(encoding="utf-8"), str(path))


@cache
def _parse(source: str, filename: str) -> ast.Module:
    return ast.parse(source, filename=filename)


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function-level imports count too)."""
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package the file is in
                package = path.relative_to(ROOT).parent.parts if path.is_relative_to(ROOT) else ()
                base = ".".join(package[: len(package) - node.level + 1])
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_modules() -> list[Path]:
    return [path for package in PACKAGES for path in modules(package)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def matches(path: str, patterns: tuple[str, ...] | set[str]) -> bool:
    return any(fnmatch(path, pattern) for pattern in patterns)


def importers_of(library: str) -> set[str]:
    """Project modules (pipeline/ and subscribers/) that import `library`."""
    return {rel(path) for path in project_modules()
            if any(name == library or name.startswith(library + ".") for name in imports_of(path))}


def sql_use(path: Path) -> tuple[set[str], set[str]]:
    """(the SQL-building names `path` imports or calls, the table models named inside SQL calls).

    SQL-building: a name in SQL_NAMES imported from sqlalchemy/sqlmodel (under any alias), and
    any `.exec(...)` / `.execute(...)` call. Models are named inside those calls' arguments.
    """
    tree, found, builders = parse(path), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module and \
                node.module.split(".")[0] in EVERYWHERE:
            for alias in node.names:
                if alias.name in SQL_NAMES:
                    found.add(alias.name)
                    builders.add(alias.asname or alias.name)
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("exec", "execute"):
                found.add(f".{func.attr}()")
                calls.append(node)
            elif isinstance(func, ast.Name) and func.id in builders:
                calls.append(node)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                    func.value.id in builders:  # func.count(), postgresql.insert(...)
                calls.append(node)
    tables = {name.id for call in calls for name in ast.walk(call)
              if isinstance(name, ast.Name) and name.id in OWNERS}
    # A light table clause, table("delivery", column(...)), names its table by the model's
    # table name (the class name in lower case, as SQLModel makes it).
    by_table_name = {model.lower(): model for model in OWNERS}
    tables |= {by_table_name.get(call.args[0].value, call.args[0].value) for call in calls
               if isinstance(call.func, ast.Name) and call.func.id in builders and call.args
               and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
               and call.func.id == "table"}
    return found, tables


def table_models() -> set[str]:
    """The SQLModel classes declared with table=True."""
    return {node.name for path in (ROOT / "pipeline" / "models.py", ROOT / "subscribers" / "model.py")
            for node in ast.walk(parse(path)) if isinstance(node, ast.ClassDef)
            and any(k.arg == "table" for k in node.keywords)}


def sql_violations(named: dict[str, Path]) -> list[str]:
    """Every module building SQL it may not: a shell or story module building any, a module
    owning no table building any, an owner naming a table it neither owns nor READS."""
    owned: dict[str, set[str]] = {}
    for table, owners in OWNERS.items():
        for owner in owners:
            owned.setdefault(owner, set()).add(table)
    problems = []
    for name, path in named.items():
        found, tables = sql_use(path)
        if not found or matches(name, MIGRATIONS):
            continue
        if matches(name, NO_SQL) or (name not in owned and name not in READS):
            problems.append(f"{name} builds SQL ({', '.join(sorted(found))}) but owns no table")
            continue
        foreign = tables - owned.get(name, set()) - READS.get(name, set())
        if foreign:
            problems.append(f"{name} queries {sorted(foreign)}, owned by "
                            f"{sorted(set().union(*(OWNERS[t] for t in foreign)))}")
    return problems


@pytest.mark.parametrize("path", modules("subscribers"), ids=lambda p: p.name)
def test_subscribers_imports_nothing_from_pipeline(path: Path) -> None:
    offending = sorted(n for n in imports_of(path) if n == "pipeline" or n.startswith("pipeline."))
    assert offending == [], f"{rel(path)} imports {offending}"


def shell_imports(path: Path) -> list[str]:
    return sorted(n for n in imports_of(path) if any(n == s or n.startswith(s + ".") for s in SHELL_MODULES))


def test_no_stage_module_imports_a_shell() -> None:
    stages = [path for path in modules("pipeline") if not matches(rel(path), SHELLS)]
    offending = {rel(path): shell_imports(path) for path in stages if shell_imports(path)}
    assert offending == {}


def test_each_library_enters_only_through_its_modules() -> None:
    strays = {library: sorted(n for n in importers_of(library) if not matches(n, allowed))
              for library, allowed in LIBRARIES.items()}
    assert {library: found for library, found in strays.items() if found} == {}
    # A library no module imports is a typo in the table or a stale row: either hides a stray.
    assert sorted(library for library in LIBRARIES if not importers_of(library)) == []


def test_every_third_party_library_is_in_the_table() -> None:
    seen = {name.split(".")[0] for path in project_modules() for name in imports_of(path)}
    third_party = seen - set(sys.stdlib_module_names) - {*PACKAGES, "__future__"}
    assert sorted(third_party - set(LIBRARIES) - EVERYWHERE) == []


def test_every_table_has_an_owner_and_every_owner_exists() -> None:
    assert set(OWNERS) == table_models()
    named = {*(m for owners in OWNERS.values() for m in owners), *READS}
    assert sorted(m for m in named if not (ROOT / m).is_file()) == []


def test_sql_is_built_only_in_the_owner_modules() -> None:
    assert sql_violations({rel(path): path for path in project_modules()}) == []


def test_the_import_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    # Guard against a scanner that never finds anything (and so could never fail).
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pipeline.db\nfrom pipeline import models\n"
        "def later():\n    from pipeline.errors import NotFound\n",
        encoding="utf-8",
    )
    assert imports_of(sample) == {"pipeline.db", "pipeline", "pipeline.errors"}
    assert "subscribers.errors" in imports_of(ROOT / "subscribers" / "consent.py")
    assert shell_imports(sample) == []
    sample.write_text("def later():\n    from pipeline.commands import base\n", encoding="utf-8")
    assert shell_imports(sample) == ["pipeline.commands"]


def test_the_sql_scanner_finds_planted_violations(tmp_path: Path) -> None:
    shell = tmp_path / "shell.py"  # not an owner: any SQL is a violation
    shell.write_text("from sqlmodel import select as pick\n", encoding="utf-8")
    stray = tmp_path / "stray.py"
    stray.write_text("def f(session):\n    return session.exec('SELECT 1')\n", encoding="utf-8")
    clean = tmp_path / "clean.py"
    clean.write_text("from sqlmodel import Session\nfrom sqlalchemy.engine import Engine\n", encoding="utf-8")
    assert sql_violations({"pipeline/web/shell.py": shell, "pipeline/stray.py": stray,
                           "pipeline/clean.py": clean, "pipeline/publish.py": shell}) == [
        "pipeline/web/shell.py builds SQL (select) but owns no table",
        "pipeline/stray.py builds SQL (.exec()) but owns no table",
        "pipeline/publish.py builds SQL (select) but owns no table",
    ]
    # An owner querying a table it neither owns nor reads: a copy of essays.py that counts
    # deliveries, through an aliased func.
    planted = tmp_path / "essays.py"
    planted.write_text((ROOT / "pipeline" / "essays.py").read_text(encoding="utf-8") +
                       "\nfrom sqlalchemy import func as f\n\n\ndef leak(session):\n"
                       "    return f.count(Delivery.id)\n", encoding="utf-8")
    assert sql_violations({"pipeline/essays.py": planted}) == [
        "pipeline/essays.py queries ['Delivery'], owned by "
        "['pipeline/history.py', 'pipeline/ledger.py', 'pipeline/ledger_reads.py']"]
    assert sql_violations({"pipeline/essays.py": ROOT / "pipeline" / "essays.py"}) == []
    # The quick reads' light table clauses count by table name: a clause on a table glance.py
    # does not read is caught like a model would be.
    quick = tmp_path / "glance.py"
    quick.write_text((ROOT / "pipeline" / "glance.py").read_text(encoding="utf-8") +
                     '\nSUBSCRIBERS = table("subscriber", column("id", Integer))\n', encoding="utf-8")
    assert sql_violations({"pipeline/glance.py": quick}) == [
        "pipeline/glance.py queries ['Subscriber'], owned by ['subscribers/consent.py', "
        "'subscribers/importer.py', 'subscribers/queries.py', 'subscribers/roster.py']"]
