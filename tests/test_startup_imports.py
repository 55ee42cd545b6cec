"""Read-only commands load SQLAlchemy Core only: not the ORM (SQLModel, pydantic), the renderer,
the sender, the feed readers, the checklist, the scheduler or Alembic (for a database already at
the newest schema). They read through pipeline/glance.py.

What a command imports decides how long it takes to start (a cron job runs `schedule run-due`
every 15 minutes); the times themselves are measured in tests/benchmarks/test_bench_startup.py.
Each command runs in a fresh interpreter, which then lists the heavy modules it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Libraries only composing, rendering, sending, linting, polling, scheduling or migrating need;
# the ORM (SQLModel and pydantic) costs more than the whole work of a read-only command.
HEAVY = ("alembic", "jinja2", "premailer", "sklearn", "numpy", "dkim", "cssutils", "feedparser",
         "markdown_it", "flask", "apscheduler", "sqlmodel", "pydantic", "sqlalchemy.orm",
         "pipeline.models", "pipeline.render", "pipeline.publish", "pipeline.polling", "urllib3")

PROBE = """
import json, sys
from pipeline.cli import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    heavy = {heavy!r}
    loaded = sorted(n for n in sys.modules if any(n == h or n.startswith(h + ".") for h in heavy))
    print("\\nLOADED " + json.dumps(sorted({{n.split(".")[0] if not n.startswith(("pipeline", "sqlalchemy"))
                                           else n for n in loaded}})))
"""


def loaded_by(config: Path, *args: str, codes: tuple[int, ...] = (0,)) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), "--config", str(config), *args],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )
    assert result.returncode in codes, result.stderr
    line = [text for text in result.stdout.splitlines() if text.startswith("LOADED ")][-1]
    return list(json.loads(line.removeprefix("LOADED ")))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_config(tmp_path_factory.mktemp("startup"))
    # An archive, a composed issue, and this week's digest already done: what a cron job sees.
    loaded_by(path, "essays", "import", str(PROJECT_ROOT / "examples" / "essays"))
    loaded_by(path, "issues", "new")
    loaded_by(path, "schedule", "run-due", codes=(0, 3))  # sent, or past its grace: expired
    return path


@pytest.mark.parametrize("args", [("issues", "list"), ("issues", "show", "latest"), ("sends", "status", "latest"),
                                  ("schedule", "next"), ("schedule", "run-due")],
                         ids=" ".join)
def test_a_read_only_command_loads_no_heavy_stage(config: Path, args: tuple[str, ...]) -> None:
    assert loaded_by(config, *args) == []


def test_a_command_that_renders_still_loads_the_renderer(config: Path) -> None:
    # Guard: the probe does see the heavy imports when they happen.
    loaded = loaded_by(config, "preview", "1", "--text")  # the composed issue
    assert {"jinja2", "premailer", "pipeline.render", "sqlmodel", "pipeline.models"} <= set(loaded)


def test_a_render_does_not_load_the_http_client_premailer_imports(tmp_path: Path) -> None:
    # premailer imports requests (urllib3, charset detection) to fetch linked stylesheets, which
    # the renderer never lets it do; loading them cost every render about 0.1 s.
    path = write_config(tmp_path)
    loaded_by(path, "essays", "import", str(PROJECT_ROOT / "examples" / "essays"))
    loaded_by(path, "issues", "new")
    loaded = loaded_by(path, "preview", "1")  # the first render of this issue: nothing cached
    assert "premailer" in loaded
    assert "urllib3" not in loaded
