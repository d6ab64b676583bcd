//! Arbitrary block-list files (published by third parties), compiled and queried: every name a list
//! blocks must then be reported blocked or excepted, never unlisted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_guard::blocklist::{Blocklist, List, Verdict};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let list = List::parse("fuzz", text);
    let compiled = Blocklist::compile(std::slice::from_ref(&list)).expect("compiles");
    for name in &list.block {
        assert_ne!(compiled.check(name), Verdict::Unlisted, "{name}");
    }
    for line in text.lines().take(16) {
        let _ = compiled.check(line);
    }
});
