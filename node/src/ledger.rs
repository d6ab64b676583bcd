//! The credit ledger: what accounts earned, were granted and spent, as signed entries held by
//! each account's replicas.
//!
//! Every entry is signed by the party whose say-so it is, so any node can check it and none can
//! forge one:
//! - **earn**: the node that carried traffic claims it for its owner's account; inside is the
//!   client's signed, cumulative usage receipt, which fixes the amount (`[credits]` rates ×
//!   bytes). A claim only grows (the receipt's totals only grow); the client's account must
//!   not be the one paid (no earning from one's own traffic).
//! - **spend**: the account, or a device key it registered, pays for a service.
//! - **grant**: an issuer the node trusts (`[credits] issuers`) tops an account up.
//! - **device**: the account registers (or retires) a device key that may spend for it.
//!
//! An account's entries live on its replicas: the [`REPLICAS`] live mesh members with an API
//! ranked first by rendezvous hashing on the account (the node alone without a mesh). A spend
//! is sent to all of them, and each takes it only if the balance it holds covers it; the
//! spend counts when a majority took it. Two spends of the same credits at once on two nodes
//! therefore cannot both win: every two majorities share a replica, and that replica takes only
//! the first. Replicas compare their entries every few seconds and take what they lack (spends
//! then without a balance check: they were already decided); an account whose merged entries
//! spend more than it has is overdrawn, which shows a double spend that got past the majority
//! rule (possible only with replicas failing mid-spend), and it can spend nothing more until
//! its earnings cover it.

use crate::credits::SignedReceipt;
use crate::store::Store;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// What an entry's signature covers before the entry's JSON.
const DOMAIN: &[u8] = b"nx1-credit-entry/1\0";
/// How many nodes hold each account's entries.
pub const REPLICAS: usize = 3;
/// Largest entry text taken (an earning carries a receipt).
pub const MAX_ENTRY: usize = 4096;
/// Most entries in one request to a replica.
pub const MAX_BATCH: usize = 512;
/// How long a spend holds its credits on a replica while its majority is not known, by
/// default (`[credits] spend_hold_secs`).
pub const SPEND_HOLD_SECS: i64 = 30;
/// Entries waiting to be sent again, at most.
const MAX_OUTBOX: usize = 100_000;
/// How long a replica has to answer.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(3);
const MIB: u128 = 1 << 20;

/// The duty an earning is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Duty {
    /// Carrying a client's traffic to the internet.
    Exit,
    /// Forwarding a client's datagrams to its exit.
    Relay,
    /// Holding a replica of a client's vault.
    Storage,
}

impl Duty {
    /// Its name, as in the ledger's `service` column.
    pub fn name(self) -> &'static str {
        match self {
            Duty::Exit => "exit",
            Duty::Relay => "relay",
            Duty::Storage => "storage",
        }
    }
}

/// What signs a holding before its JSON.
const HOLDING_DOMAIN: &[u8] = b"nx1-storage-holding/1\0";

/// A client account's confirmation that a node holds a replica of its vault today: what
/// storage duty earns on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holding {
    /// Format.
    pub v: u8,
    /// The client's credits account; it signs.
    pub account: String,
    /// The node that holds the replica.
    pub node: String,
    /// The vault account held.
    pub vault: String,
    /// Bytes of it the node holds, as the client verified them.
    pub bytes: u64,
    /// The day (Unix time / 86400) it confirms.
    pub day: i64,
}

impl Holding {
    /// Signs it with the account's key.
    pub fn sign(&self, key: &SigningKey) -> SignedReceipt {
        let (receipt, signature) = crate::signed::sign(HOLDING_DOMAIN, self, key);
        SignedReceipt { receipt, signature }
    }

    /// Parses a signed holding and checks the account's signature.
    pub fn verify(signed: &SignedReceipt) -> Result<Holding, LedgerError> {
        if signed.receipt.len() > crate::credits::MAX_RECEIPT {
            return Err(LedgerError::Receipt("the holding is too long".into()));
        }
        let h: Holding = serde_json::from_str(&signed.receipt)
            .map_err(|e| LedgerError::Receipt(e.to_string()))?;
        if h.v != 1 {
            return Err(LedgerError::Receipt(format!("holding format {}", h.v)));
        }
        crate::signed::verify(
            HOLDING_DOMAIN,
            &signed.receipt,
            &signed.signature,
            &h.account,
        )
        .map_err(|_| LedgerError::Receipt("the holding's signature does not verify".into()))?;
        Ok(h)
    }
}

/// A node's claim on what it carried for a client: the client's receipt, signed by the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Earn {
    /// Format.
    pub v: u8,
    /// The account paid (the node owner's).
    pub account: String,
    /// The node that carried the traffic; it signs.
    pub node: String,
    /// What it did.
    pub duty: Duty,
    /// The client's signed receipt (JSON text), or for storage its signed [`Holding`].
    pub receipt: String,
    /// The client's signature over it.
    pub receipt_signature: String,
    /// Unix time of the claim.
    pub at: i64,
}

/// What a node charges a client's account for tunnel traffic beyond the free tier: the
/// client's receipt, signed by the node that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    /// Format.
    pub v: u8,
    /// The client's account, which signed the receipt.
    pub account: String,
    /// The node that carried the traffic; it signs.
    pub node: String,
    /// The client's signed receipt (JSON text).
    pub receipt: String,
    /// The client's signature over it.
    pub receipt_signature: String,
    /// Bytes of the session the node let go free (its free tier).
    pub free_bytes: u64,
    /// Unix time of the charge.
    pub at: i64,
}

/// A payment for a service, signed by the account or one of its device keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spend {
    /// Format.
    pub v: u8,
    /// Random id (base64, 16 bytes): a spend counts once however often it is sent.
    pub id: String,
    /// The account that pays.
    pub account: String,
    /// The key that signs: the account's, or a device key it registered.
    pub signer: String,
    /// The service paid for (`vault_sync`, …).
    pub service: String,
    /// Credits.
    pub amount: u64,
    /// What exactly is paid for (for `vault_sync`: the push's SHA-256).
    pub memo: String,
    /// Unix time it was signed.
    pub at: i64,
}

/// Credits an issuer gives an account (a top-up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Format.
    pub v: u8,
    /// Random id (base64, 16 bytes).
    pub id: String,
    /// The account topped up.
    pub account: String,
    /// The issuer (its key signs).
    pub issuer: String,
    /// Credits.
    pub amount: u64,
    /// Why, in words.
    pub memo: String,
    /// Unix time it was signed.
    pub at: i64,
}

/// A device key an account lets spend for it (or no longer does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKey {
    /// Format.
    pub v: u8,
    /// The account; it signs.
    pub account: String,
    /// The device's ed25519 public key.
    pub device: String,
    /// Whether it may spend.
    pub active: bool,
    /// Unix time in milliseconds it was signed: the newest statement about a device wins.
    pub at_ms: i64,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// Earned by carrying traffic.
    Earn(Earn),
    /// Charged for tunnel traffic.
    Charge(Charge),
    /// Spent on a service.
    Spend(Spend),
    /// Granted by an issuer.
    Grant(Grant),
    /// A device key registered or retired.
    Device(DeviceKey),
}

impl Entry {
    /// The account whose balance it moves.
    pub fn account(&self) -> &str {
        match self {
            Entry::Earn(e) => &e.account,
            Entry::Charge(c) => &c.account,
            Entry::Spend(s) => &s.account,
            Entry::Grant(g) => &g.account,
            Entry::Device(d) => &d.account,
        }
    }

    /// The key that must sign it.
    pub fn signer(&self) -> &str {
        match self {
            Entry::Earn(e) => &e.node,
            Entry::Charge(c) => &c.node,
            Entry::Spend(s) => &s.signer,
            Entry::Grant(g) => &g.issuer,
            Entry::Device(d) => &d.account,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Entry::Earn(_) => "earn",
            Entry::Charge(_) => "charge",
            Entry::Spend(_) => "spend",
            Entry::Grant(_) => "grant",
            Entry::Device(_) => "device",
        }
    }

    fn version(&self) -> u8 {
        match self {
            Entry::Earn(e) => e.v,
            Entry::Charge(c) => c.v,
            Entry::Spend(s) => s.v,
            Entry::Grant(g) => g.v,
            Entry::Device(d) => d.v,
        }
    }
}

/// An entry as stored and sent: its exact JSON text and the signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedEntry {
    /// The entry's JSON.
    pub entry: String,
    /// Base64 ed25519 signature over the domain label and `entry`, by [`Entry::signer`].
    pub signature: String,
}

impl SignedEntry {
    /// Signs `entry` with `key` (which must be its signer to be taken).
    pub fn sign(entry: &Entry, key: &SigningKey) -> SignedEntry {
        let (entry, signature) = crate::signed::sign(DOMAIN, entry, key);
        SignedEntry { entry, signature }
    }

    /// Parses the entry and checks its signature.
    pub fn verify(&self) -> Result<Entry, LedgerError> {
        if self.entry.len() > MAX_ENTRY {
            return Err(LedgerError::Malformed(format!(
                "an entry of {} bytes; at most {MAX_ENTRY}",
                self.entry.len()
            )));
        }
        let entry: Entry =
            serde_json::from_str(&self.entry).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        if entry.version() != 1 {
            return Err(LedgerError::Malformed(format!(
                "entry format {}",
                entry.version()
            )));
        }
        crate::signed::verify(DOMAIN, &self.entry, &self.signature, entry.signer()).map_err(
            |e| match e {
                crate::signed::SignatureError::BadKey => {
                    LedgerError::Malformed("the signer is not an ed25519 key".into())
                }
                crate::signed::SignatureError::BadSignature => LedgerError::Signature,
            },
        )?;
        Ok(entry)
    }
}

/// Why an entry was refused, or a spend did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Not an entry of a known format.
    #[error("malformed entry: {0}")]
    Malformed(String),
    /// The signature does not verify under the entry's signer.
    #[error("bad signature")]
    Signature,
    /// The signer may not write this entry.
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// An earning whose receipt does not back it.
    #[error("the receipt does not back this claim: {0}")]
    Receipt(String),
    /// Another entry holds the same id.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The balance does not cover the spend.
    #[error(
        "out of credits — contribute or top up: the account has {balance} credits, this needs {amount}"
    )]
    OutOfCredits {
        /// The balance the replica holds.
        balance: i64,
        /// What the spend needs.
        amount: u64,
    },
    /// Fewer than a majority of the account's replicas took the spend.
    #[error(
        "the spend did not reach a majority of the account's replicas ({took} of {replicas} took it{why})"
    )]
    NoMajority {
        /// Replicas that took it.
        took: usize,
        /// Replicas of the account.
        replicas: usize,
        /// What the others said.
        why: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        LedgerError::Store(e.to_string())
    }
}

impl LedgerError {
    /// The HTTP status that carries it.
    pub fn status(&self) -> u16 {
        match self {
            LedgerError::OutOfCredits { .. } => 402,
            LedgerError::Conflict(_) => 409,
            LedgerError::NoMajority { .. } => 503,
            LedgerError::Store(_) => 500,
            _ => 400,
        }
    }
}

/// What taking an entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    /// A new entry.
    New,
    /// An earning claimed for more, or a newer device statement.
    Raised,
    /// Already held (a replay, or nothing new): nothing changed.
    Same,
}

/// How a replica takes a spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new spend: only if the balance covers it.
    Check,
    /// An entry another replica holds: the spend was already decided.
    Merge,
}

/// Rates and free tiers, from `[credits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    /// Credits earned per MiB carried through an exit (up and down).
    pub exit_per_mib: u64,
    /// Credits earned per MiB relayed.
    pub relay_per_mib: u64,
    /// Credits earned per MiB of vault replica held for a day.
    pub storage_per_mib_day: u64,
    /// Vault sync free per vault account and 30 days, in bytes.
    pub vault_free_bytes: u64,
    /// Credits per MiB of vault sync beyond the free tier.
    pub vault_sync_per_mib: u64,
    /// Tunnel traffic free per account, node and 30 days, in bytes.
    pub vpn_free_bytes: u64,
    /// Credits per MiB of tunnel traffic beyond the free tier.
    pub vpn_per_mib: u64,
}

impl Pricing {
    /// Credits earned for `bytes` carried on `duty`: rounded down, per session.
    pub fn earned(&self, duty: Duty, bytes: u64) -> u64 {
        let rate = match duty {
            Duty::Exit => self.exit_per_mib,
            Duty::Relay => self.relay_per_mib,
            Duty::Storage => self.storage_per_mib_day,
        };
        (u128::from(bytes) * u128::from(rate) / MIB).min(u128::from(MAX_AMOUNT)) as u64
    }

    /// Credits a session of `bytes` costs when `free` of them are free: rounded up.
    pub fn vpn(&self, bytes: u64, free: u64) -> u64 {
        let paid = bytes.saturating_sub(free);
        (u128::from(paid) * u128::from(self.vpn_per_mib))
            .div_ceil(MIB)
            .min(u128::from(MAX_AMOUNT)) as u64
    }

    /// Credits a vault push of `bytes` costs after `used` bytes this period: what lies beyond
    /// the free tier, rounded up.
    pub fn vault_sync(&self, used: u64, bytes: u64) -> u64 {
        let free_left = self.vault_free_bytes.saturating_sub(used);
        let paid = bytes.saturating_sub(free_left);
        if paid == 0 {
            return 0;
        }
        (u128::from(paid) * u128::from(self.vault_sync_per_mib))
            .div_ceil(MIB)
            .min(u128::from(MAX_AMOUNT)) as u64
    }
}

/// An account's balance as one replica holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// The account.
    pub account: String,
    /// Credits available (negative when overdrawn).
    pub balance: i64,
    /// Earned, in total.
    pub earned: i64,
    /// Granted, in total.
    pub granted: i64,
    /// Spent, in total.
    pub spent: i64,
    /// Earned by duty and spent by service.
    pub by_service: BTreeMap<String, i64>,
    /// Entries held.
    pub entries: u64,
    /// Spends exceed what it has: a double spend got past the majority rule.
    pub overdrawn: bool,
    /// Device keys that may spend for it.
    pub devices: Vec<String>,
}

/// One entry of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its id (`earn/exit/SESSION`, `spend/ID`, …).
    pub id: String,
    /// `earn`, `spend`, `grant` or `device`.
    pub kind: String,
    /// The duty earned on or service paid for.
    pub service: String,
    /// Credits it moves.
    pub amount: i64,
    /// When it was signed.
    pub at: i64,
    /// The signed entry, to audit.
    pub signed: SignedEntry,
    /// A spend whose majority is not known yet (it holds the credits meanwhile).
    #[serde(default)]
    pub pending: bool,
}

/// What the ledger's state for an account hashes to, to compare replicas cheaply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Entries held.
    pub entries: u64,
    /// SHA-256 (hex) over every entry's id and text, in id order.
    pub hash: String,
}

fn id_of(entry: &Entry, receipt_session: Option<&str>) -> String {
    match entry {
        Entry::Earn(e) => format!(
            "earn/{}/{}/{}",
            e.duty.name(),
            e.node,
            receipt_session.unwrap_or_default()
        ),
        Entry::Charge(c) => format!("charge/{}/{}", c.node, receipt_session.unwrap_or_default()),
        Entry::Spend(s) => format!("spend/{}/{}", s.account, s.id),
        Entry::Grant(g) => format!("grant/{}/{}", g.account, g.id),
        Entry::Device(d) => format!("device/{}/{}", d.account, d.device),
    }
}

/// What an earning claims on: the client account, the session (for storage: the account,
/// vault and day) and the bytes, from the signed receipt or holding inside it.
fn earning(e: &Earn) -> Result<(String, String, u64), LedgerError> {
    let signed = SignedReceipt {
        receipt: e.receipt.clone(),
        signature: e.receipt_signature.clone(),
    };
    let not_named = || {
        LedgerError::Receipt(format!(
            "it does not name {} as its {}",
            e.node,
            e.duty.name()
        ))
    };
    match e.duty {
        Duty::Exit | Duty::Relay => {
            let r = signed
                .verify()
                .map_err(|err| LedgerError::Receipt(err.to_string()))?;
            let named = match e.duty {
                Duty::Exit => r.node == e.node,
                _ => r.via.as_deref() == Some(e.node.as_str()),
            };
            if !named {
                return Err(not_named());
            }
            Ok((
                r.account,
                r.session,
                r.bytes_up.saturating_add(r.bytes_down),
            ))
        }
        Duty::Storage => {
            let h = Holding::verify(&signed)?;
            if h.node != e.node {
                return Err(not_named());
            }
            // A claim is made the day it is confirmed, or the next.
            let claimed = e.at.div_euclid(86_400);
            if !(h.day..=h.day.saturating_add(1)).contains(&claimed) {
                return Err(LedgerError::Receipt(format!(
                    "a holding for day {} claimed on day {claimed}",
                    h.day
                )));
            }
            Ok((
                h.account.clone(),
                // One earning per vault and day, whichever account confirms it: fresh
                // accounts cannot multiply it.
                format!("{}/{}", h.vault, h.day),
                h.bytes,
            ))
        }
    }
}

/// The ledger of this node: the entries of the accounts it is a replica for, and the steps
/// that reach the other replicas.
pub struct Ledger {
    store: Store,
    node_id: String,
    key: SigningKey,
    /// The account this node's earnings go to.
    pub owner: String,
    /// Rates and free tiers.
    pub pricing: Pricing,
    issuers: Vec<String>,
    mesh: Option<Arc<crate::mesh::Mesh>>,
    agent: ureq::Agent,
    /// One writer at a time: a spend's balance check and its insert are one step.
    write: tokio::sync::Mutex<()>,
    /// Receipts to claim earnings for, by (duty, session): the newest of each.
    claims: parking_lot::Mutex<HashMap<(Duty, String), SignedReceipt>>,
    /// Entries waiting to reach every replica (retried each round).
    outbox: parking_lot::Mutex<std::collections::HashSet<SignedEntry>>,
    /// How long a spend holds its credits while its majority is not known, seconds.
    hold: std::sync::atomic::AtomicI64,
    /// Receipts for relays' earnings, by session: the relay, the address the client's
    /// datagrams came from, and the newest receipt.
    relayed: parking_lot::Mutex<HashMap<String, RelayedReceipt>>,
}

/// A receipt a relay is owed, and where the client's datagrams came from.
struct RelayedReceipt {
    relay: String,
    from: Option<std::net::SocketAddr>,
    receipt: SignedReceipt,
}

/// A replica of an account: this node, or another one's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replica {
    /// This node.
    Local,
    /// Another node's API URL.
    Remote(String),
}

impl Ledger {
    /// A ledger over `store`, signing claims with the node's identity.
    pub fn new(
        store: Store,
        node_id: String,
        key: SigningKey,
        owner: Option<String>,
        pricing: Pricing,
        issuers: Vec<String>,
        mesh: Option<Arc<crate::mesh::Mesh>>,
    ) -> Arc<Ledger> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REPLICA_TIMEOUT))
            .build()
            .into();
        Arc::new(Ledger {
            store,
            owner: owner.unwrap_or_else(|| node_id.clone()),
            node_id,
            key,
            pricing,
            issuers,
            mesh,
            agent,
            write: tokio::sync::Mutex::new(()),
            claims: parking_lot::Mutex::new(HashMap::new()),
            outbox: parking_lot::Mutex::new(std::collections::HashSet::new()),
            relayed: parking_lot::Mutex::new(HashMap::new()),
            hold: std::sync::atomic::AtomicI64::new(SPEND_HOLD_SECS),
        })
    }

    /// Sets how long a spend holds its credits on a replica while its majority is not known.
    pub fn set_spend_hold(&self, secs: i64) {
        self.hold
            .store(secs.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes one entry into this node's ledger.
    pub async fn apply(&self, signed: &SignedEntry, mode: Mode) -> Result<Applied, LedgerError> {
        let entry = signed.verify()?;
        let now = crate::now_unix();
        let _write = self.write.lock().await;
        match &entry {
            Entry::Earn(e) => {
                let (client, session, bytes) = earning(e)?;
                if client == e.account || client == e.node {
                    return Err(LedgerError::Unauthorized(
                        "an account earns nothing from its own traffic or storage".into(),
                    ));
                }
                let bytes = i64::try_from(bytes)
                    .map_err(|_| LedgerError::Receipt("totals out of range".into()))?;
                let id = id_of(&entry, Some(&session));
                let amount = self.pricing.earned(e.duty, bytes as u64) as i64;
                let held = sqlx::query(
                    "SELECT account, progress, entry FROM credit_entries WHERE id = $1",
                )
                .bind(&id)
                .fetch_optional(self.store.pool())
                .await?;
                match held {
                    Some(row) => {
                        let account: String = row.try_get(0)?;
                        let progress: i64 = row.try_get(1)?;
                        if account != e.account {
                            return Err(LedgerError::Conflict(format!(
                                "session {session} is claimed for another account"
                            )));
                        }
                        // Higher totals win; between equal ones the smaller text, so replicas
                        // that got different claims of the same bytes end up with the same.
                        let text: String = row.try_get(2)?;
                        if bytes < progress || (bytes == progress && signed.entry >= text) {
                            return Ok(Applied::Same);
                        }
                        self.raise(&id, amount, bytes, signed, e.at, now).await?;
                        Ok(Applied::Raised)
                    }
                    None => {
                        self.insert(
                            &id,
                            &entry,
                            e.duty.name(),
                            amount,
                            bytes,
                            signed,
                            e.at,
                            None,
                        )
                        .await?;
                        Ok(Applied::New)
                    }
                }
            }
            Entry::Charge(c) => {
                let r = SignedReceipt {
                    receipt: c.receipt.clone(),
                    signature: c.receipt_signature.clone(),
                }
                .verify()
                .map_err(|err| LedgerError::Receipt(err.to_string()))?;
                if r.node != c.node || r.account != c.account {
                    return Err(LedgerError::Receipt(
                        "it is not this account's receipt for this node".into(),
                    ));
                }
                let bytes = r.bytes_up.saturating_add(r.bytes_down);
                if c.free_bytes > bytes {
                    return Err(LedgerError::Malformed(
                        "more free bytes than the session carried".into(),
                    ));
                }
                let amount = self.pricing.vpn(bytes, c.free_bytes);
                let (amount, bytes) = match (i64::try_from(amount), i64::try_from(bytes)) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Err(LedgerError::Receipt("totals out of range".into())),
                };
                let id = id_of(&entry, Some(&r.session));
                let held = sqlx::query(
                    "SELECT account, progress, amount, entry FROM credit_entries WHERE id = $1",
                )
                .bind(&id)
                .fetch_optional(self.store.pool())
                .await?;
                let before = match &held {
                    Some(row) => {
                        let account: String = row.try_get(0)?;
                        if account != c.account {
                            return Err(LedgerError::Conflict(format!(
                                "session {} is charged to another account",
                                r.session
                            )));
                        }
                        let (progress, text): (i64, String) = (row.try_get(1)?, row.try_get(3)?);
                        if bytes < progress || (bytes == progress && signed.entry >= text) {
                            return Ok(Applied::Same);
                        }
                        -row.try_get::<i64, _>(2)?
                    }
                    None => 0,
                };
                if mode == Mode::Check && amount > before {
                    let balance = self.balance(&c.account).await?.balance;
                    if balance < amount - before {
                        return Err(LedgerError::OutOfCredits {
                            balance,
                            amount: (amount - before) as u64,
                        });
                    }
                }
                if held.is_some() {
                    self.raise(&id, -amount, bytes, signed, c.at, now).await?;
                    Ok(Applied::Raised)
                } else {
                    self.insert(&id, &entry, "vpn", -amount, bytes, signed, c.at, None)
                        .await?;
                    Ok(Applied::New)
                }
            }
            Entry::Grant(g) => {
                if !self.issuers.contains(&g.issuer) {
                    return Err(LedgerError::Unauthorized(format!(
                        "{} is not an issuer this node honours",
                        g.issuer
                    )));
                }
                let amount = positive(g.amount)?;
                self.insert_once(&entry, "grant", amount, signed, g.at)
                    .await
            }
            Entry::Spend(s) => {
                let amount = positive(s.amount)?;
                if s.signer != s.account && !self.is_device(&s.account, &s.signer).await? {
                    return Err(LedgerError::Unauthorized(format!(
                        "{} is not a device of account {}",
                        s.signer, s.account
                    )));
                }
                let id = id_of(&entry, None);
                // A spend whose hold ran out is gone: it cannot come back as held.
                sqlx::query(
                    "DELETE FROM credit_entries WHERE id = $1 AND pending_until IS NOT NULL AND pending_until < $2",
                )
                .bind(&id)
                .bind(now)
                .execute(self.store.pool())
                .await?;
                if let Some(applied) = self.held(&id, signed).await? {
                    if mode == Mode::Merge {
                        // Another replica holds it decided.
                        self.finalize(&[id]).await?;
                    }
                    return Ok(applied);
                }
                // A new spend holds the credits until its majority is known; one merged
                // from another replica was decided there.
                let pending = match mode {
                    Mode::Check => {
                        let balance = self.balance(&s.account).await?.balance;
                        if balance < amount {
                            return Err(LedgerError::OutOfCredits {
                                balance,
                                amount: s.amount,
                            });
                        }
                        Some(now + self.hold.load(std::sync::atomic::Ordering::Relaxed))
                    }
                    Mode::Merge => None,
                };
                self.insert(&id, &entry, &s.service, -amount, 0, signed, s.at, pending)
                    .await?;
                Ok(Applied::New)
            }
            Entry::Device(d) => {
                if crate::signed::public_key(&d.device).is_none() {
                    return Err(LedgerError::Malformed(
                        "the device is not an ed25519 key".into(),
                    ));
                }
                let id = id_of(&entry, None);
                let held = sqlx::query("SELECT progress FROM credit_entries WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(self.store.pool())
                    .await?;
                match held {
                    Some(row) => {
                        let at: i64 = row.try_get(0)?;
                        if d.at_ms <= at {
                            return Ok(Applied::Same);
                        }
                        self.raise(&id, 0, d.at_ms, signed, d.at_ms / 1000, now)
                            .await?;
                        Ok(Applied::Raised)
                    }
                    None => {
                        self.insert(
                            &id,
                            &entry,
                            "device",
                            0,
                            d.at_ms,
                            signed,
                            d.at_ms / 1000,
                            None,
                        )
                        .await?;
                        Ok(Applied::New)
                    }
                }
            }
        }
    }

    /// Replaces a held entry that only grows (an earning or charge claimed for more, a newer
    /// device statement) with its newer signed text.
    async fn raise(
        &self,
        id: &str,
        amount: i64,
        progress: i64,
        signed: &SignedEntry,
        at: i64,
        now: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE credit_entries SET amount = $1, progress = $2, entry = $3, signature = $4, at = $5, stored_at = $6 WHERE id = $7",
        )
        .bind(amount)
        .bind(progress)
        .bind(&signed.entry)
        .bind(&signed.signature)
        .bind(at)
        .bind(now)
        .bind(id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// `Some` when `id` is held: `Same` with the same text, a conflict with another.
    async fn held(&self, id: &str, signed: &SignedEntry) -> Result<Option<Applied>, LedgerError> {
        let held: Option<String> =
            sqlx::query_scalar("SELECT entry FROM credit_entries WHERE id = $1")
                .bind(id)
                .fetch_optional(self.store.pool())
                .await?;
        match held {
            None => Ok(None),
            Some(text) if text == signed.entry => Ok(Some(Applied::Same)),
            Some(_) => Err(LedgerError::Conflict(format!(
                "another entry holds the id {id}"
            ))),
        }
    }

    async fn insert_once(
        &self,
        entry: &Entry,
        service: &str,
        amount: i64,
        signed: &SignedEntry,
        at: i64,
    ) -> Result<Applied, LedgerError> {
        let id = id_of(entry, None);
        if let Some(applied) = self.held(&id, signed).await? {
            return Ok(applied);
        }
        self.insert(&id, entry, service, amount, 0, signed, at, None)
            .await?;
        Ok(Applied::New)
    }

    /// Stores a new entry; `pending_until` marks a spend whose majority is not known yet.
    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        id: &str,
        entry: &Entry,
        service: &str,
        amount: i64,
        progress: i64,
        signed: &SignedEntry,
        at: i64,
        pending_until: Option<i64>,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO credit_entries (id, account, kind, service, amount, progress, entry, signature, at, stored_at, pending_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(entry.account())
        .bind(entry.kind())
        .bind(service)
        .bind(amount)
        .bind(progress)
        .bind(&signed.entry)
        .bind(&signed.signature)
        .bind(at)
        .bind(crate::now_unix())
        .bind(pending_until)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Marks spends decided (a majority of their replicas took them).
    pub async fn finalize(&self, ids: &[String]) -> Result<(), LedgerError> {
        for id in ids {
            // Only while its hold lasts: an expired spend's credits are the account's again.
            sqlx::query(
                "UPDATE credit_entries SET pending_until = NULL WHERE id = $1 AND pending_until IS NOT NULL AND pending_until >= $2",
            )
            .bind(id)
            .bind(crate::now_unix())
            .execute(self.store.pool())
            .await?;
        }
        Ok(())
    }

    /// Drops the spends whose majority never came: their credits are the account's again.
    async fn expire(&self) -> Result<(), LedgerError> {
        sqlx::query(
            "DELETE FROM credit_entries WHERE pending_until IS NOT NULL AND pending_until < $1",
        )
        .bind(crate::now_unix())
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    async fn is_device(&self, account: &str, device: &str) -> Result<bool, LedgerError> {
        Ok(self.devices(account).await?.iter().any(|d| d == device))
    }

    async fn devices(&self, account: &str) -> Result<Vec<String>, LedgerError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT entry FROM credit_entries WHERE account = $1 AND kind = 'device' ORDER BY id",
        )
        .bind(account)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .iter()
            .filter_map(|t| match serde_json::from_str(t) {
                Ok(Entry::Device(d)) if d.active => Some(d.device),
                _ => None,
            })
            .collect())
    }

    /// The account's balance from the entries this node holds.
    pub async fn balance(&self, account: &str) -> Result<Balance, LedgerError> {
        // Summed here, saturating: no set of entries can make the database's sum overflow.
        let rows = sqlx::query(
            "SELECT kind, service, amount FROM credit_entries WHERE account = $1 AND (pending_until IS NULL OR pending_until >= $2)",
        )
        .bind(account)
        .bind(crate::now_unix())
        .fetch_all(self.store.pool())
        .await?;
        let mut b = Balance {
            account: account.to_owned(),
            ..Balance::default()
        };
        for row in rows {
            let kind: String = row.try_get(0)?;
            let service: String = row.try_get(1)?;
            let amount: i64 = row.try_get(2)?;
            b.entries += 1;
            match kind.as_str() {
                "earn" => b.earned = b.earned.saturating_add(amount),
                "grant" => b.granted = b.granted.saturating_add(amount),
                "spend" | "charge" => b.spent = b.spent.saturating_sub(amount),
                _ => continue,
            }
            let s = b.by_service.entry(service).or_default();
            *s = s.saturating_add(amount.saturating_abs());
        }
        b.balance = b.earned.saturating_add(b.granted).saturating_sub(b.spent);
        b.overdrawn = b.balance < 0;
        b.devices = self.devices(account).await?;
        Ok(b)
    }

    /// The account's entries, oldest first.
    pub async fn history(&self, account: &str) -> Result<Vec<HistoryEntry>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, kind, service, amount, at, entry, signature, pending_until FROM credit_entries WHERE account = $1 AND (pending_until IS NULL OR pending_until >= $2) ORDER BY at, id",
        )
        .bind(account)
        .bind(crate::now_unix())
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    service: r.try_get(2)?,
                    amount: r.try_get(3)?,
                    at: r.try_get(4)?,
                    signed: SignedEntry {
                        entry: r.try_get(5)?,
                        signature: r.try_get(6)?,
                    },
                    pending: r.try_get::<Option<i64>, _>(7)?.is_some(),
                })
            })
            .collect()
    }

    /// The account's decided entries (what replicas exchange: a pending spend stays where it
    /// is until its majority is known).
    pub async fn decided(&self, account: &str) -> Result<Vec<SignedEntry>, LedgerError> {
        Ok(self
            .history(account)
            .await?
            .into_iter()
            .filter(|h| !h.pending)
            .map(|h| h.signed)
            .collect())
    }

    /// What the account's entries hash to here.
    pub async fn digest(&self, account: &str) -> Result<Digest, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, entry FROM credit_entries WHERE account = $1 AND pending_until IS NULL",
        )
        .bind(account)
        .fetch_all(self.store.pool())
        .await?;
        // Sorted here by bytes: SQLite and PostgreSQL (with its collation) order text
        // differently, and replicas on both must agree.
        let mut entries = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        entries.sort();
        let mut h = Sha256::new();
        for (id, text) in &entries {
            h.update((id.len() as u64).to_be_bytes());
            h.update(id.as_bytes());
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        Ok(Digest {
            entries: entries.len() as u64,
            hash: hex::encode(h.finalize()),
        })
    }

    /// The accounts this node holds entries of.
    async fn accounts(&self) -> Result<Vec<String>, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT account FROM credit_entries ORDER BY account")
                .fetch_all(self.store.pool())
                .await?,
        )
    }

    /// The replicas of `account`: the best [`REPLICAS`] live members with an API by
    /// rendezvous hashing; this node alone outside a mesh.
    pub async fn replicas(&self, account: &str) -> Vec<Replica> {
        let Some(mesh) = &self.mesh else {
            return vec![Replica::Local];
        };
        let dir = mesh.directory().await;
        let mut ranked: Vec<([u8; 32], Replica)> = dir
            .members
            .iter()
            .filter(|(_, m)| m.state == "live")
            .filter_map(|(id, m)| {
                // Only members others can reach hold accounts (this one too: every node must
                // pick the same replicas).
                let api = m.record.api.clone()?;
                let replica = if *id == self.node_id {
                    Replica::Local
                } else {
                    Replica::Remote(api)
                };
                let rank: [u8; 32] = Sha256::new()
                    .chain_update(b"nx1-credit-replica\0")
                    .chain_update(account.as_bytes())
                    .chain_update(b"\0")
                    .chain_update(id.as_bytes())
                    .finalize()
                    .into();
                Some((rank, replica))
            })
            .collect();
        ranked.sort_by_key(|r| r.0);
        let mut replicas: Vec<Replica> =
            ranked.into_iter().map(|(_, r)| r).take(REPLICAS).collect();
        if replicas.is_empty() {
            replicas.push(Replica::Local);
        }
        replicas
    }

    async fn call<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        url: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, String> {
        let agent = self.agent.clone();
        let url = format!("{}/v1/credits{path}", url.trim_end_matches('/'));
        tokio::task::spawn_blocking(move || {
            let resp = match body {
                None => agent.get(&url).call(),
                Some(b) => agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(b),
            };
            let mut resp = resp.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map_err(|e| format!("{url}: {e}"))?;
            if status != 200 {
                let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                return Err(format!("{status} {msg}"));
            }
            serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sends entries to one replica: `Err` when it could not be asked, else its answer for
    /// each entry (refusals with their HTTP status).
    async fn send(
        &self,
        replica: &Replica,
        entries: &[SignedEntry],
        mode: Mode,
    ) -> Result<Vec<Result<Applied, (u16, String)>>, String> {
        match replica {
            Replica::Local => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    out.push(
                        self.apply(e, mode)
                            .await
                            .map_err(|e| (e.status(), e.to_string())),
                    );
                }
                Ok(out)
            }
            Replica::Remote(url) => {
                let req = ApplyRequest {
                    entries: entries.to_vec(),
                    merge: mode == Mode::Merge,
                };
                let body = serde_json::to_vec(&req).expect("requests serialize");
                let results: Vec<ApplyResult> =
                    self.call(url, "/replica/apply", Some(body)).await?;
                if results.len() != entries.len() {
                    return Err(format!("{url}: a short answer"));
                }
                Ok(results
                    .into_iter()
                    .map(|r| match r.ok {
                        Some(a) => Ok(a),
                        None => Err((r.status, r.error.unwrap_or_default())),
                    })
                    .collect())
            }
        }
    }

    /// Spends: sends the signed spend to every replica of its account; it counts once a
    /// majority took it. Sending the same spend again is harmless (it counts once).
    pub async fn spend(self: &Arc<Self>, signed: &SignedEntry) -> Result<Spend, LedgerError> {
        let entry = signed.verify()?;
        let Entry::Spend(spend) = &entry else {
            return Err(LedgerError::Malformed("not a spend".into()));
        };
        self.commit(signed, &spend.account, spend.amount, id_of(&entry, None))
            .await?;
        Ok(spend.clone())
    }

    /// Sends a spend or charge of `amount` credits to every replica of `account`; it counts
    /// once a majority took it. Each replica holds a spend it took as pending; once the
    /// majority is known the spend is confirmed on them (`finalize`), at once on those that
    /// answered and later on the rest. A spend that reaches no majority stays pending where
    /// it was taken, and gives the credits back when that runs out: it is never shared.
    async fn commit(
        self: &Arc<Self>,
        signed: &SignedEntry,
        account: &str,
        amount: u64,
        id: String,
    ) -> Result<(), LedgerError> {
        let replicas = self.replicas(account).await;
        let needed = replicas.len() / 2 + 1;
        let mut answers = tokio::task::JoinSet::new();
        for r in replicas.iter().cloned() {
            let (me, one) = (self.clone(), signed.clone());
            answers.spawn(async move {
                let res = me.send(&r, std::slice::from_ref(&one), Mode::Check).await;
                (r, res)
            });
        }
        let mut took = Vec::new();
        let mut why = Vec::new();
        let mut short = None;
        // Until a majority took it, or every replica answered.
        while took.len() < needed {
            let Some(joined) = answers.join_next().await else {
                break;
            };
            let Ok((r, res)) = joined else { continue };
            let refusal = match res.map(|mut v| v.pop()) {
                Ok(Some(Ok(_))) => {
                    took.push(r);
                    continue;
                }
                Ok(Some(Err((402, e)))) => {
                    short.get_or_insert(e.clone());
                    e
                }
                Ok(Some(Err((_, e)))) => e,
                Ok(None) => "no answer".to_owned(),
                Err(e) => e,
            };
            why.push(match r {
                Replica::Local => format!("this node: {refusal}"),
                Replica::Remote(u) => format!("{u}: {refusal}"),
            });
        }
        if took.len() >= needed {
            // Charges are decided when taken; spends wait for this.
            let pending = id.starts_with("spend/");
            for r in took.iter().filter(|_| pending) {
                self.confirm(r, &id, signed).await;
            }
            // The slower replicas: confirmed as they answer, or given the decided spend at
            // the next rounds.
            let (me, one) = (self.clone(), signed.clone());
            tokio::spawn(async move {
                while let Some(joined) = answers.join_next().await {
                    let Ok((r, res)) = joined else { continue };
                    match res.map(|mut v| v.pop()) {
                        Ok(Some(Ok(_))) if pending => me.confirm(&r, &id, &one).await,
                        Ok(Some(Ok(_))) => {}
                        _ => me.queue([one.clone()]),
                    }
                }
            });
            return Ok(());
        }
        if let (0, Some(_)) = (took.len(), &short) {
            // No replica had the credits: the plain answer.
            let balance = match self.balance(account).await {
                Ok(b) if b.entries > 0 => b.balance,
                _ => 0,
            };
            return Err(LedgerError::OutOfCredits { balance, amount });
        }
        Err(LedgerError::NoMajority {
            took: took.len(),
            replicas: replicas.len(),
            why: if why.is_empty() {
                String::new()
            } else {
                format!("; {}", why.join("; "))
            },
        })
    }

    /// Tells a replica that a spend it holds is decided.
    async fn confirm(&self, replica: &Replica, id: &str, signed: &SignedEntry) {
        let ids = vec![id.to_owned()];
        let result = match replica {
            Replica::Local => self.finalize(&ids).await.map_err(|e| e.to_string()),
            Replica::Remote(url) => {
                let body = serde_json::to_vec(&ConfirmRequest { ids }).expect("requests serialize");
                self.call::<serde_json::Value>(url, "/replica/confirm", Some(body))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            // It gets the decided spend at the next rounds (before its hold runs out, when
            // it can be reached by then).
            tracing::debug!(error = %e, "credits: confirming a spend");
            self.queue([signed.clone()]);
        }
    }

    /// Sends entries (earnings, grants, device keys) to every replica of their accounts; what
    /// a replica cannot be asked now is retried each round. Returns how many replicas took
    /// every entry, at the least across accounts, or the first refusal by this node.
    pub async fn publish(&self, entries: Vec<SignedEntry>) -> Result<usize, LedgerError> {
        let mut by_account: BTreeMap<String, Vec<SignedEntry>> = BTreeMap::new();
        for e in entries {
            let entry = e.verify()?;
            by_account
                .entry(entry.account().to_owned())
                .or_default()
                .push(e);
        }
        let mut reached = None;
        let mut refused = None;
        for (account, entries) in by_account {
            let mut took = 0;
            for r in self.replicas(&account).await {
                match self.send(&r, &entries, Mode::Merge).await {
                    Ok(results) => {
                        let mut all = true;
                        for res in results {
                            if let Err((_, msg)) = res {
                                // Refused on its merits: sending it again would not help.
                                all = false;
                                tracing::warn!(error = %msg, "credits: an entry was refused");
                                if r == Replica::Local {
                                    refused.get_or_insert(LedgerError::Unauthorized(msg));
                                }
                            }
                        }
                        took += usize::from(all);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "credits: a replica is unreachable; retrying later");
                        self.queue(entries.iter().cloned());
                    }
                }
            }
            reached = Some(reached.map_or(took, |r: usize| r.min(took)));
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(reached.unwrap_or(0)),
        }
    }

    /// Charges the client's account for a session's traffic beyond the free tier (`free`
    /// bytes of it), on a majority of the account's replicas. `Ok` when nothing is owed.
    pub async fn charge(
        self: &Arc<Self>,
        receipt: &SignedReceipt,
        free: u64,
    ) -> Result<(), LedgerError> {
        let r = receipt
            .verify()
            .map_err(|e| LedgerError::Receipt(e.to_string()))?;
        let bytes = r.bytes_up.saturating_add(r.bytes_down);
        let amount = self.pricing.vpn(bytes, free);
        if amount == 0 {
            return Ok(());
        }
        let signed = SignedEntry::sign(
            &Entry::Charge(Charge {
                v: 1,
                account: r.account.clone(),
                node: self.node_id.clone(),
                receipt: receipt.receipt.clone(),
                receipt_signature: receipt.signature.clone(),
                free_bytes: free.min(bytes),
                at: crate::now_unix(),
            }),
            &self.key,
        );
        let id = format!("charge/{}/{}", self.node_id, r.session);
        self.commit(&signed, &r.account, amount, id).await
    }

    /// Keeps entries to send again at the next rounds (each once; at most [`MAX_OUTBOX`]).
    fn queue(&self, entries: impl IntoIterator<Item = SignedEntry>) {
        let mut outbox = self.outbox.lock();
        for e in entries {
            if outbox.len() >= MAX_OUTBOX {
                tracing::warn!("credits: the outbox is full; an entry waits for reconciling");
                break;
            }
            outbox.insert(e);
        }
    }

    /// Remembers a receipt to claim an earning for (the newest per session wins).
    pub fn claim(&self, duty: Duty, receipt: SignedReceipt, session: String) {
        // The one carrying the most bytes wins: a smaller (or a stranger's) confirmation
        // cannot push out a larger one before it is claimed.
        let bytes = |r: &SignedReceipt| match duty {
            Duty::Storage => Holding::verify(r).map_or(0, |h| h.bytes),
            _ => r
                .verify()
                .map_or(0, |r| r.bytes_up.saturating_add(r.bytes_down)),
        };
        let mut claims = self.claims.lock();
        let key = (duty, session);
        if let Some(held) = claims.get(&key)
            && bytes(held) >= bytes(&receipt)
        {
            return;
        }
        if claims.len() < 100_000 || claims.contains_key(&key) {
            claims.insert(key, receipt);
        }
    }

    /// Remembers a receipt whose traffic came through `relay`, to pass on to it (the relay
    /// claims its own earning): only when the client's datagrams came from the relay's
    /// published endpoint.
    pub fn relayed(
        &self,
        relay: &str,
        from: Option<std::net::SocketAddr>,
        receipt: SignedReceipt,
        session: String,
    ) {
        let mut relayed = self.relayed.lock();
        if relayed.len() < 100_000 {
            relayed.insert(
                session,
                RelayedReceipt {
                    relay: relay.to_owned(),
                    from,
                    receipt,
                },
            );
        }
    }

    /// Passes receipts on to the relays they name, when the client came through them.
    async fn pass_on_relayed(&self) {
        let relayed: Vec<RelayedReceipt> = self.relayed.lock().drain().map(|(_, r)| r).collect();
        if relayed.is_empty() {
            return;
        }
        let Some(mesh) = &self.mesh else {
            return;
        };
        let dir = mesh.directory().await;
        for r in relayed {
            let Some(member) = dir.members.get(&r.relay).filter(|m| m.state == "live") else {
                tracing::debug!(relay = %r.relay, "credits: a receipt names a relay not in the directory");
                continue;
            };
            // The relay's published endpoint, or where it gossips from (the side that faces
            // the exits, where its forwarded datagrams come from).
            let published = member
                .record
                .relay
                .as_deref()
                .and_then(|e| e.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip());
            let from = r.from.map(|f| f.ip());
            if from.is_none() || (from != published && from != Some(member.gossip.ip())) {
                tracing::debug!(relay = %r.relay, from = ?r.from, "credits: the client did not come through the relay its receipt names");
                continue;
            }
            let Some(api) = &member.record.api else {
                continue;
            };
            let body = serde_json::to_vec(&r.receipt).expect("receipts serialize");
            if let Err(e) = self.call::<Applied>(api, "/carried", Some(body)).await {
                tracing::debug!(relay = %r.relay, error = %e, "credits: passing a receipt on");
            }
        }
    }

    /// Signs and publishes the earnings claimed since the last round, sends what is waiting
    /// in the outbox, and brings this node's accounts level with their other replicas.
    pub async fn round(&self) {
        let claims: Vec<_> = self.claims.lock().drain().collect();
        let at = crate::now_unix();
        let entries: Vec<SignedEntry> = claims
            .into_iter()
            .map(|((duty, _), r)| {
                SignedEntry::sign(
                    &Entry::Earn(Earn {
                        v: 1,
                        account: self.owner.clone(),
                        node: self.node_id.clone(),
                        duty,
                        receipt: r.receipt,
                        receipt_signature: r.signature,
                        at,
                    }),
                    &self.key,
                )
            })
            .collect();
        let waiting: Vec<SignedEntry> = std::mem::take(&mut *self.outbox.lock())
            .into_iter()
            .collect();
        let mut all = entries;
        all.extend(waiting);
        all.dedup();
        for chunk in all.chunks(MAX_BATCH) {
            if let Err(e) = self.publish(chunk.to_vec()).await {
                tracing::warn!(error = %e, "credits: publishing earnings");
            }
        }
        if let Err(e) = self.expire().await {
            tracing::warn!(error = %e, "credits: dropping spends whose majority never came");
        }
        self.pass_on_relayed().await;
        if let Err(e) = self.reconcile().await {
            tracing::debug!(error = %e, "credits: reconciling replicas");
        }
    }

    /// Compares each account held here with its other replicas and exchanges what either
    /// lacks.
    async fn reconcile(&self) -> Result<(), LedgerError> {
        if self.mesh.is_none() {
            return Ok(());
        }
        for account in self.accounts().await? {
            // One account that fails (a store error) does not hold up the others.
            if let Err(e) = self.reconcile_account(&account).await {
                tracing::warn!(account = %account, error = %e, "credits: reconciling an account");
            }
        }
        Ok(())
    }

    /// Brings one account level with its other replicas.
    async fn reconcile_account(&self, account: &str) -> Result<(), LedgerError> {
        let account = account.to_owned();
        {
            let replicas = self.replicas(&account).await;
            for r in replicas {
                let Replica::Remote(url) = r else {
                    continue;
                };
                let mine = self.digest(&account).await?;
                let theirs: Digest = match self
                    .call(
                        &url,
                        &format!("/replica/digest?account={}", query_value(&account)),
                        None,
                    )
                    .await
                {
                    Ok(d) => d,
                    Err(_) => continue,
                };
                if theirs == mine {
                    continue;
                }
                let held: Vec<SignedEntry> = match self
                    .call(
                        &url,
                        &format!("/replica/entries?account={}", query_value(&account)),
                        None,
                    )
                    .await
                {
                    Ok(h) => h,
                    Err(_) => continue,
                };
                let ours = self.decided(&account).await?;
                let ours_set: std::collections::HashSet<&SignedEntry> = ours.iter().collect();
                let held_set: std::collections::HashSet<&SignedEntry> = held.iter().collect();
                for e in held.iter().filter(|e| !ours_set.contains(e)) {
                    if let Err(err) = self.apply(e, Mode::Merge).await {
                        tracing::debug!(error = %err, "credits: a replica's entry refused");
                    }
                }
                let missing: Vec<SignedEntry> = ours
                    .iter()
                    .filter(|e| !held_set.contains(e))
                    .cloned()
                    .collect();
                for chunk in missing.chunks(MAX_BATCH) {
                    if let Err(e) = self
                        .send(&Replica::Remote(url.clone()), chunk, Mode::Merge)
                        .await
                    {
                        tracing::debug!(error = %e, "credits: a replica is unreachable");
                    }
                }
            }
            let b = self.balance(&account).await?;
            if b.overdrawn {
                tracing::warn!(account = %account, balance = b.balance, "credits: account overdrawn (a double spend)");
            }
        }
        Ok(())
    }

    /// The account as this node holds it.
    pub async fn local_view(&self, account: &str) -> Result<AccountView, LedgerError> {
        Ok(AccountView {
            replica: self.node_id.clone(),
            balance: self.balance(account).await?,
            history: self.history(account).await?,
        })
    }

    /// The account's balance from one of its replicas: this node when it is one, else the
    /// first that answers.
    pub async fn account(&self, account: &str) -> Result<AccountView, LedgerError> {
        let replicas = self.replicas(account).await;
        let mut errors = Vec::new();
        for r in &replicas {
            match r {
                Replica::Local => return self.local_view(account).await,
                Replica::Remote(url) => {
                    match self
                        .call::<AccountView>(
                            url,
                            &format!("/replica/account?account={}", query_value(account)),
                            None,
                        )
                        .await
                    {
                        Ok(v) => return Ok(v),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        Err(LedgerError::NoMajority {
            took: 0,
            replicas: replicas.len(),
            why: format!("; {}", errors.join("; ")),
        })
    }

    /// Runs [`Ledger::round`] every `interval` until `stop`.
    pub fn run(self: &Arc<Self>, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let ledger = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = crate::daemon::stopped(&mut stop) => return,
                    _ = every.tick() => ledger.round().await,
                }
            }
        });
    }
}

/// An account (base64) as a query value: `+`, `/` and `=` percent-encoded.
pub fn query_value(account: &str) -> String {
    account
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// A new random entry id (16 bytes, base64).
pub fn random_id() -> String {
    use base64::Engine as _;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the operating system has no random numbers");
    base64::engine::general_purpose::STANDARD.encode(id)
}

/// The largest amount one entry may move: sums of many stay far from overflowing.
pub const MAX_AMOUNT: u64 = 1 << 53;

fn positive(amount: u64) -> Result<i64, LedgerError> {
    match amount {
        1..=MAX_AMOUNT => Ok(amount as i64),
        _ => Err(LedgerError::Malformed(format!(
            "an amount of {amount}: it must be between 1 and 2^53"
        ))),
    }
}

/// A batch of entries for a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The entries.
    pub entries: Vec<SignedEntry>,
    /// Take spends without a balance check (they come from another replica).
    #[serde(default)]
    pub merge: bool,
}

/// Spends a majority took: the replica marks them decided.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfirmRequest {
    /// Entry ids (`spend/ID`).
    pub ids: Vec<String>,
}

/// A replica's answer for one entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    /// What changed, when taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Applied>,
    /// Why not, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The refusal's HTTP status (402: out of credits, 409: a conflicting entry, …).
    #[serde(default)]
    pub status: u16,
}

/// An account as one replica holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The replica's node id.
    pub replica: String,
    /// The balance.
    pub balance: Balance,
    /// Every entry, oldest first.
    pub history: Vec<HistoryEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credits::Receipt;
    use crate::store::testing::TestDb;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn id(key: &SigningKey) -> String {
        STANDARD.encode(key.verifying_key().as_bytes())
    }

    fn pricing() -> Pricing {
        Pricing {
            exit_per_mib: 10,
            relay_per_mib: 4,
            storage_per_mib_day: 100,
            vault_free_bytes: 1 << 20,
            vault_sync_per_mib: 20,
            vpn_free_bytes: 1 << 20,
            vpn_per_mib: 3,
        }
    }

    fn receipt(
        client: &SigningKey,
        session: &str,
        node: &str,
        via: Option<&str>,
        bytes: u64,
    ) -> SignedReceipt {
        SignedReceipt::sign(
            &Receipt {
                v: 1,
                session: session.into(),
                account: id(client),
                client_key: "CLIENT=".into(),
                node: node.into(),
                via: via.map(str::to_owned),
                bytes_up: bytes / 2,
                bytes_down: bytes - bytes / 2,
                seconds: 1,
            },
            client,
        )
    }

    fn earn(node: &SigningKey, owner: &str, duty: Duty, r: &SignedReceipt) -> SignedEntry {
        SignedEntry::sign(
            &Entry::Earn(Earn {
                v: 1,
                account: owner.into(),
                node: id(node),
                duty,
                receipt: r.receipt.clone(),
                receipt_signature: r.signature.clone(),
                at: 1,
            }),
            node,
        )
    }

    fn spend(signer: &SigningKey, account: &str, spend_id: &str, amount: u64) -> SignedEntry {
        SignedEntry::sign(
            &Entry::Spend(Spend {
                v: 1,
                id: spend_id.into(),
                account: account.into(),
                signer: id(signer),
                service: "vault_sync".into(),
                amount,
                memo: "m".into(),
                at: 2,
            }),
            signer,
        )
    }

    async fn rules(db: TestDb) {
        let store = Store::open(&db.database, 2).await.unwrap();
        let exit = SigningKey::from_bytes(&[1; 32]);
        let relay = SigningKey::from_bytes(&[2; 32]);
        let client = SigningKey::from_bytes(&[3; 32]);
        let owner = SigningKey::from_bytes(&[4; 32]);
        let phone = SigningKey::from_bytes(&[5; 32]);
        let issuer = SigningKey::from_bytes(&[6; 32]);
        let ledger = Ledger::new(
            store.clone(),
            id(&exit),
            exit.clone(),
            Some(id(&owner)),
            pricing(),
            vec![id(&issuer)],
            None,
        );
        let apply = |e: SignedEntry| {
            let ledger = ledger.clone();
            async move { ledger.apply(&e, Mode::Check).await }
        };
        let owner_id = id(&owner);
        let mib = 1u64 << 20;

        // Earnings follow the receipts: the newest (highest) per session and duty counts.
        let r1 = receipt(&client, "S1", &id(&exit), Some(&id(&relay)), 3 * mib);
        assert_eq!(
            apply(earn(&exit, &owner_id, Duty::Exit, &r1)).await,
            Ok(Applied::New)
        );
        let r1b = receipt(&client, "S1", &id(&exit), Some(&id(&relay)), 5 * mib + 1);
        assert_eq!(
            apply(earn(&exit, &owner_id, Duty::Exit, &r1b)).await,
            Ok(Applied::Raised)
        );
        assert_eq!(
            apply(earn(&exit, &owner_id, Duty::Exit, &r1)).await,
            Ok(Applied::Same)
        );
        // The relay's claim on the same receipt is its own entry, at its own rate.
        assert_eq!(
            apply(earn(&relay, &owner_id, Duty::Relay, &r1b)).await,
            Ok(Applied::New)
        );
        let b = ledger.balance(&owner_id).await.unwrap();
        assert_eq!(b.earned, 50 + 20);
        assert_eq!((b.by_service["exit"], b.by_service["relay"]), (50, 20));

        // Claims the receipt does not back, forged ones, and earning from one's own traffic.
        assert!(matches!(
            apply(earn(&relay, &owner_id, Duty::Exit, &r1b)).await,
            Err(LedgerError::Receipt(_))
        ));
        let own = receipt(&owner, "S2", &id(&exit), None, mib);
        assert!(matches!(
            apply(earn(&exit, &owner_id, Duty::Exit, &own)).await,
            Err(LedgerError::Unauthorized(_))
        ));
        let mut forged = earn(&exit, &owner_id, Duty::Exit, &r1b);
        forged.entry = forged.entry.replace("\"at\":1", "\"at\":9");
        assert_eq!(apply(forged).await, Err(LedgerError::Signature));
        let mut bad_receipt = receipt(&client, "S3", &id(&exit), None, 2 * mib);
        bad_receipt.receipt = bad_receipt.receipt.replace("S3", "S4");
        assert!(matches!(
            apply(earn(&exit, &owner_id, Duty::Exit, &bad_receipt)).await,
            Err(LedgerError::Receipt(_))
        ));
        // The same session claimed for another account.
        assert!(matches!(
            apply(earn(&exit, &id(&issuer), Duty::Exit, &r1b)).await,
            Err(LedgerError::Conflict(_))
        ));

        // Storage duty earns on holdings the client's account confirmed, once per vault and
        // day (the highest confirmation counts), never on one's own vault.
        let holding = |by: &SigningKey, node: &SigningKey, vault: &str, bytes: u64, day: i64| {
            Holding {
                v: 1,
                account: id(by),
                node: id(node),
                vault: vault.into(),
                bytes,
                day,
            }
            .sign(by)
        };
        let stored = |node: &SigningKey, h: &SignedReceipt, at: i64| {
            SignedEntry::sign(
                &Entry::Earn(Earn {
                    v: 1,
                    account: owner_id.clone(),
                    node: id(node),
                    duty: Duty::Storage,
                    receipt: h.receipt.clone(),
                    receipt_signature: h.signature.clone(),
                    at,
                }),
                node,
            )
        };
        let day = 20_000;
        let h1 = holding(&client, &exit, "V1", mib, day);
        assert_eq!(
            apply(stored(&exit, &h1, day * 86_400 + 5)).await,
            Ok(Applied::New)
        );
        let h2 = holding(&client, &exit, "V1", 2 * mib, day);
        assert_eq!(
            apply(stored(&exit, &h2, day * 86_400 + 9)).await,
            Ok(Applied::Raised)
        );
        assert_eq!(
            apply(stored(&exit, &h1, day * 86_400 + 9)).await,
            Ok(Applied::Same)
        );
        // Another node's holding, a claim days later, and one's own vault.
        assert!(matches!(
            apply(stored(&relay, &h2, day * 86_400)).await,
            Err(LedgerError::Receipt(_))
        ));
        assert!(matches!(
            apply(stored(
                &exit,
                &holding(&client, &exit, "V1", mib, day - 5),
                day * 86_400
            ))
            .await,
            Err(LedgerError::Receipt(_))
        ));
        assert!(matches!(
            apply(stored(
                &exit,
                &holding(&owner, &exit, "V2", mib, day),
                day * 86_400
            ))
            .await,
            Err(LedgerError::Unauthorized(_))
        ));
        let mut forged = holding(&client, &exit, "V3", mib, day);
        forged.receipt = forged.receipt.replace("V3", "V4");
        assert!(matches!(
            apply(stored(&exit, &forged, day * 86_400)).await,
            Err(LedgerError::Receipt(_))
        ));
        assert_eq!(
            ledger.balance(&owner_id).await.unwrap().by_service["storage"],
            200
        );
        sqlx::query("DELETE FROM credit_entries WHERE service = 'storage'")
            .execute(store.pool())
            .await
            .unwrap();

        // Grants only from issuers this node honours.
        let grant = |by: &SigningKey, gid: &str, amount: u64| {
            SignedEntry::sign(
                &Entry::Grant(Grant {
                    v: 1,
                    id: gid.into(),
                    account: owner_id.clone(),
                    issuer: id(by),
                    amount,
                    memo: String::new(),
                    at: 3,
                }),
                by,
            )
        };
        assert_eq!(apply(grant(&issuer, "G1", 30)).await, Ok(Applied::New));
        assert_eq!(apply(grant(&issuer, "G1", 30)).await, Ok(Applied::Same));
        assert!(matches!(
            apply(grant(&issuer, "G1", 31)).await,
            Err(LedgerError::Conflict(_))
        ));
        assert!(matches!(
            apply(grant(&client, "G2", 30)).await,
            Err(LedgerError::Unauthorized(_))
        ));
        assert!(matches!(
            apply(grant(&issuer, "G3", 0)).await,
            Err(LedgerError::Malformed(_))
        ));
        assert!(matches!(
            apply(grant(&issuer, "G4", MAX_AMOUNT + 1)).await,
            Err(LedgerError::Malformed(_))
        ));

        // Spends: by the account or a device it added, never beyond the balance.
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 100);
        assert!(matches!(
            apply(spend(&phone, &owner_id, "P1", 10)).await,
            Err(LedgerError::Unauthorized(_))
        ));
        let device = |active: bool, at: i64| {
            SignedEntry::sign(
                &Entry::Device(DeviceKey {
                    v: 1,
                    account: owner_id.clone(),
                    device: id(&phone),
                    active,
                    at_ms: at,
                }),
                &owner,
            )
        };
        assert_eq!(apply(device(true, 10)).await, Ok(Applied::New));
        assert_eq!(
            apply(spend(&phone, &owner_id, "P1", 10)).await,
            Ok(Applied::New)
        );
        assert_eq!(
            apply(spend(&phone, &owner_id, "P1", 10)).await,
            Ok(Applied::Same)
        );
        assert_eq!(
            apply(spend(&owner, &owner_id, "P2", 85)).await,
            Ok(Applied::New)
        );
        assert_eq!(
            apply(spend(&owner, &owner_id, "P3", 91)).await,
            Err(LedgerError::OutOfCredits {
                balance: 5,
                amount: 91
            })
        );
        // A retired device spends no more; an older statement does not bring it back.
        assert_eq!(apply(device(false, 20)).await, Ok(Applied::Raised));
        assert_eq!(apply(device(true, 15)).await, Ok(Applied::Same));
        assert!(matches!(
            apply(spend(&phone, &owner_id, "P4", 1)).await,
            Err(LedgerError::Unauthorized(_))
        ));
        // A spend another replica decided is merged even beyond the balance: overdrawn.
        assert_eq!(
            ledger
                .apply(&spend(&owner, &owner_id, "P5", 20), Mode::Merge)
                .await,
            Ok(Applied::New)
        );
        let b = ledger.balance(&owner_id).await.unwrap();
        assert_eq!((b.balance, b.spent, b.overdrawn), (-15, 115, true));
        assert!(b.devices.is_empty());

        // Tunnel charges: the client's own receipt, beyond what the node let go free, only
        // while the balance covers the increase; the client's account pays, not the owner's.
        let client_id = id(&client);
        let charge = |r: &SignedReceipt, free: u64| {
            SignedEntry::sign(
                &Entry::Charge(Charge {
                    v: 1,
                    account: client_id.clone(),
                    node: id(&exit),
                    receipt: r.receipt.clone(),
                    receipt_signature: r.signature.clone(),
                    free_bytes: free,
                    at: 4,
                }),
                &exit,
            )
        };
        let client_grant = SignedEntry::sign(
            &Entry::Grant(Grant {
                v: 1,
                id: "G-client".into(),
                account: client_id.clone(),
                issuer: id(&issuer),
                amount: 10,
                memo: String::new(),
                at: 3,
            }),
            &issuer,
        );
        assert_eq!(apply(client_grant).await, Ok(Applied::New));
        let t1 = receipt(&client, "T1", &id(&exit), None, 3 * mib);
        // 3 MiB with 1 free: 2 MiB at 3 credits = 6.
        assert_eq!(apply(charge(&t1, mib)).await, Ok(Applied::New));
        assert_eq!(ledger.balance(&client_id).await.unwrap().balance, 4);
        // 5 MiB: 12 in all, 6 more than held; only 4 left.
        let t1b = receipt(&client, "T1", &id(&exit), None, 5 * mib);
        assert_eq!(
            apply(charge(&t1b, mib)).await,
            Err(LedgerError::OutOfCredits {
                balance: 4,
                amount: 6
            })
        );
        let t1c = receipt(&client, "T1", &id(&exit), None, 4 * mib);
        assert_eq!(apply(charge(&t1c, mib)).await, Ok(Applied::Raised));
        assert_eq!(apply(charge(&t1, mib)).await, Ok(Applied::Same));
        let b = ledger.balance(&client_id).await.unwrap();
        assert_eq!((b.balance, b.by_service["vpn"]), (1, 9));
        // Not this client's receipt, or more free bytes than carried.
        assert!(matches!(
            apply(charge(&receipt(&owner, "T2", &id(&exit), None, mib), 0)).await,
            Err(LedgerError::Receipt(_))
        ));
        assert!(matches!(
            apply(charge(&t1c, 5 * mib)).await,
            Err(LedgerError::Malformed(_))
        ));
        sqlx::query("DELETE FROM credit_entries WHERE account = $1")
            .bind(&client_id)
            .execute(store.pool())
            .await
            .unwrap();

        // The history holds every entry, each verifiable; the digest changes with it.
        let h = ledger.history(&owner_id).await.unwrap();
        assert_eq!(h.len(), 7);
        assert!(h.iter().all(|e| e.signed.verify().is_ok()));
        let d1 = ledger.digest(&owner_id).await.unwrap();
        apply(grant(&issuer, "G9", 1)).await.unwrap();
        let d2 = ledger.digest(&owner_id).await.unwrap();
        assert_ne!(d1.hash, d2.hash);
        // The two spends taken here are pending: they hold their credits, but are not what
        // replicas exchange until their majority is known.
        assert_eq!(h.iter().filter(|e| e.pending).count(), 2);
        assert_eq!(d2.entries, 6);
        ledger
            .finalize(&[
                format!("spend/{owner_id}/P1"),
                format!("spend/{owner_id}/P2"),
            ])
            .await
            .unwrap();
        assert_eq!(ledger.digest(&owner_id).await.unwrap().entries, 8);
        assert_eq!(ledger.decided(&owner_id).await.unwrap().len(), 8);
        // A spend whose majority never comes gives its credits back.
        apply(grant(&issuer, "G10", 50)).await.unwrap();
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 36);
        assert_eq!(
            apply(spend(&owner, &owner_id, "P6", 30)).await,
            Ok(Applied::New)
        );
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 6);
        sqlx::query("UPDATE credit_entries SET pending_until = 1 WHERE id LIKE 'spend/%/P6'")
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 36);
        // A confirmation after the hold ran out does not bring it back.
        ledger
            .finalize(&[format!("spend/{owner_id}/P6")])
            .await
            .unwrap();
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 36);
        assert!(
            ledger
                .history(&owner_id)
                .await
                .unwrap()
                .iter()
                .all(|e| !e.id.ends_with("/P6"))
        );
        ledger.expire().await.unwrap();
        // The same spend merged from a replica where it was decided counts for good.
        assert_eq!(
            ledger
                .apply(&spend(&owner, &owner_id, "P6", 30), Mode::Merge)
                .await,
            Ok(Applied::New)
        );
        assert_eq!(ledger.balance(&owner_id).await.unwrap().balance, 6);

        // Junk.
        for junk in ["", "{}", "{\"kind\":\"spend\"}", &"x".repeat(MAX_ENTRY + 1)] {
            let j = SignedEntry {
                entry: junk.into(),
                signature: d1.hash.clone(),
            };
            assert!(matches!(apply(j).await, Err(LedgerError::Malformed(_))));
        }
        store.close().await;
        db.drop_now().await;
    }

    #[test]
    fn prices_round_as_documented() {
        let p = pricing();
        assert_eq!(p.earned(Duty::Exit, (1 << 20) - 1), 9);
        assert_eq!(p.earned(Duty::Relay, 3 << 20), 12);
        assert_eq!(
            p.earned(Duty::Exit, u64::MAX),
            u64::MAX / (1 << 20) * 10 + 9
        );
        // Free up to 1 MiB a period, then 20 per MiB rounded up.
        assert_eq!(p.vault_sync(0, 1 << 20), 0);
        assert_eq!(p.vault_sync(1 << 20, 1), 1);
        assert_eq!(p.vault_sync((1 << 20) - 10, 10 + (1 << 19)), 10);
        assert_eq!(p.vault_sync(u64::MAX, 1 << 20), 20);
    }

    #[tokio::test]
    async fn sqlite_ledger_rules() {
        rules(TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn postgres_ledger_rules() {
        rules(TestDb::postgres().await).await;
    }
}
