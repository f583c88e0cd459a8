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
    # 2: the autonomy loop: incidents, actions, halts, the notification outbox
    """
    CREATE TABLE incidents (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        check_name       TEXT NOT NULL,
        target           TEXT NOT NULL,
        kind             TEXT NOT NULL,
        status           TEXT NOT NULL,
        severity         TEXT NOT NULL,
        peak_severity    TEXT NOT NULL,
        message          TEXT NOT NULL,
        metrics          TEXT NOT NULL,
        details          TEXT NOT NULL,
        opened_at        TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        resolved_at      TEXT,
        beats            INTEGER NOT NULL DEFAULT 1,
        decided_at       TEXT,
        decided_severity TEXT,
        last_verdict     TEXT,
        verify_action_id INTEGER,
        verify_by        TEXT,
        retry_at         TEXT
    );
    CREATE UNIQUE INDEX incidents_open ON incidents(check_name, target) WHERE status = 'open';
    CREATE INDEX incidents_status ON incidents(status, id);
    CREATE TABLE actions (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id  INTEGER,
        halt_id      INTEGER,
        rule         TEXT,
        action       TEXT NOT NULL,
        args         TEXT NOT NULL,
        plan         TEXT NOT NULL,
        risk         TEXT NOT NULL,
        state        TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        started_at   TEXT,
        finished_at  TEXT,
        outcome      TEXT
    );
    CREATE INDEX actions_state ON actions(state);
    CREATE INDEX actions_incident ON actions(incident_id, id);
    CREATE INDEX actions_rule ON actions(rule, created_at);
    CREATE TABLE halts (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id    INTEGER,
        rule           TEXT,
        title          TEXT NOT NULL,
        body           TEXT NOT NULL,
        plan           TEXT NOT NULL,
        options        TEXT NOT NULL,
        default_option TEXT NOT NULL,
        status         TEXT NOT NULL,
        answer         TEXT,
        answered_by    TEXT,
        note           TEXT,
        created_at     TEXT NOT NULL,
        expires_at     TEXT NOT NULL,
        remind_at      TEXT,
        reminded_at    TEXT,
        answered_at    TEXT,
        execution      TEXT,
        action_id      INTEGER
    );
    CREATE INDEX halts_status ON halts(status, expires_at);
    CREATE TABLE notifications (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        title           TEXT NOT NULL,
        body            TEXT NOT NULL,
        severity        TEXT NOT NULL,
        halt_id         INTEGER,
        incident_id     INTEGER,
        status          TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        created_at      TEXT NOT NULL,
        next_attempt_at TEXT NOT NULL,
        sent_at         TEXT
    );
    CREATE INDEX notifications_due ON notifications(status, next_attempt_at)
    """,
    # 3: MCP bearer tokens (stored hashed) and LLM calls (for budgets and decision records)
    """
    CREATE TABLE tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL,
        scope        TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at   TEXT
    );
    CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked_at IS NULL;
    CREATE TABLE llm_calls (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        ts            TEXT NOT NULL,
        purpose       TEXT NOT NULL,
        model         TEXT NOT NULL,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_usd      REAL NOT NULL,
        latency_ms    REAL NOT NULL,
        ok            INTEGER NOT NULL,
        error         TEXT
    );
    CREATE INDEX llm_calls_ts ON llm_calls(ts)
    """,
    # 4: flap control: when an incident opened as flapping (held open through ok beats, reported once)
    """
    ALTER TABLE incidents ADD COLUMN flapping_since TEXT
    """,
    # 5: crash safety: who owns running work (pid/start/pidns/boot, store.owner) under a lease renewed
    # while it runs; which incidents wait for a decision (and who is deciding); open incidents an
    # older version never decided are decided at the next start
    """
    ALTER TABLE actions ADD COLUMN owner TEXT;
    ALTER TABLE actions ADD COLUMN lease_until TEXT;
    ALTER TABLE halts ADD COLUMN owner TEXT;
    ALTER TABLE halts ADD COLUMN lease_until TEXT;
    ALTER TABLE notifications ADD COLUMN owner TEXT;
    ALTER TABLE incidents ADD COLUMN due_trigger TEXT;
    ALTER TABLE incidents ADD COLUMN decider TEXT;
    ALTER TABLE incidents ADD COLUMN decider_until TEXT;
    UPDATE incidents SET due_trigger = 'opened' WHERE status = 'open' AND decided_at IS NULL;
    CREATE INDEX notifications_halt ON notifications(halt_id) WHERE halt_id IS NOT NULL;
    CREATE INDEX actions_halt ON actions(halt_id) WHERE halt_id IS NOT NULL
    """,
    # 6: reads that do not grow with history: the problems of a time window (`pulse history`, the
    # planner's context) through a partial index of the results that are not ok
    """
    CREATE INDEX results_problems ON results(ts) WHERE status != 'ok'
    """,
    # 7: answer channels (issue 12): a notification row per channel and what it is about (`kind`:
    # request, reminder, answered, expired, cancelled), with the channel's own id of what it posted
    # (`ref`: a Slack message, an email Message-ID) so an answer elsewhere can update it; the channel
    # a halt was answered through (`answered_via`); and what
    # each channel already processed (a Slack envelope, an email, a link): at-least-once delivery
    # answered at most once, across restarts
    """
    ALTER TABLE notifications ADD COLUMN channel TEXT NOT NULL DEFAULT 'main';
    ALTER TABLE notifications ADD COLUMN kind TEXT;
    ALTER TABLE notifications ADD COLUMN ref TEXT;
    ALTER TABLE halts ADD COLUMN answered_via TEXT;
    CREATE TABLE inbound (
        channel  TEXT NOT NULL,
        key      TEXT NOT NULL,
        seen_at  TEXT NOT NULL,
        PRIMARY KEY (channel, key)
    ) WITHOUT ROWID
    """,
]
