//! TOTP codes (RFC 6238) from an item's secret: a base32 secret or an `otpauth://totp/` URI
//! (which may choose the digits, period and hash). Built on `totp-rs`.

use totp_rs::{Builder, Secret, Totp};

/// A code and how long it stays valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// The digits.
    pub code: String,
    /// Seconds left in its period.
    pub remaining: u64,
    /// The period in seconds.
    pub period: u64,
}

/// Why a TOTP secret is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a TOTP secret (base32 or otpauth://totp/ URI): {0}")]
pub struct TotpError(String);

fn parse(secret: &str) -> Result<Totp, TotpError> {
    let s = secret.trim();
    if s.starts_with("otpauth://") {
        return Totp::from_url_unchecked(s).map_err(|e| TotpError(e.to_string()));
    }
    // People paste base32 in groups, in lower case, with padding: accept all of that. Short
    // (80-bit) secrets are common in the wild, so the RFC's 128-bit recommendation is not
    // enforced.
    let cleaned: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if cleaned.is_empty() {
        return Err(TotpError("empty".into()));
    }
    let secret = Secret::try_from_base32(&cleaned).map_err(|e| TotpError(e.to_string()))?;
    Ok(Builder::new().with_secret(secret).build_noncompliant())
}

/// The code for Unix time `now`.
pub fn code(secret: &str, now: u64) -> Result<Code, TotpError> {
    let t = parse(secret)?;
    let period = t.step();
    Ok(Code {
        code: t.generate(now).to_string(),
        remaining: period - now % period,
        period,
    })
}

/// Checks that a secret parses, for validating input before it is stored.
pub fn check(secret: &str) -> Result<(), TotpError> {
    parse(secret).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, HMAC-SHA1 rows (secret "12345678901234567890", 8 digits).
    #[test]
    fn rfc6238_vectors() {
        let uri = "otpauth://totp/Example:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=8&algorithm=SHA1&period=30";
        for (t, want) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(code(uri, t).unwrap().code, want, "t={t}");
        }
        // SHA-256 row: the 32-byte secret "12345678901234567890123456789012".
        let uri256 = "otpauth://totp/x?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGEZA&digits=8&algorithm=SHA256";
        assert_eq!(code(uri256, 59).unwrap().code, "46119246");
    }

    #[test]
    fn plain_base32_secrets_in_any_shape() {
        let a = code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 59).unwrap();
        let b = code("gezd gnbv gy3t qojq gezd gnbv gy3t qojq", 59).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.code, "287082");
        assert_eq!(a.remaining, 1);
        assert_eq!(code("JBSWY3DPEHPK3PXP", 0).unwrap().code.len(), 6);
        assert!(code("not base32 !!", 0).is_err());
        assert!(code("", 0).is_err());
        assert!(check("otpauth://hotp/x?secret=JBSWY3DPEHPK3PXP").is_err());
    }
}
