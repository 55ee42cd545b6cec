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

    def line(self) -> str:
        return (f"links on topic {self.on_topic}/{self.links} ({self.on_topic / max(self.links, 1):.0%}), "
                f"same area {self.on_area / max(self.links, 1):.0%}, first link on topic "
                f"{self.first_on_topic}/{self.essays}, "
                f"{self.links / max(self.essays, 1):.2f} links per essay")


def labels() -> dict[str, tuple[frozenset[str], str]]:
    """File name -> (its topics, its area)."""
    rows = csv.DictReader((line for line in LABELS.open(encoding="utf-8") if not line.startswith("#")),
                          delimiter="\t")
    return {row["file"]: (frozenset(row["topic"].split("; ")), row["area"]) for row in rows}


def measure(archive: Sequence[Essay], links_of: Callable[[Essay], Sequence[Essay]]) -> Relevance:
    """Relevance of `links_of` over the archive's essays (each must have a labelled source file)."""
    known = labels()

    def label(essay: Essay) -> tuple[frozenset[str], str]:
        return known[Path(essay.source_path or "").name]

    links = on_topic = on_area = first = 0
    for essay in archive:
        topics, area = label(essay)
        shown = list(links_of(essay))
        links += len(shown)
        on_topic += sum(bool(label(e)[0] & topics) for e in shown)
        on_area += sum(label(e)[1] == area for e in shown)
        first += bool(shown) and bool(label(shown[0])[0] & topics)
    return Relevance(len(archive), links, on_topic, on_area, first)
