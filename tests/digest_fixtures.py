"""Essays written for the digest tests (never corpus text), and helpers to store them."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlmodel import Session

from pipeline.models import Essay

TOPICS = [
    ("Bread", "sourdough starter flour water crust oven loaf rise dough fermentation"),
    ("Rivers", "river current bank delta water flow bridge ferry estuary flood"),
    ("Clocks", "clock pendulum gear spring escapement minute hour watchmaker dial"),
    ("Gardens", "garden soil compost seed bed weeds tomato spade harvest mulch"),
    ("Trains", "train station platform timetable carriage rail locomotive signal track"),
]


def paragraph(topic_words: str, n: int, variant: int = 0) -> str:
    words = topic_words.split()
    sentences = []
    for i in range(n):
        picked = " ".join(words[(i + variant + k) % len(words)] for k in range(6))
        sentences.append(f"The {picked} matter more than we admit, sentence {i + 1}.")
    return " ".join(sentences)


def make_essay(number: int, **fields: Any) -> Essay:
    """A self-written essay; `number` picks a topic and a date, fields override anything."""
    topic, words = TOPICS[number % len(TOPICS)]
    values: dict[str, Any] = {
        "slug": f"essay-{number:03d}",
        "title": f"On {topic.lower()}, part {number}",
        "dek": f"A short walk through {topic.lower()}: what the {words.split()[0]} teaches.",
        "body": [
            {"kind": "p", "text": paragraph(words, 4, number)},
            {"kind": "h", "text": f"More on {topic.lower()}"},
            {"kind": "p", "text": paragraph(words, 3, number + 1)},
        ],
        "published_on": date(2025, 1, 1 + number % 28),
        "content_hash": f"hash-{number}",
        "imported_at": datetime(2025, 2, 1, 12, number % 60, tzinfo=timezone.utc),
    }
    values.update(fields)
    return Essay(**values)


def add_essays(session: Session, *essays: Essay) -> list[Essay]:
    session.add_all(essays)
    session.commit()
    for essay in essays:
        session.refresh(essay)
    return list(essays)
