//! Importing other password managers' exports.
//!
//! Nobody starts a password vault empty: people arrive with years of logins in Bitwarden,
//! KeePassXC, 1Password or their browser. This module reads the files those programs export
//! and turns every record into an [`Item`], putting each value where it belongs (name,
//! username, password, URLs, notes, TOTP, folder, favourite, password history) and keeping
//! everything else as custom fields, so that nothing is lost on the way in.
//!
//! The input is a file the user picked, possibly damaged or hostile, so every parser here is
//! written to be fuzzed: input sizes are capped ([`MAX_TEXT_INPUT`], [`MAX_ARCHIVE_INPUT`],
//! and a 1PUX's `export.data` may not decompress past [`MAX_EXPORT_DATA`]), input-derived
//! data is never indexed or unwrapped, and every failure is an [`ImportError`] that names the
//! format, the record and what is wrong with it.
//!
//! ```
//! use nx1_vault::import::{Format, detect, import};
//!
//! let csv = b"name,url,username,password,note\nExample,https://example.org,ann,pw,\n";
//! let format = detect("Chrome Passwords.csv", csv).unwrap();
//! assert_eq!(format, Format::ChromeCsv);
//! let items = import(format, csv)?;
//! assert_eq!(items[0].username, "ann");
//! # Ok::<(), nx1_vault::import::ImportError>(())
//! ```

use crate::export::{ExportError, open_protected};
use crate::item::{Field, HISTORY_LIMIT, HistoryEntry, Item};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quick_xml::events::{BytesRef, BytesStart, Event};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::ops::Range;
use zeroize::Zeroizing;

/// Largest text export (JSON, CSV, XML) accepted, in bytes.
pub const MAX_TEXT_INPUT: usize = 64 << 20;
/// Largest 1PUX archive accepted, in bytes (attachments make these larger than text exports).
pub const MAX_ARCHIVE_INPUT: usize = 1 << 30;
/// Largest `export.data` a 1PUX archive may decompress to, in bytes: a defence against zip
/// bombs, far above any real vault.
pub const MAX_EXPORT_DATA: u64 = 64 << 20;

/// Earliest timestamp this module reads or writes: 0001-01-01T00:00:00Z.
pub(crate) const MIN_TIME: i64 = -62_135_596_800;
/// Latest timestamp this module reads or writes: 9999-12-31T23:59:59Z.
pub(crate) const MAX_TIME: i64 = 253_402_300_799;

/// The export formats this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Bitwarden's JSON export: unencrypted, or password-protected (see [`import_protected`]).
    BitwardenJson,
    /// Bitwarden's CSV export (`folder,favorite,type,name,notes,fields,reprompt,login_uri,…`).
    BitwardenCsv,
    /// KeePass 2 XML, as KeePassXC (or KeePass) exports it, unencrypted.
    KeepassXml,
    /// The password CSV of Chrome and other Chromium browsers (`name,url,username,password,note`).
    ChromeCsv,
    /// Firefox's password CSV (`"url","username","password","httpRealm",…`).
    FirefoxCsv,
    /// 1Password's 1PUX export: a zip archive holding `export.data` (JSON).
    OnePux,
}

impl Format {
    /// Every format, in the order of [`Format::NAMES`].
    pub const ALL: [Format; 6] = [
        Format::BitwardenJson,
        Format::BitwardenCsv,
        Format::KeepassXml,
        Format::ChromeCsv,
        Format::FirefoxCsv,
        Format::OnePux,
    ];

    /// The names [`Format::parse_name`] accepts (as on a command line), in the order of
    /// [`Format::ALL`].
    pub const NAMES: &[&str] = &[
        "bitwarden-json",
        "bitwarden-csv",
        "keepass-xml",
        "chrome-csv",
        "firefox-csv",
        "1pux",
    ];

    /// The format's name as [`Format::parse_name`] accepts it (`"bitwarden-json"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Format::BitwardenJson => "bitwarden-json",
            Format::BitwardenCsv => "bitwarden-csv",
            Format::KeepassXml => "keepass-xml",
            Format::ChromeCsv => "chrome-csv",
            Format::FirefoxCsv => "firefox-csv",
            Format::OnePux => "1pux",
        }
    }

    /// The format named `name` (one of [`Format::NAMES`], ignoring ASCII case), if any.
    pub fn parse_name(name: &str) -> Option<Format> {
        let name = name.trim();
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::BitwardenJson => "Bitwarden JSON",
            Format::BitwardenCsv => "Bitwarden CSV",
            Format::KeepassXml => "KeePass XML",
            Format::ChromeCsv => "Chrome CSV",
            Format::FirefoxCsv => "Firefox CSV",
            Format::OnePux => "1Password 1PUX",
        })
    }
}

/// Why an import failed. Every message names the format; most name the record too.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is larger than this importer accepts.
    #[error("{format}: the file has {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The format being read.
        format: Format,
        /// The file's size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error(
        "{format}: the file is not UTF-8 text (invalid byte at offset {offset}); export it again, or convert it to UTF-8"
    )]
    NotUtf8 {
        /// The format being read.
        format: Format,
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The file is not of the format at all, or its JSON, XML, CSV or zip syntax is broken.
    #[error("{format}: {detail}")]
    Malformed {
        /// The format being read.
        format: Format,
        /// What is wrong, and where.
        detail: String,
    },
    /// The CSV header row lacks a column the format needs.
    #[error("{format}: the header row has no \"{column}\" column (it has: {found})")]
    MissingColumn {
        /// The format being read.
        format: Format,
        /// The missing column.
        column: &'static str,
        /// The columns the header does have.
        found: String,
    },
    /// One record (item, entry) is wrong.
    #[error("{format}: {record}: {detail}")]
    Record {
        /// The format being read.
        format: Format,
        /// Which record, as a person finds it in the file ("item 3", "account 1, vault 2, item 7").
        record: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A Bitwarden export protected with a file password was read without one.
    #[error("Bitwarden JSON: password-protected export: pass the password")]
    PasswordRequired,
    /// A Bitwarden export encrypted with the account's own key.
    #[error(
        "Bitwarden JSON: this export is encrypted with a Bitwarden account's key (\"account restricted\") and only that account can read it; export again as unencrypted JSON or as password-protected JSON"
    )]
    AccountRestricted,
    /// Opening a password-protected Bitwarden export failed (wrong password, damaged file).
    #[error("Bitwarden JSON: {0}")]
    Protected(ExportError),
    /// A 1PUX archive's `export.data` decompresses to more than [`MAX_EXPORT_DATA`].
    #[error(
        "1Password 1PUX: export.data decompresses to more than {limit} bytes: refusing a likely zip bomb"
    )]
    ArchiveTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

impl From<ExportError> for ImportError {
    fn from(e: ExportError) -> Self {
        ImportError::Protected(e)
    }
}

/// Guesses the format of an export from its content, the file name breaking ties.
///
/// A zip archive is 1PUX; XML with a `<KeePassFile>` root is KeePass; a JSON object with
/// `items` (or the fields of a password-protected export) is Bitwarden; a CSV file is told
/// apart by its header row. When the content says nothing, a `.1pux`, `.xml` or `.json` file
/// name decides (and [`import`] then explains what is wrong with the content). Returns `None`
/// for anything else.
pub fn detect(file_name: &str, bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Some(Format::OnePux);
    }
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let start = text.trim_ascii_start();
    if start.starts_with(b"<") {
        if contains(start, b"<KeePassFile") {
            return Some(Format::KeepassXml);
        }
    } else if start.starts_with(b"{") {
        if contains(start, b"\"items\"")
            || contains(start, b"\"passwordProtected\"")
            || contains(start, b"\"encKeyValidation_DO_NOT_EDIT\"")
        {
            return Some(Format::BitwardenJson);
        }
    } else if let Some(format) = csv_header(text).as_deref().and_then(classify_csv) {
        return Some(format);
    }
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "1pux" => Some(Format::OnePux),
        "xml" => Some(Format::KeepassXml),
        "json" => Some(Format::BitwardenJson),
        _ => None,
    }
}

/// Reads an export in `format` into items, in the file's order.
///
/// A password-protected Bitwarden export fails with [`ImportError::PasswordRequired`]: read
/// it with [`import_protected`].
pub fn import(format: Format, bytes: &[u8]) -> Result<Vec<Item>, ImportError> {
    match format {
        Format::OnePux => onepux(bytes, MAX_EXPORT_DATA),
        Format::BitwardenJson => bitwarden_json(text_input(format, bytes)?, None),
        Format::BitwardenCsv => bitwarden_csv(text_input(format, bytes)?),
        Format::KeepassXml => {
            if bytes.starts_with(&[0x03, 0xd9, 0xa2, 0x9a]) {
                return Err(malformed(
                    format,
                    "this is an encrypted KeePass database (.kdbx), not an XML export; in KeePassXC use Database > Export > XML File",
                ));
            }
            keepass_xml(text_input(format, bytes)?)
        }
        Format::ChromeCsv => chrome_csv(text_input(format, bytes)?),
        Format::FirefoxCsv => firefox_csv(text_input(format, bytes)?),
    }
}

/// Reads a Bitwarden JSON export protected with a file password (an unencrypted one is read
/// as by [`import`], the password unused).
pub fn import_protected(bytes: &[u8], password: &str) -> Result<Vec<Item>, ImportError> {
    bitwarden_json(text_input(Format::BitwardenJson, bytes)?, Some(password))
}

fn malformed(format: Format, detail: impl Into<String>) -> ImportError {
    ImportError::Malformed {
        format,
        detail: detail.into(),
    }
}

fn bad_record(format: Format, record: String, detail: impl Into<String>) -> ImportError {
    ImportError::Record {
        format,
        record,
        detail: detail.into(),
    }
}

/// Checks the size of a text export and decodes it, without a leading byte-order mark.
fn text_input(format: Format, bytes: &[u8]) -> Result<&str, ImportError> {
    if bytes.len() > MAX_TEXT_INPUT {
        return Err(ImportError::TooLarge {
            format,
            size: bytes.len() as u64,
            limit: MAX_TEXT_INPUT as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ImportError::NotUtf8 {
        format,
        offset: e.valid_up_to(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// A JSON scalar as text: strings as they are, numbers and booleans printed, anything else
/// (null, arrays, objects, absent) empty.
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// `v[key]`, if `v` is an object that has it.
fn member<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    v.and_then(|v| v.get(key))
}

/// The elements of a JSON array, or none.
fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// An item's custom fields under construction: names stay unique (a repeated name gets a
/// " (2)", " (3)", … suffix) at a constant cost per field, whatever the input.
#[derive(Default)]
struct FieldList {
    fields: Vec<Field>,
    names: HashSet<String>,
    next_suffix: HashMap<String, u32>,
}

impl FieldList {
    /// Adds a field, even with an empty value (a field the user created empty).
    fn add(&mut self, name: &str, value: String, hidden: bool) {
        let base = if name.trim().is_empty() {
            "Field"
        } else {
            name
        };
        let mut unique = base.to_owned();
        if self.names.contains(&unique) {
            let n = self.next_suffix.entry(base.to_owned()).or_insert(2);
            loop {
                unique = format!("{base} ({n})");
                *n = n.saturating_add(1);
                if !self.names.contains(&unique) {
                    break;
                }
            }
        }
        self.names.insert(unique.clone());
        self.fields.push(Field {
            name: unique,
            value,
            hidden,
        });
    }

    /// Adds a field unless its value is empty (template fields nobody filled in).
    fn add_nonempty(&mut self, name: &str, value: String, hidden: bool) {
        if !value.is_empty() {
            self.add(name, value, hidden);
        }
    }
}

/// URLs under construction: blanks dropped, duplicates kept once, in first-seen order.
#[derive(Default)]
struct UrlList {
    urls: Vec<String>,
    seen: HashSet<String>,
}

impl UrlList {
    fn add(&mut self, url: &str) {
        let url = url.trim();
        if !url.is_empty() && self.seen.insert(url.to_owned()) {
            self.urls.push(url.to_owned());
        }
    }
}

/// Orders a history oldest first (stable for equal times) and keeps the newest
/// [`HISTORY_LIMIT`] entries, as the vault itself does.
fn finish_history(history: &mut Vec<HistoryEntry>) {
    history.sort_by_key(|h| h.replaced);
    if history.len() > HISTORY_LIMIT {
        let excess = history.len() - HISTORY_LIMIT;
        history.drain(..excess);
    }
}

/// The host of a URL-ish string (`https://user@host:8443/path` → `host`), if it has one.
pub(crate) fn host_of(url: &str) -> Option<&str> {
    let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // An IPv6 literal keeps its brackets: "[::1]:8080" → "[::1]".
        host_port.split_inclusive(']').next().unwrap_or(host_port)
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    };
    (!host.is_empty()).then_some(host)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
/// `year` must lie in 0..=9999, `month` in 1..=12 and `day` in 1..=31.
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
/// `days` must come from a timestamp within [`MIN_TIME`]..=[`MAX_TIME`].
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A date as `YYYY-MM-DD` (UTC).
fn format_date(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.clamp(MIN_TIME, MAX_TIME).div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The decimal number in `b[range]` (digits only, at most 4).
fn digits(b: &[u8], range: Range<usize>) -> Option<i64> {
    let d = b.get(range)?;
    if d.is_empty() || d.len() > 4 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(d.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
}

/// Parses an ISO 8601 / RFC 3339 timestamp (`2024-05-06T07:08:09.123Z`, `…+02:00`, or a bare
/// date) to Unix seconds. A missing zone is read as UTC; fractions of a second are dropped.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (year, month, day) = (digits(b, 0..4)?, digits(b, 5..7)?, digits(b, 8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    let mut rest = b.get(10..).unwrap_or_default();
    if let Some((&sep, time)) = rest.split_first() {
        if !matches!(sep, b'T' | b't' | b' ') || time.get(2) != Some(&b':') {
            return None;
        }
        let (hour, minute) = (digits(time, 0..2)?, digits(time, 3..5)?);
        let (second, after) = if time.get(5) == Some(&b':') {
            (digits(time, 6..8)?, time.get(8..).unwrap_or_default())
        } else {
            (0, time.get(5..).unwrap_or_default())
        };
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        secs += hour * 3600 + minute * 60 + second;
        rest = after;
        if let Some(fraction) = rest.strip_prefix(b".").or_else(|| rest.strip_prefix(b",")) {
            let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            rest = fraction.get(n..).unwrap_or_default();
        }
    }
    match rest {
        [] | [b'Z' | b'z'] => {}
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let hours = digits(zone, 0..2)?;
            let minutes = match zone.get(2) {
                None => 0,
                Some(b':') if zone.len() == 5 => digits(zone, 3..5)?,
                Some(_) if zone.len() == 4 => digits(zone, 2..4)?,
                Some(_) => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            secs += if *sign == b'+' { -offset } else { offset };
        }
        _ => return None,
    }
    Some(secs.clamp(MIN_TIME, MAX_TIME))
}

// ---------------------------------------------------------------------------------------------
// Bitwarden JSON
// ---------------------------------------------------------------------------------------------

/// Card data (`card`), as custom fields: (JSON key, field name, hidden).
const CARD_FIELDS: &[(&str, &str, bool)] = &[
    ("cardholderName", "Cardholder name", false),
    ("brand", "Brand", false),
    ("number", "Card number", true),
    ("expMonth", "Expiration month", false),
    ("expYear", "Expiration year", false),
    ("code", "Security code", true),
];

/// Identity data (`identity`), as custom fields.
const IDENTITY_FIELDS: &[(&str, &str, bool)] = &[
    ("title", "Title", false),
    ("firstName", "First name", false),
    ("middleName", "Middle name", false),
    ("lastName", "Last name", false),
    ("username", "Username", false),
    ("company", "Company", false),
    ("email", "Email", false),
    ("phone", "Phone", false),
    ("address1", "Address 1", false),
    ("address2", "Address 2", false),
    ("address3", "Address 3", false),
    ("city", "City", false),
    ("state", "State", false),
    ("postalCode", "Postal code", false),
    ("country", "Country", false),
    ("ssn", "Social security number", true),
    ("passportNumber", "Passport number", true),
    ("licenseNumber", "License number", true),
];

/// SSH key data (`sshKey`), as custom fields.
const SSH_KEY_FIELDS: &[(&str, &str, bool)] = &[
    ("privateKey", "Private key", true),
    ("publicKey", "Public key", false),
    ("keyFingerprint", "Fingerprint", false),
];

/// Newer Bitwarden item kinds, kept field by field under their JSON keys.
const OTHER_KINDS: &[&str] = &["bankAccount", "driversLicense", "passport"];

/// Bitwarden's linked-field ids for a login's username and password.
const LINKED_USERNAME: i64 = 100;
const LINKED_PASSWORD: i64 = 101;

fn bitwarden_json(text: &str, password: Option<&str>) -> Result<Vec<Item>, ImportError> {
    const F: Format = Format::BitwardenJson;
    let doc = json_object(text)?;
    let Some(obj) = doc.as_object() else {
        return Err(malformed(F, "the file is not a JSON object"));
    };
    if obj.get("encrypted").and_then(Value::as_bool) != Some(true) {
        return bitwarden_items(obj);
    }
    if obj.get("passwordProtected").and_then(Value::as_bool) != Some(true) {
        return Err(ImportError::AccountRestricted);
    }
    let Some(password) = password else {
        return Err(ImportError::PasswordRequired);
    };
    let plain = Zeroizing::new(open_protected(obj, password)?);
    let inner = json_object(&plain)?;
    match inner.as_object() {
        Some(inner) if inner.get("encrypted").and_then(Value::as_bool) != Some(true) => {
            bitwarden_items(inner)
        }
        _ => Err(malformed(
            F,
            "the decrypted data is not an unencrypted Bitwarden export",
        )),
    }
}

fn json_object(text: &str) -> Result<Value, ImportError> {
    serde_json::from_str(text)
        .map_err(|e| malformed(Format::BitwardenJson, format!("not valid JSON: {e}")))
}

fn bitwarden_items(obj: &Map<String, Value>) -> Result<Vec<Item>, ImportError> {
    const F: Format = Format::BitwardenJson;
    // Folder (personal export) and collection (organisation export) names by id.
    let mut folders: HashMap<&str, &str> = HashMap::new();
    for key in ["folders", "collections"] {
        for folder in array(obj.get(key)) {
            let id = folder.get("id").and_then(Value::as_str);
            let name = folder.get("name").and_then(Value::as_str);
            if let (Some(id), Some(name)) = (id, name) {
                folders.insert(id, name);
            }
        }
    }
    let Some(entries) = obj.get("items").and_then(Value::as_array) else {
        return Err(malformed(
            F,
            "no \"items\" array: not a Bitwarden JSON export",
        ));
    };
    let mut items = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Some(o) = entry.as_object() else {
            return Err(bad_record(
                F,
                format!("item {}", i + 1),
                "is not a JSON object",
            ));
        };
        items.push(bitwarden_item(o, &folders));
    }
    Ok(items)
}

fn bitwarden_item(o: &Map<String, Value>, folders: &HashMap<&str, &str>) -> Item {
    let mut item = Item {
        name: text(o.get("name")),
        notes: text(o.get("notes")),
        favorite: o.get("favorite").and_then(Value::as_bool).unwrap_or(false),
        ..Item::default()
    };
    let collection = array(o.get("collectionIds"))
        .first()
        .and_then(Value::as_str);
    let folder_id = o.get("folderId").and_then(Value::as_str).or(collection);
    if let Some(name) = folder_id.and_then(|id| folders.get(id)) {
        item.folder = (*name).to_owned();
    }

    if let Some(login) = o.get("login") {
        item.username = text(login.get("username"));
        item.password = text(login.get("password"));
        item.totp = text(login.get("totp"));
        let mut urls = UrlList::default();
        for uri in array(login.get("uris")) {
            urls.add(&text(uri.get("uri")));
        }
        item.urls = urls.urls;
    }

    let mut fields = FieldList::default();
    for (key, table) in [
        ("card", CARD_FIELDS),
        ("identity", IDENTITY_FIELDS),
        ("sshKey", SSH_KEY_FIELDS),
    ] {
        if let Some(data) = o.get(key) {
            for &(json_key, name, hidden) in table {
                fields.add_nonempty(name, text(data.get(json_key)), hidden);
            }
        }
    }
    for key in OTHER_KINDS {
        if let Some(data) = o.get(*key).and_then(Value::as_object) {
            for (name, value) in data {
                let lower = name.to_ascii_lowercase();
                let hidden = ["number", "pin", "password", "code"]
                    .iter()
                    .any(|secret| lower.contains(*secret));
                fields.add_nonempty(name, text(Some(value)), hidden);
            }
        }
    }
    for field in array(o.get("fields")) {
        let kind = field.get("type").and_then(Value::as_i64).unwrap_or(0);
        let value = match (kind, field.get("linkedId").and_then(Value::as_i64)) {
            (3, Some(LINKED_USERNAME)) => item.username.clone(),
            (3, Some(LINKED_PASSWORD)) => item.password.clone(),
            (3, _) => String::new(),
            _ => text(field.get("value")),
        };
        fields.add(&text(field.get("name")), value, kind == 1);
    }
    item.fields = fields.fields;

    // Bitwarden lists the newest first; the vault keeps history oldest first.
    for old in array(o.get("passwordHistory")).iter().rev() {
        let value = text(old.get("password"));
        if value.is_empty() {
            continue;
        }
        let replaced = old
            .get("lastUsedDate")
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
            .unwrap_or(0);
        item.history.push(HistoryEntry {
            field: "password".to_owned(),
            value,
            replaced,
        });
    }
    finish_history(&mut item.history);
    item.modified = o
        .get("revisionDate")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
        .unwrap_or(0);
    item
}

// ---------------------------------------------------------------------------------------------
// CSV formats
// ---------------------------------------------------------------------------------------------

/// The first row of a CSV file, trimmed and lower-cased, if it parses.
fn csv_header(bytes: &[u8]) -> Option<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    match reader.read_byte_record(&mut record) {
        Ok(true) => Some(
            record
                .iter()
                .map(|cell| String::from_utf8_lossy(cell).trim().to_ascii_lowercase())
                .collect(),
        ),
        _ => None,
    }
}

/// Which CSV export a header row belongs to.
fn classify_csv(header: &[String]) -> Option<Format> {
    let has = |name: &str| header.iter().any(|h| h == name);
    if has("login_uri") || has("login_username") || (has("folder") && has("type") && has("name")) {
        Some(Format::BitwardenCsv)
    } else if has("url")
        && has("username")
        && has("password")
        && (has("httprealm") || has("formactionorigin") || has("guid"))
    {
        Some(Format::FirefoxCsv)
    } else if has("url") && has("username") && has("password") {
        Some(Format::ChromeCsv)
    } else {
        None
    }
}

/// A parsed CSV export: its header (trimmed, lower-cased) and its non-blank rows.
struct CsvTable {
    format: Format,
    header: Vec<String>,
    rows: Vec<csv::StringRecord>,
}

impl CsvTable {
    fn read(format: Format, text: &str) -> Result<Self, ImportError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut header: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| malformed(format, format!("CSV syntax: {e}")))?;
            if header.is_none() {
                header = Some(
                    record
                        .iter()
                        .map(|h| h.trim().to_ascii_lowercase())
                        .collect(),
                );
            } else if !record.iter().all(|cell| cell.trim().is_empty()) {
                rows.push(record);
            }
        }
        let Some(header) = header else {
            return Err(malformed(format, "the file is empty: no header row"));
        };
        Ok(CsvTable {
            format,
            header,
            rows,
        })
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn require(&self, name: &'static str) -> Result<usize, ImportError> {
        self.column(name).ok_or_else(|| ImportError::MissingColumn {
            format: self.format,
            column: name,
            found: self.header.join(","),
        })
    }
}

/// The value in `column` of `record`, or "" when the column or the cell is missing.
fn cell(record: &csv::StringRecord, column: Option<usize>) -> &str {
    column.and_then(|c| record.get(c)).unwrap_or("")
}

fn bitwarden_csv(text: &str) -> Result<Vec<Item>, ImportError> {
    let table = CsvTable::read(Format::BitwardenCsv, text)?;
    let name = Some(table.require("name")?);
    let folder = table.column("folder");
    let collections = table.column("collections");
    let favorite = table.column("favorite");
    let notes = table.column("notes");
    let fields = table.column("fields");
    let uri = table.column("login_uri");
    let username = table.column("login_username");
    let password = table.column("login_password");
    let totp = table.column("login_totp");

    let mut items = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let mut item = Item {
            name: cell(row, name).to_owned(),
            ..Item::default()
        };
        item.folder = match cell(row, folder) {
            "" => cell(row, collections)
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            given => given.to_owned(),
        };
        let fav = cell(row, favorite).trim();
        item.favorite = !fav.is_empty() && fav != "0";
        item.notes = cell(row, notes).to_owned();
        item.username = cell(row, username).to_owned();
        item.password = cell(row, password).to_owned();
        item.totp = cell(row, totp).to_owned();
        let mut urls = UrlList::default();
        for url in cell(row, uri).split(',') {
            urls.add(url);
        }
        item.urls = urls.urls;
        // One "name: value" per line; like Bitwarden, split at the last ": ".
        let mut custom = FieldList::default();
        for line in cell(row, fields).lines() {
            if let Some((field, value)) = line.rsplit_once(": ") {
                custom.add(field, value.to_owned(), false);
            }
        }
        item.fields = custom.fields;
        items.push(item);
    }
    Ok(items)
}

fn chrome_csv(text: &str) -> Result<Vec<Item>, ImportError> {
    let table = CsvTable::read(Format::ChromeCsv, text)?;
    let url = Some(table.require("url")?);
    let username = Some(table.require("username")?);
    let password = Some(table.require("password")?);
    let name = table.column("name");
    let note = table.column("note").or_else(|| table.column("notes"));

    let mut items = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let mut item = Item::default();
        let site = cell(row, url).trim();
        item.name = match cell(row, name).trim() {
            "" => host_of(site).unwrap_or(site).to_owned(),
            given => given.to_owned(),
        };
        if !site.is_empty() {
            item.urls.push(site.to_owned());
        }
        item.username = cell(row, username).to_owned();
        item.password = cell(row, password).to_owned();
        item.notes = cell(row, note).to_owned();
        items.push(item);
    }
    Ok(items)
}

fn firefox_csv(text: &str) -> Result<Vec<Item>, ImportError> {
    let table = CsvTable::read(Format::FirefoxCsv, text)?;
    let url = Some(table.require("url")?);
    let username = Some(table.require("username")?);
    let password = Some(table.require("password")?);
    let realm = table.column("httprealm");
    let action = table.column("formactionorigin");
    let created = table.column("timecreated");
    let changed = table.column("timepasswordchanged");

    let mut items = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let mut item = Item::default();
        let site = cell(row, url).trim();
        item.name = host_of(site).unwrap_or(site).to_owned();
        if !site.is_empty() {
            item.urls.push(site.to_owned());
        }
        item.username = cell(row, username).to_owned();
        item.password = cell(row, password).to_owned();
        let mut fields = FieldList::default();
        fields.add_nonempty("httpRealm", cell(row, realm).to_owned(), false);
        let form = cell(row, action).trim();
        if form != site {
            fields.add_nonempty("formActionOrigin", form.to_owned(), false);
        }
        item.fields = fields.fields;
        // Firefox times are milliseconds since the epoch.
        let millis = |column| cell(row, column).trim().parse::<i64>().ok();
        item.modified = millis(changed)
            .max(millis(created))
            .map_or(0, |ms| ms.div_euclid(1000).clamp(MIN_TIME, MAX_TIME));
        items.push(item);
    }
    Ok(items)
}

// ---------------------------------------------------------------------------------------------
// KeePass 2 XML
// ---------------------------------------------------------------------------------------------

/// Deepest element nesting accepted in a KeePass XML file (real ones nest groups a few dozen
/// levels at most), which bounds the parser's memory on hostile input.
const MAX_XML_DEPTH: usize = 1024;

fn keepass_xml(text: &str) -> Result<Vec<Item>, ImportError> {
    const F: Format = Format::KeepassXml;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<String> = Vec::new();
    let mut kp = KeePass::default();
    loop {
        let event = reader.read_event().map_err(|e| {
            malformed(
                F,
                format!("XML error near byte {}: {e}", reader.error_position()),
            )
        })?;
        if stack.len() >= MAX_XML_DEPTH && matches!(event, Event::Start(_)) {
            return Err(malformed(
                F,
                format!("elements nested deeper than {MAX_XML_DEPTH} levels"),
            ));
        }
        match event {
            Event::Start(e) => kp.start(&mut stack, &e),
            Event::Empty(e) => {
                kp.start(&mut stack, &e);
                kp.end(&mut stack);
            }
            Event::End(_) => kp.end(&mut stack),
            Event::Text(t) => kp.text(&t.xml10_content()),
            Event::CData(c) => kp.text(&c.xml10_content()),
            Event::GeneralRef(r) => kp.text(&xml_reference(&r)?),
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(malformed(
            F,
            format!("the file ends inside <{open}>: it is truncated"),
        ));
    }
    if !kp.seen_root {
        return Err(malformed(
            F,
            "no <KeePassFile> element: not a KeePass XML export",
        ));
    }
    Ok(kp.items)
}

/// The text an entity or character reference stands for.
fn xml_reference(r: &BytesRef<'_>) -> Result<String, ImportError> {
    const F: Format = Format::KeepassXml;
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => quick_xml::escape::resolve_predefined_entity(r)
            .map(str::to_owned)
            .ok_or_else(|| malformed(F, format!("unknown entity &{};", &**r))),
        Err(e) => Err(malformed(F, format!("bad character reference: {e}"))),
    }
}

/// Whether a `<Value>` is marked as protected (shown masked).
fn is_protected(e: &BytesStart<'_>) -> bool {
    ["Protected", "ProtectInMemory"].iter().any(|attr| {
        e.try_get_attribute(attr)
            .ok()
            .flatten()
            .is_some_and(|a| a.value.trim().eq_ignore_ascii_case("true"))
    })
}

/// KeePass stores times as ISO 8601 text or (KDBX 4) as base64 of little-endian seconds
/// since 0001-01-01.
fn keepass_time(s: &str) -> Option<i64> {
    parse_timestamp(s).or_else(|| {
        let bytes = STANDARD.decode(s.trim()).ok()?;
        let secs = i64::from_le_bytes(<[u8; 8]>::try_from(bytes.as_slice()).ok()?);
        Some(secs.saturating_add(MIN_TIME).clamp(MIN_TIME, MAX_TIME))
    })
}

#[derive(Default)]
struct KeePassGroup {
    name: String,
    /// The recycle bin, or inside it: its entries are not imported.
    deleted: bool,
}

#[derive(Default)]
struct KeePassString {
    key: String,
    value: String,
    protected: bool,
}

#[derive(Default)]
struct KeePassEntry {
    strings: Vec<KeePassString>,
    modified: i64,
}

/// The state of a pull parse of a KeePass XML file. The element stack lives beside it, so
/// that the parent and grandparent names can be borrowed while the state changes.
#[derive(Default)]
struct KeePass {
    items: Vec<Item>,
    seen_root: bool,
    /// `Meta/RecycleBinUUID`.
    recycle_bin: String,
    groups: Vec<KeePassGroup>,
    entry: Option<KeePassEntry>,
    string: Option<KeePassString>,
    /// Text of the element being read, when it is one this parser wants.
    capture: Option<String>,
    /// Inside an entry's `<History>` (old versions, not imported): the stack depth of the
    /// `<History>` element itself.
    history_depth: Option<usize>,
}

impl KeePass {
    fn start(&mut self, stack: &mut Vec<String>, e: &BytesStart<'_>) {
        let name = e.name().0;
        if self.history_depth.is_none() {
            let parent = stack.last().map(String::as_str);
            let grandparent = stack.iter().rev().nth(1).map(String::as_str);
            match (name, parent) {
                ("KeePassFile", None) => self.seen_root = true,
                ("Group", Some("Root" | "Group")) => {
                    let deleted = self.groups.last().is_some_and(|g| g.deleted);
                    self.groups.push(KeePassGroup {
                        name: String::new(),
                        deleted,
                    });
                }
                ("Entry", Some("Group")) => self.entry = Some(KeePassEntry::default()),
                ("History", Some("Entry")) => self.history_depth = Some(stack.len()),
                ("String", Some("Entry")) if self.entry.is_some() => {
                    self.string = Some(KeePassString::default());
                }
                ("Value", Some("String")) => {
                    if let Some(s) = &mut self.string {
                        s.protected = is_protected(e);
                    }
                    self.capture = Some(String::new());
                }
                ("Key", Some("String"))
                | ("Name" | "UUID", Some("Group"))
                | ("RecycleBinUUID", Some("Meta")) => self.capture = Some(String::new()),
                ("LastModificationTime", Some("Times")) if grandparent == Some("Entry") => {
                    self.capture = Some(String::new());
                }
                _ => {}
            }
        }
        stack.push(name.to_owned());
    }

    fn text(&mut self, text: &str) {
        if let Some(capture) = &mut self.capture {
            capture.push_str(text);
        }
    }

    fn end(&mut self, stack: &mut Vec<String>) {
        let Some(name) = stack.pop() else {
            return;
        };
        if let Some(depth) = self.history_depth {
            if stack.len() == depth {
                self.history_depth = None;
            }
            return;
        }
        let parent = stack.last().map(String::as_str);
        let grandparent = stack.iter().rev().nth(1).map(String::as_str);
        let text = self.capture.take().unwrap_or_default();
        match (name.as_str(), parent) {
            ("RecycleBinUUID", Some("Meta")) => self.recycle_bin = text.trim().to_owned(),
            ("UUID", Some("Group"))
                if !self.recycle_bin.is_empty() && text.trim() == self.recycle_bin =>
            {
                if let Some(group) = self.groups.last_mut() {
                    group.deleted = true;
                }
            }
            ("Name", Some("Group")) => {
                // Without a RecycleBinUUID, recognise the bin by its default name and place.
                let is_bin = self.recycle_bin.is_empty()
                    && self.groups.len() == 2
                    && text.trim() == "Recycle Bin";
                if let Some(group) = self.groups.last_mut() {
                    group.deleted |= is_bin;
                    group.name = text;
                }
            }
            ("Key", Some("String")) => {
                if let Some(s) = &mut self.string {
                    s.key = text;
                }
            }
            ("Value", Some("String")) => {
                if let Some(s) = &mut self.string {
                    s.value = text;
                }
            }
            ("String", Some("Entry")) => {
                if let (Some(s), Some(entry)) = (self.string.take(), &mut self.entry) {
                    entry.strings.push(s);
                }
            }
            ("LastModificationTime", Some("Times")) if grandparent == Some("Entry") => {
                if let Some(entry) = &mut self.entry {
                    entry.modified = keepass_time(&text).unwrap_or(0);
                }
            }
            ("Entry", Some("Group")) => {
                if let Some(entry) = self.entry.take() {
                    let deleted = self.groups.last().is_some_and(|g| g.deleted);
                    if !deleted && !entry.strings.is_empty() {
                        let item = self.entry_item(entry);
                        self.items.push(item);
                    }
                }
            }
            ("Group", Some("Root" | "Group")) => {
                self.groups.pop();
            }
            _ => {}
        }
    }

    fn entry_item(&self, entry: KeePassEntry) -> Item {
        let mut item = Item::default();
        let mut fields = FieldList::default();
        let mut main_url = String::new();
        let mut more_urls = Vec::new();
        let mut totp_seed = None;
        for s in entry.strings {
            match s.key.as_str() {
                "Title" => item.name = s.value,
                "UserName" => item.username = s.value,
                "Password" => item.password = s.value,
                "URL" => main_url = s.value,
                "Notes" => item.notes = s.value,
                "otp" => item.totp = s.value,
                "TOTP Seed" | "TimeOtp-Secret-Base32" if totp_seed.is_none() => {
                    totp_seed = Some(s.value);
                }
                key if key.starts_with("KP2A_URL") => more_urls.push(s.value),
                key => fields.add(key, s.value, s.protected),
            }
        }
        if let Some(seed) = totp_seed {
            if item.totp.is_empty() {
                item.totp = seed;
            } else {
                fields.add("TOTP Seed", seed, true);
            }
        }
        let mut urls = UrlList::default();
        urls.add(&main_url);
        for url in &more_urls {
            urls.add(url);
        }
        item.urls = urls.urls;
        item.fields = fields.fields;
        // The first group is the database's root: entries there have no folder.
        item.folder = self
            .groups
            .iter()
            .skip(1)
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join("/");
        item.modified = entry.modified;
        item
    }
}

// ---------------------------------------------------------------------------------------------
// 1Password 1PUX
// ---------------------------------------------------------------------------------------------

fn onepux(bytes: &[u8], limit: u64) -> Result<Vec<Item>, ImportError> {
    const F: Format = Format::OnePux;
    if bytes.len() > MAX_ARCHIVE_INPUT {
        return Err(ImportError::TooLarge {
            format: F,
            size: bytes.len() as u64,
            limit: MAX_ARCHIVE_INPUT as u64,
        });
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| malformed(F, format!("not a readable zip archive: {e}")))?;
    let data = {
        let file = archive.by_name("export.data").map_err(|e| match e {
            zip::result::ZipError::FileNotFound => {
                malformed(F, "the archive has no export.data: not a 1PUX export")
            }
            other => malformed(F, format!("cannot open export.data: {other}")),
        })?;
        if file.size() > limit {
            return Err(ImportError::ArchiveTooLarge { limit });
        }
        // The declared size may lie: read at most one byte past the limit.
        let mut data: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        file.take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| malformed(F, format!("cannot decompress export.data: {e}")))?;
        data
    };
    if data.len() as u64 > limit {
        return Err(ImportError::ArchiveTooLarge { limit });
    }
    let json = std::str::from_utf8(&data).map_err(|e| ImportError::NotUtf8 {
        format: F,
        offset: e.valid_up_to(),
    })?;
    let doc: Value = serde_json::from_str(json.strip_prefix('\u{feff}').unwrap_or(json))
        .map_err(|e| malformed(F, format!("export.data is not valid JSON: {e}")))?;
    let Some(accounts) = doc.get("accounts").and_then(Value::as_array) else {
        return Err(malformed(F, "export.data has no \"accounts\" array"));
    };
    let mut items = Vec::new();
    for (a, account) in accounts.iter().enumerate() {
        for (v, vault) in array(account.get("vaults")).iter().enumerate() {
            let vault_name = text(member(vault.get("attrs"), "name"));
            for (i, entry) in array(vault.get("items")).iter().enumerate() {
                // Early exports wrapped each item as {"item": {…}}.
                let entry = match entry.get("item") {
                    Some(inner) if entry.get("overview").is_none() => inner,
                    _ => entry,
                };
                let Some(o) = entry.as_object() else {
                    return Err(bad_record(
                        F,
                        format!("account {}, vault {}, item {}", a + 1, v + 1, i + 1),
                        "is not a JSON object",
                    ));
                };
                items.push(onepux_item(o, &vault_name));
            }
        }
    }
    Ok(items)
}

fn onepux_item(o: &Map<String, Value>, vault: &str) -> Item {
    let overview = o.get("overview");
    let details = o.get("details");
    let mut item = Item {
        name: text(member(overview, "title")),
        folder: vault.to_owned(),
        ..Item::default()
    };
    item.favorite = o
        .get("favIndex")
        .and_then(Value::as_f64)
        .is_some_and(|n| n > 0.0);
    item.modified = o
        .get("updatedAt")
        .and_then(Value::as_i64)
        .map_or(0, |t| t.clamp(MIN_TIME, MAX_TIME));
    item.notes = text(member(details, "notesPlain"));

    let mut urls = UrlList::default();
    urls.add(&text(member(overview, "url")));
    for url in array(member(overview, "urls")) {
        urls.add(&text(url.get("url")));
    }
    item.urls = urls.urls;

    let mut fields = FieldList::default();
    for field in array(member(details, "loginFields")) {
        let value = match field.get("value") {
            Some(Value::Object(v)) => text(v.get("email_address").or_else(|| v.get("string"))),
            other => text(other),
        };
        let designation = field
            .get("designation")
            .and_then(Value::as_str)
            .unwrap_or("");
        match designation {
            "username" if item.username.is_empty() => item.username = value,
            "password" if item.password.is_empty() => item.password = value,
            _ => {
                let mut name = text(field.get("name"));
                if name.trim().is_empty() {
                    name = text(field.get("id"));
                }
                let hidden = field.get("fieldType").and_then(Value::as_str) == Some("P");
                fields.add_nonempty(&name, value, hidden);
            }
        }
    }
    let password = text(member(details, "password"));
    if item.password.is_empty() {
        item.password = password;
    } else {
        fields.add_nonempty("password", password, true);
    }
    for section in array(member(details, "sections")) {
        for field in array(section.get("fields")) {
            let mut name = text(field.get("title"));
            if name.trim().is_empty() {
                name = text(field.get("id"));
            }
            let Some(value) = field.get("value").and_then(Value::as_object) else {
                continue;
            };
            for (kind, v) in value {
                onepux_value(&mut item, &mut fields, &name, kind, v);
            }
        }
    }
    let document = text(member(member(details, "documentAttributes"), "fileName"));
    fields.add_nonempty("Document file name", document, false);
    item.fields = fields.fields;

    for old in array(member(details, "passwordHistory")) {
        let value = text(old.get("value"));
        if !value.is_empty() {
            item.history.push(HistoryEntry {
                field: "password".to_owned(),
                value,
                replaced: old
                    .get("time")
                    .and_then(Value::as_i64)
                    .map_or(0, |t| t.clamp(MIN_TIME, MAX_TIME)),
            });
        }
    }
    finish_history(&mut item.history);
    item
}

/// One typed value of a 1PUX section field (`{"concealed": "…"}`, `{"totp": "…"}`, …).
fn onepux_value(item: &mut Item, fields: &mut FieldList, name: &str, kind: &str, v: &Value) {
    match kind {
        "totp" => {
            let uri = text(Some(v));
            if item.totp.is_empty() {
                item.totp = uri;
            } else {
                fields.add_nonempty(name, uri, true);
            }
        }
        "concealed" | "creditCardNumber" => fields.add_nonempty(name, text(Some(v)), true),
        "sshKey" => {
            let key = match v.get("privateKey") {
                Some(k) => text(Some(k)),
                None => text(Some(v)),
            };
            fields.add_nonempty(name, key, true);
        }
        "email" => {
            let address = match v.get("email_address") {
                Some(a) => text(Some(a)),
                None => text(Some(v)),
            };
            fields.add_nonempty(name, address, false);
        }
        "date" => {
            if let Some(secs) = v.as_i64() {
                fields.add(name, format_date(secs), false);
            }
        }
        "monthYear" => {
            // 202712 is December 2027.
            if let Some(n) = v.as_i64().filter(|n| (1..=999_912).contains(n)) {
                fields.add(name, format!("{:04}-{:02}", n / 100, n % 100), false);
            }
        }
        "address" => {
            let parts: Vec<String> = ["street", "city", "state", "zip", "country"]
                .iter()
                .map(|key| text(v.get(*key)))
                .filter(|part| !part.trim().is_empty())
                .collect();
            fields.add_nonempty(name, parts.join(", "), false);
        }
        // References to other items and attachments have no place in a field.
        "reference" | "file" => {}
        _ => fields.add_nonempty(name, text(Some(v)), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::bitwarden_json as export_bitwarden;

    const BITWARDEN_JSON: &[u8] = include_bytes!("../tests/data/import/bitwarden.json");
    const BITWARDEN_CSV: &[u8] = include_bytes!("../tests/data/import/bitwarden.csv");
    const KEEPASS_XML: &[u8] = include_bytes!("../tests/data/import/keepassxc.xml");
    const CHROME_CSV: &[u8] = include_bytes!("../tests/data/import/chrome.csv");
    const FIREFOX_CSV: &[u8] = include_bytes!("../tests/data/import/firefox.csv");
    const ONEPUX_DATA: &[u8] = include_bytes!("../tests/data/import/1pux-export.data.json");

    /// The password the samples share: commas, quotes, XML specials and a newline.
    const TRICKY: &str = "s3cr3t,\"quoted\" & <angle>\nsecond line";
    const TOTP: &str = "otpauth://totp/GitHub:alice?secret=JBSWY3DPEHPK3PXP&issuer=GitHub";

    /// A 1PUX archive around `export_data`, built the way 1Password lays it out.
    fn onepux_zip(export_data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        use zip::write::SimpleFileOptions;
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::<u8>::new()));
        writer.start_file("export.attributes", options).unwrap();
        writer
            .write_all(br#"{"version":3,"description":"1Password Unencrypted Export"}"#)
            .unwrap();
        writer.start_file("export.data", options).unwrap();
        writer.write_all(export_data).unwrap();
        writer.finish().unwrap().into_inner()
    }

    fn by_name<'a>(items: &'a [Item], name: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no item named {name:?}"))
    }

    fn field<'a>(item: &'a Item, name: &str) -> &'a Field {
        item.fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{:?} has no field {name:?}", item.name))
    }

    /// Export to Bitwarden JSON and read it back: nothing may change.
    fn assert_round_trip(items: &[Item]) {
        let json = export_bitwarden(items);
        let back = import(Format::BitwardenJson, json.as_bytes()).unwrap();
        assert_eq!(back, items);
    }

    #[test]
    fn names_parse_back_to_their_formats() {
        for (format, name) in Format::ALL.into_iter().zip(Format::NAMES) {
            assert_eq!(format.name(), *name);
            assert_eq!(Format::parse_name(name), Some(format));
            assert_eq!(Format::parse_name(&name.to_uppercase()), Some(format));
        }
        assert_eq!(Format::parse_name("lastpass-csv"), None);
    }

    #[test]
    fn detects_every_sample() {
        let zip = onepux_zip(ONEPUX_DATA);
        let cases: [(&str, &[u8], Format); 6] = [
            (
                "bitwarden_export.json",
                BITWARDEN_JSON,
                Format::BitwardenJson,
            ),
            ("bitwarden_export.csv", BITWARDEN_CSV, Format::BitwardenCsv),
            ("Passwords.xml", KEEPASS_XML, Format::KeepassXml),
            ("Chrome Passwords.csv", CHROME_CSV, Format::ChromeCsv),
            ("logins.csv", FIREFOX_CSV, Format::FirefoxCsv),
            ("export.1pux", zip.as_slice(), Format::OnePux),
        ];
        for (file, bytes, format) in cases {
            assert_eq!(detect(file, bytes), Some(format), "{file}");
            // Content decides, not the name.
            assert_eq!(detect("export.txt", bytes), Some(format), "{file}");
        }
        assert_eq!(detect("notes.txt", b"hello, world\n1, 2\n"), None);
        assert_eq!(detect("a.json", b""), Some(Format::BitwardenJson));
        assert_eq!(detect("a.bin", b""), None);
    }

    #[test]
    fn bitwarden_json_sample() {
        let items = import(Format::BitwardenJson, BITWARDEN_JSON).unwrap();
        assert_eq!(items.len(), 5);

        let github = by_name(&items, "GitHub");
        assert_eq!(github.username, "alice@example.org");
        assert_eq!(github.password, TRICKY);
        assert_eq!(github.totp, TOTP);
        assert_eq!(
            github.urls,
            ["https://github.com/login", "https://gist.github.com"]
        );
        assert_eq!(github.folder, "Work/Dev");
        assert!(github.favorite);
        assert_eq!(github.modified, 1_714_979_289);
        assert_eq!(github.history.len(), 2);
        assert_eq!(github.history[0].value, "old-github-1");
        assert_eq!(github.history[0].replaced, 1_709_287_200);
        assert_eq!(github.history[1].value, "old-github-2");

        let bank = by_name(&items, "Zürich Bank");
        assert_eq!(bank.username, "müller");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(bank.folder, "Finance");
        assert!(!bank.favorite);
        assert_eq!(field(bank, "PIN").value, "4711");
        assert!(field(bank, "PIN").hidden);
        assert_eq!(field(bank, "Customer number").value, "CH-99 001");
        assert!(!field(bank, "Customer number").hidden);
        assert_eq!(field(bank, "Paperless").value, "true");
        assert_eq!(field(bank, "Online banking").value, "müller");

        let wifi = by_name(&items, "Wi-Fi Zürich");
        assert_eq!(wifi.notes, "SSID: Café Zürich\nKey: пароль wifi");
        assert!(wifi.username.is_empty() && wifi.password.is_empty() && wifi.urls.is_empty());
        assert_eq!(wifi.folder, "");

        let card = by_name(&items, "Visa Zürich");
        assert_eq!(field(card, "Cardholder name").value, "Anna Müller");
        assert_eq!(field(card, "Card number").value, "4111111111111111");
        assert!(field(card, "Card number").hidden);
        assert!(field(card, "Security code").hidden);
        assert_eq!(field(card, "Expiration year").value, "2030");

        let identity = by_name(&items, "Anna Müller");
        assert_eq!(field(identity, "City").value, "Zürich");
        assert_eq!(field(identity, "Email").value, "anna@example.org");
        assert!(identity.fields.iter().all(|f| f.name != "Middle name"));

        assert_round_trip(&items);
    }

    #[test]
    fn bitwarden_csv_sample() {
        let items = import(Format::BitwardenCsv, BITWARDEN_CSV).unwrap();
        assert_eq!(items.len(), 3);

        let github = by_name(&items, "GitHub");
        assert_eq!(github.password, TRICKY);
        assert_eq!(github.totp, TOTP);
        assert_eq!(
            github.urls,
            ["https://github.com/login", "https://gist.github.com"]
        );
        assert_eq!(github.folder, "Work/Dev");
        assert!(github.favorite);

        let bank = by_name(&items, "Zürich Bank");
        assert_eq!(bank.username, "müller");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(bank.notes, "Branch: Paradeplatz");
        assert_eq!(field(bank, "PIN").value, "4711");
        assert_eq!(field(bank, "Customer number").value, "CH-99 001");
        assert_eq!(field(bank, "Security question: first pet").value, "Rex");
        assert!(!bank.favorite);

        let wifi = by_name(&items, "Wi-Fi Zürich");
        assert_eq!(wifi.notes, "SSID: Café Zürich\nKey: пароль wifi");
        assert!(wifi.urls.is_empty() && wifi.password.is_empty());

        assert_round_trip(&items);
    }

    #[test]
    fn keepass_xml_sample() {
        let items = import(Format::KeepassXml, KEEPASS_XML).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        // The recycle bin's entry and the History versions are not imported.
        assert_eq!(names, ["Wi-Fi Zürich", "GitHub", "Zürich Bank"]);

        let github = by_name(&items, "GitHub");
        assert_eq!(github.username, "alice@example.org");
        assert_eq!(github.password, TRICKY);
        assert_eq!(github.totp, TOTP);
        assert_eq!(
            github.urls,
            ["https://github.com/login", "https://gist.github.com"]
        );
        assert_eq!(github.folder, "Work/Dev");
        assert_eq!(github.modified, 1_714_979_289);
        assert!(github.fields.is_empty());

        let bank = by_name(&items, "Zürich Bank");
        assert_eq!(bank.folder, "Finance");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(field(bank, "PIN").value, "4711");
        assert!(field(bank, "PIN").hidden);
        assert_eq!(field(bank, "Customer number").value, "CH-99 001");
        assert!(!field(bank, "Customer number").hidden);
        assert_eq!(bank.modified, 1_623_745_800);

        let wifi = by_name(&items, "Wi-Fi Zürich");
        assert_eq!(wifi.folder, "");
        assert_eq!(wifi.notes, "SSID: Café Zürich\nKey: пароль wifi");

        assert_round_trip(&items);
    }

    #[test]
    fn chrome_csv_sample() {
        let items = import(Format::ChromeCsv, CHROME_CSV).unwrap();
        assert_eq!(items.len(), 3);
        let github = by_name(&items, "github.com");
        assert_eq!(github.urls, ["https://github.com/login"]);
        assert_eq!(github.username, "alice@example.org");
        assert_eq!(github.password, TRICKY);
        let bank = by_name(&items, "bank.example.ch");
        assert_eq!(bank.username, "müller");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(bank.notes, "Kundennummer CH-99 001");
        // A row without a name is named after its host.
        let router = by_name(&items, "router.home.arpa");
        assert_eq!(router.password, "admin,admin");
        assert_eq!(router.notes, "Zürich Wi-Fi router");
        assert_round_trip(&items);
    }

    #[test]
    fn firefox_csv_sample() {
        let items = import(Format::FirefoxCsv, FIREFOX_CSV).unwrap();
        assert_eq!(items.len(), 3);
        let github = by_name(&items, "github.com");
        assert_eq!(github.password, TRICKY);
        assert_eq!(github.urls, ["https://github.com"]);
        assert!(github.fields.is_empty());
        assert_eq!(github.modified, 1_705_000_000);
        let bank = by_name(&items, "bank.example.ch");
        assert_eq!(bank.username, "müller");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(
            field(bank, "formActionOrigin").value,
            "https://login.bank.example.ch"
        );
        let intranet = by_name(&items, "intranet.example.org");
        assert_eq!(intranet.urls, ["https://intranet.example.org:8443"]);
        assert_eq!(field(intranet, "httpRealm").value, "Intranet Zürich");
        assert_eq!(intranet.password, "Zürich-2024");
        assert_round_trip(&items);
    }

    #[test]
    fn onepux_sample() {
        let items = import(Format::OnePux, &onepux_zip(ONEPUX_DATA)).unwrap();
        assert_eq!(items.len(), 4);

        let github = by_name(&items, "GitHub");
        assert_eq!(github.folder, "Private");
        assert_eq!(github.username, "alice@example.org");
        assert_eq!(github.password, TRICKY);
        assert_eq!(github.totp, TOTP);
        assert_eq!(
            github.urls,
            ["https://github.com/login", "https://gist.github.com"]
        );
        assert!(github.favorite);
        assert_eq!(github.modified, 1_715_000_000);
        assert_eq!(github.history.len(), 2);
        assert_eq!(github.history[0].value, "old-github-1");
        assert_eq!(github.history[0].replaced, 1_709_287_200);
        assert_eq!(
            field(github, "Recovery codes").value,
            "abcd-efgh\nijkl-mnop"
        );
        assert!(field(github, "Recovery codes").hidden);

        // Archived items are imported too.
        let wifi = by_name(&items, "Wi-Fi Zürich");
        assert_eq!(wifi.notes, "SSID: Café Zürich\nKey: пароль wifi");
        assert!(!wifi.favorite);

        let bank = by_name(&items, "Zürich Bank");
        assert_eq!(bank.folder, "Finance");
        assert_eq!(bank.username, "müller");
        assert_eq!(bank.password, "пароль-123");
        assert_eq!(field(bank, "PIN").value, "4711");
        assert!(field(bank, "PIN").hidden);
        assert_eq!(field(bank, "Customer number").value, "CH-99 001");
        assert!(!field(bank, "Customer number").hidden);
        assert_eq!(field(bank, "Opened").value, "2020-01-01");
        assert_eq!(field(bank, "Contact").value, "support@bank.example.ch");
        assert_eq!(field(bank, "Valid until").value, "2027-12");
        assert_eq!(
            field(bank, "Branch").value,
            "Paradeplatz 8, Zürich, ZH, 8001, CH"
        );

        let server = by_name(&items, "Build server");
        assert_eq!(server.password, "hunter2");
        assert_eq!(field(server, "Private key").value, "-----BEGIN KEY-----");

        assert_round_trip(&items);
    }

    #[test]
    fn onepux_rejects_a_zip_bomb_and_other_archives() {
        let big = onepux_zip(&vec![b' '; 4096]);
        assert!(matches!(
            onepux(&big, 1024),
            Err(ImportError::ArchiveTooLarge { limit: 1024 })
        ));

        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::<u8>::new()));
        writer
            .start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        let other = writer.finish().unwrap().into_inner();
        let err = import(Format::OnePux, &other).unwrap_err();
        assert!(err.to_string().contains("no export.data"), "{err}");

        let err = import(Format::OnePux, b"PK\x03\x04 not really a zip").unwrap_err();
        assert!(err.to_string().starts_with("1Password 1PUX: "), "{err}");
    }

    #[test]
    fn protected_and_account_restricted_bitwarden_files() {
        let err = import(
            Format::BitwardenJson,
            br#"{"encrypted": true, "encKeyValidation_DO_NOT_EDIT": "2.a|b|c", "folders": [], "items": []}"#,
        )
        .unwrap_err();
        assert!(matches!(err, ImportError::AccountRestricted), "{err}");

        let file = crate::export::protected_with_iterations(
            &import(Format::BitwardenCsv, BITWARDEN_CSV).unwrap(),
            "correct horse",
            1000,
        );
        let err = import(Format::BitwardenJson, file.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bitwarden JSON: password-protected export: pass the password"
        );
        let items = import_protected(file.as_bytes(), "correct horse").unwrap();
        assert_eq!(items, import(Format::BitwardenCsv, BITWARDEN_CSV).unwrap());
        let err = import_protected(file.as_bytes(), "wrong horse").unwrap_err();
        assert!(
            matches!(err, ImportError::Protected(ExportError::WrongPassword)),
            "{err}"
        );
        assert!(err.to_string().contains("wrong password"), "{err}");
    }

    #[test]
    fn errors_name_the_format_and_the_problem() {
        let err = import(Format::ChromeCsv, b"name,url,login,pass\na,b,c,d\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Chrome CSV: the header row has no \"username\" column (it has: name,url,login,pass)"
        );
        let err = import(Format::FirefoxCsv, b"\xff\xfeu\0r\0l\0").unwrap_err();
        assert!(
            matches!(err, ImportError::NotUtf8 { offset: 0, .. }),
            "{err}"
        );
        let err = import(Format::BitwardenJson, br#"{"items": [1]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bitwarden JSON: item 1: is not a JSON object"
        );
        let err = import(Format::KeepassXml, b"<KeePassFile><Root><Group>").unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = import(Format::KeepassXml, b"<html></html>").unwrap_err();
        assert!(
            err.to_string().contains("not a KeePass XML export"),
            "{err}"
        );
        let err = import(Format::KeepassXml, b"\x03\xd9\xa2\x9a\x67\xfb\x4b\xb5").unwrap_err();
        assert!(err.to_string().contains(".kdbx"), "{err}");
        let err = import(Format::BitwardenCsv, b"").unwrap_err();
        assert!(err.to_string().contains("no header row"), "{err}");
        let deep = "<KeePassFile>".repeat(5000);
        let err = import(Format::KeepassXml, deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn truncated_inputs_fail_cleanly() {
        let zip = onepux_zip(ONEPUX_DATA);
        // Without trailing whitespace, so that every cut removes something that matters.
        let strict: [(Format, &[u8]); 3] = [
            (Format::BitwardenJson, BITWARDEN_JSON.trim_ascii_end()),
            (Format::KeepassXml, KEEPASS_XML.trim_ascii_end()),
            (Format::OnePux, zip.as_slice()),
        ];
        for (format, bytes) in strict {
            for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
                let head = bytes.get(..cut).unwrap();
                assert!(import(format, head).is_err(), "{format} cut at {cut}");
            }
        }
    }

    /// A cheap stand-in for the fuzzer: cut and corrupt every sample in many ways, and read
    /// each result as every format. Errors are fine; a panic fails the test.
    #[test]
    fn mangled_inputs_never_panic() {
        const SPECIALS: &[u8] = b"\"<>&,{}[]:\n\x00\xff";
        let zip = onepux_zip(ONEPUX_DATA);
        let samples: [&[u8]; 7] = [
            BITWARDEN_JSON,
            BITWARDEN_CSV,
            KEEPASS_XML,
            CHROME_CSV,
            FIREFOX_CSV,
            ONEPUX_DATA,
            zip.as_slice(),
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for sample in samples {
            for round in 0..40 {
                let mut bytes = sample.to_vec();
                let len = bytes.len() as u64;
                match round % 4 {
                    0 => bytes.truncate((next() % len) as usize),
                    1 => {
                        for _ in 0..8 {
                            let at = (next() % len) as usize;
                            bytes[at] = next() as u8;
                        }
                    }
                    2 => {
                        let at = (next() % len) as usize;
                        let special = SPECIALS[(next() % SPECIALS.len() as u64) as usize];
                        bytes.insert(at, special);
                    }
                    _ => {
                        let at = (next() % len) as usize;
                        let n = (next() % 64) as usize;
                        bytes.drain(at..(at + n).min(bytes.len()));
                    }
                }
                for format in Format::ALL {
                    let _ = import(format, &bytes);
                }
                let _ = import_protected(&bytes, "pw");
                let _ = detect("x", &bytes);
            }
        }
        let garbage: [&[u8]; 7] = [b"", b"\x00", b"{", b"[", b"<", b"\"", b"PK\x03\x04"];
        for bytes in garbage {
            for format in Format::ALL {
                assert!(import(format, bytes).is_err(), "{format}: {bytes:?}");
            }
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp("2024-05-06T07:08:09.123Z"),
            Some(1_714_979_289)
        );
        assert_eq!(
            parse_timestamp("2024-02-29T14:34:56+02:00"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_timestamp("2024-02-29T12:34:56"), Some(1_709_210_096));
        assert_eq!(parse_timestamp("2020-01-01"), Some(1_577_836_800));
        assert_eq!(parse_timestamp("0001-01-01T00:00:00Z"), Some(MIN_TIME));
        assert_eq!(parse_timestamp("9999-12-31T23:59:59Z"), Some(MAX_TIME));
        for bad in [
            "",
            "2024",
            "2024-13-01",
            "2024-01-01T25:00:00Z",
            "2024-01-01Tx",
            "x024-01-01",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(keepass_time("CFxa2A4AAAA="), Some(1_623_745_800));
        assert_eq!(format_date(1_577_836_800), "2020-01-01");
        assert_eq!(format_date(i64::MIN), "0001-01-01");
        assert_eq!(format_date(i64::MAX), "9999-12-31");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://github.com/login"), Some("github.com"));
        assert_eq!(
            host_of("https://u:p@host.example:8443/x?y#z"),
            Some("host.example")
        );
        assert_eq!(host_of("http://[::1]:8080/"), Some("[::1]"));
        assert_eq!(host_of("example.org"), Some("example.org"));
        assert_eq!(host_of("https://"), None);
        assert_eq!(host_of(""), None);
    }

    #[test]
    fn repeated_field_names_stay_unique() {
        let mut fields = FieldList::default();
        for value in ["a", "b", "c"] {
            fields.add("PIN", value.to_owned(), true);
        }
        fields.add("PIN (2)", "d".to_owned(), false);
        fields.add("", "e".to_owned(), false);
        let names: Vec<&str> = fields.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["PIN", "PIN (2)", "PIN (3)", "PIN (2) (2)", "Field"]);
    }
}
