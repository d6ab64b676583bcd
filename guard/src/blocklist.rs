//! DNS block lists in the formats people already publish — hosts files (`0.0.0.0 ads.example`),
//! plain domain lists, and AdBlock-style `||domain^` rules with `@@||domain^` exceptions —
//! compiled into finite-state transducers (the `fst` crate), which hold millions of names in a
//! few bytes each and answer in well under a microsecond.
//!
//! A rule for `example.com` covers every name below it. An exception (`@@`) wins over a block
//! at any level, as in AdBlock. Every verdict names the list (and rule) that decided it.

use fst::{Map, MapBuilder};

/// One published list, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// The list's name, as verdicts report it (its file name).
    pub name: String,
    /// Domains it blocks (normalised).
    pub block: Names,
    /// Domains it excepts (`@@` rules; normalised).
    pub allow: Names,
    /// Lines that were neither rules nor comments (cosmetic filters, paths, regexes…).
    pub skipped: usize,
}

/// Domain names kept end to end in one buffer: a list of a million names costs two
/// allocations instead of a million, and gives its memory back when dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    bytes: String,
    ends: Vec<usize>,
}

impl Names {
    /// Adds a name.
    pub fn push(&mut self, name: impl AsRef<str>) {
        self.bytes.push_str(name.as_ref());
        self.ends.push(self.bytes.len());
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The names, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a str;
    type IntoIter = Box<dyn Iterator<Item = &'a str> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// What the lists say about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A list blocks it.
    Blocked {
        /// The list.
        list: String,
        /// The listed domain that matched (the name itself or one above it).
        rule: String,
    },
    /// An exception lets it through.
    Allowed {
        /// The list holding the exception.
        list: String,
        /// The excepted domain that matched.
        rule: String,
    },
    /// No list mentions it.
    Unlisted,
}

/// Why lists could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// More lists than an index can name.
    #[error("too many lists ({0})")]
    TooManyLists(usize),
    /// The transducer could not be built.
    #[error("building the index: {0}")]
    Fst(#[from] fst::Error),
}

/// Lower-case, without a trailing dot; `None` for anything that is not a plausible host name.
pub fn normalise(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// Hosts-file addresses that mean "nowhere".
const SINKHOLES: &[&str] = &["0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0"];

/// Names hosts files list for the machine itself, never meant as blocks.
const LOCAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "0.0.0.0",
];

impl List {
    /// Parses a list in any of the supported formats (mixed formats in one file work too).
    pub fn parse(name: &str, text: &str) -> Self {
        let mut list = List {
            name: name.to_owned(),
            block: Names::default(),
            allow: Names::default(),
            skipped: 0,
        };
        for raw in text.lines() {
            let line = raw.trim();
            // Cosmetic AdBlock filters (`##`, `#@#`) are rules of another kind, not comments.
            let cosmetic = line.contains("##") || line.contains("#@#");
            if line.is_empty()
                || (!cosmetic && line.starts_with('#'))
                || line.starts_with('!')
                || line.starts_with('[')
            {
                continue;
            }
            match parse_line(line) {
                Line::Rule(domain, false) => list.block.push(domain),
                Line::Rule(domain, true) => list.allow.push(domain),
                Line::Ignore => {}
                Line::Skip => list.skipped += 1,
            }
        }
        list
    }
}

/// What one line of a list is.
enum Line {
    /// A domain, and whether it is an exception.
    Rule(String, bool),
    /// A line hosts files carry for the machine itself (`127.0.0.1 localhost`).
    Ignore,
    /// Not a domain rule this parser understands.
    Skip,
}

fn parse_line(line: &str) -> Line {
    match rule(line) {
        Some(Some((d, e))) => Line::Rule(d, e),
        Some(None) => Line::Ignore,
        None => Line::Skip,
    }
}

/// `Some(Some(rule))`, `Some(None)` for a line to ignore, `None` for one to skip.
#[allow(clippy::option_option)]
fn rule(line: &str) -> Option<Option<(String, bool)>> {
    // AdBlock: ||domain^ and @@||domain^, with no options but `$important`.
    if let Some(rest) = line
        .strip_prefix("@@||")
        .map(|r| (r, true))
        .or_else(|| line.strip_prefix("||").map(|r| (r, false)))
    {
        let (body, exception) = rest;
        let (body, options) = body.split_once('$').unwrap_or((body, ""));
        if !(options.is_empty() || options == "important") {
            return None;
        }
        let domain = body
            .strip_suffix('^')
            .or_else(|| body.strip_suffix("^|"))
            .unwrap_or(body);
        if domain.contains(['/', '*', '^']) {
            return None;
        }
        return normalise(domain).map(|d| Some((d, exception)));
    }
    let line = line.split('#').next().unwrap_or("").trim();
    let mut words = line.split_whitespace();
    let first = words.next()?;
    match words.next() {
        // hosts: ADDRESS NAME [NAME…] — only sinkhole addresses are blocks; the first name is
        // taken (lists put one name per line in practice).
        Some(second) if SINKHOLES.contains(&first) => {
            if LOCAL_NAMES.contains(&second) {
                return Some(None);
            }
            normalise(second).map(|d| Some((d, false)))
        }
        Some(_) => None,
        // A plain domain list.
        None => {
            if LOCAL_NAMES.contains(&first) {
                return Some(None);
            }
            // A bare number is no domain.
            if first.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return None;
            }
            normalise(first).map(|d| Some((d, false)))
        }
    }
}

/// Lists compiled for lookups.
pub struct Blocklist {
    names: Vec<String>,
    block: Map<Vec<u8>>,
    allow: Map<Vec<u8>>,
}

impl std::fmt::Debug for Blocklist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocklist")
            .field("lists", &self.names)
            .field("blocked", &self.block.len())
            .field("excepted", &self.allow.len())
            .finish()
    }
}

/// Builds the index of `names` (each with the number of its list). A name is stored under its
/// labels reversed (`com.example.ads`), so that the names below a domain share its prefix; the
/// keys go into one buffer and are sorted there, and the first list wins for a name several
/// lists have.
fn build<'a>(names: impl Iterator<Item = (&'a str, u64)>) -> Result<Map<Vec<u8>>, CompileError> {
    let mut keys: Vec<u8> = Vec::new();
    let mut entries: Vec<(usize, usize, u64)> = Vec::new();
    for (name, list) in names {
        let start = keys.len();
        for (i, label) in name.rsplit('.').enumerate() {
            if i > 0 {
                keys.push(b'.');
            }
            keys.extend_from_slice(label.as_bytes());
        }
        entries.push((start, keys.len(), list));
    }
    let key = |&(a, b, _): &(usize, usize, u64)| &keys[a..b];
    entries.sort_unstable_by(|x, y| key(x).cmp(key(y)).then(x.2.cmp(&y.2)));
    entries.dedup_by(|later, first| key(later) == key(first));
    let mut builder = MapBuilder::memory();
    for e in &entries {
        builder.insert(key(e), e.2)?;
    }
    Ok(builder.into_map())
}

impl Blocklist {
    /// Compiles lists (a name listed by several lists is reported under the first).
    pub fn compile(lists: &[List]) -> Result<Self, CompileError> {
        if lists.len() > u32::MAX as usize {
            return Err(CompileError::TooManyLists(lists.len()));
        }
        let numbered = |names: fn(&List) -> &Names| {
            lists
                .iter()
                .enumerate()
                .flat_map(move |(i, l)| names(l).iter().map(move |d| (d, i as u64)))
        };
        Ok(Self {
            names: lists.iter().map(|l| l.name.clone()).collect(),
            block: build(numbered(|l| &l.block))?,
            allow: build(numbered(|l| &l.allow))?,
        })
    }

    /// Blocked names in the index.
    pub fn blocked_len(&self) -> usize {
        self.block.len()
    }

    /// Excepted names in the index.
    pub fn excepted_len(&self) -> usize {
        self.allow.len()
    }

    /// Bytes the two indexes take.
    pub fn index_bytes(&self) -> usize {
        self.block.as_fst().as_bytes().len() + self.allow.as_fst().as_bytes().len()
    }

    /// The most specific listed domain at or above `name` in `map`.
    fn lookup(map: &Map<Vec<u8>>, name: &str) -> Option<(String, u64)> {
        let mut labels: Vec<&str> = name.split('.').collect();
        labels.reverse();
        let mut best = None;
        let mut k = String::with_capacity(name.len());
        for (i, label) in labels.iter().enumerate() {
            if i > 0 {
                k.push('.');
            }
            k.push_str(label);
            if let Some(v) = map.get(&k) {
                best = Some((i, v));
            }
        }
        best.map(|(i, v)| {
            let mut domain: Vec<&str> = labels[..=i].to_vec();
            domain.reverse();
            (domain.join("."), v)
        })
    }

    /// The verdict for a queried name (any case, trailing dot or not).
    pub fn check(&self, name: &str) -> Verdict {
        let Some(name) = normalise(name) else {
            return Verdict::Unlisted;
        };
        if let Some((rule, i)) = Self::lookup(&self.allow, &name) {
            return Verdict::Allowed {
                list: self.names[i as usize].clone(),
                rule,
            };
        }
        match Self::lookup(&self.block, &name) {
            Some((rule, i)) => Verdict::Blocked {
                list: self.names[i as usize].clone(),
                rule,
            },
            None => Verdict::Unlisted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(v: &Verdict) -> Option<(&str, &str)> {
        match v {
            Verdict::Blocked { list, rule } => Some((list, rule)),
            _ => None,
        }
    }

    #[test]
    fn hosts_files_block_their_sinkholed_names_only() {
        let l = List::parse(
            "hosts",
            "# comment\n127.0.0.1 localhost\n0.0.0.0 ads.example.com # trailing\n\
             ::1 ip6-localhost\n192.168.1.5 printer.lan\n0.0.0.0 Tracker.Example.NET.\n",
        );
        assert_eq!(
            l.block.iter().collect::<Vec<_>>(),
            vec!["ads.example.com", "tracker.example.net"]
        );
        assert_eq!(l.skipped, 1, "a real address is not a block");
    }

    #[test]
    fn adblock_rules_and_exceptions_parse_and_other_filters_are_skipped() {
        let l = List::parse(
            "easy",
            "[Adblock Plus 2.0]\n! Title\n||ads.example^\n@@||good.ads.example^\n||x.example^$important\n\
             ||y.example^$third-party\n##.banner\n/ads/*\n||z.example/path^\n",
        );
        assert_eq!(
            l.block.iter().collect::<Vec<_>>(),
            vec!["ads.example", "x.example"]
        );
        assert_eq!(l.allow.iter().collect::<Vec<_>>(), vec!["good.ads.example"]);
        assert_eq!(l.skipped, 4);
    }

    #[test]
    fn plain_lists_work_and_garbage_is_skipped() {
        let l = List::parse(
            "plain",
            "evil.example\nnot a domain\n-bad-.example..\n1234\n",
        );
        assert_eq!(l.block.iter().collect::<Vec<_>>(), vec!["evil.example"]);
        assert_eq!(l.skipped, 3);
    }

    #[test]
    fn a_rule_covers_every_name_below_it_and_says_which_matched() {
        let list = Blocklist::compile(&[List::parse("a", "example.com\n")]).unwrap();
        assert_eq!(
            blocked(&list.check("example.com")),
            Some(("a", "example.com"))
        );
        assert_eq!(
            blocked(&list.check("A.B.Example.COM.")),
            Some(("a", "example.com"))
        );
        assert_eq!(list.check("notexample.com"), Verdict::Unlisted);
        assert_eq!(list.check("com"), Verdict::Unlisted);
        assert_eq!(list.check(""), Verdict::Unlisted);
        assert_eq!(list.check("bad..name"), Verdict::Unlisted);
    }

    #[test]
    fn an_exception_wins_at_any_level_and_names_its_list() {
        let ads = List::parse("ads", "||ads.example^\n");
        let mine = List::parse("mine", "@@||ok.ads.example^\n");
        let list = Blocklist::compile(&[ads, mine]).unwrap();
        assert!(blocked(&list.check("x.ads.example")).is_some());
        assert_eq!(
            list.check("deep.ok.ads.example"),
            Verdict::Allowed {
                list: "mine".into(),
                rule: "ok.ads.example".into()
            }
        );
    }

    #[test]
    fn the_most_specific_block_is_reported_and_the_first_list_wins_ties() {
        let a = List::parse("a", "example.com\nads.example.com\n");
        let b = List::parse("b", "ads.example.com\n");
        let list = Blocklist::compile(&[a, b]).unwrap();
        assert_eq!(
            blocked(&list.check("x.ads.example.com")),
            Some(("a", "ads.example.com"))
        );
        assert_eq!(list.blocked_len(), 2);
    }

    #[test]
    fn a_million_names_compile_into_a_small_index() {
        let text: String = (0..1_000_000)
            .map(|i| format!("host{i}.ads{}.example\n", i % 997))
            .collect();
        let list = Blocklist::compile(&[List::parse("big", &text)]).unwrap();
        assert_eq!(list.blocked_len(), 1_000_000);
        let listed = format!("host123456.ads{}.example", 123_456 % 997);
        let other = format!("host123456.ads{}.example", 123_456 % 997 + 1);
        assert!(blocked(&list.check(&listed)).is_some());
        assert_eq!(list.check(&other), Verdict::Unlisted);
        // ~29 bytes of text a name; the index must be far smaller than the text.
        assert!(
            list.index_bytes() < text.len() / 2,
            "{} bytes",
            list.index_bytes()
        );
        eprintln!(
            "1M names: {} bytes of text, {} bytes of index",
            text.len(),
            list.index_bytes()
        );
    }
}
