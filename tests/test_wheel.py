"""The built wheel works on its own: installed into a fresh venv outside the checkout, it starts
a newsletter with `init`, imports, previews and sends to the outbox (templates, static files,
migrations and the init files all come from the installed package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
# pip's words when the package index cannot be reached (offline machine): a reason to skip.
UNREACHABLE = re.compile(r"No matching distribution|Could not find a version|Failed to establish|"
                         r"Temporary failure in name resolution|Network is unreachable", re.IGNORECASE)
SHIPPED = ("pyproject.toml", "README.md", "pipeline", "subscribers", "templates", "docs")


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_wheel_installed_outside_the_checkout_runs_init_preview_and_send(tmp_path: Path) -> None:
    # Build from a copy, so the build leaves nothing in the checkout and can see nothing else.
    source = tmp_path / "source"
    for name in SHIPPED:
        if (PROJECT_ROOT / name).is_dir():
            shutil.copytree(PROJECT_ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("NEWSLETTER_")}
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                 str(source)], tmp_path, env)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("newsletter-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env)
    if installed.returncode != 0 and UNREACHABLE.search(installed.stderr):
        pytest.skip(f"pip cannot reach the package index for the dependencies: {installed.stderr[-300:]}")
    assert installed.returncode == 0, installed.stderr
    where = run([str(venv / "bin" / "python"), "-c", "import pipeline; print(pipeline.__file__)"], tmp_path, env)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not the checkout

    newsletter = str(venv / "bin" / "newsletter")
    home = tmp_path / "home"
    home.mkdir()
    steps = [
        (home, ["init", "letters", "--yes", "--name", "Notes", "--site-url", "https://notes.example.org",
                "--sender", "me@notes.example.org", "--base-url", "https://letters.example.org"]),
        (home / "letters", ["essays", "import", "essays"]),
        (home / "letters", ["subscribers", "add", "ann@example.org", "--name", "Ann"]),
        (home / "letters", ["issues", "new"]),
        (home / "letters", ["preview", "latest", "-o", "preview.html"]),
        (home / "letters", ["send", "--latest", "--yes"]),
    ]
    for cwd, args in steps:
        result = run([newsletter, *args], cwd, env)
        assert result.returncode == 0, f"newsletter {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    letters = home / "letters"
    assert "Why I started this newsletter" in (letters / "preview.html").read_text(encoding="utf-8")
    [eml] = list((letters / "outbox").glob("*.eml"))
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    html = message.get_body(("html",))
    assert html is not None and "Why I started this newsletter" in html.get_content()
    assert message["To"] == "Ann <ann@example.org>"

    # The web pages' stylesheet and the email checklist the Checks tab links to are package data too.
    for url, expected in (("/static/site.css", "body"), ("/preview/checklist", 'id="h11"')):
        page = run([str(venv / "bin" / "python"), "-c",
                    ("from pipeline.config import load_settings; from pipeline.web import create_app; "
                     f"r = create_app(load_settings('config.toml')).test_client().get({url!r}); "
                     "print(r.status_code); print(r.get_data(as_text=True))")], letters, env)
        assert page.stdout.startswith("200\n") and expected in page.stdout, (url, page.stdout[:300], page.stderr)
