//! The outbox on SQLite: [`SqliteOutbox`], `Outbox<Sqlite>`.
//!
//! SQLite has a single writer, so transactions commit in the order they took the write lock
//! and row ids (`AUTOINCREMENT`) follow commit order; no extra ordering bookkeeping is needed.
//! Relays reserve rows with a *lease* (`locked_until`, `lock_owner`) by one `UPDATE` and
//! publish outside it, so writers are never blocked while a batch travels to the broker. The
//! claim leases its batch and reads it back as one row (a JSON array) in a single round trip
//! to sqlx's worker thread, and the outcomes are recorded by a statement or two that each commit on their own; one relay's
//! claims and records queue in-process for SQLite's single write lock instead of polling for
//! it. A running relay renews the leases of its batches in flight; one that dies leaves them to
//! expire (default 5 s); the rows are then published again by whichever relay claims them (a
//! duplicate the inbox absorbs). Use WAL mode (`SqliteConnectOptions::journal_mode(Wal)`) for
//! concurrent readers.
//!
//! SQLite has no cross-connection notification: after committing, call
//! [`Outbox::notify_committed`] (or commit with [`Outbox::commit`]) so this process's relay
//! wakes at once.
//!
//! # Example
//! ```
//! use chassis_messaging::sql::outbox::SqliteOutbox;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! // A relay batch reads at most 8 MiB of messages at once.
//! let outbox = SqliteOutbox::new(pool).claim_bytes(8 * 1024 * 1024);
//! outbox.migrate().await?;
//! assert_eq!(outbox.parked(10).await?, []);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::database::{NewRow, Outbox, OutboxDatabase, insert_row, shared_methods};
use super::store::{
    PendingRow, RowOutcome, STATUS_PARKED, STATUS_PENDING, SentPolicy, StoredMessage,
};
use crate::error::{Error, ErrorKind, Result};
use crate::sql::schema::{db_err, now_ms};

/// The outbox on a SQLite database.
pub type SqliteOutbox = Outbox<Sqlite>;

/// Default of [`SqliteOutbox::claim_bytes`]: 64 MiB.
pub const DEFAULT_CLAIM_BYTES: usize = 64 * 1024 * 1024;

/// What a SQLite outbox keeps besides its pool, shared by its clones
/// ([`OutboxDatabase::State`]).
#[derive(Debug, Clone)]
pub struct SqliteState {
    /// This outbox's name in the rows it leases.
    owner: Arc<str>,
    /// Taken around the relay's own write transactions (claim, record), shared by clones.
    ///
    /// SQLite admits one writer at a time, and a connection that finds the write lock taken
    /// does not queue for it: its busy handler sleeps and retries (1, 2, 5, 10, ... up to
    /// 100 ms apart). The relay's claim and its batches' records run concurrently; left to
    /// contend inside SQLite, one of them regularly slept 10-50 ms after the other had long
    /// committed, which left the broker without rows. Queued here, the next one starts the
    /// moment the previous one commits. (The application's own writers still meet the
    /// relay at SQLite's lock, as before.)
    writer: Arc<tokio::sync::Mutex<()>>,
    /// See [`claim_bytes`](SqliteOutbox::claim_bytes).
    claim_bytes: i64,
    /// The last lease end this outbox wrote (ms), shared by clones: see
    /// [`next_lease_end`](Self::next_lease_end).
    last_lease_end: Arc<AtomicI64>,
}

impl SqliteState {
    /// The end of a lease of `lease` from now, later than any this outbox handed out before.
    /// The claim finds the rows it has just leased by owner and lease end, so no two writes of
    /// the lease by one relay (claims, renewals) may share an end; a millisecond later than
    /// asked is no change to a lease.
    fn next_lease_end(&self, lease: Duration) -> i64 {
        let wanted = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let previous = self
            .last_lease_end
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(wanted.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        wanted.max(previous.saturating_add(1))
    }
}

impl SqliteOutbox {
    /// Caps the messages (headers and bodies) one relay batch reads at once, besides its row
    /// count ([`RelayConfig::batch_size`](super::RelayConfig::batch_size)): a batch stops at
    /// the row that reaches `bytes`, and always has at least one row. The claim reads its
    /// batch as one string, which SQLite limits to 1 GB, bodies in hex; the default,
    /// [`DEFAULT_CLAIM_BYTES`] (64 MiB), stays far below it with any batch size.
    pub fn claim_bytes(mut self, bytes: usize) -> Self {
        self.state.claim_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }
}

/// One claimed row as the claim's `json_array` lists it: the bookkeeping columns, then the
/// message's (an array of their own), then its body in hex.
type BatchRow = (i64, Option<String>, i64, i32, StoredMessage, String);

/// Parses one of the claim's JSON arrays; the shape is the claim's own SQL, so a mismatch is a
/// database error (not one row's).
fn claim_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        Error::with_source(
            ErrorKind::Database,
            format!("outbox claim: unexpected row shape: {e}"),
        )
    })
}

/// Reads the claim's JSON array back into rows, in id order.
///
/// The columns' types are the table's (an `INTEGER PRIMARY KEY`, `NOT NULL` columns written
/// by `enqueue` only), so the array always has this shape; what can be wrong with a stored
/// message (its headers, its body) is reported on that row alone, which the relay parks.
fn decode_batch(json: &str) -> Result<Vec<PendingRow>> {
    let rows: Vec<BatchRow> = claim_json(json)?;
    let mut rows: Vec<PendingRow> = rows
        .into_iter()
        .map(
            |(id, subject, created_at_ms, attempts, stored, body)| PendingRow {
                id,
                subject,
                created_at_ms,
                attempts,
                message: from_hex(&body).and_then(|body| stored.into_message(body)),
            },
        )
        .collect();
    // An aggregate's input order is SQLite's to choose; the relay needs id order.
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// Decodes SQLite's `hex()` (upper-case digits).
fn from_hex(hex: &str) -> std::result::Result<Vec<u8>, String> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'A'..=b'F' => Some(c - b'A' + 10),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err("stored body is not valid hex".to_owned());
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| "stored body is not valid hex".to_owned())
}

fn json_ids(ids: impl Iterator<Item = i64>) -> String {
    serde_json::to_string(&ids.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".to_owned())
}

impl OutboxDatabase for Sqlite {
    type State = SqliteState;
    type Claim = ();

    const CHECK_NAME: &'static str = "outbox-sqlite";

    fn new_state() -> SqliteState {
        SqliteState {
            owner: uuid::Uuid::now_v7().to_string().into(),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            claim_bytes: i64::try_from(DEFAULT_CLAIM_BYTES).unwrap_or(i64::MAX),
            last_lease_end: Arc::new(AtomicI64::new(0)),
        }
    }

    async fn insert(conn: &mut SqliteConnection, row: &NewRow<'_>) -> Result<()> {
        // The bookkeeping row, then its message under the same id (one round trip).
        let sql = "INSERT INTO chassis_outbox (subject, message_id, created_at, available_at) \
                   VALUES ($1, $4, $11, $11); \
                   INSERT INTO chassis_outbox_messages (id, exchange, routing_key, amqp_type, \
                   content_type, correlation_id, amqp_timestamp, headers, body) \
                   VALUES (last_insert_rowid(), $2, $3, $5, $6, $7, $8, $9, $10)";
        insert_row!(&mut *conn, sql, row)?;
        Ok(())
    }

    shared_methods!(
        requeue_clears: ", locked_until = NULL, lock_owner = NULL",
        purge_also: []
    );

    async fn claim(
        pool: &SqlitePool,
        state: &SqliteState,
        limit: usize,
        lease: Duration,
        held: &HashSet<i64>,
    ) -> Result<((), Vec<PendingRow>)> {
        let now = now_ms();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One round trip to sqlx's worker thread, two statements, each committing on its own.
        //
        // The UPDATE leases the batch. It applies the head rule exactly (see
        // `OutboxStore::claim`) and, being a write in autocommit mode, takes SQLite's write lock
        // before it reads (as `BEGIN IMMEDIATE` would; the busy timeout applies), so nothing
        // changes between choosing and leasing. A candidate is pending, due, unleased, not held
        // already (a held row whose batch released it is still this relay's until the batch is
        // forgotten), and has no earlier pending row of its subject that waits for its retry
        // time or is leased by someone else (another relay, or a batch of this one not in
        // `held`). Then every earlier pending row of its subject is either held, or itself a
        // candidate: it passes the same tests (whatever blocked it would block the later row
        // too) and, having a smaller id, comes first, within the LIMIT. The batch then stops at
        // `claim_bytes` of messages counted in id order, the row that reaches it included:
        // SQLite refuses strings over 1 GB and the SELECT returns the batch as one. (The
        // `json_each` lists are uncorrelated: SQLite builds each once per statement.)
        //
        // The SELECT reads what the UPDATE leased: this relay's rows with this claim's lease
        // end, which no other write of this relay shares (`next_lease_end`), through the
        // `chassis_outbox_leased` index, so it reads the batch only, whatever the backlog. The
        // rows are leased, so nothing else changes them in between. It returns one row, a JSON array:
        // sqlx's SQLite driver hands rows over one at a time from its worker thread, and a
        // 500-row batch as 500 rows cost 500 cross-thread wake-ups and 6 500 owned column
        // values, about as much CPU as the query itself; bodies come in hex (`decode_batch`).
        //
        // Before: `BEGIN IMMEDIATE`, two SELECTs, the UPDATE and `COMMIT`, five round trips
        // to the worker thread. In a service each round trip is two context switches, which
        // the profile of the shop showed as its largest cost.
        let until = state.next_lease_end(lease);
        let _writer = state.writer.lock().await;
        let batch: Option<String> = sqlx::query_scalar(
            "UPDATE chassis_outbox SET locked_until = ?4, lock_owner = ?5 \
             WHERE id IN (SELECT id FROM (SELECT id, coalesce(sum(size) OVER (ORDER BY id \
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before \
                FROM (SELECT o.id, length(m.body) + length(m.headers) AS size \
                  FROM chassis_outbox o JOIN chassis_outbox_messages m ON m.id = o.id \
                  WHERE status = 'pending' AND available_at <= ?1 \
                  AND (locked_until IS NULL OR locked_until <= ?1) \
                  AND o.id NOT IN (SELECT value FROM json_each(?3)) \
                  AND NOT EXISTS (SELECT 1 FROM chassis_outbox p WHERE p.status = 'pending' \
                     AND p.subject = o.subject AND p.id < o.id \
                     AND (p.available_at > ?1 OR (p.locked_until > ?1 \
                          AND p.id NOT IN (SELECT value FROM json_each(?3))))) \
                  ORDER BY o.id LIMIT ?2)) \
                WHERE before < ?6); \
             SELECT json_group_array(json_array(o.id, o.subject, o.created_at, o.attempts, \
             json_array(m.exchange, m.routing_key, o.message_id, m.amqp_type, m.content_type, \
             m.correlation_id, m.amqp_timestamp, m.headers), hex(m.body))) \
             FROM chassis_outbox o JOIN chassis_outbox_messages m ON m.id = o.id \
             WHERE o.lock_owner = ?5 AND o.locked_until = ?4 AND o.status = 'pending'",
        )
        .bind(now)
        .bind(limit)
        .bind(json_ids(held.iter().copied()))
        .bind(until)
        .bind(&*state.owner)
        .bind(state.claim_bytes)
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
        let kept = decode_batch(batch.as_deref().unwrap_or("[]"))?;
        Ok(((), kept))
    }

    async fn renew(
        pool: &SqlitePool,
        state: &SqliteState,
        held: &HashSet<i64>,
        lease: Duration,
    ) -> Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        let until = state.next_lease_end(lease);
        // Only rows still pending and reserved by this relay: a row recorded, released or
        // taken over by another relay (its lease ran out) is left alone.
        let _writer = state.writer.lock().await;
        sqlx::query(
            "UPDATE chassis_outbox SET locked_until = ?1 \
             WHERE id IN (SELECT value FROM json_each(?2)) AND lock_owner = ?3 \
             AND status = 'pending'",
        )
        .bind(until)
        .bind(json_ids(held.iter().copied()))
        .bind(&*state.owner)
        .execute(pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn finish(
        pool: &SqlitePool,
        state: &SqliteState,
        _claim: (),
        outcomes: Vec<(i64, RowOutcome)>,
        sent: SentPolicy,
    ) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let ids_with = |wanted: RowOutcome| -> Vec<i64> {
            outcomes
                .iter()
                .filter(|(_, o)| *o == wanted)
                .map(|(id, _)| *id)
                .collect()
        };
        let (sent_ids, released_ids) = (ids_with(RowOutcome::Sent), ids_with(RowOutcome::Released));
        let failed: Vec<serde_json::Value> = outcomes
            .iter()
            .filter_map(|(id, outcome)| match outcome {
                RowOutcome::Failed {
                    attempts,
                    error,
                    park,
                    retry_at_ms,
                } => Some(serde_json::json!({
                    "id": id,
                    "attempts": attempts,
                    "error": error,
                    "status": if *park { STATUS_PARKED } else { STATUS_PENDING },
                    "retry_at": retry_at_ms,
                })),
                _ => None,
            })
            .collect();
        // Each statement commits on its own (no BEGIN ... COMMIT): every row's outcome stands
        // alone, and a crash between two of them only leaves the rest leased until the lease
        // runs out, as a crash before the record does. A multi-row statement inside an
        // explicit transaction also makes SQLite keep a statement journal to undo it alone;
        // autocommit needs none. Together: a third less SQLite time per recorded batch.
        let _writer = state.writer.lock().await;
        let mut conn = pool.acquire().await.map_err(db_err)?;
        let record_sent = match sent {
            SentPolicy::Delete => {
                "DELETE FROM chassis_outbox WHERE id IN (SELECT value FROM json_each(?2))"
            }
            SentPolicy::Mark => {
                "UPDATE chassis_outbox SET status = 'sent', sent_at = ?1, locked_until = NULL, \
                 lock_owner = NULL WHERE id IN (SELECT value FROM json_each(?2))"
            }
        };
        if !sent_ids.is_empty() {
            sqlx::query(record_sent)
                .bind(now)
                .bind(json_ids(sent_ids.into_iter()))
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        if !released_ids.is_empty() {
            sqlx::query(
                "UPDATE chassis_outbox SET locked_until = NULL, lock_owner = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1)) AND lock_owner = ?2",
            )
            .bind(json_ids(released_ids.into_iter()))
            .bind(&*state.owner)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        }
        if !failed.is_empty() {
            sqlx::query(
                "UPDATE chassis_outbox SET attempts = json_extract(f.value, '$.attempts'), \
                 last_error = json_extract(f.value, '$.error'), \
                 status = json_extract(f.value, '$.status'), \
                 available_at = json_extract(f.value, '$.retry_at'), \
                 locked_until = NULL, lock_owner = NULL \
                 FROM json_each(?1) AS f WHERE chassis_outbox.id = json_extract(f.value, '$.id')",
            )
            .bind(serde_json::Value::Array(failed).to_string())
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    // No cross-connection notification: the relay wakes on `notify_committed` and polls.
    async fn watch(_pool: &SqlitePool, _notify: Arc<Notify>, _token: CancellationToken) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ends_never_repeat_within_one_outbox_and_its_clones() {
        let state = <Sqlite as OutboxDatabase>::new_state();
        let clone = state.clone();
        let lease = Duration::from_secs(5);
        let ends: Vec<i64> = (0..1000)
            .map(|i| {
                if i % 2 == 0 {
                    state.next_lease_end(lease)
                } else {
                    clone.next_lease_end(lease)
                }
            })
            .collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let soon = now_ms() + 5_000;
        assert!(
            ends[0] <= soon && ends[0] > soon - 1_000,
            "a lease from now"
        );
    }

    #[test]
    fn hex_decodes_sqlite_output_and_rejects_anything_else() {
        assert_eq!(from_hex("00FF7a").unwrap(), vec![0x00, 0xff, 0x7a]);
        assert_eq!(from_hex("").unwrap(), Vec::<u8>::new());
        assert!(from_hex("ABC").is_err(), "odd length");
        assert!(from_hex("zz").is_err(), "not a digit");
    }

    #[test]
    fn batch_rows_come_back_in_id_order_and_a_damaged_message_fails_alone() {
        let json = r#"[
            [7, "a", 100, 0, ["ex", "rk", "m7", null, "application/json", null, null, "{}"], "6869"],
            [3, null, 90, 2, ["ex", "rk", "m3", "t", null, "c", 5, "{\"h\":\"v\"}"], ""],
            [9, "b", 110, 0, ["ex", "rk", "m9", null, null, null, null, "{oops"], "00"],
            [8, "b", 105, 0, ["ex", "rk", "m8", null, null, null, null, "{}"], "XY"]
        ]"#;
        let rows = decode_batch(json).unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 7, 8, 9]);
        let m3 = rows[0].message.as_ref().unwrap();
        assert_eq!(
            (
                m3.kind.as_deref(),
                m3.correlation_id.as_deref(),
                m3.timestamp
            ),
            (Some("t"), Some("c"), Some(5))
        );
        assert_eq!(rows[0].attempts, 2);
        assert_eq!(rows[1].message.as_ref().unwrap().body, b"hi");
        assert_eq!(rows[1].subject.as_deref(), Some("a"));
        assert!(rows[2].message.as_ref().unwrap_err().contains("body"));
        assert!(rows[3].message.as_ref().unwrap_err().contains("headers"));
        assert!(
            decode_batch("[[1]]").is_err(),
            "a wrong shape is a database error"
        );
    }
}
