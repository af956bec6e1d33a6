//! Message pacts: the events and commands one shop service consumes from another over
//! RabbitMQ, as Pact V4 asynchronous message interactions.
//!
//! A message is a chassis envelope in CloudEvents binary mode: the body is the JSON payload,
//! the attributes travel in `cloudEvents:*` headers. A message pact's interaction holds the
//! payload (with matchers: an order id is "any string", an amount "any integer") and, as
//! metadata, the attributes the consumer reads (type, source, payload version, spec version,
//! a UUID id and an RFC 3339 time matched by pattern, the subject by type), the exchange and
//! the routing key.
//!
//! - The **consumer** test describes each message it handles with [`MessagePact::message`],
//!   turns the pact's example into the message the queue would deliver
//!   ([`MessagePact::example`]), runs its real decoding and handling on it, and then
//!   [`MessagePact::write`]s `<consumer>-<provider>-messages.json` into [`pacts_dir`]
//!   (replacing the file: one test owns one pact, so a removed message leaves the file).
//! - The **provider** test builds every message the pacts name it for with its own code (the
//!   domain function producing the payload, then the envelope its outbox publishes), and
//!   [`verify`] matches each against the pact's message: a field the consumer relies on that
//!   is missing, renamed or of another type, or another attribute value, fails the test.
//!
//! The `-messages` suffix keeps these files out of the HTTP verification ([`crate::pacts_for`]
//! picks `*-<provider>.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chassis_messaging::envelope::{EVENTVERSION, ID, SOURCE, SPECVERSION, SUBJECT, TIME, TYPE};
use chassis_messaging::message::HeaderValue;
use chassis_messaging::{IncomingMessage, OutgoingMessage};
use pact_consumer::builders::{MessageInteractionBuilder, PactBuilder};
use pact_consumer::patterns::JsonPattern;
use pact_matching::{CoreMatchingContext, DiffConfig, Mismatch};
use pact_models::PactSpecification;
use pact_models::bodies::OptionalBody;
use pact_models::matchingrules::{MatchingRule, MatchingRuleCategory, RuleLogic};
use pact_models::path_exp::DocPath;
use pact_models::v4::async_message::AsynchronousMessage;
use pact_models::v4::message_parts::MessageContents;
use serde_json::{Value, json};
use shop_common::events::Emit;

use crate::pacts_dir;

/// Metadata key of the exchange (its name without the deployment's namespace prefix).
pub const EXCHANGE: &str = "exchange";
/// Metadata key of the routing key (the type).
pub const ROUTING_KEY: &str = "routingKey";
/// Metadata key of the content type.
pub const CONTENT_TYPE: &str = "contentType";

/// The example ids in the pacts (any UUID matches): the n-th message of a pact has the id
/// ending in n, so a consumer keying what it applied by the id sees distinct messages.
const EXAMPLE_ID: &str = "0193a5c0-0000-7000-8000-";
/// The example time in the pacts (any RFC 3339 UTC time matches).
const EXAMPLE_TIME: &str = "2026-01-01T12:00:00.000000001Z";
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const TIME_PATTERN: &str = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$";

/// The file of the message pact between `consumer` and `provider`.
pub fn file(consumer: &str, provider: &str) -> PathBuf {
    pacts_dir().join(format!("{consumer}-{provider}-messages.json"))
}

/// One message a consumer relies on.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The exchange, e.g. `shop.events`.
    pub exchange: &'a str,
    /// The type, also the routing key, e.g. `order.placed`.
    pub kind: &'a str,
    /// The payload's version (`eventversion`).
    pub version: u32,
    /// The producer's CloudEvents source, e.g. `/shop/orders`.
    pub source: &'a str,
    /// The subject (the order id) of the example; matched by type.
    pub subject: &'a str,
}

/// A message pact under construction (consumer side).
#[derive(Debug)]
pub struct MessagePact {
    consumer: String,
    provider: String,
    builder: PactBuilder,
    count: usize,
}

impl MessagePact {
    /// An empty V4 pact between `consumer` and `provider`.
    pub fn new(consumer: &str, provider: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            provider: provider.to_owned(),
            builder: PactBuilder::new_v4(consumer, provider),
            count: 0,
        }
    }

    /// Adds the message `description`: `body` is the payload (with matchers), `expected` its
    /// attributes.
    pub fn message(
        &mut self,
        description: &str,
        expected: Expected<'_>,
        body: impl Into<JsonPattern>,
    ) -> &mut Self {
        self.count += 1;
        let id = format!("{EXAMPLE_ID}{:012}", self.count);
        let mut builder = MessageInteractionBuilder::new(description);
        builder
            .json_body(body)
            .metadata(CONTENT_TYPE, "application/json")
            .metadata(EXCHANGE, expected.exchange)
            .metadata(ROUTING_KEY, expected.kind)
            .metadata(SPECVERSION, "1.0")
            .metadata(TYPE, expected.kind)
            .metadata(SOURCE, expected.source)
            .metadata(EVENTVERSION, expected.version.to_string())
            .metadata(ID, id)
            .metadata(TIME, EXAMPLE_TIME)
            .metadata(SUBJECT, expected.subject);
        let mut message = builder.build();
        let metadata = message.contents.matching_rules.add_category("metadata");
        for (key, rule) in [
            (ID, MatchingRule::Regex(UUID_PATTERN.into())),
            (TIME, MatchingRule::Regex(TIME_PATTERN.into())),
            (SUBJECT, MatchingRule::Type),
        ] {
            metadata.add_rule(DocPath::root().join(key), rule, RuleLogic::And);
        }
        self.builder.push_interaction(&message);
        self
    }

    /// The message `description` as the consumer's queue delivers it: the pact's example
    /// payload and attributes, on the exchange and routing key the pact names.
    pub fn example(&self, description: &str) -> IncomingMessage {
        let message = messages(self.builder.build().as_ref())
            .into_iter()
            .find(|m| m.description == description)
            .unwrap_or_else(|| panic!("no message `{description}` in the pact"));
        to_incoming(&message.contents)
    }

    /// Writes the pact to [`file()`], replacing what was there. The file's content depends only
    /// on the messages: a re-run without changes leaves it as it is.
    pub fn write(&self) {
        let path = file(&self.consumer, &self.provider);
        pact_models::pact::write_pact(self.builder.build(), &path, PactSpecification::V4, true)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

fn messages(
    pact: &(dyn pact_models::pact::Pact + Send + Sync + std::panic::RefUnwindSafe),
) -> Vec<AsynchronousMessage> {
    pact.interactions()
        .iter()
        .filter_map(|i| i.as_v4_async_message())
        .collect()
}

fn metadata_str<'a>(contents: &'a MessageContents, key: &str) -> &'a str {
    contents
        .metadata
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the message has no metadata `{key}`"))
}

fn to_incoming(contents: &MessageContents) -> IncomingMessage {
    let body = match &contents.contents {
        OptionalBody::Present(bytes, ..) => bytes.to_vec(),
        _ => Vec::new(),
    };
    let mut msg = OutgoingMessage::new(
        metadata_str(contents, EXCHANGE),
        metadata_str(contents, ROUTING_KEY),
        body,
    )
    .content_type(metadata_str(contents, CONTENT_TYPE))
    .message_id(metadata_str(contents, ID));
    msg.kind = Some(metadata_str(contents, TYPE).to_owned());
    msg.correlation_id = Some(metadata_str(contents, SUBJECT).to_owned());
    for (key, value) in &contents.metadata {
        if let (true, Some(v)) = (key.starts_with("cloudEvents:"), value.as_str()) {
            msg.headers.insert(key.clone(), v.into());
        }
    }
    IncomingMessage::from_outgoing(msg)
}

/// What the provider publishes, as the pact's message contents: the body, and as metadata
/// every CloudEvents header, the exchange, the routing key and the content type.
fn from_outgoing(msg: &OutgoingMessage) -> MessageContents {
    let mut metadata: BTreeMap<String, Value> = msg
        .headers
        .iter()
        .map(|(k, v)| {
            let v = match v {
                HeaderValue::String(s) => json!(s),
                HeaderValue::Int(n) => json!(n),
                HeaderValue::Bool(b) => json!(b),
            };
            (k.clone(), v)
        })
        .collect();
    metadata.insert(EXCHANGE.into(), json!(msg.exchange));
    metadata.insert(ROUTING_KEY.into(), json!(msg.routing_key));
    if let Some(ct) = &msg.content_type {
        metadata.insert(CONTENT_TYPE.into(), json!(ct));
    }
    MessageContents {
        contents: OptionalBody::Present(
            msg.body.clone().into(),
            msg.content_type.as_deref().map(Into::into),
            None,
        ),
        metadata: metadata.into_iter().collect(),
        ..MessageContents::default()
    }
}

fn rules(message: &AsynchronousMessage, category: &str) -> MatchingRuleCategory {
    // A V4 message's payload rules are the `content` category (`body` in files written by
    // some versions); both are read.
    let mut found = MatchingRuleCategory::empty(category);
    let names: &[&str] = if category == "metadata" {
        &["metadata"]
    } else {
        &["content", "body"]
    };
    for name in names {
        if let Some(rules) = message.contents.matching_rules.rules_for_category(*name) {
            for (path, list) in rules.rules {
                for rule in list.rules {
                    found.add_rule(path.clone(), rule, list.rule_logic);
                }
            }
        }
    }
    found
}

// pact_matching's `plugins` feature adds a field (off in this build, on in others).
#[allow(clippy::needless_update)]
fn context(matchers: MatchingRuleCategory) -> CoreMatchingContext {
    CoreMatchingContext {
        matchers,
        config: DiffConfig::AllowUnexpectedKeys,
        matching_spec: PactSpecification::V4,
        ..CoreMatchingContext::default()
    }
}

/// The mismatches between `expected` (a pact's message) and `actual` (what the provider
/// publishes); empty when the message honours the pact.
pub async fn mismatches(expected: &AsynchronousMessage, actual: &OutgoingMessage) -> Vec<String> {
    let actual = from_outgoing(actual);
    let body = context(rules(expected, "content"));
    let mut found: Vec<Mismatch> =
        pact_matching::match_message_contents(&expected.contents, &actual, &body)
            .await
            .err()
            .unwrap_or_default();
    let metadata = context(rules(expected, "metadata"));
    let mut by_key: Vec<_> =
        pact_matching::match_message_metadata(&expected.contents, &actual, &metadata)
            .into_iter()
            .collect();
    by_key.sort_by(|a, b| a.0.cmp(&b.0));
    found.extend(by_key.into_iter().flat_map(|(_, m)| m));
    found.iter().map(Mismatch::description).collect()
}

/// [`verify`] for a provider whose messages are the events its domain code returned: `emits`
/// pairs each interaction's description with its [`Emit`], which is published as the outbox
/// would (the envelope of `provider` with `cause` as the causing message's id).
pub async fn verify_emits(provider: &str, cause: Option<&str>, emits: &[(&str, Emit)]) {
    verify(provider, |description| {
        let (_, emit) = emits.iter().find(|(d, _)| *d == description)?;
        Some(
            emit.envelope(provider, cause)
                .to_message(emit.exchange)
                .expect("a message"),
        )
    })
    .await;
}

/// Matches what `provider` publishes against every message pact naming it as provider
/// (`*-<provider>-messages.json` in [`pacts_dir`]; there must be at least one). `produce`
/// answers the message for an interaction's description, built by the provider's own code.
/// Panics, listing every mismatch, when a message does not match or the provider produces
/// none for a description, so the calling test fails.
pub async fn verify(provider: &str, produce: impl Fn(&str) -> Option<OutgoingMessage>) {
    let suffix = format!("-{provider}-messages.json");
    let mut files: Vec<PathBuf> = std::fs::read_dir(pacts_dir())
        .expect("the pacts directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no message pact in {} names {provider} as its provider",
        pacts_dir().display()
    );
    let mut failures = Vec::new();
    let mut verified = 0;
    for path in &files {
        let pact = pact_models::pact::read_pact(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let consumer = pact.consumer().name;
        for expected in messages(pact.as_ref()) {
            let what = format!("{consumer}: {}", expected.description);
            match produce(&expected.description) {
                None => failures.push(format!("{what}: {provider} produces no such message")),
                Some(actual) => {
                    verified += 1;
                    for m in mismatches(&expected, &actual).await {
                        failures.push(format!("{what}: {m}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{provider} does not honour its message pacts:\n{}",
        failures.join("\n")
    );
    assert!(verified > 0, "no message of {provider}'s pacts was checked");
}
