//! Password and passphrase generation from the operating system's random source.

/// Lower-case letters.
const LOWER: &str = "abcdefghijkmnopqrstuvwxyz";
/// Upper-case letters (no `I`, `O`: they read as `l`, `0`).
const UPPER: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Digits (no `0`, `1`).
const DIGITS: &str = "23456789";
/// Symbols that survive most sites' rules and shells' quoting.
const SYMBOLS: &str = "!#$%&*+-=?@^_~";

/// A uniformly random index below `n` (rejection sampling, no modulo bias).
fn below(n: usize) -> usize {
    assert!(n > 0 && n <= u32::MAX as usize);
    let n = n as u32;
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let v = u32::from_le_bytes(crate::crypto::random::<4>());
        if v < zone {
            return (v % n) as usize;
        }
    }
}

/// A random password of `len` characters (at least 4) from letters, digits and, when
/// `symbols`, symbols; it has at least one of each class used.
pub fn password(len: usize, symbols: bool) -> String {
    let len = len.max(4);
    let mut classes = vec![LOWER, UPPER, DIGITS];
    if symbols {
        classes.push(SYMBOLS);
    }
    let all: Vec<char> = classes.concat().chars().collect();
    loop {
        let pw: String = (0..len).map(|_| all[below(all.len())]).collect();
        if classes.iter().all(|c| pw.chars().any(|ch| c.contains(ch))) {
            return pw;
        }
    }
}

/// A passphrase of `words` words (at least 3) from the EFF large word list (7,776 words,
/// 12.9 bits each), joined by `separator`.
pub fn passphrase(words: usize, separator: &str) -> String {
    let list = eff_wordlist::large::LIST;
    (0..words.max(3))
        .map(|_| list[below(list.len())].1)
        .collect::<Vec<_>>()
        .join(separator)
}

/// Bits of entropy of [`password`] (an upper bound: the class rule removes a little).
pub fn password_bits(len: usize, symbols: bool) -> f64 {
    let n = LOWER.len() + UPPER.len() + DIGITS.len() + if symbols { SYMBOLS.len() } else { 0 };
    len.max(4) as f64 * (n as f64).log2()
}

/// Bits of entropy of [`passphrase`].
pub fn passphrase_bits(words: usize) -> f64 {
    words.max(3) as f64 * (eff_wordlist::large::LIST.len() as f64).log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_have_every_class_and_differ() {
        let a = password(20, true);
        assert_eq!(a.chars().count(), 20);
        assert!(a.chars().any(|c| SYMBOLS.contains(c)));
        assert!(a.chars().any(|c| DIGITS.contains(c)));
        assert_ne!(a, password(20, true));
        assert!(!password(30, false).chars().any(|c| SYMBOLS.contains(c)));
        assert_eq!(password(1, false).len(), 4);
        assert!(password_bits(20, true) > 110.0);
    }

    #[test]
    fn passphrases_use_the_word_list() {
        // Some words of the list have a hyphen ("t-shirt"), so split on another separator.
        for _ in 0..200 {
            let p = passphrase(6, " ");
            let words: Vec<&str> = p.split(' ').collect();
            assert_eq!(words.len(), 6, "{p}");
        }
        let p = passphrase(6, " ");
        for w in p.split(' ') {
            assert!(
                eff_wordlist::large::LIST.iter().any(|(_, x)| *x == w),
                "{w}"
            );
        }
        assert!((passphrase_bits(6) - 77.5).abs() < 0.1);
    }

    #[test]
    fn sampling_is_roughly_uniform() {
        let mut counts = [0u32; 7];
        for _ in 0..7000 {
            counts[below(7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
