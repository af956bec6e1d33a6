-- chassis-messaging: the relay's claim finds the rows it has just leased by lease owner and
-- lease end (SQLite). Without this index that read walked every pending row, so a claim cost
-- grew with the backlog; with it, a claim reads only its own batch. Entries exist for pending
-- rows only, like the other outbox indexes.

CREATE INDEX IF NOT EXISTS chassis_outbox_leased
    ON chassis_outbox (lock_owner, locked_until) WHERE status = 'pending';
