//! DNS tunnelling: data smuggled out in query names shows up as long labels of encoded bytes
//! (base32, hex, base64): long, varied, and with few vowels (about 16% in random base32, 12%
//! in hex). Ordinary names, even long ones made of words, have well over 32% vowels.
//!
//! A tunnel that keeps its labels short shows up by volume instead: many *distinct* names
//! under one domain from one client ([`QueryVolume`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Queries are counted over windows this long.
pub const VOLUME_WINDOW: Duration = Duration::from_secs(60);
/// Distinct names under one domain from one client, within a window, that make a tunnel
/// (5 a second; a busy browser page asks for a few dozen names under one domain at most).
pub const VOLUME_THRESHOLD: usize = 300;
/// (client, domain) pairs counted at most per window; beyond it new pairs are not counted.
pub const VOLUME_PAIRS: usize = 10_000;
/// How long a client's queries under a domain it tunnelled through are blocked.
pub const VOLUME_BLOCK: Duration = Duration::from_secs(600);

/// A tunnel found by volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFinding {
    /// The registrable domain the names were under.
    pub domain: String,
    /// Distinct names seen.
    pub names: usize,
}

impl std::fmt::Display for VolumeFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} distinct names under {} within {} s",
            self.names,
            self.domain,
            VOLUME_WINDOW.as_secs()
        )
    }
}

/// Per-client query volume under each registrable domain.
#[derive(Debug, Default)]
pub struct QueryVolume {
    window_start: Option<Instant>,
    /// Hashes of the distinct names seen, per (client, domain), up to the threshold.
    names: HashMap<(IpAddr, String), HashSet<u64>>,
    /// (client, domain) pairs blocked, until when.
    blocked: HashMap<(IpAddr, String), Instant>,
}

impl QueryVolume {
    /// Counts a query for `name` from `client`; a finding when it makes the client's distinct
    /// names under that domain reach [`VOLUME_THRESHOLD`] (reported once per window).
    pub fn count(&mut self, client: IpAddr, name: &str, now: Instant) -> Option<VolumeFinding> {
        if self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= VOLUME_WINDOW)
        {
            self.window_start = Some(now);
            self.names.clear();
            self.blocked.retain(|_, until| *until > now);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domain = psl::domain_str(&name)?.to_owned();
        if name == domain {
            return None;
        }
        let key = (client, domain);
        if !self.names.contains_key(&key) && self.names.len() >= VOLUME_PAIRS {
            return None;
        }
        let seen = self.names.entry(key.clone()).or_default();
        if seen.len() >= VOLUME_THRESHOLD {
            return None;
        }
        seen.insert(crate::fnv1a(name.bytes()));
        if seen.len() < VOLUME_THRESHOLD {
            return None;
        }
        let names = seen.len();
        self.blocked.insert(key.clone(), now + VOLUME_BLOCK);
        Some(VolumeFinding {
            domain: key.1,
            names,
        })
    }

    /// Whether `client`'s queries for `name` are blocked for tunnelling through its domain.
    pub fn blocked(&self, client: IpAddr, name: &str, now: Instant) -> Option<&str> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domain = psl::domain_str(&name)?;
        let (key, until) = self.blocked.get_key_value(&(client, domain.to_owned()))?;
        (now < *until).then_some(key.1.as_str())
    }
}

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

    #[test]
    fn many_distinct_names_under_one_domain_are_a_tunnel() {
        let mut v = QueryVolume::default();
        let (a, b): (IpAddr, IpAddr) = ("10.87.0.2".parse().unwrap(), "10.87.0.3".parse().unwrap());
        let t0 = Instant::now();
        // The same names again and again are no tunnel.
        for i in 0..2000 {
            assert_eq!(
                v.count(a, &format!("w{}.news.example.com", i % 40), t0),
                None
            );
        }
        let mut found = None;
        for i in 0..VOLUME_THRESHOLD {
            found = v
                .count(a, &format!("q{i}x.t.exfil.example.org."), t0)
                .or(found);
            assert!(
                v.count(b, &format!("p{i}.exfil.example.org"), t0).is_none()
                    || i + 1 == VOLUME_THRESHOLD
            );
        }
        let f = found.expect("a finding");
        assert_eq!(f.domain, "example.org");
        assert_eq!(
            f.to_string(),
            "300 distinct names under example.org within 60 s"
        );
        assert_eq!(
            v.blocked(a, "anything.example.org", t0),
            Some("example.org")
        );
        assert_eq!(v.blocked(a, "news.example.com", t0), None);
        // Reported once; the block outlasts the window and then ends.
        assert_eq!(v.count(a, "more.example.org", t0), None);
        let later = t0 + VOLUME_WINDOW;
        assert!(v.blocked(a, "x.example.org", later).is_some());
        assert_eq!(v.blocked(a, "x.example.org", t0 + VOLUME_BLOCK), None);
    }
}
