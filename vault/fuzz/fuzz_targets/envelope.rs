//! Sealed blobs and item records from untrusted storage: opening garbage fails cleanly, and
//! a blob sealed here opens only with its own key and slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vault::crypto::{self, Key, Purpose, Slot};
use nx1_vault::ids::{AccountId, ItemId};
use nx1_vault::record::ItemRecord;
use std::sync::LazyLock;

static KEY: LazyLock<Key> = LazyLock::new(Key::generate);

fuzz_target!(|data: &[u8]| {
    let account = AccountId::from_bytes([1; 16]);
    let slot = Slot {
        purpose: Purpose::ItemBody,
        account: &account,
        item: ItemId::from_bytes([2; 16]),
        version: data.len() as u64,
    };
    assert!(crypto::open(&KEY, &slot, data).is_err(), "forged a blob");
    if data.len() <= 4096 {
        let blob = crypto::seal(&KEY, &slot, data).unwrap();
        assert_eq!(&crypto::open(&KEY, &slot, &blob).unwrap()[..], data);
    }
    if let Ok(rec) = serde_json::from_slice::<ItemRecord>(data) {
        let _ = rec.check_shape();
        let _ = rec.hash();
        let _ = rec.open(&account, &KEY);
    }
});
