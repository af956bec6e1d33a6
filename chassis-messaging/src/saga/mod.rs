//! Sagas: long-running business transactions as persisted state machines (orchestration),
//! in the manner of MassTransit's saga state machines and Eventuate Tram's sagas.
//!
//! A [`SagaDefinition`] names a saga type's states and what moves an instance between them:
//! events ([`initially`](SagaDefinition::initially) starts an instance,
//! [`during`](SagaDefinition::during) a state), and timeouts
//! ([`on_timeout`](SagaDefinition::on_timeout)). A transition is a plain function given a
//! [`Step`]: it changes the instance's data, moves it to another state, sends commands or
//! events, schedules or cancels timeouts, registers compensations, and may end the saga
//! ([`complete`](Step::complete), [`fail`](Step::fail)). A [`Saga`] runs a definition on
//! SQLite or PostgreSQL:
//!
//! - **Persisted**: each instance is a row of `chassis_saga` (state, JSON data, the
//!   compensations registered so far, a version); the tables come from
//!   [`Saga::migrate`] (their own migration history, [`store::SAGA_MIGRATIONS_TABLE`]).
//! - **One transaction per transition**: the row, the messages it sends (through the
//!   [`Outbox`](crate::Outbox), so they leave if and only if the transition committed) and
//!   its timeouts are written together; two transitions of one instance racing (two
//!   replicas, two events) cannot both commit (the row's version; on PostgreSQL the row is
//!   also locked while a transition runs), the loser is retried.
//! - **Idempotent under redelivery**: [`Saga::handler`] records each message id in an
//!   [`Inbox`](crate::Inbox) (`saga:<name>`) in the transition's transaction, so a redelivered
//!   event is acked without a second transition.
//! - **Timeouts through the database**: [`Step::schedule`] writes a row of
//!   `chassis_saga_timeout` with its due time; [`Saga::run_timeouts`] fires due ones, each in
//!   a transaction that deletes it, so it fires once, and a timeout due while the service
//!   was down fires when it is back. A timeout fires only in the state it was scheduled in.
//! - **Compensation**: [`Step::compensate_with`] registers the message that undoes what a
//!   step asked for, or [`Step::compensate`] a compensation step of the definition
//!   ([`SagaDefinition::compensation`]) that makes it when the saga fails, from the failure's
//!   reason; [`Step::fail`] sends those registered so far, newest first, in the failing
//!   transition's transaction; [`Step::complete`] drops them.
//! - **Read models and notifications**: [`Saga::project`] writes what each transition did
//!   into the application's own tables in the transition's transaction (the view an API
//!   serves); [`Saga::on_committed`] hears of each transition once it is durable.
//! - **Refusals**: a transition may [`reject`](Step::reject) its event (a payload breaking an
//!   application rule): nothing is written and the message is dead-lettered with the reason.
//! - **Lifecycle**: [`Saga::component`] creates the tables at start and fires timeouts until
//!   the service stops.
//! - **Versions**: events are read with
//!   [`IncomingMessage::decode_versioned`](crate::IncomingMessage::decode_versioned), so a transition sees every version it
//!   reads as the current payload type, and a version it does not read is dead-lettered.
//!
//! An event with no handler in the instance's state (a late reply after a timeout, an
//! answer to a step that was compensated) is acked and changes nothing, as is any event for
//! an instance that ended.
//!
//! # Example
//! An order: reserve stock, then charge; a failed charge releases the stock; no answer
//! from payments in time fails the order too.
//! ```
//! use std::time::Duration;
//! use chassis_messaging::saga::{Saga, SagaConfig, SagaDefinition};
//! use chassis_messaging::amqp::consumer::Handler as _;
//! use chassis_messaging::{Envelope, IncomingMessage, Outbox, Outcome, Versioned};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Order { amount_cents: i64 }
//! #[derive(Serialize, Deserialize)]
//! struct Reserved { amount_cents: i64 }
//! impl Versioned for Reserved { const VERSION: u32 = 1; }
//! #[derive(Serialize, Deserialize)]
//! struct Declined { reason: String }
//! impl Versioned for Declined { const VERSION: u32 = 1; }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let definition = SagaDefinition::<Order>::new("order")
//!     .initially("stock.reserved", |step, e: Envelope<Reserved>| {
//!         step.data_mut().amount_cents = e.data.amount_cents;
//!         let release = Envelope::new("shop/orders", "stock.release", serde_json::json!({}));
//!         step.compensate_with_event("shop.commands", release).expect("serializes");
//!         let charge = Envelope::new("shop/orders", "payment.charge", serde_json::json!({"cents": e.data.amount_cents}));
//!         step.send_event("shop.commands", charge).expect("serializes");
//!         step.schedule("payment", Duration::from_secs(30));
//!         step.transition_to("Charging");
//!     })
//!     .during("Charging", "payment.declined", |step, e: Envelope<Declined>| step.fail(e.data.reason))
//!     .on_timeout("Charging", "payment", |step| step.fail("payment timed out"));
//!
//! let pool = chassis_messaging::sql::sqlite_pool("sqlite::memory:")?;
//! let saga = Saga::new(definition, Outbox::new(pool), SagaConfig::default())?;
//! saga.migrate().await?;
//! let handler = saga.handler();
//!
//! let reserved = Envelope::new("shop/inventory", "stock.reserved", Reserved { amount_cents: 450 }).subject("o-1");
//! let reserved = IncomingMessage::from_outgoing(reserved.to_message("shop.events")?);
//! assert_eq!(handler.handle(reserved.clone()).await, Outcome::Ack);
//! assert_eq!(handler.handle(reserved).await, Outcome::Ack); // redelivered: no second transition
//! assert_eq!(saga.get("o-1").await?.unwrap().state, "Charging");
//!
//! let declined = Envelope::new("shop/payments", "payment.declined", Declined { reason: "card_declined".into() }).subject("o-1");
//! handler.handle(IncomingMessage::from_outgoing(declined.to_message("shop.events")?)).await;
//! let order = saga.get("o-1").await?.unwrap();
//! assert_eq!((order.state.as_str(), order.failure.as_deref()), ("Failed", Some("card_declined")));
//! // The outbox now holds the charge and, from the failure, the release.
//! # Ok(())
//! # }
//! ```

mod definition;
mod engine;
pub mod store;

pub use definition::{COMPLETED, FAILED, INITIAL, SagaDefinition, Step};
pub use engine::{Saga, SagaComponent, SagaConfig, SagaHandler, SagaInstance, Transition};
pub use store::SagaDatabase;
