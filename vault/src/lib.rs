//! The nx1 password vault: everything a device does, as pure code over bytes and messages.
//!
//! The server side (storage, HTTP) lives in the node; this crate is what makes the server
//! irrelevant to confidentiality and integrity: the key hierarchy and envelope ([`crypto`]),
//! items and their merge ([`item`]), the records the server stores ([`record`]), the signed
//! hash-chained manifest that exposes rollbacks and forks ([`manifest`]), the sync protocol's
//! messages ([`wire`]) and a device's state machine ([`client`]); plus password generation,
//! TOTP and the import/export formats of other password managers.
//!
//! ```
//! use nx1_vault::client::Vault;
//! use nx1_vault::crypto::KdfParams;
//! use nx1_vault::item::Item;
//!
//! let (mut vault, _registration) = Vault::create("alice", b"correct horse", KdfParams::FLOOR)?;
//! let id = vault.add(Item { name: "Mail".into(), password: "s3cret".into(), ..Item::default() });
//! assert_eq!(vault.get(&id)?.password, "s3cret");
//! # Ok::<(), nx1_vault::client::VaultError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod crypto;
pub mod export;
pub mod generate;
pub mod ids;
pub mod import;
pub mod item;
pub mod manifest;
pub mod record;
pub mod totp;
pub mod wire;

/// Serde helpers: `Vec<u8>` as standard padded base64.
pub(crate) mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
