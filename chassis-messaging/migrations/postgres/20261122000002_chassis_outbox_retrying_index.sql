-- chassis-messaging: index the rows that wait for a retry (PostgreSQL).
-- The relay's claim leaves out rows behind an earlier row of their subject that waits for its
-- retry time. Only a row that failed has a future available_at, so the claim looks for such
-- rows among `attempts > 0` only, through this (normally empty) partial index; without it the
-- planner scanned the whole table, sent rows kept for retention included, on every claim.
CREATE INDEX IF NOT EXISTS chassis_outbox_retrying
    ON chassis_outbox (subject, id) WHERE status = 'pending' AND attempts > 0;
