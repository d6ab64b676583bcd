//! The sync protocol's messages: the JSON bodies of `/v1/vault/*`, defined once for the node
//! (server) and the client. Binary fields are base64 (standard, padded); ids and hashes hex.
//!
//! ```text
//! GET  /v1/vault/prelogin?account=ID   → Prelogin          (salt and KDF parameters)
//! POST /v1/vault/register  Register    → 201
//! POST /v1/vault/challenge ChallengeRequest → Challenge
//! POST /v1/vault/login     Login       → Session           (bearer token, wrapped account key)
//! GET  /v1/vault/changes?since=SEQ[&chain=true] → Changes  (bearer)
//! POST /v1/vault/push      Push        → Pushed | 409 Conflict   (bearer)
//! POST /v1/vault/catchup   Changes     → Pushed            (bearer; a lagging replica)
//! ```
//!
//! `catchup` carries what an up-to-date replica answered to `changes?since=H&chain=true`, where `H` is
//! the lagging replica's head: the replica checks that the chain links to its head and is
//! signed by the account, applies the records, and checks the result against the signed root.

use crate::crypto::KdfParams;
use crate::ids::AccountId;
use crate::manifest::Manifest;
use crate::record::ItemRecord;
use serde::{Deserialize, Serialize};

/// Most item records one push may carry.
pub const MAX_PUSH_ITEMS: usize = 1000;

/// The account's public KDF inputs, fetched before the password is typed on a new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prelogin {
    /// Argon2id salt.
    #[serde(with = "crate::b64")]
    pub salt: Vec<u8>,
    /// Argon2id parameters.
    pub kdf: KdfParams,
}

/// Creates an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The account (a hash of its name).
    pub account: AccountId,
    /// Argon2id salt (16 bytes).
    #[serde(with = "crate::b64")]
    pub salt: Vec<u8>,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Public half of the login key (32 bytes).
    #[serde(with = "crate::b64")]
    pub auth_key: Vec<u8>,
    /// Public half of the manifest key (32 bytes), so replicas can check manifests too.
    #[serde(with = "crate::b64")]
    pub manifest_key: Vec<u8>,
    /// The account key, wrapped by the key-encryption key.
    #[serde(with = "crate::b64")]
    pub wrapped_key: Vec<u8>,
    /// Signature by the login key over [`register_message`]: proves the caller holds it.
    #[serde(with = "crate::b64")]
    pub proof: Vec<u8>,
}

/// The bytes a registration's proof signs.
pub fn register_message(r: &Register) -> Vec<u8> {
    let mut m = b"nx1-vault/1 register\0".to_vec();
    m.extend_from_slice(r.account.as_bytes());
    m.extend_from_slice(&r.salt);
    m.extend_from_slice(&r.kdf.m_kib.to_be_bytes());
    m.extend_from_slice(&r.kdf.t.to_be_bytes());
    m.extend_from_slice(&r.kdf.p.to_be_bytes());
    m.extend_from_slice(&r.auth_key);
    m.extend_from_slice(&r.manifest_key);
    m.extend_from_slice(&r.wrapped_key);
    m
}

/// Asks for a login challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// The account.
    pub account: AccountId,
}

/// A one-time login challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes, valid for a minute, usable once.
    #[serde(with = "crate::b64")]
    pub challenge: Vec<u8>,
}

/// Proves knowledge of the login key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// The account.
    pub account: AccountId,
    /// The challenge being answered.
    #[serde(with = "crate::b64")]
    pub challenge: Vec<u8>,
    /// Signature by the login key over [`login_message`].
    #[serde(with = "crate::b64")]
    pub signature: Vec<u8>,
}

/// The bytes a login signature covers.
pub fn login_message(account: &AccountId, challenge: &[u8]) -> Vec<u8> {
    let mut m = b"nx1-vault/1 login\0".to_vec();
    m.extend_from_slice(account.as_bytes());
    m.extend_from_slice(challenge);
    m
}

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Bearer token for the other calls.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The account key, wrapped by the key-encryption key.
    #[serde(with = "crate::b64")]
    pub wrapped_key: Vec<u8>,
}

/// What changed since a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Changes {
    /// The newest manifest, if the vault has any change yet.
    pub head: Option<Manifest>,
    /// Every manifest after the cursor, oldest first (empty when the cursor is 0, unless
    /// `chain=true` asks for it).
    pub chain: Vec<Manifest>,
    /// Every record changed after the cursor, at its newest version.
    pub items: Vec<ItemRecord>,
}

/// A batch of changes, applied all together or not at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The change number this batch builds on (the server's head must still be this).
    pub base: u64,
    /// New versions: each record's version is the one it replaces plus one (1 for new).
    pub items: Vec<ItemRecord>,
    /// The manifest of the state after this batch (its seq is `base + 1`).
    pub manifest: Manifest,
}

/// A push that landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// The new head change number.
    pub seq: u64,
}

/// 409: the push was built on an old state; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// What conflicted.
    pub error: String,
    /// The server's head change number.
    pub head: u64,
    /// The server's current record of each item whose version did not match.
    pub items: Vec<ItemRecord>,
}

/// Any other error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}
