//! [`Envelope`]: a typed event in CloudEvents 1.0 form, and its AMQP wire mapping.
//!
//! An envelope wraps any `Serialize` payload with the attributes every consumer needs (who
//! emitted what, when, about which aggregate, caused by which earlier event). On the wire it
//! follows the [CloudEvents AMQP protocol binding] in **binary mode**: the AMQP body is the JSON
//! payload alone, and every other attribute travels in AMQP application headers prefixed with
//! `cloudEvents:` — so a consumer in any language can read it without this crate.
//!
//! | Envelope field   | CloudEvents attribute | AMQP                                                        |
//! |------------------|-----------------------|-------------------------------------------------------------|
//! | —                | `specversion`         | header `cloudEvents:specversion` = `"1.0"`                 |
//! | `id` (UUID v7)   | `id`                  | header `cloudEvents:id` and property `message_id`          |
//! | `kind`           | `type`                | header `cloudEvents:type`, property `type`, the routing key |
//! | `source`         | `source`              | header `cloudEvents:source`                                 |
//! | `time`           | `time` (RFC 3339)     | header `cloudEvents:time`, property `timestamp` (seconds)  |
//! | `subject`        | `subject`             | header `cloudEvents:subject` (absent when `None`)          |
//! | `datacontenttype`| `datacontenttype`     | property `content_type` (binary mode: not a header)        |
//! | `dataschema`     | `dataschema`          | header `cloudEvents:dataschema` (absent when `None`)       |
//! | `version`        | extension `eventversion` | header `cloudEvents:eventversion` (decimal string; absent on decode = 1) |
//! | `correlation_id` | extension `correlationid` | header `cloudEvents:correlationid` and property `correlation_id` |
//! | `causation_id`   | extension `causationid`   | header `cloudEvents:causationid`                       |
//! | `data`           | `data`                | the body (JSON)                                             |
//!
//! Decoding ([`IncomingMessage::decode`](crate::amqp::incoming::IncomingMessage::decode))
//! validates: `specversion` must be `1.0`; `id`,
//! `type`, `source` must be present and non-empty; `time` must be RFC 3339 when present; the
//! content type must be JSON. Failures are typed ([`ErrorKind::Validation`] for attributes,
//! [`ErrorKind::Decode`] for the body) and the consumer dead-letters such a message with the
//! reason in the `x-chassis-failure-reason` header.
//!
//! Every event carries the version of its payload's schema (1 unless set); how consumers
//! read the versions they know, upcast older ones and dead-letter the rest is in
//! [`version`](crate::version).
//!
//! [CloudEvents AMQP protocol binding]: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/amqp-protocol-binding.md
//!
//! # Example
//! ```
//! use chassis_messaging::{Envelope, IncomingMessage};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct OrderPlaced { order_id: String, total_cents: u64 }
//!
//! let event = Envelope::new("shop/orders", "shop.order.placed", OrderPlaced { order_id: "42".into(), total_cents: 1999 })
//!     .subject("42");
//! let msg = event.to_message("shop.events").unwrap();
//! assert_eq!(msg.routing_key, "shop.order.placed");
//! assert_eq!(msg.message_id.as_deref(), Some(event.id.to_string().as_str()));
//!
//! // What a consumer receives decodes back to the same event.
//! let back: Envelope<OrderPlaced> = IncomingMessage::from_outgoing(msg).decode().unwrap();
//! assert_eq!(back.data, event.data);
//! assert_eq!(back.subject.as_deref(), Some("42"));
//! ```

use chrono::{DateTime, Datelike as _, SecondsFormat, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind};
use crate::message::{HeaderValue, OutgoingMessage};

/// Prefix of CloudEvents attributes in AMQP application headers.
pub const HEADER_PREFIX: &str = "cloudEvents:";
/// `cloudEvents:specversion`.
pub const SPECVERSION: &str = "cloudEvents:specversion";
/// `cloudEvents:id`.
pub const ID: &str = "cloudEvents:id";
/// `cloudEvents:type`.
pub const TYPE: &str = "cloudEvents:type";
/// `cloudEvents:source`.
pub const SOURCE: &str = "cloudEvents:source";
/// `cloudEvents:time`.
pub const TIME: &str = "cloudEvents:time";
/// `cloudEvents:subject`.
pub const SUBJECT: &str = "cloudEvents:subject";
/// `cloudEvents:dataschema`.
pub const DATASCHEMA: &str = "cloudEvents:dataschema";
/// `cloudEvents:correlationid` (extension).
pub const CORRELATIONID: &str = "cloudEvents:correlationid";
/// `cloudEvents:causationid` (extension).
pub const CAUSATIONID: &str = "cloudEvents:causationid";
/// `cloudEvents:eventversion` (extension): the payload's schema version, see
/// [`version`](crate::version).
pub const EVENTVERSION: &str = "cloudEvents:eventversion";
/// The only CloudEvents spec version produced and accepted.
pub const SPEC_VERSION: &str = "1.0";
/// Default `datacontenttype`.
pub const JSON: &str = "application/json";

/// A typed event: CloudEvents attributes plus a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// Unique id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// The event type, e.g. `shop.order.placed` (CloudEvents `type`; also the routing key).
    pub kind: String,
    /// Who emitted it, a URI-reference such as `shop/orders`.
    pub source: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// What it is about: the aggregate id.
    pub subject: Option<String>,
    /// Media type of `data`. Defaults to `application/json`.
    pub datacontenttype: String,
    /// Schema (and so version) of `data`, e.g. `https://schemas.example.com/order-placed/v2`.
    pub dataschema: Option<String>,
    /// Correlates every event of one business transaction.
    pub correlation_id: Option<String>,
    /// Id of the message that caused this one.
    pub causation_id: Option<String>,
    /// Version of the payload's schema (CloudEvents extension `eventversion`), at least 1.
    /// Defaults to 1; an event received without the attribute is version 1.
    pub version: u32,
    /// The payload.
    pub data: T,
}

impl<T> Envelope<T> {
    /// A new event with a fresh UUID v7 id and the current time.
    pub fn new(source: impl Into<String>, kind: impl Into<String>, data: T) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.into(),
            source: source.into(),
            time: Utc::now(),
            subject: None,
            datacontenttype: JSON.to_owned(),
            dataschema: None,
            correlation_id: None,
            causation_id: None,
            version: 1,
            data,
        }
    }

    /// Sets the subject (aggregate id).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the data schema (and so the payload version).
    pub fn dataschema(mut self, schema: impl Into<String>) -> Self {
        self.dataschema = Some(schema.into());
        self
    }

    /// Sets the payload's schema version (see [`version`](crate::version)); 0 is kept as 1,
    /// the first version.
    pub fn version(mut self, version: u32) -> Self {
        self.version = version.max(1);
        self
    }

    optional_string_setters! {
        /// Sets the correlation id.
        correlation_id(id);
        /// Sets the causation id.
        causation_id(id);
    }

    /// Marks this event as caused by `cause`: the causation id becomes `cause.id` and the
    /// correlation id is inherited (or starts at `cause.id`).
    pub fn caused_by<U>(mut self, cause: &Envelope<U>) -> Self {
        self.causation_id = Some(cause.id.to_string());
        self.correlation_id = Some(
            cause
                .correlation_id
                .clone()
                .unwrap_or_else(|| cause.id.to_string()),
        );
        self
    }

    /// Replaces the payload, keeping every attribute.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            id: self.id,
            kind: self.kind,
            source: self.source,
            time: self.time,
            subject: self.subject,
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            version: self.version,
            data: f(self.data),
        }
    }
}

impl<T: Serialize> Envelope<T> {
    /// Encodes the event for publishing to `exchange` with the event type as routing key
    /// (binary-mode CloudEvents; see the module docs for the mapping).
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`] if the payload cannot be serialized to JSON.
    pub fn to_message(&self, exchange: impl Into<String>) -> Result<OutgoingMessage, Error> {
        let body = serde_json::to_vec(&self.data)?;
        let mut msg = OutgoingMessage::new(exchange, self.kind.clone(), body)
            .content_type(self.datacontenttype.clone())
            .message_id(self.id.to_string())
            .header(SPECVERSION, SPEC_VERSION)
            .header(ID, self.id.to_string())
            .header(TYPE, self.kind.clone())
            .header(SOURCE, self.source.clone())
            .header(TIME, self.time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .header(EVENTVERSION, self.version.to_string());
        msg.kind = Some(self.kind.clone());
        msg.timestamp = u64::try_from(self.time.timestamp()).ok();
        msg.correlation_id = self.correlation_id.clone();
        if let Some(v) = &self.subject {
            msg.headers.insert(SUBJECT.into(), v.clone().into());
        }
        if let Some(v) = &self.dataschema {
            msg.headers.insert(DATASCHEMA.into(), v.clone().into());
        }
        if let Some(v) = &self.correlation_id {
            msg.headers.insert(CORRELATIONID.into(), v.clone().into());
        }
        if let Some(v) = &self.causation_id {
            msg.headers.insert(CAUSATIONID.into(), v.clone().into());
        }
        Ok(msg)
    }
}

/// A received message's parts an event is decoded from (a transport's message lends them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    pub(crate) headers: &'a BTreeMap<String, HeaderValue>,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) timestamp: Option<u64>,
    pub(crate) body: &'a [u8],
}

fn string_header(msg: Received<'_>, name: &str) -> Result<Option<String>, Error> {
    match msg.headers.get(name) {
        None => Ok(None),
        Some(HeaderValue::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::validation(format!(
            "header {name} must be a string, got {other:?}"
        ))),
    }
}

fn required(msg: Received<'_>, name: &str) -> Result<String, Error> {
    match string_header(msg, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::validation(format!(
            "required attribute {name} is missing"
        ))),
    }
}

/// The `eventversion` attribute: 1 when absent (events from before versions, or from
/// producers that do not version), otherwise a positive integer (as a decimal string, or an
/// integer header from another client).
fn version_of(msg: Received<'_>) -> Result<u32, Error> {
    let invalid = |v: &dyn std::fmt::Debug| {
        Error::validation(format!(
            "{EVENTVERSION} must be a positive integer, got {v:?}"
        ))
    };
    match msg.headers.get(EVENTVERSION) {
        None => Ok(1),
        Some(HeaderValue::String(s)) => s
            .parse::<u32>()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| invalid(s)),
        Some(HeaderValue::Int(n)) => u32::try_from(*n)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| invalid(n)),
        Some(other) => Err(invalid(other)),
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Decodes and validates a received message (see
    /// [`IncomingMessage::decode`](crate::amqp::incoming::IncomingMessage::decode)).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] when a CloudEvents attribute is missing or malformed (wrong
    /// `specversion`, no `id`/`type`/`source`, bad `time`, non-JSON content type),
    /// [`ErrorKind::Decode`] when the body is not the expected JSON payload.
    pub(crate) fn decode(msg: Received<'_>) -> Result<Self, Error> {
        Self::decode_with(msg, |_, _, body| {
            serde_json::from_slice(body).map_err(|e| {
                Error::with_source(
                    ErrorKind::Decode {
                        reason: format!("body is not a valid {}: {e}", std::any::type_name::<T>()),
                    },
                    e,
                )
            })
        })
    }
}

impl<T> Envelope<T> {
    /// Validates the attributes, then reads the payload with `data(type, version, body)`: the
    /// attributes are checked before the body is looked at, so a version check sees only
    /// valid events.
    pub(crate) fn decode_with(
        msg: Received<'_>,
        data: impl FnOnce(&str, u32, &[u8]) -> Result<T, Error>,
    ) -> Result<Self, Error> {
        let specversion = required(msg, SPECVERSION)?;
        if specversion != SPEC_VERSION {
            return Err(Error::validation(format!(
                "unsupported specversion {specversion:?} (expected \"1.0\")"
            )));
        }
        let id_text = required(msg, ID)?;
        let id = Uuid::parse_str(&id_text)
            .map_err(|e| Error::validation(format!("{ID} is not a UUID: {e}")))?;
        let kind = required(msg, TYPE)?;
        let source = required(msg, SOURCE)?;
        let time = match string_header(msg, TIME)? {
            Some(t) => DateTime::parse_from_rfc3339(&t)
                .map_err(|e| Error::validation(format!("{TIME} is not RFC 3339: {e}")))?
                .with_timezone(&Utc),
            None => msg
                .timestamp
                .and_then(|s| DateTime::from_timestamp(i64::try_from(s).ok()?, 0))
                .unwrap_or_else(Utc::now),
        };
        // The time is re-sent as an RFC 3339 UTC timestamp (a retry, a derived event), which
        // has four-digit years: an offset that moves `0000-01-01T00:00:00+01:00` into year -1,
        // or an AMQP timestamp past 9999, would make an event this very decoder refuses.
        if !(0..=9999).contains(&time.year()) {
            return Err(Error::validation(format!(
                "event time {time:?} is outside the years 0000-9999 RFC 3339 can express"
            )));
        }
        let datacontenttype = msg.content_type.unwrap_or(JSON).to_owned();
        let media = datacontenttype.split(';').next().unwrap_or_default().trim();
        if media != JSON && !media.ends_with("+json") {
            return Err(Error::validation(format!(
                "unsupported datacontenttype {datacontenttype:?} (expected JSON)"
            )));
        }
        let version = version_of(msg)?;
        let data = data(&kind, version, msg.body)?;
        Ok(Self {
            id,
            kind,
            source,
            time,
            subject: string_header(msg, SUBJECT)?,
            datacontenttype,
            dataschema: string_header(msg, DATASCHEMA)?,
            correlation_id: string_header(msg, CORRELATIONID)?
                .or_else(|| msg.correlation_id.map(str::to_owned)),
            causation_id: string_header(msg, CAUSATIONID)?,
            version,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Payload {
        n: u32,
    }

    #[test]
    fn wire_mapping_follows_cloudevents_binary_mode() {
        let cause = Envelope::new("svc/a", "a.happened", Payload { n: 1 }).correlation_id("corr-1");
        let ev = Envelope::new("svc/b", "b.happened", Payload { n: 2 })
            .subject("agg-7")
            .dataschema("urn:schema:b:v2")
            .caused_by(&cause);
        let msg = ev.to_message("events").unwrap();
        assert_eq!(msg.body, br#"{"n":2}"#);
        assert_eq!(msg.content_type.as_deref(), Some("application/json"));
        assert_eq!(msg.kind.as_deref(), Some("b.happened"));
        assert_eq!(msg.routing_key, "b.happened");
        assert_eq!(msg.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(msg.timestamp, Some(ev.time.timestamp() as u64));
        let h = |k: &str| match &msg.headers[k] {
            HeaderValue::String(s) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(h("cloudEvents:specversion"), "1.0");
        assert_eq!(h("cloudEvents:id"), ev.id.to_string());
        assert_eq!(h("cloudEvents:type"), "b.happened");
        assert_eq!(h("cloudEvents:source"), "svc/b");
        assert_eq!(h("cloudEvents:subject"), "agg-7");
        assert_eq!(h("cloudEvents:dataschema"), "urn:schema:b:v2");
        assert_eq!(h("cloudEvents:correlationid"), "corr-1");
        assert_eq!(h("cloudEvents:causationid"), cause.id.to_string());
        assert_eq!(h("cloudEvents:eventversion"), "1");
        assert!(DateTime::parse_from_rfc3339(&h("cloudEvents:time")).is_ok());
        assert!(!msg.headers.contains_key("cloudEvents:datacontenttype"));
        assert_eq!(ev.id.get_version_num(), 7);

        let back = decode(msg).unwrap();
        assert_eq!(back, ev);
    }

    fn valid() -> OutgoingMessage {
        Envelope::new("s", "t", Payload { n: 1 })
            .to_message("x")
            .unwrap()
    }

    /// Decodes `msg` as a consumer that received it would.
    fn decode(msg: OutgoingMessage) -> Result<Envelope<Payload>, Error> {
        Envelope::decode(Received {
            headers: &msg.headers,
            content_type: msg.content_type.as_deref(),
            correlation_id: msg.correlation_id.as_deref(),
            timestamp: msg.timestamp,
            body: &msg.body,
        })
    }

    #[test]
    fn version_travels_and_defaults_to_one() {
        let ev = Envelope::new("s", "t", Payload { n: 1 }).version(3);
        assert_eq!(decode(ev.to_message("x").unwrap()).unwrap().version, 3);
        // An event from before versions (or from a producer that does not set one) is version 1.
        let mut m = valid();
        m.headers.remove(EVENTVERSION);
        assert_eq!(decode(m).unwrap().version, 1);
        assert_eq!(
            decode(valid().header(EVENTVERSION, 2_i64)).unwrap().version,
            2
        );
        assert_eq!(Envelope::new("s", "t", ()).version(0).version, 1);
    }

    #[test]
    fn validation_errors_are_typed() {
        let mut m = valid();
        m.headers.remove(SPECVERSION);
        assert!(
            matches!(decode(m).unwrap_err().kind(), ErrorKind::Validation { reason } if reason.contains("specversion"))
        );

        let m = valid().header(SPECVERSION, "0.3");
        assert!(matches!(
            decode(m).unwrap_err().kind(),
            ErrorKind::Validation { .. }
        ));

        let mut m = valid();
        m.headers.remove(SOURCE);
        assert!(
            matches!(decode(m).unwrap_err().kind(), ErrorKind::Validation { reason } if reason.contains("source"))
        );

        let m = valid().header(ID, "not-a-uuid");
        assert!(matches!(
            decode(m).unwrap_err().kind(),
            ErrorKind::Validation { .. }
        ));

        let m = valid().header(TIME, 12_i64);
        assert!(matches!(
            decode(m).unwrap_err().kind(),
            ErrorKind::Validation { .. }
        ));

        let m = valid().content_type("text/plain");
        assert!(matches!(
            decode(m).unwrap_err().kind(),
            ErrorKind::Validation { .. }
        ));

        // Found by the amqp_delivery fuzz target: times outside RFC 3339's four-digit years
        // decoded, then the re-encoded event no longer did.
        let mut m = valid();
        m.headers.remove(TIME);
        m.timestamp = Some(1_058_345_284_128); // year 35505
        assert!(
            matches!(decode(m).unwrap_err().kind(), ErrorKind::Validation { reason } if reason.contains("9999"))
        );
        for (time, ok) in [
            ("0000-01-01T00:00:00+01:00", false),
            ("9999-12-31T23:59:59-00:01", false),
            ("0000-01-01T00:00:00Z", true),
            ("9999-12-31T23:59:59Z", true),
        ] {
            let decoded = decode(valid().header(TIME, time));
            assert_eq!(decoded.is_ok(), ok, "{time}: {decoded:?}");
            if let Ok(ev) = decoded {
                assert_eq!(decode(ev.to_message("x").unwrap()).unwrap(), ev);
            }
        }

        for bad in ["0", "-1", "v2", ""] {
            let m = valid().header(EVENTVERSION, bad);
            assert!(
                matches!(decode(m).unwrap_err().kind(), ErrorKind::Validation { reason } if reason.contains("eventversion")),
                "{bad:?}"
            );
        }

        let mut m = valid();
        m.body = b"{\"n\":\"x\"}".to_vec();
        assert!(matches!(
            decode(m).unwrap_err().kind(),
            ErrorKind::Decode { .. }
        ));
    }
}
