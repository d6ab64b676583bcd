//! WireGuard static keys (Curve25519), in the base64 form `wg genkey` and `wg pubkey` use.
//!
//! Private keys live in zeroize-on-drop memory and have no `Debug`/`Display` that could leak
//! them into a log or an error message.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use zeroize::Zeroizing;

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not base64.
    #[error("not valid base64")]
    NotBase64,
    /// The decoded key does not have 32 bytes.
    #[error("a key has 32 bytes, this one has {0}")]
    WrongLength(usize),
}

fn decode_32(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(KeyError::WrongLength(bytes.len()));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// A WireGuard private key.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system has no random numbers");
        Self::from_bytes(*bytes)
    }

    /// A key from its 32 raw bytes (clamping happens inside the scalar multiplication).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Parses the base64 form written by `wg genkey`.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self::from_bytes(*decode_32(text)?))
    }

    /// The base64 form, as `wg genkey` prints it. The returned string is wiped on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }

    /// The raw 32 bytes, for handing to the protocol core.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form printed by `wg pubkey`.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self(*decode_32(text)?))
    }

    /// The base64 form, as `wg pubkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The lowercase hex form the WireGuard UAPI uses.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1: Alice's private key and public key.
    const ALICE_PRIVATE: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        let key = PrivateKey::from_bytes(hex32(ALICE_PRIVATE));
        assert_eq!(key.public_key().to_hex(), ALICE_PUBLIC);
    }

    #[test]
    fn base64_round_trips() {
        let key = PrivateKey::generate();
        let again = PrivateKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(*key.to_bytes(), *again.to_bytes());
        let public: PublicKey = key.public_key().to_base64().parse().unwrap();
        assert_eq!(public, key.public_key());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key()
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        assert_eq!(
            PublicKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            PublicKey::from_base64("AAAA").unwrap_err(),
            KeyError::WrongLength(3)
        );
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = PrivateKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(key.to_base64().as_str()));
        assert!(shown.contains("redacted"));
    }
}
