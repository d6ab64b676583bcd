//! Arbitrary query names (anyone with a tunnel chooses them) scored by the built-in models:
//! never a panic, and every score a probability.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_guard::model::{Kind, Model, builtin};
use std::sync::LazyLock;

static MODELS: LazyLock<[Model; 2]> = LazyLock::new(|| {
    [Kind::Dga, Kind::Phishing].map(|k| builtin(k).expect("built-in model"))
});

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    for model in MODELS.iter() {
        if let Some(s) = model.score(name) {
            assert!((0.0..=1.0).contains(&s.score), "{name:?}: {}", s.score);
        }
    }
});
