//! Signed JSON, the one format of the node's signed records, client registrations and usage
//! receipts: a value's exact JSON text, and a base64 ed25519 signature over a domain label
//! (which keeps a signature for one purpose from passing for another) followed by that text.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Serialize;

/// Why a signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signer is not a base64 ed25519 public key.
    BadKey,
    /// The signature is malformed or does not verify.
    BadSignature,
}

fn message(domain: &[u8], text: &str) -> Vec<u8> {
    let mut msg = domain.to_vec();
    msg.extend_from_slice(text.as_bytes());
    msg
}

/// `value`'s JSON text and the signature over `domain` ‖ text.
pub fn sign<T: Serialize>(domain: &[u8], value: &T, key: &SigningKey) -> (String, String) {
    let text = serde_json::to_string(value).expect("signed values serialize");
    let signature = STANDARD.encode(key.sign(&message(domain, &text)).to_bytes());
    (text, signature)
}

/// A base64 ed25519 public key, if `text` is one.
pub fn public_key(text: &str) -> Option<VerifyingKey> {
    let key: [u8; 32] = STANDARD.decode(text).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&key).ok()
}

/// Checks `signature` over `domain` ‖ `text` by `signer` (a base64 ed25519 public key).
pub fn verify(
    domain: &[u8],
    text: &str,
    signature: &str,
    signer: &str,
) -> Result<(), SignatureError> {
    let key = public_key(signer).ok_or(SignatureError::BadKey)?;
    let sig = STANDARD
        .decode(signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(SignatureError::BadSignature)?;
    key.verify(&message(domain, text), &sig)
        .map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_domain_text_and_signer() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let id = STANDARD.encode(key.verifying_key().as_bytes());
        let (text, sig) = sign(b"a\0", &[1, 2, 3], &key);
        assert_eq!(text, "[1,2,3]");
        assert_eq!(verify(b"a\0", &text, &sig, &id), Ok(()));
        assert_eq!(
            verify(b"b\0", &text, &sig, &id),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(b"a\0", "[1,2,4]", &sig, &id),
            Err(SignatureError::BadSignature)
        );
        let other = STANDARD.encode(SigningKey::from_bytes(&[6; 32]).verifying_key().as_bytes());
        assert_eq!(
            verify(b"a\0", &text, &sig, &other),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(b"a\0", &text, "!!", &id),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(b"a\0", &text, &sig, "short"),
            Err(SignatureError::BadKey)
        );
    }
}
