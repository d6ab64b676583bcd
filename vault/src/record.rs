//! An item as the server stores it: opaque id, version, tombstone flag, the wrapped item key
//! and the sealed, padded body. Nothing else about the item leaves the device.

use crate::crypto::{self, CryptoError, Key, Purpose, Slot};
use crate::ids::{AccountId, ItemId};
use crate::item::Item;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Largest wrapped key or sealed body the protocol carries (a body of up to 1 MiB of item,
/// padded, plus the envelope).
pub const MAX_BLOB: usize = (1 << 20) + (64 << 10) + 128;

/// One version of one item, as stored on the server and in a device's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// The item.
    pub id: ItemId,
    /// Starts at 1 and goes up by one with every change, deletion included.
    pub version: u64,
    /// A tombstone: the item was deleted at this version; `key` and `body` are empty.
    #[serde(default)]
    pub deleted: bool,
    /// The item key, wrapped by the account key.
    #[serde(with = "crate::b64")]
    pub key: Vec<u8>,
    /// The item, sealed by the item key for this id and version.
    #[serde(with = "crate::b64")]
    pub body: Vec<u8>,
}

/// The item body's largest plaintext (its JSON).
pub const MAX_ITEM_JSON: usize = 1 << 20;

impl ItemRecord {
    /// Seals `item` as version `version` of `id`. `item_key` is the key the item already has
    /// (kept across versions), or `None` for a new item, which gets a fresh one.
    pub fn seal(
        account: &AccountId,
        account_key: &Key,
        id: ItemId,
        version: u64,
        item: &Item,
        item_key: Option<&Key>,
    ) -> Result<(ItemRecord, Key), CryptoError> {
        let key = item_key.cloned().unwrap_or_else(Key::generate);
        let json = Zeroizing::new(serde_json::to_vec(item).expect("items serialize"));
        if json.len() > MAX_ITEM_JSON {
            return Err(CryptoError::TooLarge(json.len()));
        }
        let wrapped = crypto::wrap(account_key, &key_slot(account, id), &key)?;
        let body = crypto::seal(&key, &body_slot(account, id, version), &json)?;
        Ok((
            ItemRecord {
                id,
                version,
                deleted: false,
                key: wrapped,
                body,
            },
            key,
        ))
    }

    /// A tombstone for `id` at `version`.
    pub fn tombstone(id: ItemId, version: u64) -> ItemRecord {
        ItemRecord {
            id,
            version,
            deleted: true,
            key: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Opens the record: its item key and the item. A tombstone has neither.
    pub fn open(&self, account: &AccountId, account_key: &Key) -> Result<(Item, Key), CryptoError> {
        if self.deleted {
            return Err(CryptoError::Malformed("a tombstone has no body"));
        }
        let key = crypto::unwrap(account_key, &key_slot(account, self.id), &self.key)?;
        let json = crypto::open(&key, &body_slot(account, self.id, self.version), &self.body)?;
        let item = serde_json::from_slice(&json).map_err(|_| CryptoError::Malformed("item"))?;
        Ok((item, key))
    }

    /// The hash the manifest commits to: id, version, tombstone flag and both blobs.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"nx1-vault/1 record\0");
        h.update(self.id.as_bytes());
        h.update(self.version.to_be_bytes());
        h.update([u8::from(self.deleted)]);
        h.update((self.key.len() as u64).to_be_bytes());
        h.update(&self.key);
        h.update((self.body.len() as u64).to_be_bytes());
        h.update(&self.body);
        h.finalize().into()
    }

    /// Checks the shape of a record received from the network (sizes, tombstone emptiness,
    /// version at least 1) before anything else looks at it.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.version == 0 {
            return Err(format!("item {}: version 0 (versions start at 1)", self.id));
        }
        if self.deleted && (!self.key.is_empty() || !self.body.is_empty()) {
            return Err(format!(
                "item {}: a tombstone carries no key or body",
                self.id
            ));
        }
        if !self.deleted && (self.key.is_empty() || self.body.is_empty()) {
            return Err(format!("item {}: key and body are required", self.id));
        }
        if self.key.len() > 512 {
            return Err(format!(
                "item {}: a wrapped key of {} bytes is over the 512-byte limit",
                self.id,
                self.key.len()
            ));
        }
        if self.body.len() > MAX_BLOB {
            return Err(format!(
                "item {}: {} bytes is over the {MAX_BLOB}-byte limit",
                self.id,
                self.body.len()
            ));
        }
        Ok(())
    }
}

fn key_slot(account: &AccountId, id: ItemId) -> Slot<'_> {
    Slot {
        purpose: Purpose::ItemKey,
        account,
        item: id,
        version: 0,
    }
}

fn body_slot(account: &AccountId, id: ItemId, version: u64) -> Slot<'_> {
    Slot {
        purpose: Purpose::ItemBody,
        account,
        item: id,
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Item {
        Item {
            name: "Bank".into(),
            username: "alice".into(),
            password: "hunter2".into(),
            ..Item::default()
        }
    }

    #[test]
    fn records_open_and_refuse_swaps() {
        let account = AccountId::random();
        let ak = Key::generate();
        let (a, ka) =
            ItemRecord::seal(&account, &ak, ItemId::random(), 1, &sample(), None).unwrap();
        let (item, key) = a.open(&account, &ak).unwrap();
        assert_eq!(item, sample());
        assert_eq!(key.as_bytes(), ka.as_bytes());
        assert!(a.check_shape().is_ok());

        // The server moves A's blobs under another item id: refused.
        let moved = ItemRecord {
            id: ItemId::random(),
            ..a.clone()
        };
        assert_eq!(moved.open(&account, &ak).unwrap_err(), CryptoError::Open);
        // Or replays version 1 claiming it is version 2: refused.
        let replayed = ItemRecord {
            version: 2,
            ..a.clone()
        };
        assert_eq!(replayed.open(&account, &ak).unwrap_err(), CryptoError::Open);
        // Or serves it to another account: refused.
        assert!(a.open(&AccountId::random(), &ak).is_err());
        // A new version keeps the key and changes the hash.
        let (a2, _) = ItemRecord::seal(&account, &ak, a.id, 2, &sample(), Some(&key)).unwrap();
        assert_ne!(a2.hash(), a.hash());
        assert_eq!(a2.open(&account, &ak).unwrap().0, sample());
        // Neither blob holds the plaintext.
        for needle in [&b"hunter2"[..], b"alice", b"Bank"] {
            assert!(!a.body.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn the_largest_item_fits_the_protocol() {
        let account = AccountId::random();
        let ak = Key::generate();
        let mut item = sample();
        let overhead = serde_json::to_vec(&item).unwrap().len();
        item.notes = "n".repeat(MAX_ITEM_JSON - overhead);
        assert_eq!(serde_json::to_vec(&item).unwrap().len(), MAX_ITEM_JSON);
        let (rec, _) = ItemRecord::seal(&account, &ak, ItemId::random(), 1, &item, None).unwrap();
        assert_eq!(rec.check_shape(), Ok(()));
        item.notes.push('n');
        assert!(ItemRecord::seal(&account, &ak, ItemId::random(), 1, &item, None).is_err());
    }

    #[test]
    fn shapes_are_checked() {
        let t = ItemRecord::tombstone(ItemId::random(), 3);
        assert!(t.check_shape().is_ok());
        assert!(
            ItemRecord {
                version: 0,
                ..t.clone()
            }
            .check_shape()
            .is_err()
        );
        assert!(
            ItemRecord {
                key: vec![1],
                ..t.clone()
            }
            .check_shape()
            .is_err()
        );
        assert!(
            ItemRecord {
                deleted: false,
                ..t
            }
            .check_shape()
            .is_err()
        );
    }
}
