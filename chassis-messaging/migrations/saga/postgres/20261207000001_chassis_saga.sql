-- chassis-messaging sagas (PostgreSQL): one row per saga instance, one per scheduled timeout.
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
    version       BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    finished_at   BIGINT ,
    PRIMARY KEY (saga_type, saga_id)
);

CREATE TABLE IF NOT EXISTS chassis_saga_timeout (
    saga_type TEXT    NOT NULL,
    saga_id   TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    -- The state it was scheduled in: it fires only while the saga is still there.
    state     TEXT    NOT NULL,
    due_at    BIGINT  NOT NULL,
    PRIMARY KEY (saga_type, saga_id, name)
);

CREATE INDEX IF NOT EXISTS chassis_saga_timeout_due ON chassis_saga_timeout (saga_type, due_at);
