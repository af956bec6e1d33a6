-- chassis-messaging: transactional outbox and idempotent inbox (SQLite).
-- Applied by chassis_messaging::outbox::sqlite::migrate (tracked in _chassis_messaging_migrations,
-- so it never mixes with the application's own _sqlx_migrations).
-- Times are Unix epoch milliseconds.

CREATE TABLE IF NOT EXISTS chassis_outbox (
    -- AUTOINCREMENT: ids are never reused, so id order is insertion (= commit) order.
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    subject        TEXT,
    exchange       TEXT    NOT NULL,
    routing_key    TEXT    NOT NULL,
    message_id     TEXT    NOT NULL,
    amqp_type      TEXT,
    content_type   TEXT,
    correlation_id TEXT,
    amqp_timestamp INTEGER,
    headers        TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    -- 'pending' | 'sent' | 'parked'
    status         TEXT    NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    available_at   INTEGER NOT NULL,
    locked_until   INTEGER,
    lock_owner     TEXT,
    sent_at        INTEGER
);

CREATE INDEX IF NOT EXISTS chassis_outbox_pending
    ON chassis_outbox (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS chassis_outbox_subject_pending
    ON chassis_outbox (subject, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS chassis_outbox_sent
    ON chassis_outbox (sent_at) WHERE status = 'sent';

CREATE TABLE IF NOT EXISTS chassis_inbox (
    consumer     TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX IF NOT EXISTS chassis_inbox_processed
    ON chassis_inbox (processed_at);
