//! Device update bodies on `.../response/json`: `device::parse_update` and
//! `peek_client_token` on arbitrary bytes, with the invariants of `check_update`.
#![no_main]

use fleetcmd_domain::topics::UpdateFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    fleetcmd_fuzz::check_update(UpdateFormat::Json, body);
});
