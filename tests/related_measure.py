"""How relevant related links are, by the topic labels in tests/data/related_topics.tsv."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.models import Essay

LABELS = Path(__file__).parent / "data" / "related_topics.tsv"


@dataclass(frozen=True)
class Relevance:
    essays: int
    links: int
    on_topic: int  # links sharing a topic with their essay
    on_area: int  # links in the same coarser area
    first_on_topic: int  # essays whose first link shares a topic
    # Essays with no link and no essay on their topic among those they could link: no link is
    # the right answer there ("fewer links rather than unrelated ones").
    rightly_none: int

    @property
    def first_right(self) -> int:
        """Essays whose first link is on topic, or that rightly have none."""
        return self.first_on_topic + self.rightly_none

    def line(self) -> str:
        return (f"links on topic {self.on_topic}/{self.links} ({self.on_topic / max(self.links, 1):.0%}), "
                f"same area {self.on_area / max(self.links, 1):.0%}, first link right "
                f"{self.first_right}/{self.essays} ({self.first_on_topic} on topic + {self.rightly_none} "
                f"rightly none), {self.links / max(self.essays, 1):.2f} links per essay")


def labels() -> dict[str, tuple[frozenset[str], str]]:
    """File name -> (its topics, its area)."""
    rows = csv.DictReader((line for line in LABELS.open(encoding="utf-8") if not line.startswith("#")),
                          delimiter="\t")
    return {row["file"]: (frozenset(row["topic"].split("; ")), row["area"]) for row in rows}


def measure(
    essays: Sequence[Essay],
    links_of: Callable[[Essay], Sequence[Essay]],
    could_link: Callable[[Essay], Sequence[Essay]] | None = None,
) -> Relevance:
    """Relevance of `links_of` over the essays (each must have a labelled source file).
    `could_link` gives the essays an essay could link to (by default the other essays given):
    an essay without a link counts as right when none of them shares its topic."""
    known = labels()

    def label(essay: Essay) -> tuple[frozenset[str], str]:
        return known[Path(essay.source_path or "").name]

    def candidates(essay: Essay) -> Sequence[Essay]:
        return could_link(essay) if could_link else [e for e in essays if e.id != essay.id]

    links = on_topic = on_area = first = none = 0
    for essay in essays:
        topics, area = label(essay)
        shown = list(links_of(essay))
        links += len(shown)
        on_topic += sum(bool(label(e)[0] & topics) for e in shown)
        on_area += sum(label(e)[1] == area for e in shown)
        first += bool(shown) and bool(label(shown[0])[0] & topics)
        none += not shown and not any(label(e)[0] & topics for e in candidates(essay))
    return Relevance(len(essays), links, on_topic, on_area, first, none)
