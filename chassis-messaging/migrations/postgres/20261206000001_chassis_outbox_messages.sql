-- chassis-messaging: each outbox row's message in a table of its own (PostgreSQL).
-- The relay's record (sent, failed) updates the row it touches, and an UPDATE writes a new
-- version of the whole row: with the message in it, every event's headers and body were
-- written again (heap and WAL) when it was sent. Now that update touches the small
-- bookkeeping row only. The message row is deleted with its outbox row (ON DELETE CASCADE).

CREATE TABLE IF NOT EXISTS chassis_outbox_messages (
    id             BIGINT PRIMARY KEY REFERENCES chassis_outbox (id) ON DELETE CASCADE,
    exchange       TEXT   NOT NULL,
    routing_key    TEXT   NOT NULL,
    amqp_type      TEXT,
    content_type   TEXT,
    correlation_id TEXT,
    amqp_timestamp BIGINT,
    headers        JSONB  NOT NULL,
    body           BYTEA  NOT NULL
);

INSERT INTO chassis_outbox_messages
    (id, exchange, routing_key, amqp_type, content_type, correlation_id, amqp_timestamp, headers, body)
SELECT id, exchange, routing_key, amqp_type, content_type, correlation_id, amqp_timestamp, headers, body
FROM chassis_outbox
ON CONFLICT (id) DO NOTHING;

ALTER TABLE chassis_outbox
    DROP COLUMN exchange,
    DROP COLUMN routing_key,
    DROP COLUMN amqp_type,
    DROP COLUMN content_type,
    DROP COLUMN correlation_id,
    DROP COLUMN amqp_timestamp,
    DROP COLUMN headers,
    DROP COLUMN body;
