"""Cache entries as JSON files beside config.toml: written whole or not at all, the newest kept."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_entry(path: Path) -> Any:
    """The entry's JSON, or None when it is missing or unreadable (a miss, never an error)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or half-copied by hand
        return None


def write_entry(path: Path, data: Any, keep: int) -> None:
    """Store `data` at `path` and keep only the `keep` newest entries of its folder. A read-only
    or full disk keeps nothing: what was computed is still right, only not kept."""
    where = path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=where, suffix=".tmp",
                                         delete=False) as handle:
            json.dump(data, handle, ensure_ascii=False)
        os.replace(handle.name, path)  # atomic: readers see the old state or the whole entry
        entries = sorted(where.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
