//! Whatever a node sends a device: every sync message parses or fails cleanly, and a device
//! that applies a `Changes` it was sent either adopts it or refuses it, never panics. (The
//! fuzzer cannot forge the account's signatures, so refusals are what it mostly reaches; the
//! point is that the path to them is sound.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vault::client::{Header, Vault};
use nx1_vault::crypto::{KdfParams, MasterKeys};
use nx1_vault::wire;
use std::sync::LazyLock;

/// One account, made once: its cache and keys, so every input starts from the same state.
static ACCOUNT: LazyLock<(Header, Vec<u8>, MasterKeys)> = LazyLock::new(|| {
    let (mut v, reg) = Vault::create("fuzz", b"pw", KdfParams::FLOOR).unwrap();
    v.add(nx1_vault::item::Item {
        name: "x".into(),
        ..Default::default()
    });
    let (header, sealed) = v.save().unwrap();
    let pre = wire::Prelogin {
        salt: reg.salt,
        kdf: reg.kdf,
    };
    let master = Vault::master_for_login("fuzz", b"pw", &pre, None).unwrap();
    (header, sealed, master)
});

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<wire::Push>(data);
    let _ = serde_json::from_slice::<wire::Conflict>(data);
    let _ = serde_json::from_slice::<wire::Session>(data);
    let _ = serde_json::from_slice::<wire::Register>(data).map(|r| wire::register_message(&r));
    if let Ok(changes) = serde_json::from_slice::<wire::Changes>(data) {
        let (header, sealed, master) = &*ACCOUNT;
        let mut v = Vault::unlock_with(header.clone(), sealed, master).unwrap();
        let before = v.seen();
        if v.apply_changes(changes, 1).is_err() {
            assert_eq!(v.seen(), before, "a refused pull changes nothing");
        }
        let _ = v.items();
    }
});
