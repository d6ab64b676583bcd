//! A device's vault: the unlocked state, the offline queue of changes, and the sync steps, as
//! pure code over messages and bytes (the caller does HTTP and files).
//!
//! The device keeps the server's records (ciphertext) as last verified, plus its own pending
//! changes with the version each was based on. Sync is: [`Vault::apply_changes`] (verify the
//! manifest chain and root, adopt the records, merge pending edits that raced with others),
//! then [`Vault::prepare_push`] / [`Vault::pushed`] until nothing is pending. A 409 means
//! someone else pushed first: pull again and retry; the merge keeps both edits.

use crate::crypto::{self, CryptoError, KdfParams, Key, MasterKeys, Purpose, Slot};
use crate::ids::{AccountId, DeviceId, ItemId};
use crate::item::{self, Item};
use crate::manifest::{self, Manifest, ManifestError, Seen};
use crate::record::ItemRecord;
use crate::wire;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Format of the local cache file.
pub const CACHE_FORMAT: u8 = 1;

/// Why a vault operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Crypto failure; on unlock this means a wrong password.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The server's history is not trustworthy.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The server sent something malformed.
    #[error("the server sent an invalid response: {0}")]
    Protocol(String),
    /// No such item.
    #[error("no item {0}")]
    NoItem(String),
    /// The local cache file is unreadable.
    #[error("the local vault cache is unreadable: {0}")]
    Cache(String),
}

/// The part of the cache file kept in clear: what unlocking needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Cache format.
    pub format: u8,
    /// The account's name as the user typed it.
    pub name: String,
    /// The account.
    pub account: AccountId,
    /// This device.
    pub device: DeviceId,
    /// Argon2id salt.
    #[serde(with = "crate::b64")]
    pub salt: Vec<u8>,
    /// The KDF parameters this device pinned.
    pub kdf: KdfParams,
    /// The account key, wrapped by the key-encryption key.
    #[serde(with = "crate::b64")]
    pub wrapped_key: Vec<u8>,
}

/// A local change not yet on the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    /// The server version it was based on (0: a new item).
    base_version: u64,
    /// The item at that version (for the three-way merge); `None` for a new item.
    base: Option<Item>,
    /// The new content; `None` deletes.
    item: Option<Item>,
}

/// The sealed part of the cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    records: BTreeMap<ItemId, ItemRecord>,
    pending: BTreeMap<ItemId, Pending>,
    seen: Option<Seen>,
}

/// An unlocked vault.
pub struct Vault {
    header: Header,
    account_key: Key,
    manifest_key: SigningKey,
    state: State,
}

impl Drop for Vault {
    /// Wipes the plaintext this vault holds (queued items and their bases); the keys wipe
    /// themselves. Items handed out by [`Vault::items`] and [`Vault::get`] are the caller's.
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for p in self.state.pending.values_mut() {
            if let Some(item) = &mut p.item {
                item.zeroize();
            }
            if let Some(base) = &mut p.base {
                base.zeroize();
            }
        }
    }
}

/// What a pull did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PullReport {
    /// Records received.
    pub received: usize,
    /// Local edits merged with someone else's edit of the same item.
    pub merged: usize,
    /// Local deletions dropped because the item was edited elsewhere meanwhile.
    pub kept: usize,
    /// The change number now seen.
    pub seq: u64,
}

/// A push ready to send, and what the state becomes when it lands.
pub struct Prepared {
    /// The request body.
    pub push: wire::Push,
    records: BTreeMap<ItemId, ItemRecord>,
    done: Vec<ItemId>,
}

fn account_key_slot(account: &AccountId) -> Slot<'_> {
    Slot {
        purpose: Purpose::AccountKey,
        account,
        item: ItemId::default(),
        version: 0,
    }
}

fn cache_slot<'a>(account: &'a AccountId, device: &DeviceId) -> Slot<'a> {
    Slot {
        purpose: Purpose::LocalCache,
        account,
        item: ItemId::from_bytes(*device.as_bytes()),
        version: u64::from(CACHE_FORMAT),
    }
}

impl Vault {
    /// Creates a new account on this device: fresh salt and account key. Returns the vault and
    /// the registration to send.
    pub fn create(
        name: &str,
        password: &[u8],
        kdf: KdfParams,
    ) -> Result<(Vault, wire::Register), VaultError> {
        let account = AccountId::from_name(name);
        let salt = crypto::random::<16>();
        let master = crypto::derive_master(password, &salt, &kdf, &account)?;
        let account_key = Key::generate();
        let wrapped_key = crypto::wrap(&master.kek, &account_key_slot(&account), &account_key)?;
        let header = Header {
            format: CACHE_FORMAT,
            name: name.trim().to_owned(),
            account,
            device: DeviceId::random(),
            salt: salt.to_vec(),
            kdf,
            wrapped_key,
        };
        let vault = Vault {
            header,
            manifest_key: crypto::manifest_key(&account_key),
            account_key,
            state: State::default(),
        };
        let reg = vault.registration(&master);
        Ok((vault, reg))
    }

    /// The registration of this account, from the master keys: to create the account on a
    /// node (at first, and later on a replica that does not hold it yet).
    pub fn registration(&self, master: &MasterKeys) -> wire::Register {
        let mut reg = wire::Register {
            account: self.header.account,
            salt: self.header.salt.clone(),
            kdf: self.header.kdf,
            auth_key: master.auth.verifying_key().to_bytes().to_vec(),
            manifest_key: self.manifest_public().to_bytes().to_vec(),
            wrapped_key: self.header.wrapped_key.clone(),
            proof: Vec::new(),
        };
        reg.proof = master
            .auth
            .sign(&wire::register_message(&reg))
            .to_bytes()
            .to_vec();
        reg
    }

    /// Derives the master keys for logging in to a server: checks the server's KDF
    /// parameters against `pinned` (this device's, if it has any) and the floor.
    pub fn master_for_login(
        name: &str,
        password: &[u8],
        prelogin: &wire::Prelogin,
        pinned: Option<&KdfParams>,
    ) -> Result<MasterKeys, VaultError> {
        match pinned {
            Some(p) => prelogin.kdf.check_against(p)?,
            None => prelogin.kdf.check()?,
        }
        let salt: [u8; 16] = prelogin
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Protocol("salt is not 16 bytes".into()))?;
        Ok(crypto::derive_master(
            password,
            &salt,
            &prelogin.kdf,
            &AccountId::from_name(name),
        )?)
    }

    /// Signs a login challenge.
    pub fn answer(master: &MasterKeys, account: &AccountId, challenge: &[u8]) -> wire::Login {
        wire::Login {
            account: *account,
            challenge: challenge.to_vec(),
            signature: master
                .auth
                .sign(&wire::login_message(account, challenge))
                .to_bytes()
                .to_vec(),
        }
    }

    /// Sets up this device for an existing account after a login: unwraps the account key
    /// the server returned (which fails on a wrong password).
    pub fn join(
        name: &str,
        master: &MasterKeys,
        prelogin: &wire::Prelogin,
        session: &wire::Session,
    ) -> Result<Vault, VaultError> {
        let account = AccountId::from_name(name);
        let account_key = crypto::unwrap(
            &master.kek,
            &account_key_slot(&account),
            &session.wrapped_key,
        )?;
        Ok(Vault {
            header: Header {
                format: CACHE_FORMAT,
                name: name.trim().to_owned(),
                account,
                device: DeviceId::random(),
                salt: prelogin.salt.clone(),
                kdf: prelogin.kdf,
                wrapped_key: session.wrapped_key.clone(),
            },
            manifest_key: crypto::manifest_key(&account_key),
            account_key,
            state: State::default(),
        })
    }

    /// Unlocks the local cache with the master password (no network needed).
    pub fn unlock(header: Header, sealed: &[u8], password: &[u8]) -> Result<Vault, VaultError> {
        let salt: [u8; 16] = header
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Cache("salt is not 16 bytes".into()))?;
        let master = crypto::derive_master(password, &salt, &header.kdf, &header.account)?;
        Self::unlock_with(header, sealed, &master)
    }

    /// Unlocks the local cache with already derived master keys.
    pub fn unlock_with(
        header: Header,
        sealed: &[u8],
        master: &MasterKeys,
    ) -> Result<Vault, VaultError> {
        if header.format != CACHE_FORMAT {
            return Err(VaultError::Cache(format!(
                "format {} is not {CACHE_FORMAT}",
                header.format
            )));
        }
        let account_key = crypto::unwrap(
            &master.kek,
            &account_key_slot(&header.account),
            &header.wrapped_key,
        )?;
        let json = crypto::open(
            &account_key,
            &cache_slot(&header.account, &header.device),
            sealed,
        )?;
        let state: State =
            serde_json::from_slice(&json).map_err(|e| VaultError::Cache(e.to_string()))?;
        Ok(Vault {
            manifest_key: crypto::manifest_key(&account_key),
            header,
            account_key,
            state,
        })
    }

    /// The header and sealed state to write to the cache file.
    pub fn save(&self) -> Result<(Header, Vec<u8>), VaultError> {
        let json = Zeroizing::new(serde_json::to_vec(&self.state).expect("state serializes"));
        let sealed = crypto::seal(
            &self.account_key,
            &cache_slot(&self.header.account, &self.header.device),
            &json,
        )?;
        Ok((self.header.clone(), sealed))
    }

    /// The clear header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Re-pins stronger KDF parameters (after a login that used them).
    ///
    /// Only once the key-encryption key of those parameters is proven to wrap this account's
    /// key: `session.wrapped_key` must open under `master` (derived with the new parameters)
    /// to the account key this device holds. A node cannot pass that check without the
    /// password, so it cannot make a device adopt parameters of its choosing.
    pub fn pin_kdf(
        &mut self,
        prelogin: &wire::Prelogin,
        session: &wire::Session,
        master: &MasterKeys,
    ) -> Result<(), VaultError> {
        prelogin.kdf.check_against(&self.header.kdf)?;
        let key = crypto::unwrap(
            &master.kek,
            &account_key_slot(&self.header.account),
            &session.wrapped_key,
        )?;
        if key.as_bytes() != self.account_key.as_bytes() {
            return Err(VaultError::Protocol(
                "the node holds another account key for this account".into(),
            ));
        }
        self.header.kdf = prelogin.kdf;
        self.header.salt.clone_from(&prelogin.salt);
        self.header.wrapped_key.clone_from(&session.wrapped_key);
        Ok(())
    }

    /// Public half of the manifest key.
    pub fn manifest_public(&self) -> VerifyingKey {
        self.manifest_key.verifying_key()
    }

    /// The newest change this device has seen (the pull cursor).
    pub fn seen(&self) -> Option<Seen> {
        self.state.seen
    }

    /// Bytes a replica holds for this vault as last verified: every record's key and body,
    /// tombstones included (what the server counts against the account's quota).
    pub fn stored_bytes(&self) -> u64 {
        self.state
            .records
            .values()
            .map(|r| (r.key.len() + r.body.len()) as u64)
            .sum()
    }

    /// Changes waiting to be pushed.
    pub fn pending(&self) -> usize {
        self.state.pending.len()
    }

    /// Every live item, local changes included, sorted by name.
    pub fn items(&self) -> Result<Vec<(ItemId, Item)>, VaultError> {
        let mut out = Vec::new();
        for (id, rec) in &self.state.records {
            if self.state.pending.contains_key(id) || rec.deleted {
                continue;
            }
            out.push((*id, rec.open(&self.header.account, &self.account_key)?.0));
        }
        for (id, p) in &self.state.pending {
            if let Some(item) = &p.item {
                out.push((*id, item.clone()));
            }
        }
        out.sort_by_key(|a| a.1.name.to_lowercase());
        Ok(out)
    }

    /// One item by id.
    pub fn get(&self, id: &ItemId) -> Result<Item, VaultError> {
        if let Some(p) = self.state.pending.get(id) {
            return p
                .item
                .clone()
                .ok_or_else(|| VaultError::NoItem(id.to_string()));
        }
        match self.state.records.get(id) {
            Some(r) if !r.deleted => Ok(r.open(&self.header.account, &self.account_key)?.0),
            _ => Err(VaultError::NoItem(id.to_string())),
        }
    }

    /// Finds items by id, id prefix (at least 6 hex digits), or exact name (case-insensitive).
    pub fn find(&self, what: &str) -> Result<Vec<(ItemId, Item)>, VaultError> {
        let w = what.trim().to_lowercase();
        Ok(self
            .items()?
            .into_iter()
            .filter(|(id, it)| {
                it.name.to_lowercase() == w || (w.len() >= 6 && id.to_string().starts_with(&w))
            })
            .collect())
    }

    /// Adds an item; it is queued until the next sync.
    pub fn add(&mut self, item: Item) -> ItemId {
        let id = ItemId::random();
        self.state.pending.insert(
            id,
            Pending {
                base_version: 0,
                base: None,
                item: Some(item),
            },
        );
        id
    }

    /// Replaces an item's content; queued until the next sync.
    pub fn put(&mut self, id: &ItemId, item: Item) -> Result<(), VaultError> {
        self.change(id, Some(item))
    }

    /// Deletes an item (a tombstone is pushed at the next sync).
    pub fn remove(&mut self, id: &ItemId) -> Result<(), VaultError> {
        self.change(id, None)
    }

    fn change(&mut self, id: &ItemId, item: Option<Item>) -> Result<(), VaultError> {
        if let Some(p) = self.state.pending.get_mut(id) {
            if p.item.is_none() {
                return Err(VaultError::NoItem(id.to_string()));
            }
            if item.is_none() && p.base_version == 0 {
                // Never left the device: just forget it.
                self.state.pending.remove(id);
            } else {
                p.item = item;
            }
            return Ok(());
        }
        let rec = match self.state.records.get(id) {
            Some(r) if !r.deleted => r,
            _ => return Err(VaultError::NoItem(id.to_string())),
        };
        let base = rec.open(&self.header.account, &self.account_key)?.0;
        self.state.pending.insert(
            *id,
            Pending {
                base_version: rec.version,
                base: Some(base),
                item,
            },
        );
        Ok(())
    }

    /// Applies what the server says changed since [`Vault::seen`]: checks the manifest chain
    /// (rollback, fork, forgery), checks that the records add up to the signed root and open
    /// under the account key, adopts them, then merges local edits that raced with them.
    /// On any error nothing changes.
    pub fn apply_changes(
        &mut self,
        changes: wire::Changes,
        now: i64,
    ) -> Result<PullReport, VaultError> {
        let account = self.header.account;
        let seen = manifest::check_history(
            &self.manifest_public(),
            &account,
            self.state.seen,
            changes.head.as_ref(),
            &changes.chain,
        )?;
        let mut records = self.state.records.clone();
        let received = changes.items.len();
        for rec in changes.items {
            rec.check_shape().map_err(VaultError::Protocol)?;
            if let Some(old) = records.get(&rec.id)
                && old.version > rec.version
            {
                return Err(ManifestError::Root {
                    seq: seen.map_or(0, |s| s.seq),
                }
                .into());
            }
            if !rec.deleted {
                // Opening proves the record was sealed by this account for this slot.
                rec.open(&account, &self.account_key)?;
            }
            records.insert(rec.id, rec);
        }
        if let Some(head) = &changes.head {
            if manifest::root_of(&records) != head.root || records.len() as u64 != head.items {
                return Err(ManifestError::Root { seq: head.seq }.into());
            }
        } else if !records.is_empty() {
            return Err(ManifestError::Root { seq: 0 }.into());
        }

        // Merge pending changes that someone else's change overtook.
        let mut report = PullReport {
            received,
            seq: seen.map_or(0, |s| s.seq),
            ..PullReport::default()
        };
        let mut pending = self.state.pending.clone();
        for (id, p) in pending.iter_mut() {
            let Some(theirs) = records.get(id) else {
                continue;
            };
            if theirs.version <= p.base_version {
                continue;
            }
            let their_item = if theirs.deleted {
                None
            } else {
                Some(theirs.open(&account, &self.account_key)?.0)
            };
            match (&p.item, their_item) {
                // Deleted here, edited there: keep their edit, drop the delete.
                (None, Some(_)) => {
                    p.base_version = u64::MAX;
                    report.kept += 1;
                }
                // Edited here, deleted there: our edit brings the item back.
                (Some(_), None) => {
                    p.base_version = theirs.version;
                    p.base = None;
                }
                (None, None) => p.base_version = u64::MAX,
                // The same content already landed (our own push whose answer was lost, or
                // the same edit made twice): nothing left to send.
                (Some(ours), Some(their_item)) if *ours == their_item => {
                    p.base_version = u64::MAX;
                }
                (Some(ours), Some(their_item)) => {
                    let base = p.base.clone().unwrap_or_default();
                    p.item = Some(item::merge(&base, ours, &their_item, now));
                    p.base_version = theirs.version;
                    p.base = Some(their_item);
                    report.merged += 1;
                }
            }
        }
        pending.retain(|_, p| p.base_version != u64::MAX);
        self.state.records = records;
        self.state.pending = pending;
        self.state.seen = seen;
        Ok(report)
    }

    /// Builds the next push from up to `max` pending changes, or `None` when nothing is
    /// pending.
    pub fn prepare_push(&self, max: usize, now: i64) -> Result<Option<Prepared>, VaultError> {
        if self.state.pending.is_empty() {
            return Ok(None);
        }
        let account = self.header.account;
        let mut records = self.state.records.clone();
        let mut items = Vec::new();
        let mut done = Vec::new();
        for (id, p) in self.state.pending.iter().take(max.max(1)) {
            let version = p.base_version + 1;
            let rec = match &p.item {
                None => ItemRecord::tombstone(*id, version),
                Some(item) => {
                    let key = match records.get(id) {
                        Some(r) if !r.deleted => Some(r.open(&account, &self.account_key)?.1),
                        _ => None,
                    };
                    ItemRecord::seal(
                        &account,
                        &self.account_key,
                        *id,
                        version,
                        item,
                        key.as_ref(),
                    )?
                    .0
                }
            };
            records.insert(*id, rec.clone());
            items.push(rec);
            done.push(*id);
        }
        let (seq, prev) = self
            .state
            .seen
            .map_or((1, [0; 32]), |s| (s.seq + 1, s.hash));
        let manifest = Manifest::sign(
            &self.manifest_key,
            account,
            seq,
            prev,
            manifest::root_of(&records),
            records.len() as u64,
            self.header.device,
            now,
        );
        Ok(Some(Prepared {
            push: wire::Push {
                base: seq - 1,
                items,
                manifest,
            },
            records,
            done,
        }))
    }

    /// Adopts a push the server accepted.
    pub fn pushed(&mut self, prepared: Prepared) {
        for id in &prepared.done {
            self.state.pending.remove(id);
        }
        self.state.seen = Some(Seen {
            seq: prepared.push.manifest.seq,
            hash: prepared.push.manifest.hash(),
        });
        self.state.records = prepared.records;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy in-memory server with the real rules (CAS on the head and on each version),
    /// enough to exercise the client's sync logic without HTTP.
    #[derive(Default, Clone)]
    struct Server {
        manifests: Vec<Manifest>,
        items: BTreeMap<ItemId, (ItemRecord, u64)>,
    }

    impl Server {
        fn changes(&self, since: u64) -> wire::Changes {
            wire::Changes {
                head: self.manifests.last().cloned(),
                chain: if since == 0 {
                    Vec::new()
                } else {
                    self.manifests
                        .iter()
                        .filter(|m| m.seq > since)
                        .cloned()
                        .collect()
                },
                items: self
                    .items
                    .values()
                    .filter(|(_, s)| *s > since)
                    .map(|(r, _)| r.clone())
                    .collect(),
            }
        }

        fn push(&mut self, p: &wire::Push) -> bool {
            if p.base != self.manifests.len() as u64 {
                return false;
            }
            for r in &p.items {
                let cur = self.items.get(&r.id).map_or(0, |(c, _)| c.version);
                if cur + 1 != r.version {
                    return false;
                }
            }
            let seq = p.manifest.seq;
            for r in &p.items {
                self.items.insert(r.id, (r.clone(), seq));
            }
            self.manifests.push(p.manifest.clone());
            true
        }
    }

    fn sync(v: &mut Vault, s: &mut Server) -> PullReport {
        let mut merged = 0;
        for _ in 0..10 {
            let since = v.seen().map_or(0, |s| s.seq);
            let mut report = v.apply_changes(s.changes(since), 1).unwrap();
            merged += report.merged;
            report.merged = merged;
            match v.prepare_push(100, 1).unwrap() {
                None => return report,
                Some(p) => {
                    if s.push(&p.push) {
                        v.pushed(p);
                    }
                }
            }
        }
        panic!("sync did not settle");
    }

    fn two_devices() -> (Vault, Vault, Server) {
        let (mut a, reg) = Vault::create("alice", b"pw", KdfParams::FLOOR).unwrap();
        let mut s = Server::default();
        sync(&mut a, &mut s);
        let pre = wire::Prelogin {
            salt: reg.salt.clone(),
            kdf: reg.kdf,
        };
        let master = Vault::master_for_login("alice", b"pw", &pre, None).unwrap();
        let session = wire::Session {
            token: String::new(),
            expires_in: 0,
            wrapped_key: reg.wrapped_key.clone(),
        };
        let b = Vault::join("alice", &master, &pre, &session).unwrap();
        (a, b, s)
    }

    fn login(name: &str, password: &str) -> Item {
        Item {
            name: name.into(),
            username: "alice".into(),
            password: password.into(),
            ..Item::default()
        }
    }

    #[test]
    fn concurrent_edits_of_one_item_both_survive() {
        let (mut a, mut b, mut s) = two_devices();
        let id = a.add(login("Mail", "one"));
        sync(&mut a, &mut s);
        sync(&mut b, &mut s);
        assert_eq!(b.get(&id).unwrap().password, "one");

        let mut ia = a.get(&id).unwrap();
        ia.set_text("username", "alice@mail.example", 5);
        a.put(&id, ia).unwrap();
        let mut ib = b.get(&id).unwrap();
        ib.set_text("password", "two", 6);
        b.put(&id, ib).unwrap();

        sync(&mut a, &mut s);
        let r = sync(&mut b, &mut s);
        assert_eq!(r.merged, 1);
        sync(&mut a, &mut s);
        for v in [&a, &b] {
            let it = v.get(&id).unwrap();
            assert_eq!(it.username, "alice@mail.example");
            assert_eq!(it.password, "two");
        }
        assert_eq!(a.seen(), b.seen());
    }

    #[test]
    fn offline_edits_sync_later_and_deletes_propagate() {
        let (mut a, mut b, mut s) = two_devices();
        // Offline on A: three adds, an edit and a delete, all queued.
        let x = a.add(login("X", "x"));
        let y = a.add(login("Y", "y"));
        let z = a.add(login("Z", "z"));
        a.remove(&z).unwrap();
        let mut xi = a.get(&x).unwrap();
        xi.notes = "offline note".into();
        a.put(&x, xi).unwrap();
        assert_eq!(a.pending(), 2);
        sync(&mut a, &mut s);
        assert_eq!(a.pending(), 0);
        sync(&mut b, &mut s);
        assert_eq!(b.get(&x).unwrap().notes, "offline note");
        b.remove(&y).unwrap();
        sync(&mut b, &mut s);
        sync(&mut a, &mut s);
        assert!(matches!(a.get(&y), Err(VaultError::NoItem(_))));
        assert_eq!(a.items().unwrap().len(), 1);
    }

    #[test]
    fn an_edit_beats_a_concurrent_delete() {
        let (mut a, mut b, mut s) = two_devices();
        let id = a.add(login("Bank", "1"));
        sync(&mut a, &mut s);
        sync(&mut b, &mut s);
        a.remove(&id).unwrap();
        let mut it = b.get(&id).unwrap();
        it.password = "2".into();
        b.put(&id, it).unwrap();
        sync(&mut a, &mut s);
        sync(&mut b, &mut s);
        sync(&mut a, &mut s);
        assert_eq!(a.get(&id).unwrap().password, "2");
    }

    #[test]
    fn server_lies_are_caught_and_change_nothing() {
        let (mut a, mut b, mut s) = two_devices();
        let id = a.add(login("Mail", "one"));
        sync(&mut a, &mut s);
        let snapshot = s.clone();
        let mut it = a.get(&id).unwrap();
        it.password = "two".into();
        a.put(&id, it).unwrap();
        sync(&mut a, &mut s);

        // Rollback: the server is restored from the snapshot.
        let err = a.apply_changes(snapshot.changes(0), 1).unwrap_err();
        assert!(
            matches!(err, VaultError::Manifest(ManifestError::Rollback { .. })),
            "{err}"
        );

        // Dropped item: the head is right but an item is missing.
        let mut c = s.changes(0);
        c.items.clear();
        assert!(matches!(
            b.apply_changes(c, 1),
            Err(VaultError::Manifest(ManifestError::Root { .. }))
        ));
        // Old version of an item under the new head.
        let mut c = s.changes(0);
        c.items = snapshot.changes(0).items;
        assert!(b.apply_changes(c, 1).is_err());
        // A record moved to another id.
        let mut c = s.changes(0);
        c.items[0].id = ItemId::random();
        assert!(b.apply_changes(c, 1).is_err());
        assert_eq!(b.seen(), None);

        // Fork: B is shown a history without A's second change, and builds on it.
        let mut forked = snapshot.clone();
        sync(&mut b, &mut forked);
        b.add(login("B's", "b"));
        sync(&mut b, &mut forked);
        // Now the server shows A the forked history: caught.
        let err = a
            .apply_changes(forked.changes(a.seen().unwrap().seq), 1)
            .unwrap_err();
        assert!(
            matches!(err, VaultError::Manifest(ManifestError::Fork { .. })),
            "{err}"
        );
        // And B, shown A's real history.
        let err = b
            .apply_changes(s.changes(b.seen().unwrap().seq), 1)
            .unwrap_err();
        assert!(matches!(err, VaultError::Manifest(_)), "{err}");
        assert_eq!(a.get(&id).unwrap().password, "two");
    }

    #[test]
    fn the_cache_unlocks_with_the_password_only() {
        let (mut a, _, mut s) = two_devices();
        a.add(login("Mail", "one"));
        sync(&mut a, &mut s);
        a.add(login("Queued", "q"));
        let (header, sealed) = a.save().unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"Queued"));
        let json = serde_json::to_string(&header).unwrap();
        let header: Header = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            Vault::unlock(header.clone(), &sealed, b"wrong"),
            Err(VaultError::Crypto(CryptoError::Open))
        ));
        let v = Vault::unlock(header, &sealed, b"pw").unwrap();
        assert_eq!(v.items().unwrap().len(), 2);
        assert_eq!(v.pending(), 1);
    }

    #[test]
    fn new_parameters_are_pinned_only_with_a_key_that_opens_to_this_account() {
        let (mut a, reg) = Vault::create("ivy", b"pw", KdfParams::FLOOR).unwrap();
        let stronger = wire::Prelogin {
            salt: vec![3; 16],
            kdf: KdfParams {
                m_kib: KdfParams::FLOOR.m_kib * 2,
                ..KdfParams::FLOOR
            },
        };
        let master = Vault::master_for_login("ivy", b"pw", &stronger, None).unwrap();
        // A node that claims new parameters but returns the old wrapping: refused, unchanged.
        let old = wire::Session {
            token: String::new(),
            expires_in: 0,
            wrapped_key: reg.wrapped_key.clone(),
        };
        assert!(a.pin_kdf(&stronger, &old, &master).is_err());
        assert_eq!(a.header().kdf, KdfParams::FLOOR);
        // The account key really wrapped under the new parameters: adopted, and the device
        // file then unlocks with the same password.
        let rewrapped = crypto::wrap(
            &master.kek,
            &account_key_slot(&a.header().account),
            &a.account_key,
        )
        .unwrap();
        let new = wire::Session {
            wrapped_key: rewrapped,
            ..old
        };
        a.pin_kdf(&stronger, &new, &master).unwrap();
        let (header, sealed) = a.save().unwrap();
        assert_eq!(header.kdf, stronger.kdf);
        Vault::unlock(header, &sealed, b"pw").unwrap();
    }

    #[test]
    fn weaker_kdf_from_a_server_is_refused() {
        let pre = wire::Prelogin {
            salt: vec![1; 16],
            kdf: KdfParams::FLOOR,
        };
        assert!(Vault::master_for_login("a", b"pw", &pre, Some(&KdfParams::DEFAULT)).is_err());
        let weak = wire::Prelogin {
            salt: vec![1; 16],
            kdf: KdfParams {
                m_kib: 8,
                t: 1,
                p: 1,
            },
        };
        assert!(Vault::master_for_login("a", b"pw", &weak, None).is_err());
    }
}
