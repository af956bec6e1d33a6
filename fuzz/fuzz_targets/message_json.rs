//! The JSON form of a message (chassis_messaging::OutgoingMessage: the outbox's stored rows and
//! the in-memory transport), received and decoded as a CloudEvents event; the JSON form
//! round-trips.
#![no_main]

use chassis_fuzz::check_incoming;
use chassis_messaging::{IncomingMessage, OutgoingMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = serde_json::from_slice::<OutgoingMessage>(data) else {
        return;
    };
    let json = serde_json::to_vec(&msg).expect("a message serialises");
    assert_eq!(
        serde_json::from_slice::<OutgoingMessage>(&json).expect("and parses"),
        msg
    );
    let incoming = IncomingMessage::from_outgoing(msg);
    check_incoming(&incoming);
});
