//! Learned domain scoring for names no list knows: a model for algorithmically generated
//! domains (DGA) and one for phishing and typosquats of popular brands.
//!
//! Both are logistic regressions over hashed sparse features (the "hashing trick"): character
//! n-grams, token and shape features of the registrable domain, and — for phishing — how the
//! name relates to a list of brand domains (the brand inside a longer label or in a subdomain,
//! a brand label under another suffix, an edit distance of one or two after folding
//! homoglyphs, internationalised look-alikes). The registrable domain comes from the Public
//! Suffix List (`psl`). Scoring a name allocates nothing for ASCII names and takes
//! microseconds; the same feature code serves training ([`train`]) and scoring, so the two
//! cannot drift apart.
//!
//! A model is a small binary file (`NX1GMDL1`, hash bits, threshold, bias, little-endian f32
//! weights, then the brand list as text); [`Model::from_bytes`] checks every length and
//! never panics on a corrupt file.

use aho_corasick::AhoCorasick;
use std::collections::{HashMap, HashSet};

/// First bytes of a model file.
pub const MAGIC: &[u8; 8] = b"NX1GMDL1";
/// Header length: magic, kind, bits, two reserved bytes, threshold, bias, brand-text length.
const HEADER: usize = 8 + 4 + 4 + 4 + 4;
/// Longest DNS name.
const MAX_NAME: usize = 253;
/// Shortest brand label looked for inside other labels (shorter ones occur by chance).
const MIN_BRAND_IN: usize = 5;
/// Brand labels shorter than this only count at edit distance one.
const MIN_BRAND_EDIT2: usize = 8;
/// Labels longer than this are not compared by edit distance (no brand is that long).
const MAX_EDIT_LABEL: usize = 32;

/// Which model a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Algorithmically generated domains.
    Dga,
    /// Phishing and typosquatting.
    Phishing,
}

impl Kind {
    /// The name used in verdicts and configuration: `dga` or `phishing`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dga => "dga",
            Kind::Phishing => "phishing",
        }
    }

    fn code(self) -> u8 {
        match self {
            Kind::Dga => 1,
            Kind::Phishing => 2,
        }
    }
}

/// Why a model file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// Not a model file.
    #[error("not an NX1 Guard model (bad magic)")]
    Magic,
    /// Shorter than its header says.
    #[error("model file truncated")]
    Truncated,
    /// Longer than its header says.
    #[error("model file has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown kind byte.
    #[error("unknown model kind {0}")]
    Kind(u8),
    /// Hash bits out of range.
    #[error("hash bits {0} out of range 8..=24")]
    Bits(u8),
    /// A weight or the threshold is not a finite number.
    #[error("model holds a non-finite number")]
    NotFinite,
    /// The brand list is not UTF-8.
    #[error("brand list is not UTF-8")]
    Brands,
}

/// A model's verdict on a name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Which model.
    pub kind: Kind,
    /// Probability-like score in 0..=1.
    pub score: f32,
    /// Whether it reaches the model's threshold.
    pub flagged: bool,
}

/// A trained model.
pub struct Model {
    kind: Kind,
    bits: u8,
    threshold: f32,
    bias: f32,
    weights: Vec<f32>,
    brands: Brands,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("kind", &self.kind)
            .field("bits", &self.bits)
            .field("threshold", &self.threshold)
            .field("brands", &self.brands.registrable.len())
            .finish()
    }
}

/// The models that ship with Guard: trained by `nx1-guard-train` on the data
/// `guard/model/fetch-data.sh` fetches (see `docs/guard-evaluation.md`).
pub fn builtin(kind: Kind) -> Result<Model, ModelError> {
    Model::from_bytes(match kind {
        Kind::Dga => include_bytes!("../model/dga.nx1m"),
        Kind::Phishing => include_bytes!("../model/phishing.nx1m"),
    })
}

impl Model {
    /// Reads a model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(ModelError::Magic);
        }
        if bytes.len() < HEADER {
            return Err(ModelError::Truncated);
        }
        let kind = match bytes[8] {
            1 => Kind::Dga,
            2 => Kind::Phishing,
            k => return Err(ModelError::Kind(k)),
        };
        let bits = bytes[9];
        if !(8..=24).contains(&bits) {
            return Err(ModelError::Bits(bits));
        }
        let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let threshold = f32_at(12);
        let bias = f32_at(16);
        let brand_len = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let n = 1usize << bits;
        let need = HEADER + n * 4 + brand_len;
        if bytes.len() < need {
            return Err(ModelError::Truncated);
        }
        if bytes.len() > need {
            return Err(ModelError::Trailing(bytes.len() - need));
        }
        let weights: Vec<f32> = bytes[HEADER..HEADER + n * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if !threshold.is_finite() || !bias.is_finite() || weights.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::NotFinite);
        }
        let text = std::str::from_utf8(&bytes[HEADER + n * 4..]).map_err(|_| ModelError::Brands)?;
        Ok(Self {
            kind,
            bits,
            threshold,
            bias,
            weights,
            brands: Brands::new(text.lines()),
        })
    }

    /// The model file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let brands = self.brands.text();
        let mut out = Vec::with_capacity(HEADER + self.weights.len() * 4 + brands.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[self.kind.code(), self.bits, 0, 0]);
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        out.extend_from_slice(&(brands.len() as u32).to_le_bytes());
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(brands.as_bytes());
        out
    }

    /// Which model this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The score from which a name is flagged.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Changes the threshold (configuration may ask for a stricter or looser one).
    pub fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }

    /// Scores a query name (any case, with or without the trailing dot). `None` for names the
    /// model does not judge: public suffixes themselves, names under a brand's own domain
    /// (phishing), invalid names.
    pub fn score(&self, name: &str) -> Option<Score> {
        let mut buf = [0u8; MAX_NAME];
        let parts = Parts::new(name, &mut buf)?;
        if self.kind == Kind::Phishing && self.brands.registrable.contains(parts.registrable) {
            return None;
        }
        let mut z = self.bias;
        let mask = (1u64 << self.bits) - 1;
        self.features(&parts, &mut |h, v| {
            z += self.weights[(h & mask) as usize] * v
        });
        let score = sigmoid(z);
        Some(Score {
            kind: self.kind,
            score,
            flagged: score >= self.threshold,
        })
    }

    fn features(&self, parts: &Parts<'_>, emit: &mut impl FnMut(u64, f32)) {
        match self.kind {
            Kind::Dga => dga_features(parts, emit),
            Kind::Phishing => phishing_features(parts, &self.brands, emit),
        }
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// A name split for scoring, lower case, without the trailing dot.
struct Parts<'a> {
    /// The registrable domain ("example.co.uk").
    registrable: &'a [u8],
    /// Its first label ("example").
    label: &'a [u8],
    /// The public suffix ("co.uk").
    suffix: &'a [u8],
    /// What comes before the registrable domain, without the dot ("www.a"); may be empty.
    sub: &'a [u8],
}

impl<'a> Parts<'a> {
    fn new(name: &str, buf: &'a mut [u8; MAX_NAME]) -> Option<Self> {
        let name = name.strip_suffix('.').unwrap_or(name).as_bytes();
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        for (b, c) in buf.iter_mut().zip(name) {
            if !(c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.' || *c == b'_') {
                return None;
            }
            *b = c.to_ascii_lowercase();
        }
        let name = &buf[..name.len()];
        let (registrable_len, suffix_len) = {
            let domain = psl::domain(name)?;
            (domain.as_bytes().len(), domain.suffix().as_bytes().len())
        };
        if registrable_len <= suffix_len + 1 || name.split(|&c| c == b'.').any(<[u8]>::is_empty) {
            return None;
        }
        let registrable = &name[name.len() - registrable_len..];
        let sub = &name[..name.len() - registrable_len];
        Some(Self {
            registrable,
            label: &registrable[..registrable_len - suffix_len - 1],
            suffix: &name[name.len() - suffix_len..],
            sub: sub.strip_suffix(b".").unwrap_or(sub),
        })
    }
}

/// FNV-1a over a namespace and a token: stable across platforms and releases, which the
/// model file depends on.
fn hash(namespace: &[u8], token: &[u8]) -> u64 {
    let h = crate::fnv1a(namespace.iter().chain(b"\x1f").chain(token).copied());
    h ^ (h >> 32)
}

fn token(emit: &mut impl FnMut(u64, f32), namespace: &[u8], tok: &[u8]) {
    emit(hash(namespace, tok), 1.0);
}

fn bucket(emit: &mut impl FnMut(u64, f32), namespace: &[u8], value: usize) {
    emit(hash(namespace, &[value.min(255) as u8]), 1.0);
}

/// Character n-grams (n = `lo..=hi`) of `^label$`, weighted so every label's n-grams sum to
/// one in square.
fn ngrams(emit: &mut impl FnMut(u64, f32), namespace: u8, label: &[u8], lo: usize, hi: usize) {
    let mut padded = [0u8; 66];
    let len = label.len().min(63);
    padded[0] = b'^';
    padded[1..=len].copy_from_slice(&label[..len]);
    padded[len + 1] = b'$';
    let padded = &padded[..len + 2];
    let count: usize = (lo..=hi).map(|n| padded.len().saturating_sub(n - 1)).sum();
    if count == 0 {
        return;
    }
    let v = 1.0 / (count as f32).sqrt();
    for n in lo..=hi {
        for gram in padded.windows(n) {
            emit(hash(&[namespace, n as u8], gram), v);
        }
    }
}

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u' | b'y')
}

/// Shape of a label: length, digits, hyphens, vowel share, longest consonant run, character
/// entropy, letter/digit alternations — as buckets, so a linear model can learn any shape.
fn shape(emit: &mut impl FnMut(u64, f32), label: &[u8]) {
    let len = label.len();
    let mut counts = [0u16; 256];
    let (mut digits, mut hyphens, mut vowels, mut run, mut longest, mut switches) =
        (0, 0, 0, 0, 0, 0);
    let mut last_digit = None;
    for &c in label {
        counts[c as usize] += 1;
        let digit = c.is_ascii_digit();
        digits += usize::from(digit);
        hyphens += usize::from(c == b'-');
        if c.is_ascii_alphabetic() && !is_vowel(c) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
        vowels += usize::from(is_vowel(c));
        if c != b'-' {
            if last_digit.is_some_and(|d| d != digit) {
                switches += 1;
            }
            last_digit = Some(digit);
        }
    }
    let entropy: f32 = counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f32::from(n) / len as f32;
            -p * p.log2()
        })
        .sum();
    let distinct = counts.iter().filter(|&&n| n > 0).count();
    let letters = len - digits - hyphens;
    bucket(emit, b"len", len.min(40));
    bucket(emit, b"digits", digits.min(8));
    bucket(emit, b"hyphens", hyphens.min(4));
    bucket(
        emit,
        b"vowels",
        (vowels * 10).checked_div(letters).unwrap_or(11),
    );
    bucket(emit, b"run", longest.min(10));
    bucket(emit, b"entropy", (entropy * 4.0) as usize);
    bucket(emit, b"distinct", (distinct * 10) / len.max(1));
    bucket(emit, b"switches", switches.min(6));
}

fn dga_features(parts: &Parts<'_>, emit: &mut impl FnMut(u64, f32)) {
    ngrams(emit, b'd', parts.label, 1, 4);
    shape(emit, parts.label);
    token(emit, b"tld", parts.suffix);
}

fn phishing_features(parts: &Parts<'_>, brands: &Brands, emit: &mut impl FnMut(u64, f32)) {
    ngrams(emit, b'p', parts.label, 2, 5);
    shape(emit, parts.label);
    token(emit, b"tld", parts.suffix);
    for word in parts.label.split(|&c| c == b'-' || c.is_ascii_digit()) {
        if word.len() >= 3 {
            token(emit, b"word", word);
        }
    }
    let relation = brands.relation(parts);
    for (flag, name) in [
        (relation.same_label, &b"same-label"[..]),
        (relation.in_label, b"in-label"),
        (relation.in_sub, b"in-sub"),
        (relation.edit1, b"edit1"),
        (relation.edit2, b"edit2"),
        (relation.homoglyph, b"homoglyph"),
        (relation.idn, b"idn"),
    ] {
        if flag {
            token(emit, b"brand", name);
        }
    }
}

/// How a name relates to the brand list.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Relation {
    /// Its label is a brand's label, under another suffix (`paypal.support`).
    same_label: bool,
    /// A brand's label is inside its longer label (`myetherwallet-claim`).
    in_label: bool,
    /// A brand's label is in its subdomain (`paypal.com.login.example`).
    in_sub: bool,
    /// Its label is one edit from a brand's, after folding homoglyphs (`paypa1`, `gooogle`).
    edit1: bool,
    /// Two edits from a long brand label (`myeterwalet`).
    edit2: bool,
    /// Folding homoglyphs alone turns it into a brand label (`g00gle`, `rnicrosoft`).
    homoglyph: bool,
    /// Internationalised label (`xn--`).
    idn: bool,
}

/// The brand domains phishing imitates, indexed for the relations above.
struct Brands {
    /// Registrable domains of the brands: names under them are never scored.
    registrable: HashSet<Vec<u8>>,
    /// Brand labels, folded.
    labels: HashSet<Vec<u8>>,
    /// Brand labels as written.
    raw_labels: HashSet<Vec<u8>>,
    /// Brand labels of at least [`MIN_BRAND_IN`] bytes, folded, to find inside others.
    inside: Option<AhoCorasick>,
    /// Every folded brand label with up to two bytes deleted, hashed → the brand labels it
    /// came from (a "symmetric delete" index: two strings are within edit distance two only
    /// if some deletions of each meet).
    deletes: HashMap<u64, Vec<u32>>,
    /// Folded labels by id, for the final distance check.
    by_id: Vec<Vec<u8>>,
}

impl Brands {
    fn new<'a>(domains: impl Iterator<Item = &'a str>) -> Self {
        let mut registrable = HashSet::new();
        let mut labels = HashSet::new();
        let mut raw_labels = HashSet::new();
        for d in domains {
            let d = d.trim().trim_start_matches("www.").to_ascii_lowercase();
            let mut buf = [0u8; MAX_NAME];
            let Some(parts) = Parts::new(&d, &mut buf) else {
                continue;
            };
            registrable.insert(parts.registrable.to_vec());
            raw_labels.insert(parts.label.to_vec());
            let mut folded = [0u8; 64];
            let f = fold(parts.label, &mut folded);
            if f.len() >= 4 {
                labels.insert(f.to_vec());
            }
        }
        let mut by_id: Vec<Vec<u8>> = labels.iter().cloned().collect();
        by_id.sort();
        let inside = AhoCorasick::new(by_id.iter().filter(|l| l.len() >= MIN_BRAND_IN)).ok();
        let mut deletes: HashMap<u64, Vec<u32>> = HashMap::new();
        for (id, label) in by_id.iter().enumerate() {
            if label.len() > MAX_EDIT_LABEL {
                continue;
            }
            each_deletion(label, 2, &mut |h| {
                let ids = deletes.entry(h).or_default();
                if ids.last() != Some(&(id as u32)) {
                    ids.push(id as u32);
                }
            });
        }
        Self {
            registrable,
            labels,
            raw_labels,
            inside,
            deletes,
            by_id,
        }
    }

    /// The brand list as model-file text.
    fn text(&self) -> String {
        let mut domains: Vec<&[u8]> = self.registrable.iter().map(Vec::as_slice).collect();
        domains.sort();
        let mut out = String::new();
        for d in domains {
            out.push_str(&String::from_utf8_lossy(d));
            out.push('\n');
        }
        out
    }

    fn relation(&self, parts: &Parts<'_>) -> Relation {
        let mut r = Relation::default();
        if self.by_id.is_empty() {
            return r;
        }
        let mut buf = [0u8; 64];
        let raw = fold(parts.label, &mut buf);
        let mut idn_buf = [0u8; 64];
        let label: &[u8] = if parts.label.starts_with(b"xn--") {
            r.idn = true;
            fold_idn(parts.label, &mut idn_buf).unwrap_or(raw)
        } else {
            raw
        };
        if self.labels.contains(label) {
            if self.raw_labels.contains(parts.label) {
                r.same_label = true;
            } else {
                r.homoglyph = true;
            }
        }
        if let Some(inside) = &self.inside {
            r.in_label = inside
                .find_overlapping_iter(label)
                .any(|m| m.len() < label.len());
            let mut sub = [0u8; MAX_NAME];
            let n = parts.sub.len().min(MAX_NAME);
            sub[..n].copy_from_slice(&parts.sub[..n]);
            r.in_sub = n >= MIN_BRAND_IN && inside.is_match(&sub[..n]);
        }
        if !self.labels.contains(label) && label.len() <= MAX_EDIT_LABEL {
            let mut best = 3;
            each_deletion(label, 2, &mut |h| {
                if best == 1 {
                    return;
                }
                if let Some(ids) = self.deletes.get(&h) {
                    for &id in ids {
                        let brand = &self.by_id[id as usize];
                        let d = osa_distance(label, brand, 2);
                        if d == 1 || (d == 2 && brand.len() >= MIN_BRAND_EDIT2) {
                            best = best.min(d);
                        }
                    }
                }
            });
            r.edit1 = best == 1;
            r.edit2 = best == 2;
        }
        r
    }
}

/// Folds look-alikes to one spelling: digits that pass for letters, `rn`→`m`, `vv`→`w`,
/// `i`→`l`, hyphens dropped. Brand labels and query labels are folded alike.
fn fold<'b>(label: &[u8], out: &'b mut [u8; 64]) -> &'b [u8] {
    let mut n = 0;
    let mut i = 0;
    while i < label.len() && n < out.len() {
        let c = label[i];
        let next = label.get(i + 1).copied();
        let (folded, used) = match (c, next) {
            (b'r', Some(b'n')) => (b'm', 2),
            (b'v', Some(b'v')) => (b'w', 2),
            (b'-', _) => (0, 1),
            (b'0', _) => (b'o', 1),
            (b'1' | b'i', _) => (b'l', 1),
            (b'3', _) => (b'e', 1),
            (b'4', _) => (b'a', 1),
            (b'5', _) => (b's', 1),
            (b'7', _) => (b't', 1),
            _ => (c, 1),
        };
        if folded != 0 {
            out[n] = folded;
            n += 1;
        }
        i += used;
    }
    &out[..n]
}

/// Decodes an internationalised label and folds it to ASCII: accents dropped (compatibility
/// decomposition without the combining marks: `blóckchäin` → `blockchain`), then the Cyrillic
/// and Greek letters that look like Latin ones; `None` if it is not valid punycode or keeps
/// other non-ASCII letters.
fn fold_idn<'b>(label: &[u8], out: &'b mut [u8; 64]) -> Option<&'b [u8]> {
    use unicode_normalization::{UnicodeNormalization as _, char::is_combining_mark};
    let encoded = std::str::from_utf8(label.strip_prefix(b"xn--")?).ok()?;
    let decoded = idna::punycode::decode_to_string(encoded)?;
    let mut ascii = [0u8; 64];
    let mut n = 0;
    for c in decoded.nfkd().filter(|c| !is_combining_mark(*c)) {
        let a = match c {
            'a'..='z' | '0'..='9' | '-' => c as u8,
            'а' | 'α' | 'ɑ' => b'a',
            'с' | 'ϲ' => b'c',
            'ԁ' => b'd',
            'е' | 'ε' => b'e',
            'һ' => b'h',
            'і' | 'ı' | 'ι' => b'i',
            'ј' => b'j',
            'к' | 'κ' => b'k',
            'ӏ' | 'ł' => b'l',
            'м' => b'm',
            'ո' | 'η' => b'n',
            'о' | 'ο' | 'ø' => b'o',
            'р' | 'ρ' => b'p',
            'ԛ' => b'q',
            'ѕ' => b's',
            'т' | 'τ' => b't',
            'υ' => b'u',
            'ν' => b'v',
            'ԝ' | 'ω' => b'w',
            'х' | 'χ' => b'x',
            'у' | 'ү' => b'y',
            _ => return None,
        };
        *ascii.get_mut(n)? = a;
        n += 1;
    }
    let folded = fold(&ascii[..n], out);
    Some(folded)
}

/// Calls `f` with the hash of `s` and of every string made by deleting up to `max` (≤ 2) of
/// its bytes.
fn each_deletion(s: &[u8], max: usize, f: &mut impl FnMut(u64)) {
    let skip_hash = |a: usize, b: usize| {
        crate::fnv1a(
            s.iter()
                .enumerate()
                .filter(|&(i, _)| i != a && i != b)
                .map(|(_, &c)| c),
        )
    };
    let none = usize::MAX;
    f(skip_hash(none, none));
    if max >= 1 {
        for a in 0..s.len() {
            f(skip_hash(a, none));
            if max >= 2 {
                for b in a + 1..s.len() {
                    f(skip_hash(a, b));
                }
            }
        }
    }
}

/// Optimal-string-alignment distance (edits, and swaps of neighbours), or `limit + 1` once it
/// is certainly above `limit`. Both inputs are at most 64 bytes.
fn osa_distance(a: &[u8], b: &[u8], limit: usize) -> usize {
    if a.len().abs_diff(b.len()) > limit || a.len() > 64 || b.len() > 64 {
        return limit + 1;
    }
    let mut rows = [[0usize; 65]; 3];
    for (j, cell) in rows[1].iter_mut().enumerate().take(b.len() + 1) {
        *cell = j;
    }
    for i in 1..=a.len() {
        let (cur, prev, prev2) = (i % 3, (i + 2) % 3, (i + 1) % 3);
        rows[cur][0] = i;
        let mut row_min = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[prev][j] + 1)
                .min(rows[cur][j - 1] + 1)
                .min(rows[prev][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[prev2][j - 2] + 1);
            }
            rows[cur][j] = d;
            row_min = row_min.min(d);
        }
        if row_min > limit {
            return limit + 1;
        }
    }
    rows[a.len() % 3][b.len()].min(limit + 1)
}

/// Training: logistic regression by AdaGrad over the same features scoring uses.
pub mod train {
    use super::*;

    /// What training needs besides the examples.
    #[derive(Debug, Clone)]
    pub struct Options {
        /// Which model.
        pub kind: Kind,
        /// log2 of the number of weights.
        pub bits: u8,
        /// Passes over the data.
        pub epochs: usize,
        /// AdaGrad learning rate.
        pub rate: f32,
        /// L2 penalty per step.
        pub l2: f32,
        /// Seed of the shuffle.
        pub seed: u64,
    }

    /// An example's features, extracted once.
    type Sparse = Vec<(u32, f32)>;

    /// A model with no weights yet over `brands` (domains, one per entry).
    pub fn untrained(kind: Kind, bits: u8, brands: &[String]) -> Model {
        Model {
            kind,
            bits,
            threshold: 0.5,
            bias: 0.0,
            weights: vec![0.0; 1 << bits],
            brands: match kind {
                Kind::Dga => Brands::new(std::iter::empty()),
                Kind::Phishing => Brands::new(brands.iter().map(String::as_str)),
            },
        }
    }

    fn sparse(model: &Model, name: &str) -> Option<Sparse> {
        let mut buf = [0u8; MAX_NAME];
        let parts = Parts::new(name, &mut buf)?;
        let mask = (1u64 << model.bits) - 1;
        let mut out = Vec::new();
        model.features(&parts, &mut |h, v| out.push(((h & mask) as u32, v)));
        Some(out)
    }

    /// Trains on `(name, positive)` pairs, classes weighted to balance. Names the model
    /// cannot split are skipped.
    pub fn fit(mut model: Model, examples: &[(String, bool)], options: &Options) -> Model {
        let data: Vec<(Sparse, bool)> = examples
            .iter()
            .filter_map(|(n, y)| Some((sparse(&model, n)?, *y)))
            .collect();
        let positives = data.iter().filter(|(_, y)| *y).count().max(1) as f32;
        let negatives = (data.len() as f32 - positives).max(1.0);
        let weight_of = |y: bool| {
            if y {
                data.len() as f32 / (2.0 * positives)
            } else {
                data.len() as f32 / (2.0 * negatives)
            }
        };
        let mut grad2 = vec![1e-6f32; model.weights.len()];
        let mut bias_grad2 = 1e-6f32;
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut rng = options.seed | 1;
        for _ in 0..options.epochs {
            // Fisher–Yates with xorshift64: reproducible without a dependency.
            for i in (1..order.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            for &i in &order {
                let (x, y) = &data[i];
                let z = model.bias
                    + x.iter()
                        .map(|&(j, v)| model.weights[j as usize] * v)
                        .sum::<f32>();
                let g = (sigmoid(z) - if *y { 1.0 } else { 0.0 }) * weight_of(*y);
                for &(j, v) in x {
                    let j = j as usize;
                    let gj = g * v + options.l2 * model.weights[j];
                    grad2[j] += gj * gj;
                    model.weights[j] -= options.rate * gj / grad2[j].sqrt();
                }
                bias_grad2 += g * g;
                model.bias -= options.rate * g / bias_grad2.sqrt();
            }
        }
        model
    }

    /// The lowest threshold at which at most `fpr` of `benign_scores` are flagged.
    pub fn threshold_for(benign_scores: &[f32], fpr: f64) -> f32 {
        let mut s = benign_scores.to_vec();
        s.sort_by(f32::total_cmp);
        if s.is_empty() {
            return 0.5;
        }
        let allowed = (fpr * s.len() as f64).floor() as usize;
        let idx = s.len() - 1 - allowed.min(s.len() - 1);
        // Just above the highest benign score that must stay unflagged.
        f32::from_bits(s[idx].to_bits() + 1).min(1.0)
    }

    /// Area under the ROC curve (the probability that a random positive outscores a random
    /// negative; ties count half).
    pub fn roc_auc(scores: &[(f32, bool)]) -> f64 {
        let mut s: Vec<(f32, bool)> = scores.to_vec();
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut positives) = (0.0f64, 0usize);
        let mut i = 0;
        while i < s.len() {
            let mut j = i;
            while j < s.len() && s[j].0 == s[i].0 {
                j += 1;
            }
            let avg_rank = (i + 1 + j) as f64 / 2.0;
            for item in &s[i..j] {
                if item.1 {
                    rank_sum += avg_rank;
                    positives += 1;
                }
            }
            i = j;
        }
        let negatives = s.len() - positives;
        if positives == 0 || negatives == 0 {
            return f64::NAN;
        }
        (rank_sum - (positives * (positives + 1)) as f64 / 2.0)
            / (positives as f64 * negatives as f64)
    }

    /// Which split a name falls in, by a hash of its registrable domain (so variants of one
    /// domain never straddle training and test): 0..100.
    pub fn split_bucket(name: &str) -> Option<u8> {
        let mut buf = [0u8; MAX_NAME];
        let parts = Parts::new(name, &mut buf)?;
        Some((hash(b"split", parts.registrable) % 100) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::train::*;
    use super::*;

    #[test]
    fn names_split_on_the_public_suffix_list() {
        let mut buf = [0u8; MAX_NAME];
        let p = Parts::new("WWW.Login.Example.CO.UK.", &mut buf).unwrap();
        assert_eq!(p.registrable, b"example.co.uk");
        assert_eq!(p.label, b"example");
        assert_eq!(p.suffix, b"co.uk");
        assert_eq!(p.sub, b"www.login");
        let mut buf = [0u8; MAX_NAME];
        let p = Parts::new("shop.netlify.app", &mut buf).unwrap();
        assert_eq!(
            (p.label, p.suffix, p.sub),
            (&b"shop"[..], &b"netlify.app"[..], &b""[..])
        );
        for bad in ["com", "co.uk.", "", "a b.com", "ex\u{e4}mple.com", "..com"] {
            let mut buf = [0u8; MAX_NAME];
            assert!(Parts::new(bad, &mut buf).is_none(), "{bad}");
        }
    }

    #[test]
    fn osa_distance_counts_edits_and_swaps() {
        assert_eq!(osa_distance(b"paypal", b"paypal", 2), 0);
        assert_eq!(osa_distance(b"paypal", b"paypall", 2), 1);
        assert_eq!(osa_distance(b"paypal", b"papyal", 2), 1);
        assert_eq!(osa_distance(b"paypal", b"pyapl", 2), 2);
        assert_eq!(osa_distance(b"paypal", b"google", 2), 3);
        assert_eq!(osa_distance(b"a", b"abcd", 2), 3);
    }

    fn brands() -> Brands {
        Brands::new(
            [
                "paypal.com",
                "www.google.com",
                "myetherwallet.com",
                "microsoft.com",
            ]
            .into_iter(),
        )
    }

    fn relation(b: &Brands, name: &str) -> Relation {
        let mut buf = [0u8; MAX_NAME];
        b.relation(&Parts::new(name, &mut buf).unwrap())
    }

    #[test]
    fn brand_relations_are_found() {
        let b = brands();
        assert!(b.registrable.contains(&b"google.com"[..]));
        let r = relation(&b, "paypal.support");
        assert!(r.same_label && !r.edit1);
        assert!(relation(&b, "paypa1.com").homoglyph);
        assert!(relation(&b, "g00gle.net").homoglyph);
        assert!(relation(&b, "rnicrosoft.com").homoglyph);
        assert!(relation(&b, "gooogle.com").edit1);
        assert!(relation(&b, "myeterwalet.io").edit2);
        assert!(
            !relation(&b, "gogle.com").edit2,
            "short brands only at distance one"
        );
        assert!(relation(&b, "myetherwallet-claim.xyz").in_label);
        assert!(relation(&b, "paypal.com.account-check.example").in_sub);
        // "раураl" in Cyrillic, as punycode.
        let idn = relation(&b, "xn--l-7sba6dbr.com");
        assert!(idn.idn && idn.homoglyph, "{idn:?}");
        // "pаypàl" (Cyrillic а, accented à).
        let idn = relation(&b, "xn--pypl-2na991c.com");
        assert!(idn.idn && idn.homoglyph, "{idn:?}");
        assert_eq!(relation(&b, "weather.com"), Relation::default());
    }

    #[test]
    fn model_files_round_trip_and_corrupt_ones_are_refused() {
        let mut m = untrained(Kind::Phishing, 8, &["paypal.com".to_string()]);
        m.weights[3] = 1.5;
        m.bias = -0.25;
        m.threshold = 0.9;
        let bytes = m.to_bytes();
        let back = Model::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.kind(), Kind::Phishing);
        assert_eq!(Model::from_bytes(b"nope").unwrap_err(), ModelError::Magic);
        assert_eq!(
            Model::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err(),
            ModelError::Truncated
        );
        let mut latin1 = bytes.clone();
        *latin1.last_mut().unwrap() = 0xff;
        assert_eq!(Model::from_bytes(&latin1).unwrap_err(), ModelError::Brands);
        assert_eq!(
            Model::from_bytes(&bytes[..HEADER + 10]).unwrap_err(),
            ModelError::Truncated
        );
        let mut longer = bytes.clone();
        longer.push(b'\n');
        assert_eq!(
            Model::from_bytes(&longer).unwrap_err(),
            ModelError::Trailing(1)
        );
        let mut bad = bytes.clone();
        bad[9] = 40;
        assert_eq!(Model::from_bytes(&bad).unwrap_err(), ModelError::Bits(40));
        let mut nan = bytes.clone();
        nan[HEADER..HEADER + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(Model::from_bytes(&nan).unwrap_err(), ModelError::NotFinite);
        // Names under the brand itself are not scored.
        assert_eq!(back.score("www.paypal.com"), None);
        assert!(back.score("paypal-login.com").is_some());
    }

    #[test]
    fn training_separates_random_labels_from_words() {
        let words = [
            "garden", "river", "castle", "market", "sunny", "travel", "coffee", "planet", "forest",
            "silver", "bright", "harbor", "summer", "winter", "golden", "simple",
        ];
        let mut examples = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..400 {
            let a = words[i % words.len()];
            let b = words[(i / words.len()) % words.len()];
            examples.push((format!("{a}{b}.com"), false));
            let mut label = String::new();
            for _ in 0..12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                label.push((b'a' + (x % 26) as u8) as char);
            }
            examples.push((format!("{label}.com"), true));
        }
        let options = Options {
            kind: Kind::Dga,
            bits: 12,
            epochs: 5,
            rate: 0.2,
            l2: 1e-6,
            seed: 7,
        };
        let model = fit(untrained(Kind::Dga, 12, &[]), &examples, &options);
        let scored: Vec<(f32, bool)> = examples
            .iter()
            .map(|(n, y)| (model.score(n).unwrap().score, *y))
            .collect();
        assert!(roc_auc(&scored) > 0.99);
        assert!(model.score("gardensummer.com").unwrap().score < 0.5);
        assert!(model.score("qxkvbzjwrtpl.com").unwrap().score > 0.5);
    }

    #[test]
    fn the_builtin_models_load_and_tell_names_apart() {
        let dga = builtin(Kind::Dga).unwrap();
        let phishing = builtin(Kind::Phishing).unwrap();
        assert_eq!((dga.kind(), phishing.kind()), (Kind::Dga, Kind::Phishing));
        for benign in [
            "wikipedia.org",
            "debian.org",
            "mail.google.com",
            "weather.com",
        ] {
            assert!(!dga.score(benign).unwrap().flagged, "{benign}");
        }
        // Generated by cryptolocker's and necurs' published algorithms.
        for generated in [
            "qeyxlyopvbbkdf.ru",
            "yaochykossjcyjla.su",
            "nidcudamwxjtgj.biz",
        ] {
            assert!(dga.score(generated).unwrap().flagged, "{generated}");
        }
        assert_eq!(
            phishing.score("www.google.com"),
            None,
            "a brand's own domain"
        );
        assert!(phishing.score("connect-wallet-claim.xyz").unwrap().flagged);
        assert!(!phishing.score("debian.org").unwrap().flagged);
    }

    #[test]
    fn auc_and_thresholds() {
        assert_eq!(roc_auc(&[(0.1, false), (0.9, true)]), 1.0);
        assert_eq!(roc_auc(&[(0.9, false), (0.1, true)]), 0.0);
        assert_eq!(roc_auc(&[(0.5, false), (0.5, true)]), 0.5);
        let benign: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let t = threshold_for(&benign, 0.001);
        assert_eq!(benign.iter().filter(|&&s| s >= t).count(), 1);
        let t = threshold_for(&benign, 0.0);
        assert_eq!(benign.iter().filter(|&&s| s >= t).count(), 0);
    }
}
