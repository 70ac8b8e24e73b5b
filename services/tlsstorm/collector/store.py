"""Results on disk (SQLite), so a collector restart keeps what it aggregated."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from tlsstorm.collector.aggregate import Cell, CellKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    wave TEXT NOT NULL, service TEXT NOT NULL, role TEXT NOT NULL, mode TEXT NOT NULL,
    second INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (wave, service, role, mode, second)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Store:
    """One SQLite file; writes come in batches from the collector's flush task."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def load(self) -> tuple[dict[CellKey, Cell], dict[str, int]]:
        cells = {
            (wave, service, role, mode, second): Cell.from_json(json.loads(data))
            for wave, service, role, mode, second, data in self._db.execute(
                "SELECT wave, service, role, mode, second, data FROM cells")
        }
        counters = dict(self._db.execute("SELECT name, value FROM counters"))
        return cells, counters

    def save(self, cells: Iterable[tuple[CellKey, str]], dropped: Iterable[CellKey],
             counters: dict[str, int]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                [(*key, data) for key, data in cells])
            self._db.executemany(
                "DELETE FROM cells WHERE wave=? AND service=? AND role=? AND mode=? AND second=?",
                list(dropped))
            self._db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)",
                                 list(counters.items()))

    def close(self) -> None:
        self._db.close()
