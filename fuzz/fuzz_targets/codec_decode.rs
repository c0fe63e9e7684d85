//! The internal protobuf contracts on arbitrary bytes: event-log records, shard requests and
//! replies, deliveries, status notifications, projections and snapshots. Decoding must never
//! panic, and whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use fleetcmd_contracts::codec::*;
use libfuzzer_sys::fuzz_target;

/// decode → encode → decode gives the first decoded value again. Compared through `Debug`:
/// a DOUBLE can be NaN, which `==` never equals, and `Debug` prints every field.
macro_rules! round_trip {
    ($bytes:expr, $decode:ident, $encode:expr) => {
        if let Ok(first) = $decode($bytes) {
            let again = $encode(&first);
            let second = $decode(&again).unwrap_or_else(|e| {
                panic!("{} of its own encoding failed: {e}", stringify!($decode))
            });
            assert_eq!(
                format!("{first:?}"),
                format!("{second:?}"),
                "{}",
                stringify!($decode)
            );
        }
    };
}

fuzz_target!(|bytes: &[u8]| {
    round_trip!(bytes, decode_record, |events: &Vec<_>| encode_record(
        events
    ));
    round_trip!(bytes, decode_shard_request, encode_shard_request);
    round_trip!(bytes, decode_shard_reply, encode_shard_reply);
    round_trip!(bytes, decode_delivery, encode_delivery);
    round_trip!(bytes, decode_changed, encode_changed);
    round_trip!(bytes, decode_projected, encode_projected);
    round_trip!(bytes, decode_snapshot, encode_snapshot);
});
