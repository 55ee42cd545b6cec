"""Benchmark: `newsletter preview` of an issue in an archive of 3,000 essays (`make bench`).

Each preview runs as a whole process. The first one renders (the related-links index over the
whole archive, premailer) and fills the render cache; the next ones find the render there, as
every preview, lint and send run after it does until an essay, a template or a setting changes.
Before the cache, every preview paid the first figure. Aim (issue 13): a preview under 2 s.
It prints; it asserts no time.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import insert
from sqlmodel import Session

from pipeline import db
from pipeline.config import load_settings
from pipeline.issues import compose
from pipeline.models import Essay
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
ESSAYS = 3_000
AIM = 2.0
SYLLABLES = ["ka", "lo", "mi", "ren", "tas", "vo", "del", "qui", "sar", "po", "ne", "bru", "ti", "gal"]


def archive(count: int) -> list[dict[str, object]]:
    """Essays of ~600 words each over a vocabulary of a few thousand words, topics overlapping
    the way a real archive's do (made up here: the benchmark ships no one's writing)."""
    rng = random.Random(13)
    vocabulary = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) for _ in range(9000)})
    topics = [rng.sample(vocabulary, 300) for _ in range(60)]
    rows = []
    for n in range(count):
        words = topics[n % len(topics)] + topics[(n * 7 + 3) % len(topics)]
        paragraphs = [" ".join(rng.choices(words, k=100)) + "." for _ in range(6)]
        rows.append({
            "slug": f"essay-{n:05d}", "title": " ".join(rng.choices(words, k=5)).capitalize(),
            "dek": " ".join(rng.choices(words, k=14)) + ".",
            "body": [{"kind": "p", "text": text} for text in paragraphs],
            "published_on": date(2020 + n % 6, 1 + n % 12, 1 + n % 28),
            "url": f"https://essays.example.org/essay-{n:05d}", "source_related": [], "tags": [],
            "content_hash": f"h{n}", "imported_at": datetime(2026, 1, 1, tzinfo=UTC),
            "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
        })
    return rows


def preview(config: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "--config", str(config),
         "preview", "1", "-o", str(out)], capture_output=True, env=env, cwd=ROOT, timeout=600)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr.decode()
    return elapsed


def test_preview_at_3000_essays(tmp_path: Path) -> None:
    config = write_config(tmp_path, web={"base_url": "https://letters.example.org"})
    settings = load_settings(config)
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        session.execute(insert(Essay), archive(ESSAYS))
        session.commit()
        compose(session, settings)
        session.commit()
    engine.dispose()

    cold = preview(config, tmp_path / "cold.html")
    warm = [preview(config, tmp_path / f"warm{i}.html") for i in range(3)]
    same = all((tmp_path / f"warm{i}.html").read_bytes() == (tmp_path / "cold.html").read_bytes()
               for i in range(3))
    assert same, "a preview from the cache differs from the rendered one"
    median = statistics.median(warm)
    print(f"\npreview of a 5-essay issue in an archive of {ESSAYS:,} essays, whole process")
    print(f"  first preview (renders: related-links index + premailer; every preview before the cache)"
          f" {cold:6.2f} s")
    print(f"  next previews (render cache), median of 3  {median:6.2f} s   x{cold / median:4.1f} faster   "
          f"aim < {AIM:.0f} s: {'meets' if median < AIM else 'MISSES'}")
