//! Arbitrary wg-quick files; whatever parses must render and parse back to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = nx1_vpn::wg_quick::parse(text) {
            let again = nx1_vpn::wg_quick::parse(&config.render()).expect("rendered config parses");
            assert_eq!(again, config);
        }
    }
});
