"""Benchmark: rendering a 5-essay digest once per issue, and personalising one copy (`make bench`).

Prints, for a 5-essay digest of self-written essays: Jinja2 + premailer once per issue (ms),
`personalise` for one subscriber (µs), and the ratio of a full per-subscriber render (Jinja2 +
premailer for every subscriber, what the architecture avoids) to the substitution, measured in the
same run. It prints; it does not assert a time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session

from pipeline import db
from pipeline.config import load_settings
from pipeline.issue_view import issue_view
from pipeline.issues import compose
from pipeline.render import Recipient, render_view, render_view_for
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, digest_essays

BASE = "https://letters.example.org"


def per_call(step: Callable[[], object], repeat: int) -> float:
    """The median seconds per call over `repeat` calls (after one warm-up call)."""
    step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_bench_render_once_then_personalise(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}))
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        add_essays(session, *digest_essays(12))
        issue = compose(session, settings)
        session.commit()
        view = issue_view(session, settings, issue)
        gather = per_call(lambda: issue_view(session, settings, issue), 5)
    rendered = render_view(settings, view)
    recipients = [Recipient(f"Reader {i} & Co", f"r{i}@example.org", f"{BASE}/u/tok{i}") for i in range(1000)]
    once = per_call(lambda: render_view(settings, view), 15)
    full = per_call(lambda: render_view_for(settings, view, recipients[0], rendered.shape), 15)
    cycle = iter(recipients * 200)
    personal = per_call(lambda: rendered.personalise(next(cycle)), 20_000)
    size = rendered.size / 1024
    print(f"\n5-essay digest ({size:.1f} KB of HTML):")
    print(f"  essays + related links (TF-IDF) once per issue: {gather * 1000:8.1f} ms")
    print(f"  render + inline once per issue (two variants): {once * 1000:8.1f} ms")
    print(f"  full render for one subscriber (the baseline):  {full * 1000:8.1f} ms")
    print(f"  personalise one copy:                           {personal * 1e6:8.1f} µs")
    print(f"  full render / personalise:                      {full / personal:8.0f} x")
    print(f"  100,000 subscribers: {100_000 * personal:.1f} s substituting vs {100_000 * full / 60:.0f} min rendering")
    engine.dispose()
