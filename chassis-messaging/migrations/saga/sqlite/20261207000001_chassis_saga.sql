-- chassis-messaging sagas (SQLite): one row per saga instance, one per scheduled timeout.
-- Timestamps are Unix epoch milliseconds of the writer's clock.

CREATE TABLE IF NOT EXISTS chassis_saga (
    saga_type     TEXT    NOT NULL,
    saga_id       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    -- The saga's data, JSON.
    data          TEXT    NOT NULL,
    -- The compensating messages registered so far, JSON array, oldest first.
    compensations TEXT    NOT NULL,
    failure       TEXT,
    -- Bumped by every transition: an update that finds another version lost a race.
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    PRIMARY KEY (saga_type, saga_id)
);

CREATE TABLE IF NOT EXISTS chassis_saga_timeout (
    saga_type TEXT    NOT NULL,
    saga_id   TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    -- The state it was scheduled in: it fires only while the saga is still there.
    state     TEXT    NOT NULL,
    due_at    INTEGER NOT NULL,
    PRIMARY KEY (saga_type, saga_id, name)
);

CREATE INDEX IF NOT EXISTS chassis_saga_timeout_due ON chassis_saga_timeout (saga_type, due_at);
