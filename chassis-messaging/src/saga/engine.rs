//! How a saga runs: [`Saga`] applies events (once each, through the inbox) and fires due
//! timeouts, writing each transition in one transaction.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Transaction;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::definition::{COMPLETED, Compensation, FAILED, Finish, INITIAL, SagaDefinition, Step};
use super::store::{DueTimeout, SagaDatabase, StoredSaga};
use chassis_core::BoxError;
use chassis_core::lifecycle::{Component, Context, Stage};

use crate::amqp::consumer::{Handler, Outcome};
use crate::amqp::incoming::IncomingMessage;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::group_commit::{self, GroupCommit, GroupCommitConfig};
use crate::sql::inbox::{Claim, Inbox, InboxDatabase, Processed, count_commit};
use crate::sql::outbox::Outbox;
use crate::sql::schema::{db_err, now_ms};

/// How a [`Saga`] fires its timeouts. Deserializes from e.g.
/// `{ poll_interval = "1s", batch = 100 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaConfig {
    /// The longest the timeout loop sleeps between two looks at the table: it also wakes when
    /// this process schedules a timeout, and when the earliest one is due, so this bounds how
    /// late a timeout scheduled by another replica fires. Defaults to 1 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Timeouts fired per look. Defaults to 100.
    pub batch: u32,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            batch: 100,
        }
    }
}

impl SagaConfig {
    chassis_core::__builder_setters! {
        /// Sets [`poll_interval`](Self::poll_interval).
        poll_interval: Duration,
        /// Sets [`batch`](Self::batch).
        batch: u32,
    }
}

/// What one applied event or fired timeout did to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The instance.
    pub saga_id: String,
    /// The state before ([`INITIAL`] for a new instance).
    pub from: String,
    /// The state after.
    pub to: String,
    /// Whether the saga ended (completed or failed).
    pub finished: bool,
    /// How many compensating messages this transition sent (those registered so far, when
    /// it failed the saga; otherwise 0).
    pub compensated: usize,
}

/// An instance as stored, read with [`Saga::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SagaInstance<D> {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: String,
    /// Its data.
    pub data: D,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Whether it ended.
    pub finished: bool,
    /// Compensations registered and not yet sent or dropped.
    pub compensations: usize,
    /// Transitions so far.
    pub version: i64,
}

struct Inner<DB: SagaDatabase, D> {
    definition: SagaDefinition<D>,
    outbox: Outbox<DB>,
    inbox: Inbox<DB>,
    config: SagaConfig,
    scheduled: Notify,
    /// The earliest due time (ms) scheduled by this process since the timeout loop last
    /// looked, `i64::MAX` for none: the loop moves its wake-up earlier by it instead of
    /// querying the table on every schedule.
    earliest_scheduled: AtomicI64,
}

/// A projection: writes what a transition did into the application's own tables, in the
/// transition's transaction.
type ProjectFn<DB, D> = Arc<
    dyn for<'c> Fn(
            &'c mut <DB as sqlx::Database>::Connection,
            &'c Transition,
            &'c SagaInstance<D>,
        ) -> BoxFuture<'c, Result<()>>
        + Send
        + Sync,
>;
type CommittedFn = Arc<dyn Fn(&Transition) + Send + Sync>;

/// A saga type running on one database: applies events and fires timeouts. Cheap to clone.
pub struct Saga<DB: SagaDatabase, D> {
    inner: Arc<Inner<DB, D>>,
    project: Option<ProjectFn<DB, D>>,
    committed: Option<CommittedFn>,
}

impl<DB: SagaDatabase, D> Clone for Saga<DB, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            project: self.project.clone(),
            committed: self.committed.clone(),
        }
    }
}

impl<DB: SagaDatabase, D> std::fmt::Debug for Saga<DB, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("definition", &self.inner.definition)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn corrupt(what: &str, e: serde_json::Error) -> Error {
    Error::with_source(
        ErrorKind::Decode {
            reason: format!("stored saga {what} does not read back: {e}"),
        },
        e,
    )
}

impl<DB, D> Saga<DB, D>
where
    DB: SagaDatabase,
    D: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// Runs `definition` on the outbox's database: transitions' messages go through `outbox`,
    /// events are deduplicated by an inbox named `saga:<name>`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when the definition's name is empty or `config.batch`
    /// is 0.
    pub fn new(
        definition: SagaDefinition<D>,
        outbox: Outbox<DB>,
        config: SagaConfig,
    ) -> Result<Self> {
        if definition.name.is_empty() {
            return Err(Error::invalid_config("a saga needs a name"));
        }
        if config.batch == 0 {
            return Err(Error::invalid_config(
                "saga timeout batch must be at least 1",
            ));
        }
        let inbox = Inbox::new(outbox.pool().clone(), format!("saga:{}", definition.name));
        Ok(Self {
            inner: Arc::new(Inner {
                definition,
                outbox,
                inbox,
                config,
                scheduled: Notify::new(),
                earliest_scheduled: AtomicI64::new(i64::MAX),
            }),
            project: None,
            committed: None,
        })
    }

    /// Keeps a read model of the instances in the application's own tables: `f` runs after
    /// every transition (started, event, timeout) in its transaction, with the transition and
    /// the instance as written, so the read model and the saga never disagree; an error rolls
    /// the whole transition back (an event is retried, a timeout stays due). Set it before
    /// making [`handler`](Self::handler)s or running timeouts: they use the saga as it was.
    pub fn project<F>(mut self, f: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut DB::Connection,
                &'c Transition,
                &'c SagaInstance<D>,
            ) -> BoxFuture<'c, Result<()>>
            + Send
            + Sync
            + 'static,
    {
        self.project = Some(Arc::new(f));
        self
    }

    /// Calls `f` with each transition once the saga committed it: those of its
    /// [`handler`](Self::handler)s and of its timeouts (a transition written in the caller's
    /// transaction, [`start`](Self::start) or [`apply`](Self::apply), is the caller's to
    /// announce). For what must wait for durability, e.g. waking requests that wait for an
    /// instance to end. Set it like [`project`](Self::project).
    pub fn on_committed<F>(mut self, f: F) -> Self
    where
        F: Fn(&Transition) + Send + Sync + 'static,
    {
        self.committed = Some(Arc::new(f));
        self
    }

    fn committed(&self, transition: &Transition) {
        if let Some(f) = &self.committed {
            f(transition);
        }
    }

    /// The saga as a lifecycle component named `saga:<name>`, in [`Stage::Worker`]: at start
    /// it creates the saga tables ([`migrate`](Self::migrate)), then fires timeouts
    /// ([`run_timeouts`](Self::run_timeouts)) until its stage stops. Register it after the
    /// database and before the consumers and servers that apply events or start instances.
    pub fn component(&self) -> SagaComponent<DB, D> {
        SagaComponent {
            name: format!("saga:{}", self.name()),
            saga: self.clone(),
            stop: CancellationToken::new(),
            timeouts: None,
        }
    }

    /// The saga type's name.
    pub fn name(&self) -> &str {
        &self.inner.definition.name
    }

    /// Creates the saga tables (and the outbox's and inbox's) if needed.
    pub async fn migrate(&self) -> Result<()> {
        self.inner.outbox.migrate().await?;
        DB::migrate_sagas(self.inner.outbox.pool()).await
    }

    /// Reads an instance.
    ///
    /// # Errors
    /// [`ErrorKind::Database`], or [`ErrorKind::Decode`] when its stored data no longer reads
    /// as `D`.
    pub async fn get(&self, id: &str) -> Result<Option<SagaInstance<D>>> {
        let mut conn = self.inner.outbox.pool().acquire().await.map_err(db_err)?;
        let Some(row) = DB::load_saga(&mut *conn, self.name(), id).await? else {
            return Ok(None);
        };
        let compensations: Vec<Compensation> =
            serde_json::from_str(&row.compensations).map_err(|e| corrupt("compensations", e))?;
        Ok(Some(SagaInstance {
            id: id.to_owned(),
            data: serde_json::from_str(&row.data).map_err(|e| corrupt("data", e))?,
            state: row.state,
            failure: row.failure,
            finished: row.finished_at.is_some(),
            compensations: compensations.len(),
            version: row.version,
        }))
    }

    /// Starts instance `id` with `data` inside the caller's transaction (e.g. the one that
    /// writes the order a saga is about): `f` runs in state [`INITIAL`] like an event
    /// handler.
    ///
    /// # Errors
    /// [`ErrorKind::Database`] (also when the instance exists already: the insert conflicts).
    pub async fn start(
        &self,
        conn: &mut DB::Connection,
        id: &str,
        data: D,
        f: impl FnOnce(&mut Step<'_, D>),
    ) -> Result<Transition> {
        let mut step = new_step(id, INITIAL.to_owned(), data, Vec::new(), None);
        f(&mut step);
        if let Some(reason) = step.rejected {
            return Err(Error::validation(reason));
        }
        self.write(conn, None, step, INITIAL.to_owned()).await
    }

    /// Applies `msg` to its instance inside the caller's transaction (which should have
    /// recorded the message in an inbox; [`handler`](Self::handler) does both). `Ok(None)`:
    /// nothing to do (no handler for this event in the instance's state, or the instance
    /// ended).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] when the message correlates to no instance, the event's
    /// decoding errors ([`ErrorKind::UnsupportedVersion`] among them), [`ErrorKind::Database`]
    /// (also when a concurrent transition won: apply again).
    pub async fn apply(
        &self,
        conn: &mut DB::Connection,
        msg: &IncomingMessage,
    ) -> Result<Option<Transition>> {
        let def = &self.inner.definition;
        let Some(id) = (def.correlate)(msg) else {
            return Err(Error::validation(format!(
                "message {} correlates to no instance of saga {}",
                msg.message_id().unwrap_or("(no id)"),
                def.name
            )));
        };
        // The CloudEvents type; a producer that sets none is matched by the AMQP type or,
        // last, the routing key (the chassis's envelope makes all three the same).
        let event_type = match msg.header(crate::envelope::TYPE) {
            Some(crate::message::HeaderValue::String(t)) => t.clone(),
            _ => msg.kind().unwrap_or(msg.routing_key()).to_owned(),
        };
        let stored = DB::load_saga(conn, &def.name, &id).await?;
        let (state, data, compensations) = match &stored {
            Some(row) if row.finished_at.is_some() => return Ok(None),
            Some(row) => self.read(row)?,
            None => (INITIAL.to_owned(), D::default(), Vec::new()),
        };
        let Some(handler) = def.events.get(&(state.clone(), event_type.clone())) else {
            tracing::debug!(saga = %def.name, saga_id = %id, %state, %event_type, "event not handled in this state; ignored");
            return Ok(None);
        };
        let mut step = new_step(&id, state.clone(), data, compensations, Some(msg));
        handler(&mut step, msg)?;
        if let Some(reason) = step.rejected {
            return Err(Error::validation(reason));
        }
        self.write(conn, stored.as_ref(), step, state)
            .await
            .map(Some)
    }

    fn read(&self, row: &StoredSaga) -> Result<(String, D, Vec<Compensation>)> {
        Ok((
            row.state.clone(),
            serde_json::from_str(&row.data).map_err(|e| corrupt("data", e))?,
            serde_json::from_str(&row.compensations).map_err(|e| corrupt("compensations", e))?,
        ))
    }

    /// Writes what `step` did: messages into the outbox, compensations on failure (newest
    /// first), the row (new or the next version), and the timeouts.
    async fn write(
        &self,
        conn: &mut DB::Connection,
        stored: Option<&StoredSaga>,
        step: Step<'_, D>,
        from: String,
    ) -> Result<Transition> {
        let def = &self.inner.definition;
        let outbox = &self.inner.outbox;
        let now = now_ms();
        let Step {
            saga_id,
            state,
            mut data,
            cause,
            sends,
            schedules,
            cancels,
            mut compensations,
            finish,
            ..
        } = step;
        for msg in &sends {
            outbox.enqueue(conn, msg).await?;
        }
        let mut compensated = 0;
        let (state, failure) = match finish {
            None => (state, None),
            Some(Finish::Completed) => (COMPLETED.to_owned(), None),
            Some(Finish::Failed(reason)) => {
                for compensation in compensations.iter().rev() {
                    match compensation {
                        Compensation::Message(msg) => {
                            outbox.enqueue(conn, msg).await?;
                        }
                        Compensation::Step(name) => {
                            let Some(f) = def.compensations.get(name) else {
                                return Err(Error::invalid_config(format!(
                                    "saga {} has no compensation step `{name}`",
                                    def.name
                                )));
                            };
                            let mut undo =
                                new_step(saga_id, FAILED.to_owned(), data, Vec::new(), cause);
                            f(&mut undo, &reason);
                            data = undo.data;
                            for msg in &undo.sends {
                                outbox.enqueue(conn, msg).await?;
                            }
                        }
                    }
                }
                compensated = compensations.len();
                (FAILED.to_owned(), Some(reason))
            }
        };
        let finished = failure.is_some() || state == COMPLETED;
        if finished {
            compensations.clear();
        }
        let row = StoredSaga {
            state: state.clone(),
            data: serde_json::to_string(&data)?,
            compensations: serde_json::to_string(&compensations)?,
            failure,
            version: stored.map_or(1, |s| s.version + 1),
            finished_at: finished.then_some(now),
        };
        match stored {
            None => DB::insert_saga(conn, &def.name, saga_id, &row, now).await?,
            Some(_) => {
                if !DB::update_saga(conn, &def.name, saga_id, &row, now).await? {
                    return Err(Error::with_source(
                        ErrorKind::Database,
                        format!("saga {} instance {saga_id} changed concurrently", def.name),
                    ));
                }
            }
        }
        if finished {
            DB::cancel_timeouts(conn, &def.name, saga_id, None).await?;
        } else {
            for name in &cancels {
                DB::cancel_timeouts(conn, &def.name, saga_id, Some(name)).await?;
            }
            for (name, after) in &schedules {
                let due = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
                DB::schedule_timeout(conn, &def.name, saga_id, name, &state, due).await?;
                self.inner
                    .earliest_scheduled
                    .fetch_min(due, Ordering::AcqRel);
            }
            if !schedules.is_empty() {
                self.inner.scheduled.notify_one();
            }
        }
        tracing::debug!(saga = %def.name, %saga_id, %from, to = %state, finished, "saga transition");
        let transition = Transition {
            saga_id: saga_id.to_owned(),
            from,
            to: state.clone(),
            finished,
            compensated,
        };
        if let Some(project) = &self.project {
            let instance = SagaInstance {
                id: saga_id.to_owned(),
                state,
                data,
                failure: row.failure,
                finished,
                compensations: compensations.len(),
                version: row.version,
            };
            project(conn, &transition, &instance).await?;
        }
        Ok(transition)
    }

    /// A consumer [`Handler`] that applies each message once: the message id is recorded in
    /// the saga's inbox and the transition written in the same transaction, committed before
    /// the ack. A redelivered message is acked without a second transition. Database failures
    /// (and a lost race with a concurrent transition) are retried; messages that belong to no
    /// instance, cannot be decoded or have a version the handler does not read are rejected
    /// (dead-lettered with the reason).
    pub fn handler(&self) -> SagaHandler<DB, D> {
        SagaHandler {
            saga: self.clone(),
            group: None,
        }
    }

    /// Fires the timeouts due now (at most [`SagaConfig::batch`]); returns the transitions
    /// they made. Each one runs in its own transaction that also deletes it, so it fires once
    /// even with several replicas looking; a timeout whose instance has left the state it
    /// was scheduled in is deleted unrun.
    ///
    /// # Errors
    /// [`ErrorKind::Database`] when the due timeouts cannot be read; a failure of one
    /// timeout is logged and leaves it due, to be tried again.
    pub async fn fire_due(&self) -> Result<Vec<Transition>> {
        let pool = self.inner.outbox.pool();
        let due = DB::due_timeouts(
            pool,
            self.name(),
            now_ms(),
            i64::from(self.inner.config.batch),
        )
        .await?;
        let mut fired = Vec::new();
        for timeout in due {
            match self.fire(&timeout).await {
                Ok(Some(t)) => fired.push(t),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(saga = %self.name(), saga_id = %timeout.saga_id, timeout = %timeout.name, error = %err, "saga timeout failed; it stays due")
                }
            }
        }
        Ok(fired)
    }

    async fn fire(&self, timeout: &DueTimeout) -> Result<Option<Transition>> {
        let def = &self.inner.definition;
        let mut tx = <DB as InboxDatabase>::begin(self.inner.outbox.pool()).await?;
        if !DB::take_timeout(&mut *tx, &def.name, timeout).await? {
            return Ok(None);
        }
        let stored = DB::load_saga(&mut *tx, &def.name, &timeout.saga_id).await?;
        let handler = def
            .timeouts
            .get(&(timeout.state.clone(), timeout.name.clone()));
        let (Some(row), Some(handler)) = (stored, handler) else {
            self.inner.outbox.commit(tx).await?;
            return Ok(None);
        };
        if row.finished_at.is_some() || row.state != timeout.state {
            self.inner.outbox.commit(tx).await?;
            return Ok(None);
        }
        let (state, data, compensations) = self.read(&row)?;
        let mut step = new_step(&timeout.saga_id, state.clone(), data, compensations, None);
        handler(&mut step);
        if let Some(reason) = step.rejected {
            tracing::warn!(saga = %def.name, saga_id = %timeout.saga_id, timeout = %timeout.name, %reason, "saga timeout rejected; dropped");
            self.inner.outbox.commit(tx).await?;
            return Ok(None);
        }
        let transition = self.write(&mut *tx, Some(&row), step, state).await?;
        self.inner.outbox.commit(tx).await?;
        self.committed(&transition);
        Ok(Some(transition))
    }

    /// Fires due timeouts until `token` is cancelled: after each round it sleeps until the
    /// earliest timeout is due, this process schedules one, or
    /// [`SagaConfig::poll_interval`] passed. Timeouts live in the database, so those due
    /// while no process ran fire on the next start. Run it as a
    /// [`lifecycle::task`](chassis_core::lifecycle::task) of the service's app.
    ///
    /// A timeout scheduled here only moves the next wake-up earlier when it is due before it:
    /// the loop knows its due time, so it does not look at the table again for it (a saga
    /// usually schedules a step timeout at every step, and each look is two queries).
    pub async fn run_timeouts(self, token: CancellationToken) {
        let poll = self.inner.config.poll_interval;
        loop {
            let wait = match self.round().await {
                Ok(wait) => wait.min(poll),
                Err(err) => {
                    tracing::warn!(saga = %self.name(), error = %err, "saga timeouts: database failed");
                    poll
                }
            };
            let mut wake = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = self.inner.scheduled.notified() => {}
                    () = tokio::time::sleep_until(wake) => break,
                }
                let due = self
                    .inner
                    .earliest_scheduled
                    .swap(i64::MAX, Ordering::AcqRel);
                if due == i64::MAX {
                    continue;
                }
                let from_now = Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0));
                wake = wake.min(tokio::time::Instant::now() + from_now);
            }
        }
    }

    /// One round: fire what is due, then say how long until the next one.
    async fn round(&self) -> Result<Duration> {
        let fired = self.fire_due().await?;
        if fired.len() >= self.inner.config.batch as usize {
            return Ok(Duration::ZERO);
        }
        let next = DB::next_due(self.inner.outbox.pool(), self.name()).await?;
        Ok(match next {
            Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
            None => self.inner.config.poll_interval,
        })
    }
}

fn new_step<'a, D>(
    saga_id: &'a str,
    state: String,
    data: D,
    compensations: Vec<Compensation>,
    cause: Option<&'a IncomingMessage>,
) -> Step<'a, D> {
    Step {
        saga_id,
        state,
        data,
        cause,
        sends: Vec::new(),
        schedules: Vec::new(),
        cancels: Vec::new(),
        compensations,
        finish: None,
        rejected: None,
    }
}

/// The consumer [`Handler`] of a [`Saga`]; see [`Saga::handler`].
pub struct SagaHandler<DB: SagaDatabase, D> {
    saga: Saga<DB, D>,
    group: Option<GroupCommit<DB>>,
}

impl<DB, D> SagaHandler<DB, D>
where
    DB: SagaDatabase,
    D: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// Applies the events handed over together in one transaction (a [`GroupCommit`] of the
    /// saga's inbox; a consumer with a [`concurrency`](crate::amqp::consumer::ConsumerConfig::concurrency)
    /// above 1 hands several over at once). Each event's outcome is what it would be alone:
    /// one that fails rolls the batch back and the others are applied again without it.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when `config` does not validate.
    pub fn group_commit(mut self, config: GroupCommitConfig) -> Result<Self> {
        self.group = Some(self.saga.inner.inbox.group_commit(config)?);
        Ok(self)
    }
}

/// Why a grouped event was not acked.
enum Unapplied {
    /// The transition failed (transient: retried; otherwise rejected).
    Saga(Error),
    /// The inbox's shared transaction failed.
    Inbox(Error),
}

impl From<Error> for Unapplied {
    fn from(err: Error) -> Self {
        Self::Inbox(err)
    }
}

impl<DB: SagaDatabase, D> std::fmt::Debug for SagaHandler<DB, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaHandler")
            .field("saga", &self.saga.inner.definition.name)
            .field("group_commit", &self.group.is_some())
            .finish()
    }
}

impl<DB, D> Handler for SagaHandler<DB, D>
where
    DB: SagaDatabase,
    D: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        let saga = self.saga.clone();
        if let Some(group) = self.group.clone() {
            return Box::pin(async move {
                let Some(message_id) = msg.message_id().map(str::to_owned) else {
                    return Outcome::reject(
                        "message has no message_id; the saga cannot deduplicate it",
                    );
                };
                let work = {
                    let saga = saga.clone();
                    group_commit::work(move |tx: &mut Transaction<'static, DB>| {
                        let (saga, msg) = (saga.clone(), msg.clone());
                        Box::pin(async move {
                            saga.apply(&mut **tx, &msg).await.map_err(Unapplied::Saga)
                        })
                            as BoxFuture<'_, std::result::Result<Option<Transition>, Unapplied>>
                    })
                };
                match group.process(&message_id, work).await {
                    Ok(Processed::Done(transition)) => {
                        saga.inner.outbox.notify_committed();
                        if let Some(transition) = transition {
                            saga.committed(&transition);
                        }
                        Outcome::Ack
                    }
                    Ok(Processed::Duplicate) => Outcome::Ack,
                    Err(Unapplied::Saga(err)) if err.is_transient() => {
                        Outcome::retry(err.to_string())
                    }
                    Err(Unapplied::Saga(err)) => Outcome::reject(err.to_string()),
                    Err(Unapplied::Inbox(err)) => Outcome::retry(format!("saga inbox: {err}")),
                }
            });
        }
        Box::pin(async move {
            let Some(message_id) = msg.message_id().map(str::to_owned) else {
                return Outcome::reject(
                    "message has no message_id; the saga cannot deduplicate it",
                );
            };
            let mut tx: Transaction<'static, DB> = match saga.inner.inbox.begin(&message_id).await {
                Ok(Claim::New(tx)) => tx,
                Ok(Claim::Duplicate) => return Outcome::Ack,
                Err(err) => return Outcome::retry(format!("saga inbox: {err}")),
            };
            // Dropping the transaction on an error rolls back the transition and the id.
            match saga.apply(&mut *tx, &msg).await {
                Ok(transition) => match saga.inner.outbox.commit(tx).await {
                    Ok(()) => {
                        // Counted as the group commit counts its batches, so the inbox's
                        // figures mean the same with or without it.
                        count_commit(saga.inner.inbox.consumer(), 1);
                        if let Some(transition) = transition {
                            saga.committed(&transition);
                        }
                        Outcome::Ack
                    }
                    Err(err) => Outcome::retry(format!("saga commit: {err}")),
                },
                Err(err) if err.is_transient() => Outcome::retry(err.to_string()),
                Err(err) => Outcome::reject(err.to_string()),
            }
        })
    }
}

/// A [`Saga`] as a lifecycle component; see [`Saga::component`].
pub struct SagaComponent<DB: SagaDatabase, D> {
    name: String,
    saga: Saga<DB, D>,
    stop: CancellationToken,
    timeouts: Option<tokio::task::JoinHandle<()>>,
}

impl<DB: SagaDatabase, D> std::fmt::Debug for SagaComponent<DB, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaComponent")
            .field("name", &self.name)
            .field("running", &self.timeouts.is_some())
            .finish()
    }
}

impl<DB, D> Component for SagaComponent<DB, D>
where
    DB: SagaDatabase,
    D: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Worker
    }

    fn start(&mut self, _ctx: Context) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.saga.migrate().await?;
            let timeouts = self.saga.clone().run_timeouts(self.stop.clone());
            self.timeouts = Some(tokio::spawn(timeouts));
            Ok(())
        })
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.stop.cancel();
            if let Some(timeouts) = self.timeouts.take() {
                timeouts.await?;
            }
            Ok(())
        })
    }
}
