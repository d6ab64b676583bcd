//! Arbitrary model files: a clear error or a model that writes back the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_guard::model::Model;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = Model::from_bytes(data) {
        let _ = model.score("example.com");
        let again = Model::from_bytes(&model.to_bytes()).expect("a written model reads back");
        assert_eq!(again.to_bytes(), model.to_bytes());
    }
});
