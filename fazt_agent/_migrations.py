"""Schema migrations. Append only: never edit or reorder an entry that has shipped.

Entry N brings a database from `user_version` N-1 to N. Statements are separated by ";\\n".
"""

MIGRATIONS: list[str] = [
    # 1: settings, the event log, beats and check results
    """
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          TEXT NOT NULL,
        type        TEXT NOT NULL,
        source      TEXT NOT NULL,
        incident_id INTEGER,
        data        TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
    );
    CREATE INDEX events_ts ON events(ts);
    CREATE INDEX events_type ON events(type, id);
    CREATE INDEX events_incident ON events(incident_id) WHERE incident_id IS NOT NULL;
    CREATE TABLE beats (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          TEXT NOT NULL,
        status      TEXT NOT NULL,
        duration_ms REAL NOT NULL,
        host        TEXT NOT NULL
    );
    CREATE INDEX beats_ts ON beats(ts);
    CREATE TABLE results (
        beat_id  INTEGER NOT NULL REFERENCES beats(id) ON DELETE CASCADE,
        ts       TEXT NOT NULL,
        check_name TEXT NOT NULL,
        kind     TEXT NOT NULL,
        target   TEXT NOT NULL,
        status   TEXT NOT NULL,
        message  TEXT NOT NULL,
        metrics  TEXT NOT NULL,
        details  TEXT NOT NULL,
        duration_ms REAL NOT NULL
    );
    CREATE INDEX results_beat ON results(beat_id);
    CREATE INDEX results_check_ts ON results(check_name, target, ts)
    """,
]
