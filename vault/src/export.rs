//! Exporting the vault in Bitwarden's JSON format, plain or protected with a file password.
//!
//! A vault people cannot leave is a trap. The vault therefore exports everything in the
//! format other password managers import best: Bitwarden's JSON. [`bitwarden_json`] writes
//! the unencrypted export; [`bitwarden_json_protected`] writes Bitwarden's password-protected
//! export, which any Bitwarden account (and this crate's importer) opens with the file
//! password; [`open_bitwarden_json_protected`] opens one.
//!
//! Items map onto Bitwarden ciphers as: a login (type 1) when the item has a username,
//! password, TOTP secret or URL, a secure note (type 2) otherwise; custom fields as text
//! (type 0) or hidden (type 1) fields; folders as Bitwarden folders, whose `/`-separated names
//! Bitwarden shows nested; the password history as `passwordHistory`. History entries of other
//! fields, which Bitwarden cannot hold, are left out.

// The password-protected export is Bitwarden's own construction, as its clients write and read
// it (bitwarden/clients: `buildPasswordExport` in libs/tools/export/vault-export/
// vault-export-core/src/services/base-vault-export.service.ts; the reader in
// libs/importer/src/importers/bitwarden/bitwarden-password-protected-importer.ts;
// `deriveKeyFromPassword` and `stretchKey` in libs/common/src/key-management/crypto/
// key-generation/default-key-generation.service.ts; the EncString layout in
// libs/common/src/key-management/crypto/models/enc-string.ts):
//
//   salt       base64 of 16 random bytes. The KDF is fed this base64 *text* (as UTF-8),
//              not the decoded bytes.
//   key        kdfType 0: PBKDF2-HMAC-SHA256(password, salt, kdfIterations) → 32 bytes;
//              kdfType 1: Argon2id(password, SHA-256(salt), t = kdfIterations,
//                         m = kdfMemory MiB, p = kdfParallelism) → 32 bytes.
//   enc, mac   HKDF-Expand-SHA256(PRK = key, info = "enc" / "mac") → 32 bytes each
//              ("stretchKey"; no HKDF-Extract step).
//   EncString  "2." base64(iv) "|" base64(AES-256-CBC-PKCS#7(enc, iv, plaintext)) "|"
//              base64(HMAC-SHA256(mac, iv ‖ ciphertext)), with a random 16-byte iv.
//   encKeyValidation_DO_NOT_EDIT   the EncString of a random UUID: it decrypts (its MAC
//              verifies) exactly when the password is right.
//   data       the EncString of the whole unencrypted JSON export.

use crate::import::{MAX_TIME, MIN_TIME, civil_from_days, host_of};
use crate::item::Item;
use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use zeroize::Zeroizing;

/// PBKDF2 iterations of a password-protected export: Bitwarden's default for new accounts.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// Most PBKDF2 iterations accepted when opening a file (Bitwarden's own maximum), so that a
/// crafted file cannot make opening it take hours.
const PBKDF2_MAX_ITERATIONS: u64 = 2_000_000;
/// Bitwarden's limits on Argon2id: iterations, memory (MiB) and parallelism.
const ARGON2_MAX_ITERATIONS: u64 = 10;
const ARGON2_MIN_MEMORY_MIB: u64 = 16;
const ARGON2_MAX_MEMORY_MIB: u64 = 1024;
const ARGON2_MAX_PARALLELISM: u64 = 16;

type HmacSha256 = Hmac<Sha256>;
type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;

/// Why writing or opening a password-protected export failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// The file password is empty (or only white space), which Bitwarden refuses too.
    #[error("the file password is empty")]
    EmptyPassword,
    /// The password does not open the file.
    #[error("wrong password: it does not decrypt the file's key-validation value")]
    WrongPassword,
    /// The file is not a password-protected Bitwarden export.
    #[error(
        "not a password-protected Bitwarden export (\"encrypted\" and \"passwordProtected\" must both be true)"
    )]
    NotProtected,
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// A field the format requires is missing or of the wrong type.
    #[error("the field \"{0}\" is missing or invalid")]
    MissingField(&'static str),
    /// The key derivation is unknown, out of bounds, or failed.
    #[error("key derivation: {0}")]
    Kdf(String),
    /// An encrypted value does not parse.
    #[error("the encrypted value \"{field}\" is damaged: {detail}")]
    Malformed {
        /// The JSON field holding the value.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The key-validation value opened but the data's MAC does not match: the data was
    /// altered or damaged.
    #[error("the encrypted data was altered or damaged: its MAC does not match")]
    Tampered,
    /// The operating system gave no random bytes.
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
    /// A primitive rejected its fixed-size input; cannot happen.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Unencrypted export
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct PlainFile<'a> {
    encrypted: bool,
    folders: Vec<FolderOut<'a>>,
    items: Vec<ItemOut<'a>>,
}

#[derive(Serialize)]
struct FolderOut<'a> {
    id: &'a str,
    name: &'a str,
}

/// One cipher, its keys in the order Bitwarden writes them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemOut<'a> {
    password_history: Option<Vec<HistoryOut<'a>>>,
    revision_date: Option<String>,
    creation_date: Option<String>,
    deleted_date: Option<String>,
    id: &'a str,
    organization_id: Option<&'a str>,
    folder_id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: u8,
    reprompt: u8,
    name: &'a str,
    notes: Option<&'a str>,
    favorite: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<LoginOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure_note: Option<SecureNoteOut>,
    collection_ids: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryOut<'a> {
    last_used_date: String,
    password: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldOut<'a> {
    name: &'a str,
    value: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    linked_id: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginOut<'a> {
    fido2_credentials: Vec<Value>,
    uris: Vec<UriOut<'a>>,
    username: Option<&'a str>,
    password: Option<&'a str>,
    totp: Option<&'a str>,
}

#[derive(Serialize)]
struct UriOut<'a> {
    #[serde(rename = "match")]
    match_strategy: Option<u8>,
    uri: &'a str,
}

#[derive(Serialize)]
struct SecureNoteOut {
    #[serde(rename = "type")]
    kind: u8,
}

/// Bitwarden's field types.
const FIELD_TEXT: u8 = 0;
const FIELD_HIDDEN: u8 = 1;
/// Bitwarden's cipher types.
const CIPHER_LOGIN: u8 = 1;
const CIPHER_SECURE_NOTE: u8 = 2;

/// Writes `items` as an unencrypted Bitwarden JSON export (`{"encrypted": false, "folders":
/// […], "items": […]}`), which Bitwarden and every importer of that format read.
///
/// Folders and items get fresh UUIDs. An item without a name is written under its first
/// URL's host, its username or "Untitled", since Bitwarden requires a name.
pub fn bitwarden_json(items: &[Item]) -> String {
    let mut folder_names: Vec<&str> = Vec::new();
    let mut folder_index: HashMap<&str, usize> = HashMap::new();
    for item in items {
        if !item.folder.is_empty() {
            folder_index.entry(item.folder.as_str()).or_insert_with(|| {
                folder_names.push(item.folder.as_str());
                folder_names.len() - 1
            });
        }
    }
    let folder_ids = fresh_ids(folder_names.len());
    let item_ids = fresh_ids(items.len());
    let folders = folder_names
        .iter()
        .zip(&folder_ids)
        .map(|(&name, id)| FolderOut {
            id: id.as_str(),
            name,
        })
        .collect();
    let items = items
        .iter()
        .zip(&item_ids)
        .map(|(item, id)| {
            let folder_id = folder_index
                .get(item.folder.as_str())
                .and_then(|&i| folder_ids.get(i))
                .map(String::as_str);
            item_out(item, id, folder_id)
        })
        .collect();
    let file = PlainFile {
        encrypted: false,
        folders,
        items,
    };
    // Serialising these plain structs cannot fail.
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

fn item_out<'a>(item: &'a Item, id: &'a str, folder_id: Option<&'a str>) -> ItemOut<'a> {
    let is_login = !item.username.is_empty()
        || !item.password.is_empty()
        || !item.totp.is_empty()
        || item.urls.iter().any(|u| !u.is_empty());
    // The vault keeps history oldest first; Bitwarden lists it newest first.
    let history: Vec<HistoryOut<'a>> = item
        .history
        .iter()
        .rev()
        .filter(|h| h.field == "password" && !h.value.is_empty())
        .map(|h| HistoryOut {
            last_used_date: format_timestamp(h.replaced),
            password: &h.value,
        })
        .collect();
    let date = (item.modified != 0).then(|| format_timestamp(item.modified));
    ItemOut {
        password_history: (!history.is_empty()).then_some(history),
        revision_date: date.clone(),
        creation_date: date,
        deleted_date: None,
        id,
        organization_id: None,
        folder_id,
        kind: if is_login {
            CIPHER_LOGIN
        } else {
            CIPHER_SECURE_NOTE
        },
        reprompt: 0,
        name: display_name(item),
        notes: non_empty(&item.notes),
        favorite: item.favorite,
        fields: item
            .fields
            .iter()
            .map(|f| FieldOut {
                name: &f.name,
                value: &f.value,
                kind: if f.hidden { FIELD_HIDDEN } else { FIELD_TEXT },
                linked_id: None,
            })
            .collect(),
        login: is_login.then(|| LoginOut {
            fido2_credentials: Vec::new(),
            uris: item
                .urls
                .iter()
                .filter(|u| !u.is_empty())
                .map(|u| UriOut {
                    match_strategy: None,
                    uri: u,
                })
                .collect(),
            username: non_empty(&item.username),
            password: non_empty(&item.password),
            totp: non_empty(&item.totp),
        }),
        secure_note: (!is_login).then_some(SecureNoteOut { kind: 0 }),
        collection_ids: None,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The item's name, or a stand-in for a nameless one.
fn display_name(item: &Item) -> &str {
    if !item.name.trim().is_empty() {
        item.name.as_str()
    } else if let Some(host) = item.urls.iter().find_map(|u| host_of(u.as_str())) {
        host
    } else if !item.username.is_empty() {
        item.username.as_str()
    } else {
        "Untitled"
    }
}

/// A Unix time as Bitwarden writes dates: `2024-05-06T07:08:09.000Z`.
pub(crate) fn format_timestamp(secs: i64) -> String {
    let secs = secs.clamp(MIN_TIME, MAX_TIME);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.000Z")
}

/// A random (version 4) UUID in its usual text form.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// `count` fresh UUIDs. Should the operating system have no randomness to give, they are
/// derived from a counter instead: ids only need to be unique within one file.
fn fresh_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let mut bytes = [0u8; 16];
            if getrandom::fill(&mut bytes).is_err() {
                let digest = <Sha256 as Digest>::digest((i as u64).to_le_bytes());
                for (b, d) in bytes.iter_mut().zip(digest.iter()) {
                    *b = *d;
                }
            }
            uuid_v4(bytes)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Password-protected export
// ---------------------------------------------------------------------------------------------

/// The key derivation of a protected export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kdf {
    /// kdfType 0.
    Pbkdf2 { iterations: u32 },
    /// kdfType 1.
    Argon2id {
        iterations: u32,
        memory_mib: u32,
        parallelism: u32,
    },
}

/// The random inputs of one protected export; tests fix them to get a reproducible file.
struct Randomness {
    salt: [u8; 16],
    validation: [u8; 16],
    validation_iv: [u8; 16],
    data_iv: [u8; 16],
}

impl Randomness {
    fn fresh() -> Result<Self, ExportError> {
        let mut r = Randomness {
            salt: [0; 16],
            validation: [0; 16],
            validation_iv: [0; 16],
            data_iv: [0; 16],
        };
        for buf in [
            &mut r.salt,
            &mut r.validation,
            &mut r.validation_iv,
            &mut r.data_iv,
        ] {
            getrandom::fill(buf).map_err(|e| ExportError::Random(e.to_string()))?;
        }
        Ok(r)
    }
}

/// The stretched key pair: AES-256 key and HMAC-SHA256 key.
struct Keys {
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProtectedFile {
    encrypted: bool,
    password_protected: bool,
    salt: String,
    kdf_type: u8,
    kdf_iterations: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    kdf_memory: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kdf_parallelism: Option<u32>,
    #[serde(rename = "encKeyValidation_DO_NOT_EDIT")]
    enc_key_validation: String,
    data: String,
}

/// Writes `items` as a password-protected Bitwarden JSON export (`"encrypted": true,
/// "passwordProtected": true`, PBKDF2-SHA256 with [`PBKDF2_ITERATIONS`] iterations), exactly
/// as Bitwarden's clients write it: Bitwarden opens it with `password`, as does
/// [`crate::import::import_protected`].
pub fn bitwarden_json_protected(items: &[Item], password: &str) -> Result<String, ExportError> {
    let random = Randomness::fresh()?;
    let plain = Zeroizing::new(bitwarden_json(items));
    protect(
        &plain,
        password,
        Kdf::Pbkdf2 {
            iterations: PBKDF2_ITERATIONS,
        },
        &random,
    )
}

/// Opens a password-protected Bitwarden JSON export (PBKDF2 or Argon2id, as Bitwarden writes
/// them), returning the unencrypted JSON export inside it.
///
/// A wrong password fails with [`ExportError::WrongPassword`]; altered data with
/// [`ExportError::Tampered`]. The MACs are compared in constant time.
pub fn open_bitwarden_json_protected(json: &str, password: &str) -> Result<String, ExportError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| ExportError::Json(e.to_string()))?;
    let obj = doc.as_object().ok_or(ExportError::NotProtected)?;
    open_protected(obj, password)
}

/// Seals `plaintext` (an unencrypted export) into a protected export file.
fn protect(
    plaintext: &str,
    password: &str,
    kdf: Kdf,
    random: &Randomness,
) -> Result<String, ExportError> {
    if password.trim().is_empty() {
        return Err(ExportError::EmptyPassword);
    }
    let salt = STANDARD.encode(random.salt);
    let keys = derive_keys(password, &salt, kdf)?;
    let (kdf_type, kdf_iterations, kdf_memory, kdf_parallelism) = match kdf {
        Kdf::Pbkdf2 { iterations } => (0, iterations, None, None),
        Kdf::Argon2id {
            iterations,
            memory_mib,
            parallelism,
        } => (1, iterations, Some(memory_mib), Some(parallelism)),
    };
    let validation = uuid_v4(random.validation);
    let file = ProtectedFile {
        encrypted: true,
        password_protected: true,
        salt,
        kdf_type,
        kdf_iterations,
        kdf_memory,
        kdf_parallelism,
        enc_key_validation: seal(&keys, &random.validation_iv, validation.as_bytes())?,
        data: seal(&keys, &random.data_iv, plaintext.as_bytes())?,
    };
    serde_json::to_string_pretty(&file).map_err(|e| ExportError::Json(e.to_string()))
}

/// Opens a parsed protected export: the plaintext unencrypted export inside it.
pub(crate) fn open_protected(
    doc: &Map<String, Value>,
    password: &str,
) -> Result<String, ExportError> {
    let flag = |key: &str| doc.get(key).and_then(Value::as_bool) == Some(true);
    if !(flag("encrypted") && flag("passwordProtected")) {
        return Err(ExportError::NotProtected);
    }
    let salt = string_field(doc, "salt")?;
    let kdf = kdf_of(doc)?;
    let validation = string_field(doc, "encKeyValidation_DO_NOT_EDIT")?;
    let data = string_field(doc, "data")?;
    if password.trim().is_empty() {
        return Err(ExportError::EmptyPassword);
    }
    let keys = derive_keys(password, salt, kdf)?;
    // The validation value's MAC checks the password before the (large) data is touched.
    unseal(&keys, Sealed::Validation, validation)?;
    let plain = unseal(&keys, Sealed::Data, data)?;
    String::from_utf8(plain).map_err(|_| ExportError::Malformed {
        field: "data",
        detail: "the decrypted export is not UTF-8 text".to_owned(),
    })
}

fn string_field<'a>(
    doc: &'a Map<String, Value>,
    key: &'static str,
) -> Result<&'a str, ExportError> {
    doc.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(ExportError::MissingField(key))
}

/// The file's key derivation, within Bitwarden's own bounds.
fn kdf_of(doc: &Map<String, Value>) -> Result<Kdf, ExportError> {
    let number = |key: &'static str| {
        doc.get(key)
            .and_then(Value::as_u64)
            .ok_or(ExportError::MissingField(key))
    };
    let iterations = number("kdfIterations")?;
    let small = |n: u64| u32::try_from(n).map_err(|_| ExportError::Internal("bounded value"));
    match number("kdfType")? {
        0 => {
            if !(1..=PBKDF2_MAX_ITERATIONS).contains(&iterations) {
                return Err(ExportError::Kdf(format!(
                    "PBKDF2 with {iterations} iterations (accepted: 1 to {PBKDF2_MAX_ITERATIONS})"
                )));
            }
            Ok(Kdf::Pbkdf2 {
                iterations: small(iterations)?,
            })
        }
        1 => {
            let memory = number("kdfMemory")?;
            let parallelism = number("kdfParallelism")?;
            if !(1..=ARGON2_MAX_ITERATIONS).contains(&iterations)
                || !(ARGON2_MIN_MEMORY_MIB..=ARGON2_MAX_MEMORY_MIB).contains(&memory)
                || !(1..=ARGON2_MAX_PARALLELISM).contains(&parallelism)
            {
                return Err(ExportError::Kdf(format!(
                    "Argon2id with t={iterations}, m={memory} MiB, p={parallelism} is outside Bitwarden's limits"
                )));
            }
            Ok(Kdf::Argon2id {
                iterations: small(iterations)?,
                memory_mib: small(memory)?,
                parallelism: small(parallelism)?,
            })
        }
        other => Err(ExportError::Kdf(format!("unknown kdfType {other}"))),
    }
}

/// The password's key, stretched into the encryption and MAC keys (see the module's notes).
fn derive_keys(password: &str, salt: &str, kdf: Kdf) -> Result<Keys, ExportError> {
    let mut key = Zeroizing::new([0u8; 32]);
    match kdf {
        Kdf::Pbkdf2 { iterations } => {
            pbkdf2::pbkdf2_hmac::<Sha256>(
                password.as_bytes(),
                salt.as_bytes(),
                iterations,
                key.as_mut_slice(),
            );
        }
        Kdf::Argon2id {
            iterations,
            memory_mib,
            parallelism,
        } => {
            let salt_hash = <Sha256 as Digest>::digest(salt.as_bytes());
            let params = argon2::Params::new(
                memory_mib.saturating_mul(1024),
                iterations,
                parallelism,
                Some(32),
            )
            .map_err(|e| ExportError::Kdf(e.to_string()))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(password.as_bytes(), &salt_hash, key.as_mut_slice())
                .map_err(|e| ExportError::Kdf(e.to_string()))?;
        }
    }
    let hkdf = Hkdf::<Sha256>::from_prk(key.as_slice())
        .map_err(|_| ExportError::Internal("HKDF pseudo-random key length"))?;
    let mut keys = Keys {
        enc: Zeroizing::new([0; 32]),
        mac: Zeroizing::new([0; 32]),
    };
    hkdf.expand(b"enc", keys.enc.as_mut_slice())
        .map_err(|_| ExportError::Internal("HKDF output length"))?;
    hkdf.expand(b"mac", keys.mac.as_mut_slice())
        .map_err(|_| ExportError::Internal("HKDF output length"))?;
    Ok(keys)
}

/// An EncString of type 2: `2.iv|ciphertext|mac`, AES-256-CBC then HMAC-SHA256 over iv‖ct.
fn seal(keys: &Keys, iv: &[u8; 16], plaintext: &[u8]) -> Result<String, ExportError> {
    let ciphertext = Aes256CbcEnc::new_from_slices(keys.enc.as_slice(), iv)
        .map_err(|_| ExportError::Internal("AES key or IV length"))?
        .encrypt_padded_vec::<Pkcs7>(plaintext);
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(keys.mac.as_slice())
        .map_err(|_| ExportError::Internal("HMAC key length"))?;
    mac.update(iv);
    mac.update(&ciphertext);
    let tag = mac.finalize().into_bytes();
    Ok(format!(
        "2.{}|{}|{}",
        STANDARD.encode(iv),
        STANDARD.encode(ciphertext),
        STANDARD.encode(tag)
    ))
}

/// Which encrypted value of a protected export is being opened.
#[derive(Debug, Clone, Copy)]
enum Sealed {
    Validation,
    Data,
}

impl Sealed {
    fn field(self) -> &'static str {
        match self {
            Sealed::Validation => "encKeyValidation_DO_NOT_EDIT",
            Sealed::Data => "data",
        }
    }

    /// What a MAC mismatch means: on the validation value, a wrong password; once that
    /// opened, altered data.
    fn mac_error(self) -> ExportError {
        match self {
            Sealed::Validation => ExportError::WrongPassword,
            Sealed::Data => ExportError::Tampered,
        }
    }
}

/// Verifies (in constant time) and decrypts an EncString of type 2.
fn unseal(keys: &Keys, which: Sealed, text: &str) -> Result<Vec<u8>, ExportError> {
    let malformed = |detail: &str| ExportError::Malformed {
        field: which.field(),
        detail: detail.to_owned(),
    };
    let Some(body) = text.trim().strip_prefix("2.") else {
        return Err(malformed(
            "not an AES-256-CBC + HMAC-SHA256 value (EncString type 2)",
        ));
    };
    let mut parts = body.split('|');
    let (Some(iv), Some(ciphertext), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three parts, iv|ciphertext|mac"));
    };
    let decode = |part: &str| {
        STANDARD
            .decode(part)
            .map_err(|_| malformed("a part is not base64"))
    };
    let (iv, ciphertext, tag) = (decode(iv)?, decode(ciphertext)?, decode(tag)?);
    if iv.len() != 16 || tag.len() != 32 || ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(malformed("a part has the wrong length"));
    }
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(keys.mac.as_slice())
        .map_err(|_| ExportError::Internal("HMAC key length"))?;
    mac.update(&iv);
    mac.update(&ciphertext);
    if mac.verify_slice(&tag).is_err() {
        return Err(which.mac_error());
    }
    Aes256CbcDec::new_from_slices(keys.enc.as_slice(), &iv)
        .map_err(|_| ExportError::Internal("AES key or IV length"))?
        .decrypt_padded_vec::<Pkcs7>(&ciphertext)
        .map_err(|_| malformed("bad padding after decryption"))
}

/// A protected export with a cheap key derivation, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn protected_with_iterations(items: &[Item], password: &str, iterations: u32) -> String {
    let random = Randomness::fresh().unwrap();
    protect(
        &bitwarden_json(items),
        password,
        Kdf::Pbkdf2 { iterations },
        &random,
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{Format, import, import_protected};
    use crate::item::{Field, HistoryEntry};

    const PASSWORD: &str = "correct horse Zürich-пароль";
    const PLAINTEXT: &str = r#"{"encrypted":false,"folders":[],"items":[]}"#;

    /// Fixed random inputs: salt 00 01 … 0f, validation UUID bytes 0x33, ivs 0x11 and 0x22.
    fn fixed() -> Randomness {
        let mut salt = [0u8; 16];
        for (i, b) in salt.iter_mut().enumerate() {
            *b = i as u8;
        }
        Randomness {
            salt,
            validation: [0x33; 16],
            validation_iv: [0x11; 16],
            data_iv: [0x22; 16],
        }
    }

    fn sample_items() -> Vec<Item> {
        let mut github = Item {
            name: "GitHub".into(),
            username: "alice".into(),
            password: "p,w\"\nx".into(),
            urls: vec!["https://github.com/login".into()],
            ..Item::default()
        };
        github.totp = "otpauth://totp/GitHub:alice?secret=JBSWY3DPEHPK3PXP".into();
        github.folder = "Work/Dev".into();
        github.favorite = true;
        github.modified = 1_714_979_289;
        github.fields = vec![
            Field {
                name: "PIN".into(),
                value: "4711".into(),
                hidden: true,
            },
            Field {
                name: "Customer number".into(),
                value: "CH-99".into(),
                hidden: false,
            },
        ];
        github.history = vec![
            HistoryEntry {
                field: "password".into(),
                value: "old-1".into(),
                replaced: 1_700_000_000,
            },
            HistoryEntry {
                field: "password".into(),
                value: "old-2".into(),
                replaced: 1_709_287_200,
            },
        ];
        let note = Item {
            name: "Wi-Fi Zürich".into(),
            notes: "SSID: Café\nKey: пароль".into(),
            folder: "Work/Dev".into(),
            ..Item::default()
        };
        let other = Item {
            name: "Bank".into(),
            password: "пароль".into(),
            folder: "Finance".into(),
            ..Item::default()
        };
        vec![github, note, other]
    }

    /// Known answers from an independent implementation of the construction described at
    /// the top of this module (Python's hashlib and hmac, and the `cryptography` package).
    #[test]
    fn matches_independent_pbkdf2_vectors() {
        let file = protect(
            PLAINTEXT,
            PASSWORD,
            Kdf::Pbkdf2 { iterations: 1000 },
            &fixed(),
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&file).unwrap();
        assert_eq!(doc["encrypted"], true);
        assert_eq!(doc["passwordProtected"], true);
        assert_eq!(doc["salt"], "AAECAwQFBgcICQoLDA0ODw==");
        assert_eq!(doc["kdfType"], 0);
        assert_eq!(doc["kdfIterations"], 1000);
        assert!(doc.get("kdfMemory").is_none());
        assert_eq!(
            doc["encKeyValidation_DO_NOT_EDIT"],
            "2.EREREREREREREREREREREQ==|QcJK+R1dysIbMbMCCVbGyL1/BPZ2foRs4jDIqiUyXyEZzJM0Vd9FAVRELu3whVcj|qJ6tLvXXkTs4FM9qHwncqeYgplcuW5YqVZo9BhZl4Ag="
        );
        assert_eq!(
            doc["data"],
            "2.IiIiIiIiIiIiIiIiIiIiIg==|eMjgHLjx4CaPIwUvOyedoPGS0tjVtKayX+WuEjAd24ldcTdmpoPGKbqDRg7Z7U42|aDI1Iz0OrdbFWFvVT9aERaXGcXE/DH+M+QJJedSp1mw="
        );
        assert_eq!(
            open_bitwarden_json_protected(&file, PASSWORD).unwrap(),
            PLAINTEXT
        );
    }

    #[test]
    fn matches_independent_argon2id_vectors() {
        let kdf = Kdf::Argon2id {
            iterations: 2,
            memory_mib: 16,
            parallelism: 1,
        };
        let file = protect(PLAINTEXT, PASSWORD, kdf, &fixed()).unwrap();
        let doc: Value = serde_json::from_str(&file).unwrap();
        assert_eq!(doc["kdfType"], 1);
        assert_eq!(doc["kdfIterations"], 2);
        assert_eq!(doc["kdfMemory"], 16);
        assert_eq!(doc["kdfParallelism"], 1);
        assert_eq!(
            doc["encKeyValidation_DO_NOT_EDIT"],
            "2.EREREREREREREREREREREQ==|lvaIQC0/wS991mPI40MTg43h6jPZKKJ6gZxoPG+mZCpJMcKIHBBA64u9eyKKGHrV|zr6pvFlZiBZKBmXeojWgimhEVIyD74kYcYi72TT9Aww="
        );
        assert_eq!(
            doc["data"],
            "2.IiIiIiIiIiIiIiIiIiIiIg==|nyi17FiD+0YaT0TWwz5RSfl+lyIMeowQ48V3huE1dTgY80fBazSWHFhIbzZr3zfb|P1qCSD7dLSRBsqt/Whm+Gi4+Wm/V4NCSc5JVxz6hr+I="
        );
        assert_eq!(
            open_bitwarden_json_protected(&file, PASSWORD).unwrap(),
            PLAINTEXT
        );
    }

    #[test]
    fn the_real_export_opens_with_its_password_only() {
        let items = sample_items();
        let file = bitwarden_json_protected(&items, PASSWORD).unwrap();
        let doc: Value = serde_json::from_str(&file).unwrap();
        assert_eq!(doc["kdfType"], 0);
        assert_eq!(doc["kdfIterations"], PBKDF2_ITERATIONS);
        let salt = doc["salt"].as_str().unwrap();
        let salt = base64::Engine::decode(&STANDARD, salt).unwrap();
        assert_eq!(salt.len(), 16);
        // The decrypted payload is the unencrypted export, which imports back unchanged.
        assert_eq!(import_protected(file.as_bytes(), PASSWORD).unwrap(), items);
    }

    #[test]
    fn a_wrong_password_or_altered_data_fails_clearly() {
        let file = protected_with_iterations(&sample_items(), PASSWORD, 1000);
        let err = open_bitwarden_json_protected(&file, "correct horse").unwrap_err();
        assert_eq!(err, ExportError::WrongPassword);
        assert!(err.to_string().starts_with("wrong password"));
        assert_eq!(
            open_bitwarden_json_protected(&file, " ").unwrap_err(),
            ExportError::EmptyPassword
        );

        // Flip one base64 character of the data's ciphertext.
        let mut doc: Value = serde_json::from_str(&file).unwrap();
        let data = doc["data"].as_str().unwrap().to_owned();
        let (head, rest) = data.split_once('|').unwrap();
        let flipped = if rest.starts_with('A') { 'B' } else { 'A' };
        doc["data"] = Value::from(format!("{head}|{flipped}{}", &rest[1..]));
        let altered = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            open_bitwarden_json_protected(&altered, PASSWORD).unwrap_err(),
            ExportError::Tampered
        );

        doc["data"] = Value::from("2.not|base64|!");
        let broken = serde_json::to_string(&doc).unwrap();
        assert!(matches!(
            open_bitwarden_json_protected(&broken, PASSWORD).unwrap_err(),
            ExportError::Malformed { field: "data", .. }
        ));
    }

    #[test]
    fn hostile_parameters_are_refused_before_any_work() {
        let file = protected_with_iterations(&sample_items(), PASSWORD, 1000);
        let mut doc: Value = serde_json::from_str(&file).unwrap();
        doc["kdfIterations"] = Value::from(u64::MAX);
        let slow = serde_json::to_string(&doc).unwrap();
        assert!(matches!(
            open_bitwarden_json_protected(&slow, PASSWORD),
            Err(ExportError::Kdf(_))
        ));
        doc["kdfType"] = Value::from(1);
        doc["kdfIterations"] = Value::from(3);
        doc["kdfMemory"] = Value::from(1_000_000);
        doc["kdfParallelism"] = Value::from(4);
        let greedy = serde_json::to_string(&doc).unwrap();
        assert!(matches!(
            open_bitwarden_json_protected(&greedy, PASSWORD),
            Err(ExportError::Kdf(_))
        ));
        doc["kdfType"] = Value::from(7);
        let unknown = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            open_bitwarden_json_protected(&unknown, PASSWORD).unwrap_err(),
            ExportError::Kdf("unknown kdfType 7".into())
        );
        assert_eq!(
            open_bitwarden_json_protected(PLAINTEXT, PASSWORD).unwrap_err(),
            ExportError::NotProtected
        );
        assert!(matches!(
            open_bitwarden_json_protected("{", PASSWORD),
            Err(ExportError::Json(_))
        ));
        assert_eq!(
            bitwarden_json_protected(&[], "").unwrap_err(),
            ExportError::EmptyPassword
        );
    }

    #[test]
    fn plain_export_has_bitwarden_shape() {
        let items = sample_items();
        let json = bitwarden_json(&items);
        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["encrypted"], false);

        let folders = doc["folders"].as_array().unwrap();
        let folder_names: Vec<&str> = folders
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(folder_names, ["Work/Dev", "Finance"]);
        for id in folders.iter().map(|f| f["id"].as_str().unwrap()) {
            assert_eq!(id.len(), 36);
            assert_eq!(id.as_bytes()[14], b'4', "{id} is not a version 4 UUID");
        }

        let out = doc["items"].as_array().unwrap();
        let github = &out[0];
        assert_eq!(github["type"], 1);
        assert_eq!(github["name"], "GitHub");
        assert_eq!(github["favorite"], true);
        assert_eq!(github["folderId"], folders[0]["id"]);
        assert_eq!(github["login"]["username"], "alice");
        assert_eq!(github["login"]["password"], "p,w\"\nx");
        assert_eq!(
            github["login"]["uris"][0]["uri"],
            "https://github.com/login"
        );
        assert_eq!(github["login"]["totp"], items[0].totp.as_str());
        assert_eq!(github["fields"][0]["type"], 1);
        assert_eq!(github["fields"][1]["type"], 0);
        assert_eq!(github["revisionDate"], "2024-05-06T07:08:09.000Z");
        // Newest first, as Bitwarden lists it.
        assert_eq!(github["passwordHistory"][0]["password"], "old-2");
        assert_eq!(
            github["passwordHistory"][0]["lastUsedDate"],
            "2024-03-01T10:00:00.000Z"
        );

        let note = &out[1];
        assert_eq!(note["type"], 2);
        assert_eq!(note["secureNote"]["type"], 0);
        assert!(note.get("login").is_none());
        assert_eq!(note["folderId"], folders[0]["id"]);
        assert_eq!(out[2]["folderId"], folders[1]["id"]);

        assert_eq!(
            import(Format::BitwardenJson, json.as_bytes()).unwrap(),
            items
        );
    }

    #[test]
    fn nameless_items_get_a_name() {
        let by_url = Item {
            urls: vec!["https://mail.example.org/inbox".into()],
            ..Item::default()
        };
        let by_user = Item {
            username: "ann".into(),
            ..Item::default()
        };
        let json = bitwarden_json(&[by_url, by_user, Item::default()]);
        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["items"][0]["name"], "mail.example.org");
        assert_eq!(doc["items"][1]["name"], "ann");
        assert_eq!(doc["items"][2]["name"], "Untitled");
    }

    #[test]
    fn timestamps_and_uuids_format() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(1_709_210_096), "2024-02-29T12:34:56.000Z");
        assert_eq!(format_timestamp(i64::MIN), "0001-01-01T00:00:00.000Z");
        assert_eq!(format_timestamp(i64::MAX), "9999-12-31T23:59:59.000Z");
        assert_eq!(uuid_v4([0x33; 16]), "33333333-3333-4333-b333-333333333333");
        let ids = fresh_ids(3);
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    }
}
