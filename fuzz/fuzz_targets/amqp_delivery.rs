//! An AMQP delivery as the consumer sees it: the content-header properties decoded from the
//! wire by lapin's parser (headers field table included), the rest of the input as the body,
//! mapped to an IncomingMessage (attempt header, original route, trace context) and decoded as
//! a CloudEvents binary-mode event (chassis_messaging::envelope).
#![no_main]

use chassis_fuzz::check_incoming;
use chassis_messaging::IncomingMessage;
use lapin::protocol::basic::parse_properties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((body, props)) = parse_properties(data) else {
        return;
    };
    let msg = IncomingMessage::from_delivery_for_fuzzing(
        "events",
        "shop.order.placed",
        false,
        props,
        body.to_vec(),
    );
    check_incoming(&msg);
});
