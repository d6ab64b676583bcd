//! Arbitrary text on the UAPI socket.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(nx1_vpn::uapi::Request::Set(set)) = nx1_vpn::uapi::parse_request(text) {
            let _ = nx1_vpn::uapi::only_removals(&set);
        }
    }
});
