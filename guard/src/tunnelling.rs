//! DNS tunnelling: data smuggled out in query names shows up as long labels of encoded bytes
//! (base32, hex, base64): long, varied, and with few vowels (about 16% in random base32, 12%
//! in hex). Ordinary names, even long ones made of words, have well over 32% vowels.

/// A label this long or longer is examined.
pub const MIN_LABEL: usize = 40;
/// Shannon entropy (bits per character) from which a long label looks encoded (random hex
/// of 40+ characters has at least ~3.4; a label repeating a few characters has far less).
pub const MIN_ENTROPY: f64 = 3.3;
/// Share of vowels below which a long label looks encoded rather than made of words.
pub const MAX_VOWELS: f64 = 0.32;

/// Why a name looks like tunnelled data.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspicion {
    /// The label.
    pub label: String,
    /// Its entropy in bits per character.
    pub entropy: f64,
}

impl std::fmt::Display for Suspicion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "label of {} characters with {:.2} bits/character",
            self.label.len(),
            self.entropy
        )
    }
}

/// Shannon entropy of the bytes of `s`, in bits per byte.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// The first label of `name` that looks like encoded data, if any.
pub fn suspicious_label(name: &str) -> Option<Suspicion> {
    name.trim_end_matches('.')
        .split('.')
        .filter(|l| l.len() >= MIN_LABEL)
        .map(|l| l.to_ascii_lowercase())
        .find_map(|label| {
            let vowels =
                label.bytes().filter(|b| b"aeiou".contains(b)).count() as f64 / label.len() as f64;
            let e = entropy(&label);
            (e >= MIN_ENTROPY && vowels < MAX_VOWELS).then_some(Suspicion { label, entropy: e })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic base32 text of `n` characters (xorshift bytes, RFC 4648 alphabet).
    fn base32(n: usize, mut seed: u64) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ALPHABET[(seed % 32) as usize] as char
            })
            .collect()
    }

    #[test]
    fn encoded_labels_are_suspicious() {
        let caught = (1..=200)
            .filter(|&seed| {
                suspicious_label(&format!("{}.t.exfil.example", base32(52, seed))).is_some()
            })
            .count();
        // A tunnel sends many names; nearly every one must be caught.
        assert!(caught >= 196, "{caught} of 200");
        let hex = "5f2a9c81d03b44e6a7f1c2d3e4b5a69788c9d0e1f2a3b4c5";
        assert!(suspicious_label(&format!("{hex}.example.com")).is_some());
    }

    #[test]
    fn ordinary_names_are_not() {
        for name in [
            "www.example.com",
            "thisisaverylongsubdomainmadeofwordsonlyforfun.example.org",
            "my-load-balancer-1234567890.us-west-2.elb.amazonaws.com",
            "e1234.a.akamaiedge.net",
            "_dmarc.example.com",
            "xn--bcher-kva.example",
            "d1a2b3c4d5e6f7.cloudfront.net",
            "internationalizationandlocalizationsettingsforwebsites.example",
            "averyveryverylongsubdomainnamethatdescribestheservice.example",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
        ] {
            assert_eq!(suspicious_label(name), None, "{name}");
        }
    }

    #[test]
    fn entropy_is_measured_in_bits() {
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }
}
