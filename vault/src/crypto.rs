//! The vault's cryptography: the master password's key derivation, the key hierarchy and the
//! one envelope every secret is sealed in. `docs/vault-format.md` is the specification.
//!
//! ```text
//! password ─ Argon2id(salt, m, t, p) ─ HKDF-SHA256(salt = account id)
//!                                        ├─ key-encryption key ── wraps ── account key
//!                                        └─ authentication key (ed25519, login proofs)
//! account key ─ wraps ── item key (one per item) ── seals ── item body (padded)
//!             └ HKDF ─── manifest key (ed25519, signs the hash-chained manifest)
//! ```
//!
//! Every sealed blob is `version (1) ‖ nonce (24) ‖ XChaCha20-Poly1305 ciphertext ‖ tag`, and
//! its associated data names the purpose, the account, the item and the version, so a server
//! that moves a blob to another slot, account or version makes it fail to open.

use crate::ids::{AccountId, ItemId};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// The envelope format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Largest plaintext one envelope may hold (an item with its history, a local cache chunk).
pub const MAX_PLAINTEXT: usize = 16 << 20;

/// Why a cryptographic operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Key derivation parameters outside what this client accepts.
    #[error("key derivation parameters rejected: {0}")]
    WeakKdf(String),
    /// Argon2 itself refused (e.g. out of memory).
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// A sealed blob did not open: wrong key (wrong password), tampered, or moved to a slot it
    /// was not sealed for.
    #[error("decryption failed: wrong key, or the data was altered or moved")]
    Open,
    /// A blob with a format version this client does not know.
    #[error("unknown envelope format version {0}")]
    Version(u8),
    /// A blob too short to be an envelope, or padding that does not parse.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A plaintext over [`MAX_PLAINTEXT`].
    #[error("plaintext of {0} bytes is over the {MAX_PLAINTEXT}-byte limit")]
    TooLarge(usize),
}

/// Argon2id cost parameters. Stored beside the account on the server, pinned by every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 4,
    };
    /// The least a client accepts from anyone (OWASP's minimum for Argon2id: 19 MiB, t = 2).
    pub const FLOOR: KdfParams = KdfParams {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// The most a client agrees to compute (a hostile server could otherwise ask for 4 TiB).
    pub const CEILING: KdfParams = KdfParams {
        m_kib: 4 * 1024 * 1024,
        t: 64,
        p: 64,
    };

    /// Checks the parameters against [`Self::FLOOR`] and [`Self::CEILING`].
    pub fn check(&self) -> Result<(), CryptoError> {
        let (f, c) = (Self::FLOOR, Self::CEILING);
        if self.m_kib < f.m_kib || self.t < f.t || self.p < f.p {
            return Err(CryptoError::WeakKdf(format!(
                "{self} is below the minimum {f}"
            )));
        }
        if self.m_kib > c.m_kib || self.t > c.t || self.p > c.p {
            return Err(CryptoError::WeakKdf(format!(
                "{self} is above the maximum {c}"
            )));
        }
        Ok(())
    }

    /// Checks parameters offered by a server against those this device pinned: less memory or
    /// fewer passes than before is refused (a server could otherwise collect a cheaply
    /// brute-forced login proof).
    pub fn check_against(&self, pinned: &KdfParams) -> Result<(), CryptoError> {
        self.check()?;
        if self.m_kib < pinned.m_kib || self.t < pinned.t {
            return Err(CryptoError::WeakKdf(format!(
                "the server offers {self}, weaker than {pinned} which this device has seen"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for KdfParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Argon2id m={} KiB t={} p={}", self.m_kib, self.t, self.p)
    }
}

/// A 256-bit symmetric key, wiped when dropped.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl Key {
    /// A fresh random key.
    pub fn generate() -> Key {
        Key(random())
    }

    /// The raw bytes (to wrap the key).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_slice(b: &[u8]) -> Result<Key, CryptoError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| CryptoError::Malformed("key length"))?;
        Ok(Key(arr))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// What a master password derives: the key-encryption key and the login key.
pub struct MasterKeys {
    /// Wraps the account key.
    pub kek: Key,
    /// Signs login challenges; its public half is all the server stores.
    pub auth: SigningKey,
}

/// Derives the master keys: Argon2id over the password, then HKDF-SHA256 (salted with the
/// account id) into two independent keys.
pub fn derive_master(
    password: &[u8],
    salt: &[u8; 16],
    params: &KdfParams,
    account: &AccountId,
) -> Result<MasterKeys, CryptoError> {
    params.check()?;
    let mut ikm = Zeroizing::new([0u8; 32]);
    argon2id(password, salt, params, &mut ikm[..])?;
    let hk = Hkdf::<Sha256>::new(Some(account.as_bytes()), &ikm[..]);
    let mut kek = [0u8; 32];
    let mut auth = Zeroizing::new([0u8; 32]);
    hk.expand(b"nx1-vault v1 key-encryption key", &mut kek)
        .map_err(|_| CryptoError::Kdf("hkdf".into()))?;
    hk.expand(b"nx1-vault v1 authentication key", &mut auth[..])
        .map_err(|_| CryptoError::Kdf("hkdf".into()))?;
    Ok(MasterKeys {
        kek: Key(kek),
        auth: SigningKey::from_bytes(&auth),
    })
}

/// Plain Argon2id (version 0x13) into `out`.
pub fn argon2id(
    password: &[u8],
    salt: &[u8],
    params: &KdfParams,
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(out.len()))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p)
        .hash_password_into(password, salt, out)
        .map_err(|e| CryptoError::Kdf(e.to_string()))
}

/// The signing key for the account's manifests, derived from the account key so that every
/// device of the account (and nobody else) can sign.
pub fn manifest_key(account_key: &Key) -> SigningKey {
    let hk = Hkdf::<Sha256>::new(None, account_key.as_bytes());
    let mut seed = Zeroizing::new([0u8; 32]);
    hk.expand(b"nx1-vault v1 manifest signing key", &mut seed[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    SigningKey::from_bytes(&seed)
}

/// What a sealed blob is for; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The account key, wrapped by the key-encryption key.
    AccountKey,
    /// An item's key, wrapped by the account key.
    ItemKey,
    /// An item's body, sealed by its item key.
    ItemBody,
    /// A device's local cache, sealed by the account key.
    LocalCache,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::AccountKey => b"account-key",
            Purpose::ItemKey => b"item-key",
            Purpose::ItemBody => b"item-body",
            Purpose::LocalCache => b"local-cache",
        }
    }
}

/// The slot a blob is sealed for.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    /// What the blob is.
    pub purpose: Purpose,
    /// Whose it is.
    pub account: &'a AccountId,
    /// Which item (zero for account-wide blobs).
    pub item: ItemId,
    /// Which version of the item (zero where versions do not apply).
    pub version: u64,
}

impl Slot<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut ad = Vec::with_capacity(64);
        ad.extend_from_slice(b"nx1-vault/1\0");
        ad.extend_from_slice(self.purpose.label());
        ad.push(0);
        ad.extend_from_slice(self.account.as_bytes());
        ad.extend_from_slice(self.item.as_bytes());
        ad.extend_from_slice(&self.version.to_be_bytes());
        ad
    }
}

/// The padded size of a plaintext of `len` bytes (plus the 4-byte length): powers of two from
/// 256 bytes to 64 KiB, then multiples of 64 KiB, so sizes reveal little about contents.
pub fn padded_len(len: usize) -> usize {
    let need = len + 4;
    if need <= 256 {
        256
    } else if need <= 64 << 10 {
        need.next_power_of_two()
    } else {
        need.div_ceil(64 << 10) * (64 << 10)
    }
}

/// Seals `plaintext` for `slot` under `key`, padded to its size bucket.
pub fn seal(key: &Key, slot: &Slot<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    seal_with_nonce(key, slot, plaintext, &random::<NONCE_LEN>())
}

fn seal_with_nonce(
    key: &Key,
    slot: &Slot<'_>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(CryptoError::TooLarge(plaintext.len()));
    }
    let mut padded = Zeroizing::new(Vec::with_capacity(padded_len(plaintext.len())));
    padded.extend_from_slice(&(plaintext.len() as u32).to_le_bytes());
    padded.extend_from_slice(plaintext);
    padded.resize(padded_len(plaintext.len()), 0);
    let ad = slot.associated_data();
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let ct = cipher
        .encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: &padded,
                aad: &ad,
            },
        )
        .map_err(|_| CryptoError::Open)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a blob sealed by [`seal`] for the same slot; the plaintext is wiped when dropped.
pub fn open(key: &Key, slot: &Slot<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (&version, rest) = blob.split_first().ok_or(CryptoError::Malformed("empty"))?;
    if version != FORMAT_VERSION {
        return Err(CryptoError::Version(version));
    }
    if rest.len() < NONCE_LEN + TAG_LEN + 4 {
        return Err(CryptoError::Malformed("too short"));
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| CryptoError::Malformed("nonce"))?;
    let ad = slot.associated_data();
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let padded = Zeroizing::new(
        cipher
            .decrypt(&nonce, Payload { msg: ct, aad: &ad })
            .map_err(|_| CryptoError::Open)?,
    );
    let len = u32::from_le_bytes(
        padded[..4]
            .try_into()
            .map_err(|_| CryptoError::Malformed("padding"))?,
    ) as usize;
    let body = padded
        .get(4..4 + len)
        .ok_or(CryptoError::Malformed("padding length"))?;
    Ok(Zeroizing::new(body.to_vec()))
}

/// Wraps `inner` (an account or item key) under `outer` for `slot`.
pub fn wrap(outer: &Key, slot: &Slot<'_>, inner: &Key) -> Result<Vec<u8>, CryptoError> {
    seal(outer, slot, inner.as_bytes())
}

/// Unwraps a key wrapped by [`wrap`].
pub fn unwrap(outer: &Key, slot: &Slot<'_>, blob: &[u8]) -> Result<Key, CryptoError> {
    Key::from_slice(&open(outer, slot, blob)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// RFC 9106 §5.3: the Argon2id test vector (with secret and associated data, which the
    /// vault does not use, so the crate's full interface is exercised here).
    #[test]
    fn argon2id_rfc9106_vector() {
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .data(argon2::AssociatedData::new(&[4; 12]).unwrap())
            .output_len(32)
            .build()
            .unwrap();
        let secret = [3u8; 8];
        let a = argon2::Argon2::new_with_secret(
            &secret,
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        )
        .unwrap();
        let mut out = [0u8; 32];
        a.hash_password_into(&[1; 32], &[2; 16], &mut out).unwrap();
        assert_eq!(
            out.to_vec(),
            hex("0d 64 0d f5 8d 78 76 6c 08 c0 37 a3 4a 8b 53 c9
                 d0 1e f0 45 2d 75 b6 5e b5 25 20 e9 6b 01 e6 59")
        );
    }

    /// draft-irtf-cfrg-xchacha-03 §A.3.1: the AEAD_XChaCha20_Poly1305 test vector.
    #[test]
    fn xchacha20poly1305_vector() {
        let key: Vec<u8> = (0x80..=0x9f).collect();
        let nonce: Vec<u8> = (0x40..=0x57).collect();
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let key: [u8; 32] = key.try_into().unwrap();
        let nonce: [u8; 24] = nonce.try_into().unwrap();
        let cipher = XChaCha20Poly1305::new(&key.into());
        let ct = cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: pt, aad: &aad })
            .unwrap();
        let expect = hex(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
             21f9664c97637da9768812f615c68b13b52e
             c0875924c1c7987947deafd8780acf49",
        );
        assert_eq!(ct, expect);
    }

    fn slot(account: &AccountId, item: u8, version: u64) -> Slot<'_> {
        Slot {
            purpose: Purpose::ItemBody,
            account,
            item: ItemId::from_bytes([item; 16]),
            version,
        }
    }

    #[test]
    fn sealed_blob_opens_only_in_its_slot() {
        let account = AccountId::from_bytes([7; 16]);
        let other = AccountId::from_bytes([8; 16]);
        let key = Key::generate();
        let blob = seal(&key, &slot(&account, 1, 3), b"secret").unwrap();
        assert_eq!(
            &open(&key, &slot(&account, 1, 3), &blob).unwrap()[..],
            b"secret"
        );
        // Another item, another version, another account, another purpose: all refused.
        for bad in [
            slot(&account, 2, 3),
            slot(&account, 1, 2),
            slot(&other, 1, 3),
            Slot {
                purpose: Purpose::ItemKey,
                ..slot(&account, 1, 3)
            },
        ] {
            assert_eq!(open(&key, &bad, &blob), Err(CryptoError::Open));
        }
        assert_eq!(
            open(&Key::generate(), &slot(&account, 1, 3), &blob),
            Err(CryptoError::Open)
        );
        // Any flipped bit is caught.
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 1;
            assert!(open(&key, &slot(&account, 1, 3), &t).is_err(), "byte {i}");
        }
        assert!(open(&key, &slot(&account, 1, 3), &blob[..20]).is_err());
    }

    #[test]
    fn ciphertexts_are_padded_to_buckets() {
        let account = AccountId::from_bytes([7; 16]);
        let key = Key::generate();
        let len = |n: usize| {
            seal(&key, &slot(&account, 1, 1), &vec![b'x'; n])
                .unwrap()
                .len()
        };
        let overhead = 1 + NONCE_LEN + TAG_LEN;
        assert_eq!(len(0), 256 + overhead);
        assert_eq!(len(200), 256 + overhead);
        assert_eq!(len(253), 512 + overhead);
        assert_eq!(len(3000), 4096 + overhead);
        assert_eq!(len(100_000), 128 * 1024 + overhead);
        assert_eq!(padded_len(70_000), 128 * 1024);
        assert!(seal(&key, &slot(&account, 1, 1), &vec![0; MAX_PLAINTEXT + 1]).is_err());
    }

    #[test]
    fn kdf_floor_ceiling_and_pinning() {
        assert!(KdfParams::DEFAULT.check().is_ok());
        let weak = KdfParams {
            m_kib: 1024,
            t: 1,
            p: 1,
        };
        assert!(matches!(weak.check(), Err(CryptoError::WeakKdf(_))));
        let huge = KdfParams {
            m_kib: u32::MAX,
            ..KdfParams::DEFAULT
        };
        assert!(huge.check().is_err());
        // Pinned at the default: the floor is now refused, stronger is accepted.
        assert!(KdfParams::FLOOR.check_against(&KdfParams::DEFAULT).is_err());
        let stronger = KdfParams {
            m_kib: 128 * 1024,
            ..KdfParams::DEFAULT
        };
        assert!(stronger.check_against(&KdfParams::DEFAULT).is_ok());
    }

    #[test]
    fn master_keys_depend_on_password_salt_and_account() {
        let a = AccountId::from_bytes([1; 16]);
        let b = AccountId::from_bytes([2; 16]);
        let p = KdfParams::FLOOR;
        let k1 = derive_master(b"correct horse", &[9; 16], &p, &a).unwrap();
        let k2 = derive_master(b"correct horse", &[9; 16], &p, &a).unwrap();
        assert_eq!(k1.kek.as_bytes(), k2.kek.as_bytes());
        assert_ne!(k1.kek.as_bytes(), k1.auth.to_bytes().as_slice());
        for other in [
            derive_master(b"correct horsf", &[9; 16], &p, &a).unwrap(),
            derive_master(b"correct horse", &[8; 16], &p, &a).unwrap(),
            derive_master(b"correct horse", &[9; 16], &p, &b).unwrap(),
        ] {
            assert_ne!(other.kek.as_bytes(), k1.kek.as_bytes());
            assert_ne!(other.auth.verifying_key(), k1.auth.verifying_key());
        }
    }
}
