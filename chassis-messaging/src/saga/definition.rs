//! What a saga is: its states, the events and timeouts that move it between them
//! ([`SagaDefinition`]), and what one transition does ([`Step`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::amqp::incoming::IncomingMessage;
use crate::envelope::{Envelope, SUBJECT};
use crate::error::Error;
use crate::message::{HeaderValue, OutgoingMessage};
use crate::version::Versioned;

/// The state of a saga before its first event: the state [`SagaDefinition::initially`]
/// handlers run in.
pub const INITIAL: &str = "Initial";
/// The final state [`Step::complete`] moves to.
pub const COMPLETED: &str = "Completed";
/// The final state [`Step::fail`] moves to.
pub const FAILED: &str = "Failed";

type EventFn<D> =
    Arc<dyn Fn(&mut Step<'_, D>, &IncomingMessage) -> Result<(), Error> + Send + Sync>;
type TimeoutFn<D> = Arc<dyn Fn(&mut Step<'_, D>) + Send + Sync>;
pub(crate) type CompensationFn<D> = Arc<dyn Fn(&mut Step<'_, D>, &str) + Send + Sync>;

/// A compensation registered with an instance: a message ready to send, or the name of a
/// compensation step of the definition, run when the saga fails (kept as JSON with the row).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum Compensation {
    Message(OutgoingMessage),
    Step(String),
}
type CorrelateFn = Arc<dyn Fn(&IncomingMessage) -> Option<String> + Send + Sync>;

/// A saga's states and transitions, built once at startup and run by a
/// [`Saga`](super::Saga).
///
/// Transitions are plain functions of the saga's data and the event: they change the data,
/// move to another state and record what should happen ([`Step`]); the saga writes all of it
/// (its row, the messages, the timeouts) in one transaction afterwards, so a transition never
/// half happens.
pub struct SagaDefinition<D> {
    pub(crate) name: Arc<str>,
    pub(crate) events: HashMap<(String, String), EventFn<D>>,
    pub(crate) timeouts: HashMap<(String, String), TimeoutFn<D>>,
    pub(crate) compensations: HashMap<String, CompensationFn<D>>,
    pub(crate) correlate: CorrelateFn,
}

impl<D> fmt::Debug for SagaDefinition<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut events: Vec<_> = self.events.keys().collect();
        events.sort();
        let mut timeouts: Vec<_> = self.timeouts.keys().collect();
        timeouts.sort();
        let mut compensations: Vec<_> = self.compensations.keys().collect();
        compensations.sort();
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("events", &events)
            .field("timeouts", &timeouts)
            .field("compensations", &compensations)
            .finish_non_exhaustive()
    }
}

fn subject_of(msg: &IncomingMessage) -> Option<String> {
    match msg.header(SUBJECT) {
        Some(HeaderValue::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

impl<D: Send + 'static> SagaDefinition<D> {
    /// A saga type named `name` (instances of different types never meet, even with the same
    /// id). Its instances are found by the event's `subject` unless
    /// [`correlate_by`](Self::correlate_by) says otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into().into(),
            events: HashMap::new(),
            timeouts: HashMap::new(),
            compensations: HashMap::new(),
            correlate: Arc::new(subject_of),
        }
    }

    /// The saga type's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts an instance on an event of type `event_type` whose correlation finds none: `f`
    /// runs on the data's `Default` in state [`INITIAL`]. (An instance can also be started
    /// without an event: [`Saga::start`](super::Saga::start).)
    pub fn initially<E, F>(self, event_type: &str, f: F) -> Self
    where
        E: Versioned + 'static,
        F: Fn(&mut Step<'_, D>, Envelope<E>) + Send + Sync + 'static,
    {
        self.during(INITIAL, event_type, f)
    }

    /// Handles events of type `event_type` while an instance is in `state`. The payload is
    /// read by its version ([`IncomingMessage::decode_versioned`]). An event no handler of the
    /// instance's state takes (a late reply, a duplicate answer) changes nothing and is acked.
    pub fn during<E, F>(mut self, state: &str, event_type: &str, f: F) -> Self
    where
        E: Versioned + 'static,
        F: Fn(&mut Step<'_, D>, Envelope<E>) + Send + Sync + 'static,
    {
        let handler: EventFn<D> = Arc::new(move |step, msg| {
            f(step, msg.decode_versioned::<E>()?);
            Ok(())
        });
        self.events
            .insert((state.to_owned(), event_type.to_owned()), handler);
        self
    }

    /// Handles the timeout `name` (scheduled with [`Step::schedule`]) when it falls due while
    /// the instance is still in `state`, the state it was scheduled in; a timeout of a state
    /// the instance has left is dropped unrun.
    pub fn on_timeout<F>(mut self, state: &str, name: &str, f: F) -> Self
    where
        F: Fn(&mut Step<'_, D>) + Send + Sync + 'static,
    {
        self.timeouts
            .insert((state.to_owned(), name.to_owned()), Arc::new(f));
        self
    }

    /// A compensation step named `name`: registered by a transition with
    /// [`Step::compensate`], it runs when the saga fails, given the failure's reason, and
    /// sends what undoes the step (e.g. a release command that carries the reason). Use it
    /// when the undoing message depends on how the saga failed; otherwise
    /// [`Step::compensate_with`] registers the message itself.
    pub fn compensation<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&mut Step<'_, D>, &str) + Send + Sync + 'static,
    {
        self.compensations.insert(name.to_owned(), Arc::new(f));
        self
    }

    /// How an event finds its instance: `f` returns the instance id, `None` for a message
    /// that belongs to none (rejected). Defaults to the CloudEvents `subject`.
    pub fn correlate_by<F>(mut self, f: F) -> Self
    where
        F: Fn(&IncomingMessage) -> Option<String> + Send + Sync + 'static,
    {
        self.correlate = Arc::new(f);
        self
    }
}

/// How a step ended the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    Completed,
    Failed(String),
}

/// One transition in progress: the instance's data and state, and what the transition does.
/// Nothing happens until the handler returns; then the saga writes it all in one transaction.
#[derive(Debug)]
pub struct Step<'a, D> {
    pub(crate) saga_id: &'a str,
    pub(crate) state: String,
    pub(crate) data: D,
    pub(crate) cause: Option<&'a IncomingMessage>,
    pub(crate) sends: Vec<OutgoingMessage>,
    pub(crate) schedules: Vec<(String, Duration)>,
    pub(crate) cancels: Vec<String>,
    pub(crate) compensations: Vec<Compensation>,
    pub(crate) finish: Option<Finish>,
    pub(crate) rejected: Option<String>,
}

impl<'a, D> Step<'a, D> {
    /// The instance's id.
    pub fn id(&self) -> &str {
        self.saga_id
    }

    /// The state it is in (the new one after [`transition_to`](Self::transition_to)).
    pub fn state(&self) -> &str {
        &self.state
    }

    /// Its data.
    pub fn data(&self) -> &D {
        &self.data
    }

    /// Its data, to change.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.data
    }

    /// The message that caused this step (`None` for a timeout or
    /// [`Saga::start`](super::Saga::start)).
    pub fn cause(&self) -> Option<&IncomingMessage> {
        self.cause
    }

    /// Moves to `state`.
    pub fn transition_to(&mut self, state: impl Into<String>) {
        self.state = state.into();
    }

    /// Sends `msg` (through the outbox, in the step's transaction).
    pub fn send(&mut self, msg: OutgoingMessage) {
        self.sends.push(msg);
    }

    /// Sends `event` to `exchange`, as caused by this step's message: its subject defaults to
    /// the instance id, its correlation id to the cause's (or the instance id).
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::error::ErrorKind::Serialization) when the payload
    /// cannot be serialized.
    pub fn send_event<T: serde::Serialize>(
        &mut self,
        exchange: &str,
        event: Envelope<T>,
    ) -> Result<(), Error> {
        let msg = self.linked(event).to_message(exchange)?;
        self.send(msg);
        Ok(())
    }

    fn linked<T>(&self, mut event: Envelope<T>) -> Envelope<T> {
        if event.subject.is_none() {
            event.subject = Some(self.saga_id.to_owned());
        }
        if let Some(cause) = self.cause {
            if event.causation_id.is_none() {
                event.causation_id = cause.message_id().map(str::to_owned);
            }
            if event.correlation_id.is_none() {
                event.correlation_id = match cause.header(crate::envelope::CORRELATIONID) {
                    Some(HeaderValue::String(s)) => Some(s.clone()),
                    _ => cause.correlation_id().map(str::to_owned),
                };
            }
        }
        if event.correlation_id.is_none() {
            event.correlation_id = Some(self.saga_id.to_owned());
        }
        event
    }

    /// Registers `msg` as the compensation of what this step did: if the saga later
    /// [`fail`](Self::fail)s, the compensations registered so far are sent newest first (undo
    /// in reverse order); if it [`complete`](Self::complete)s, they are dropped. They are
    /// kept with the instance, so a restart forgets none.
    pub fn compensate_with(&mut self, msg: OutgoingMessage) {
        self.compensations.push(Compensation::Message(msg));
    }

    /// Registers the definition's compensation step `name`
    /// ([`SagaDefinition::compensation`]) as the undoing of what this step did: like
    /// [`compensate_with`](Self::compensate_with), but the message is made when the saga
    /// fails, from its data and the failure's reason. A name the definition lacks fails the
    /// failing transition (an error, the event rejected).
    pub fn compensate(&mut self, name: impl Into<String>) {
        self.compensations.push(Compensation::Step(name.into()));
    }

    /// [`compensate_with`](Self::compensate_with) an event, linked like
    /// [`send_event`](Self::send_event).
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::error::ErrorKind::Serialization) when the payload
    /// cannot be serialized.
    pub fn compensate_with_event<T: serde::Serialize>(
        &mut self,
        exchange: &str,
        event: Envelope<T>,
    ) -> Result<(), Error> {
        let msg = self.linked(event).to_message(exchange)?;
        self.compensate_with(msg);
        Ok(())
    }

    /// Schedules the timeout `name` after `after`, in the database (a restart keeps it). It
    /// fires once, in the state the step ends in, if the instance is still there; scheduling a
    /// name again moves it.
    pub fn schedule(&mut self, name: impl Into<String>, after: Duration) {
        self.schedules.push((name.into(), after));
    }

    /// Cancels the timeout `name` (nothing if none is scheduled).
    pub fn cancel(&mut self, name: impl Into<String>) {
        self.cancels.push(name.into());
    }

    /// Ends the saga in [`COMPLETED`]: its timeouts are cancelled, its compensations dropped,
    /// and later events for it are acked unhandled.
    pub fn complete(&mut self) {
        self.finish = Some(Finish::Completed);
    }

    /// Ends the saga in [`FAILED`] with `reason`: the registered compensations are sent,
    /// newest first, its timeouts cancelled, and later events for it are acked unhandled.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.finish = Some(Finish::Failed(reason.into()));
    }

    /// Refuses the event this step was given (a payload that decodes but breaks a rule of
    /// the application, e.g. a field over its limit): nothing the step did is written, the
    /// instance stays as it was, and the message is rejected with `reason` (dead-lettered by
    /// the consumer) rather than retried, since it would fail the same way every time.
    /// [`Saga::start`](super::Saga::start) returns it as an
    /// [`ErrorKind::Validation`](crate::error::ErrorKind::Validation) error; a timeout that
    /// rejects is dropped with the reason logged.
    pub fn reject(&mut self, reason: impl Into<String>) {
        self.rejected = Some(reason.into());
    }
}
