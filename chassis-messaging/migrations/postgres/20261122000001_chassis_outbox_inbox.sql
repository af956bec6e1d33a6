-- chassis-messaging: transactional outbox and idempotent inbox (PostgreSQL).
-- Applied by chassis_messaging::outbox::postgres::migrate (tracked in _chassis_messaging_migrations,
-- so it never mixes with the application's own _sqlx_migrations). Objects are created in the
-- first schema of the connection's search_path.
-- Times are Unix epoch milliseconds.

CREATE TABLE IF NOT EXISTS chassis_outbox (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject        TEXT,
    exchange       TEXT   NOT NULL,
    routing_key    TEXT   NOT NULL,
    message_id     TEXT   NOT NULL,
    amqp_type      TEXT,
    content_type   TEXT,
    correlation_id TEXT,
    amqp_timestamp BIGINT,
    headers        JSONB  NOT NULL,
    body           BYTEA  NOT NULL,
    created_at     BIGINT NOT NULL,
    -- 'pending' | 'sent' | 'parked'
    status         TEXT   NOT NULL DEFAULT 'pending',
    attempts       INT    NOT NULL DEFAULT 0,
    last_error     TEXT,
    available_at   BIGINT NOT NULL,
    sent_at        BIGINT
);

CREATE INDEX IF NOT EXISTS chassis_outbox_pending
    ON chassis_outbox (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS chassis_outbox_subject_pending
    ON chassis_outbox (subject, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS chassis_outbox_sent
    ON chassis_outbox (sent_at) WHERE status = 'sent';

-- One row per aggregate: enqueue upserts it before inserting the event, so two transactions
-- writing events of the same subject serialize on this row lock, and ids within a subject
-- follow commit order.
CREATE TABLE IF NOT EXISTS chassis_outbox_subjects (
    subject          TEXT   PRIMARY KEY,
    last_enqueued_at BIGINT NOT NULL
);

-- Wake relays at commit: NOTIFY is delivered when the inserting transaction commits, and
-- never when it rolls back. The payload is the schema, so relays of other schemas ignore it.
CREATE OR REPLACE FUNCTION chassis_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chassis_outbox', current_schema());
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS chassis_outbox_notify ON chassis_outbox;
CREATE TRIGGER chassis_outbox_notify
    AFTER INSERT ON chassis_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION chassis_outbox_notify();

CREATE TABLE IF NOT EXISTS chassis_inbox (
    consumer     TEXT   NOT NULL,
    message_id   TEXT   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX IF NOT EXISTS chassis_inbox_processed
    ON chassis_inbox (processed_at);
