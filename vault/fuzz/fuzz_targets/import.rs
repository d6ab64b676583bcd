//! Files users import from other password managers: any bytes, in any of the formats, give
//! items or an error, never a panic (and nothing huge from a small input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vault::import::{self, Format};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let formats = Format::ALL;
    let format = formats[pick as usize % formats.len()];
    if let Ok(items) = import::import(format, file) {
        assert!(items.len() <= file.len() + 1);
    }
    let _ = import::detect("fuzz", file);
    if pick % 7 == 0 {
        let _ = import::import_protected(file, "pw");
    }
});
