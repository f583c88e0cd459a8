"""Is the database this program's, at this schema version? Answered with sqlite3 alone, for the
light read path (`cli/_light.py`) and `run`'s start from the snapshot (`_start.py`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ._config_paths import DB_FILE
from ._migrations import MIGRATIONS

APPLICATION_ID = 0x46415A54   # store.APPLICATION_ID ("FAZT"; compared by the tests)


class NotReady(Exception):
    """No database yet, another program's, or one to migrate: the validated path (`Store.open`) says."""


def open_ready(data_dir: Path) -> sqlite3.Connection:
    """The database of `data_dir` as `Store.open` would find it ready: this program's, migrated to this version.

    Raises:
        NotReady: it is not; sqlite3.Error: it cannot be read.
    """
    path = data_dir / DB_FILE
    if not path.is_file():
        raise NotReady("no database yet: the validated path creates it")
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 10000")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID or version != len(MIGRATIONS):
            raise NotReady("another program's database, or one to migrate")
    except BaseException:
        db.close()
        raise
    return db
