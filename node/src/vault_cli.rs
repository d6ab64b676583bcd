//! `nx1 vault …`: the password vault's command line. A device keeps its vault in one file
//! (clear header + sealed state) and syncs with the nodes it names; every change is saved on
//! the device first, so commands work offline and sync when a node is reachable.

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use nx1_vault::client::{Header, Prepared, Vault, VaultError};
use nx1_vault::crypto::{KdfParams, MasterKeys};
use nx1_vault::ids::{AccountId, ItemId};
use nx1_vault::item::Item;
use nx1_vault::{generate, totp, wire};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

mod serve;

/// Options every vault command takes.
#[derive(Args, Debug, Clone)]
pub struct VaultOpts {
    /// Where this device keeps its vaults [default: $XDG_DATA_HOME/nx1/vault].
    #[arg(long, global = true, env = "NX1_VAULT_DIR", value_name = "DIR")]
    pub vault_dir: Option<PathBuf>,
    /// The account name [default: the only account on this device].
    #[arg(long, global = true, env = "NX1_VAULT_ACCOUNT", value_name = "NAME")]
    pub account: Option<String>,
    /// Read the master password from this file descriptor (first line) instead of a prompt.
    #[arg(long, global = true, value_name = "FD")]
    pub password_fd: Option<u32>,
    /// Do not contact any node: work on this device only (changes wait for the next sync).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Pay for sync beyond the free tier with this credits key: an nx1 `identity.key` (the
    /// account's own, or a device key the account added with `nx1 credits device add`).
    #[arg(long, global = true, env = "NX1_PAY_WITH", value_name = "KEY_FILE")]
    pub pay_with: Option<PathBuf>,
    /// The account the key pays for, when it is a device key [default: the key's own].
    #[arg(long, global = true, env = "NX1_PAY_FOR", value_name = "ACCOUNT")]
    pub pay_for: Option<String>,
    /// The most credits this device pays for one sync write without asking you again.
    #[arg(
        long,
        global = true,
        env = "NX1_MAX_PRICE",
        value_name = "CREDITS",
        default_value_t = 1000
    )]
    pub max_price: u64,
}

/// Pays for sync beyond the free tier: signs spends of a credits account.
struct Payer {
    key: ed25519_dalek::SigningKey,
    account: String,
    /// The most it pays for one write.
    max_price: u64,
    /// Payments made in this run, by memo (one change is paid for once): amount and header.
    made: std::cell::RefCell<std::collections::HashMap<String, (u64, String)>>,
}

impl Payer {
    fn from_opts(opts: &VaultOpts) -> anyhow::Result<Option<Payer>> {
        use base64::Engine as _;
        let Some(path) = &opts.pay_with else {
            return Ok(None);
        };
        let key = crate::identity::NodeIdentity::load(path)
            .with_context(|| format!("the credits key {}", path.display()))?
            .signing_key();
        let own = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
        Ok(Some(Payer {
            max_price: opts.max_price,
            account: opts.pay_for.clone().unwrap_or(own),
            key,
            made: Default::default(),
        }))
    }

    /// The payment header for `memo` of at least `price` credits: one made before, or a new
    /// signed spend.
    fn pay(&self, memo: &str, price: u64) -> String {
        use base64::Engine as _;
        if let Some((amount, header)) = self.made.borrow().get(memo)
            && *amount >= price
        {
            return header.clone();
        }
        let entry = crate::ledger::Entry::Spend(crate::ledger::Spend {
            v: 1,
            id: crate::ledger::random_id(),
            account: self.account.clone(),
            signer: base64::engine::general_purpose::STANDARD
                .encode(self.key.verifying_key().as_bytes()),
            service: "vault_sync".into(),
            amount: price,
            memo: memo.to_owned(),
            at: now(),
        });
        let signed = crate::ledger::SignedEntry::sign(&entry, &self.key);
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&signed).expect("entries serialize"));
        eprintln!(
            "paying {price} credits for this sync from account {}",
            self.account
        );
        self.made
            .borrow_mut()
            .insert(memo.to_owned(), (price, header.clone()));
        header
    }

    /// The payment made for `memo` in this run, if any.
    fn made(&self, memo: &str) -> Option<String> {
        self.made.borrow().get(memo).map(|(_, h)| h.clone())
    }
}

/// With a credits account to sign with, confirms to each replica what it holds of this vault
/// today: storage duty earns on these confirmations. Best effort: a replica that is not
/// reached, or holds less than this device verified, is passed over.
fn confirm_holdings(o: &Open, urls: &[String]) {
    use base64::Engine as _;
    let Some(payer) = &o.payer else { return };
    let own =
        base64::engine::general_purpose::STANDARD.encode(payer.key.verifying_key().as_bytes());
    if payer.account != own {
        // Holdings are confirmed by the account's own key, not a device key.
        return;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    for url in urls {
        let node = agent
            .get(format!("{url}/v1/credits/node"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["node_id"].as_str().map(str::to_owned));
        let Some(node) = node else { continue };
        let holding = crate::ledger::Holding {
            v: 1,
            account: payer.account.clone(),
            node,
            vault: o.vault.header().account.to_string(),
            bytes: o.vault.stored_bytes(),
            day: now().div_euclid(86_400),
        };
        let signed = holding.sign(&payer.key);
        match agent
            .post(format!("{url}/v1/credits/held"))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(&signed).expect("holdings serialize"))
        {
            Ok(r) if r.status().is_success() => {}
            Ok(mut r) => eprintln!(
                "warning: {url}: holding not confirmed: {}",
                r.body_mut().read_to_string().unwrap_or_default()
            ),
            Err(e) => eprintln!("warning: {url}: holding not confirmed: {e}"),
        }
    }
}

/// Sends a sync write (`/push`, `/catchup`) for change `seq`; when the node wants credits
/// (402 with a price) and a payer is set, pays and sends it again.
fn paid_write(
    r: &Remote,
    path: &str,
    body: Vec<u8>,
    account: &AccountId,
    seq: u64,
    payer: Option<&Payer>,
) -> anyhow::Result<Reply> {
    let memo = crate::vault::payment_memo(&account.to_string(), seq);
    let mut payment = payer.and_then(|p| p.made(&memo));
    let (mut paid, mut attempts) = (0, 0);
    loop {
        let reply = r.call_with("POST", path, Some(body.clone()), payment.as_deref())?;
        let price = match (&reply, payer) {
            (Reply::Status(402, b), Some(_)) => serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .and_then(|v| v["price"].as_u64()),
            _ => None,
        };
        match (price, payer) {
            (Some(price), Some(p)) if price > p.max_price => bail!(
                "{}: the node asks {price} credits for this sync, more than --max-price {}; not paid",
                r.base,
                p.max_price
            ),
            // One payment, and one more if the node then asks more (its count moved): a node
            // cannot make the device sign again and again.
            (Some(price), Some(p)) if price > paid && attempts < 2 => {
                paid = price;
                attempts += 1;
                payment = Some(p.pay(&memo, price));
            }
            _ => return Ok(reply),
        }
    }
}

/// A refusal's text, with how to pay when the node wants credits.
fn refusal(status: u16, body: &[u8], payer: Option<&Payer>) -> String {
    let text = error_text(status, body);
    if status == 402 && payer.is_none() {
        format!("{text} (pay with a credits account: --pay-with KEY_FILE)")
    } else {
        text
    }
}

/// `nx1 vault` subcommands.
#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Create an account on a node and this device.
    Register {
        /// The node's HTTP API, e.g. http://10.8.0.1:7870 (repeat for more nodes).
        #[arg(long = "server", value_name = "URL", required = true)]
        servers: Vec<String>,
        /// Argon2id memory in KiB [default: 65536].
        #[arg(long, value_name = "KIB")]
        kdf_memory: Option<u32>,
        /// Argon2id passes [default: 3].
        #[arg(long, value_name = "N")]
        kdf_passes: Option<u32>,
        /// Argon2id lanes [default: 4].
        #[arg(long, value_name = "N")]
        kdf_lanes: Option<u32>,
    },
    /// Check the master password and sync; on a new device, set the account up from a node.
    Unlock {
        /// A node that holds the account (needed the first time on a device).
        #[arg(long = "server", value_name = "URL")]
        servers: Vec<String>,
    },
    /// Add an item.
    Add {
        /// Its name.
        name: String,
        #[command(flatten)]
        fields: ItemFields,
    },
    /// Show an item (the password masked unless --show).
    Get {
        /// Name or id (or an id prefix of at least 6 digits).
        item: String,
        /// Print only this field: name, username, password, url, notes, totp, folder, or a
        /// custom field's name.
        #[arg(long, value_name = "FIELD")]
        field: Option<String>,
        /// Show the password and hidden fields.
        #[arg(long)]
        show: bool,
        /// Print the whole item as JSON (passwords included).
        #[arg(long)]
        json: bool,
    },
    /// List items, or those matching a search.
    List {
        /// Words to look for in names, usernames, URLs and folders.
        query: Option<String>,
        /// Print JSON (without passwords).
        #[arg(long)]
        json: bool,
    },
    /// Change an item (the old password, notes and TOTP secret go to its history).
    Edit {
        /// Name or id.
        item: String,
        /// New name.
        #[arg(long, value_name = "NAME")]
        rename: Option<String>,
        #[command(flatten)]
        fields: ItemFields,
    },
    /// Delete an item.
    Rm {
        /// Name or id.
        item: String,
    },
    /// Send this device's changes and fetch everyone else's.
    Sync,
    /// Make a random password or passphrase (no vault needed).
    Generate {
        /// Characters in a password.
        #[arg(long, default_value_t = 20)]
        length: usize,
        /// Letters and digits only.
        #[arg(long)]
        no_symbols: bool,
        /// Make a passphrase of this many words instead.
        #[arg(long, value_name = "N")]
        words: Option<usize>,
        /// Between the words of a passphrase.
        #[arg(long, default_value = "-")]
        separator: String,
    },
    /// The current TOTP code of an item.
    Totp {
        /// Name or id.
        item: String,
    },
    /// Add every entry of another password manager's export.
    Import {
        /// The exported file.
        file: PathBuf,
        /// bitwarden-json, bitwarden-csv, keepass-xml, chrome-csv, firefox-csv or 1pux
        /// [default: recognised from the file].
        #[arg(long)]
        format: Option<String>,
        /// Read a password-protected export's password from this file descriptor.
        #[arg(long, value_name = "FD")]
        file_password_fd: Option<u32>,
    },
    /// Answer JSON requests on stdin, one per line, with one unlocked vault: how the desktop
    /// app uses the vault (passwords travel on stdin; see `node/src/vault_cli/serve.rs`).
    Serve,
    /// Write every item to a Bitwarden JSON file (which Bitwarden and most managers import).
    Export {
        /// The file to write (created owner-only).
        file: PathBuf,
        /// Protect it with a password (Bitwarden's password-protected format).
        #[arg(long)]
        encrypt: bool,
        /// Read that password from this file descriptor instead of asking.
        #[arg(long, value_name = "FD")]
        file_password_fd: Option<u32>,
    },
}

/// Fields of an item that `add` and `edit` set.
#[derive(Args, Debug, Default)]
pub struct ItemFields {
    /// Login name.
    #[arg(long)]
    username: Option<String>,
    /// A site (repeat for more; on edit, replaces the list).
    #[arg(long = "url", value_name = "URL")]
    urls: Vec<String>,
    /// Notes.
    #[arg(long)]
    notes: Option<String>,
    /// TOTP secret (base32 or otpauth:// URI).
    #[arg(long, value_name = "SECRET")]
    totp: Option<String>,
    /// Folder ("Work/Cloud").
    #[arg(long)]
    folder: Option<String>,
    /// A custom field NAME=VALUE (repeat for more).
    #[arg(long = "field", value_name = "NAME=VALUE")]
    custom: Vec<String>,
    /// A hidden custom field NAME=VALUE.
    #[arg(long = "hidden-field", value_name = "NAME=VALUE")]
    hidden: Vec<String>,
    /// Generate the password (this many characters).
    #[arg(long, value_name = "LENGTH", num_args = 0..=1, default_missing_value = "20")]
    generate: Option<usize>,
    /// Read the item's password from this file descriptor (first line).
    #[arg(long, value_name = "FD")]
    item_password_fd: Option<u32>,
    /// The item's password itself (from the app's session, never from the command line).
    #[arg(skip)]
    password: Option<Zeroizing<String>>,
    /// Ask for the item's password (no echo).
    #[arg(long)]
    ask_password: bool,
}

/// The file a device keeps an account in.
#[derive(Serialize, Deserialize)]
struct VaultFile {
    header: Header,
    servers: Vec<String>,
    #[serde(with = "b64")]
    sealed: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn vault_dir(opts: &VaultOpts) -> anyhow::Result<PathBuf> {
    if let Some(d) = &opts.vault_dir {
        return Ok(d.clone());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("nx1/vault"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("set HOME or --vault-dir"))?;
    Ok(PathBuf::from(home).join(".local/share/nx1/vault"))
}

/// Reads the first line of a file descriptor (through /proc, so no unsafe fd juggling).
fn read_fd(fd: u32) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(format!("/proc/self/fd/{fd}"))
            .with_context(|| format!("reading file descriptor {fd}"))?,
    );
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or_default().to_owned(),
    ))
}

fn prompt(label: &str) -> anyhow::Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        bail!("{label}: no terminal to ask on; pass it with a --…-fd option");
    }
    Ok(Zeroizing::new(rpassword::prompt_password(format!(
        "{label}: "
    ))?))
}

fn master_password(opts: &VaultOpts, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let pw = match opts.password_fd {
        Some(fd) => read_fd(fd)?,
        None => {
            let pw = prompt("Master password")?;
            if confirm && *prompt("Again")? != *pw {
                bail!("the passwords differ");
            }
            pw
        }
    };
    if pw.is_empty() {
        bail!("the master password is empty");
    }
    Ok(pw)
}

struct Device {
    path: PathBuf,
    file: VaultFile,
}

impl Device {
    fn path_for(dir: &Path, account: &AccountId) -> PathBuf {
        dir.join(format!("{account}.json"))
    }

    /// The account's file on this device, if it has one.
    fn find(opts: &VaultOpts) -> anyhow::Result<Option<Device>> {
        let dir = vault_dir(opts)?;
        let path = match &opts.account {
            Some(name) => Self::path_for(&dir, &AccountId::from_name(name)),
            None => {
                let mut found = Vec::new();
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let p = e.path();
                        if p.extension().is_some_and(|x| x == "json") {
                            found.push(p);
                        }
                    }
                }
                match found.len() {
                    0 => return Ok(None),
                    1 => found.remove(0),
                    _ => bail!(
                        "{} accounts on this device ({}): say which with --account",
                        found.len(),
                        dir.display()
                    ),
                }
            }
        };
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: VaultFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a vault file", path.display()))?;
        Ok(Some(Device { path, file }))
    }

    /// Adds the nodes it does not know yet to those this device syncs with.
    fn add_servers(&mut self, servers: Vec<String>) {
        for s in servers {
            if !self.file.servers.contains(&s) {
                self.file.servers.push(s);
            }
        }
    }

    fn save(&mut self, vault: &Vault) -> anyhow::Result<()> {
        let (header, sealed) = vault.save()?;
        self.file.header = header;
        self.file.sealed = sealed;
        write_private(&self.path, &serde_json::to_vec_pretty(&self.file)?)
    }
}

/// Writes a file only its owner can read, atomically (temporary file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// A node's vault API, over HTTP.
struct Remote {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// What a call to a node came back with.
enum Reply {
    Ok(Vec<u8>),
    Status(u16, Vec<u8>),
}

impl Remote {
    fn new(base: &str) -> Remote {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        Remote {
            base: base.trim_end_matches('/').to_owned(),
            agent,
            token: None,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Reply> {
        self.call_with(method, path, body, None)
    }

    /// A call with a payment header (a signed spend) when one is given.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        payment: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}/v1/vault{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("content-type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                if let Some(p) = payment {
                    r = r.header(crate::vault::PAYMENT_HEADER, p);
                }
                r.send(body.unwrap_or_default())
            }
        };
        let mut resp = resp.map_err(|e| Unreachable(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(512 << 20)
            .read_to_vec()
            .with_context(|| format!("reading the answer of {}", self.base))?;
        Ok(if (200..300).contains(&status) {
            Reply::Ok(bytes)
        } else {
            Reply::Status(status, bytes)
        })
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        match self.call(method, path, body)? {
            Reply::Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} sent an invalid answer to {path}", self.base)),
            Reply::Status(s, b) => {
                Err(HttpStatus(s, format!("{}: {}", self.base, error_text(s, &b))).into())
            }
        }
    }

    fn prelogin(&self, account: &AccountId) -> anyhow::Result<wire::Prelogin> {
        self.json("GET", &format!("/prelogin?account={account}"), None)
    }

    /// Logs in: derives the login key for the node's KDF parameters (refusing weaker ones than
    /// this device pinned; reusing `known` when they match) and answers a challenge.
    fn login(
        &mut self,
        name: &str,
        password: &str,
        pinned: Option<(&[u8], &KdfParams)>,
        known: Option<&MasterKeys>,
    ) -> anyhow::Result<(wire::Session, wire::Prelogin, Option<MasterKeys>)> {
        let account = AccountId::from_name(name);
        let pre = self.prelogin(&account)?;
        let fresh = match (pinned, known) {
            (Some((salt, kdf)), Some(_)) if salt == pre.salt.as_slice() && *kdf == pre.kdf => None,
            _ => Some(Vault::master_for_login(
                name,
                password.as_bytes(),
                &pre,
                pinned.map(|p| p.1),
            )?),
        };
        let master = fresh.as_ref().or(known).expect("one of them is set");
        let ch: wire::Challenge = self.json(
            "POST",
            "/challenge",
            Some(serde_json::to_vec(&wire::ChallengeRequest { account })?),
        )?;
        let login = Vault::answer(master, &account, &ch.challenge);
        let session: wire::Session =
            self.json("POST", "/login", Some(serde_json::to_vec(&login)?))?;
        self.token = Some(session.token.clone());
        Ok((session, pre, fresh))
    }
}

/// A node answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
struct HttpStatus(u16, String);

/// A node could not be reached: the change stays queued, which is not an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreachable(String);

fn error_text(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<wire::ErrorBody>(body) {
        Ok(e) => format!("{} ({status})", e.error),
        Err(_) => format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
    }
}

/// The most bytes of records one push carries (well under the node's body limit).
const PUSH_BYTES: usize = 4 << 20;

/// An unlocked vault with its file and password, ready for a command.
struct Open {
    vault: Vault,
    device: Device,
    password: Zeroizing<String>,
    master: Option<MasterKeys>,
    payer: Option<Payer>,
    /// Why the last sync did not reach enough replicas (None: it did, or none ran yet).
    unsynced: Option<String>,
    /// Items merged, and deletions undone, because another device edited them too, since
    /// the vault was opened.
    merged: usize,
    kept: usize,
}

impl Open {
    fn new(
        vault: Vault,
        device: Device,
        password: Zeroizing<String>,
        master: MasterKeys,
        opts: &VaultOpts,
    ) -> anyhow::Result<Open> {
        Ok(Open {
            vault,
            device,
            password,
            master: Some(master),
            payer: Payer::from_opts(opts)?,
            unsynced: None,
            merged: 0,
            kept: 0,
        })
    }
}

fn open(opts: &VaultOpts) -> anyhow::Result<Open> {
    let Some(device) = Device::find(opts)? else {
        bail!(
            "no vault on this device; create one with `nx1 vault register --server URL --account NAME`, or set this device up with `nx1 vault unlock --server URL --account NAME`"
        );
    };
    open_with(opts, device, master_password(opts, false)?)
}

/// Unlocks the device's vault with its master password.
fn open_with(
    opts: &VaultOpts,
    device: Device,
    password: Zeroizing<String>,
) -> anyhow::Result<Open> {
    let h = &device.file.header;
    let salt: [u8; 16] = h
        .salt
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("the vault file's salt is corrupt"))?;
    let master = nx1_vault::crypto::derive_master(password.as_bytes(), &salt, &h.kdf, &h.account)?;
    let vault = Vault::unlock_with(device.file.header.clone(), &device.file.sealed, &master)
        .map_err(|e| match e {
            VaultError::Crypto(nx1_vault::crypto::CryptoError::Open) => {
                anyhow!("wrong master password")
            }
            e => e.into(),
        })?;
    Open::new(vault, device, password, master, opts)
}

/// How many nodes hold each account.
const REPLICAS: usize = 3;

/// The nodes that hold an account: the [`REPLICAS`] best of the known ones by rendezvous
/// hashing, so every device of the account picks the same ones from the same list.
fn replicas(account: &AccountId, servers: &[String]) -> Vec<String> {
    let mut all = rank(account, servers);
    all.truncate(REPLICAS);
    all
}

/// Vault nodes the mesh directories of `servers` list as live with an API URL: how a device
/// that was given one node finds the others.
fn discover(servers: &[String]) -> Vec<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut found: Vec<String> = Vec::new();
    for s in servers {
        let url = format!("{}/v1/directory", s.trim_end_matches('/'));
        let Ok(mut resp) = agent.get(&url).call() else {
            continue;
        };
        if resp.status().as_u16() != 200 {
            continue;
        }
        let Ok(body) = resp.body_mut().with_config().limit(16 << 20).read_to_vec() else {
            continue;
        };
        let Ok(dir) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let Some(members) = dir["members"].as_object() else {
            continue;
        };
        for m in members.values() {
            let vault = m["record"]["roles"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "vault"));
            if let (true, Some("live"), Some(api)) =
                (vault, m["state"].as_str(), m["record"]["api"].as_str())
            {
                let api = api.trim_end_matches('/').to_owned();
                if (api.starts_with("http://") || api.starts_with("https://"))
                    && !found.contains(&api)
                {
                    found.push(api);
                }
            }
        }
    }
    found
}

/// Adds what the mesh directory knows to a list of nodes; true when it grew.
fn with_discovered(servers: &mut Vec<String>) -> bool {
    let mut grew = false;
    for url in discover(servers) {
        if !servers.iter().any(|s| s.trim_end_matches('/') == url) {
            servers.push(url);
            grew = true;
        }
    }
    grew
}

/// Every known node, best first by rendezvous hashing for this account.
fn rank(account: &AccountId, servers: &[String]) -> Vec<String> {
    use sha2::{Digest as _, Sha256};
    let mut ranked: Vec<([u8; 32], &str)> = servers
        .iter()
        .map(|url| {
            let url = url.trim_end_matches('/');
            let mut h = Sha256::new();
            h.update(account.as_bytes());
            h.update(url.as_bytes());
            (h.finalize().into(), url)
        })
        .collect();
    ranked.sort_by_key(|a| std::cmp::Reverse(a.0));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, u)| u.to_owned()).collect()
}

fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some()
}

/// Logs in to one replica; creates the account there if the replica does not hold it yet
/// (a new replica, or one whose data was lost).
fn connect(o: &mut Open, url: &str) -> anyhow::Result<Remote> {
    let mut remote = Remote::new(url);
    let header = o.vault.header().clone();
    let master = o
        .master
        .as_ref()
        .expect("an open vault has its master keys");
    let pre = remote.prelogin(&header.account)?;
    if pre.salt != header.salt || pre.kdf != header.kdf {
        // Either the node does not hold the account (it answers a made-up salt), or it holds
        // it with other parameters. Offer the account: a node that has it answers 409, and
        // the login below then checks its parameters against the ones pinned here.
        let reg = o.vault.registration(master);
        match remote.call("POST", "/register", Some(serde_json::to_vec(&reg)?))? {
            Reply::Ok(_) => eprintln!("{url}: created the account on this replica"),
            Reply::Status(409, _) => {}
            Reply::Status(s, b) => {
                return Err(HttpStatus(s, format!("{url}: {}", error_text(s, &b))).into());
            }
        }
    }
    let (session, pre, fresh) = remote.login(
        &header.name,
        &o.password,
        Some((&header.salt, &header.kdf)),
        Some(master),
    )?;
    if let Some(fresh) = fresh {
        o.vault
            .pin_kdf(&pre, &session, &fresh)
            .map_err(|e| anyhow!("{url}: {e}"))?;
    }
    Ok(remote)
}

/// The change number and hash a replica's answer ends at.
fn head_of(c: &wire::Changes) -> (u64, Option<[u8; 32]>) {
    c.head
        .as_ref()
        .map_or((0, None), |m| (m.seq, Some(m.hash())))
}

/// Brings every replica that is behind up to the newest verified state, from `best`.
/// Returns the replicas that could not be brought along (diverged or failing).
fn repair(
    remotes: &[Remote],
    heads: &[(u64, Option<[u8; 32]>)],
    best: usize,
    vault: &Vault,
    payer: Option<&Payer>,
) -> Vec<usize> {
    let Some(seen) = vault.seen() else {
        return Vec::new();
    };
    let mut dropped = Vec::new();
    for (i, r) in remotes.iter().enumerate() {
        let (seq, hash) = heads[i];
        if i == best || (seq == seen.seq && hash == Some(seen.hash)) {
            continue;
        }
        if seq >= seen.seq {
            eprintln!(
                "warning: {}: its history differs from the other replicas at change {seq}; leaving it out",
                r.base
            );
            dropped.push(i);
            continue;
        }
        let fix: anyhow::Result<wire::Changes> =
            remotes[best].json("GET", &format!("/changes?since={seq}&chain=true"), None);
        let done = fix.and_then(|fix| {
            let body = serde_json::to_vec(&fix)?;
            let account = &vault.header().account;
            match paid_write(r, "/catchup", body, account, seen.seq, payer)? {
                Reply::Ok(_) => Ok(()),
                Reply::Status(s, b) => Err(HttpStatus(s, refusal(s, &b, payer)).into()),
            }
        });
        match done {
            Ok(()) => eprintln!("{}: caught up from change {seq} to {}", r.base, seen.seq),
            Err(e) => {
                eprintln!(
                    "warning: {}: could not catch up: {e:#}; leaving it out",
                    r.base
                );
                dropped.push(i);
            }
        }
    }
    dropped
}

/// Syncs with the account's replicas: pulls from all that answer and adopts the newest
/// verified state, brings lagging replicas up to it, then pushes this device's changes to
/// all of them, counting a batch as sent once a majority has it. Saves after every step, so
/// an interruption loses nothing. Returns false when too few replicas are reachable to write.
fn sync_replicas(
    o: &mut Open,
    mut remotes: Vec<Remote>,
    quorum: usize,
    progress: Option<&dyn Fn(u64)>,
) -> anyhow::Result<bool> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > 50 {
            bail!("the vault keeps changing under this device; try again");
        }
        // Pull from every replica; the newest verified state wins.
        let since = o.vault.seen().map_or(0, |s| s.seq);
        let mut answers = Vec::new();
        let mut alive = Vec::new();
        for r in remotes {
            match r.json::<wire::Changes>("GET", &format!("/changes?since={since}"), None) {
                Ok(c) => {
                    answers.push(c);
                    alive.push(r);
                }
                Err(e) if unreachable(&e) => eprintln!("warning: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        remotes = alive;
        if remotes.is_empty() {
            return Ok(false);
        }
        let heads: Vec<_> = answers.iter().map(head_of).collect();
        // The newest state that verifies wins; a replica whose answer does not verify is
        // passed over (and left out below), so one bad node cannot stop the others.
        let mut order: Vec<usize> = (0..heads.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(heads[i].0));
        let mut adopted = None;
        let mut refusals = Vec::new();
        for &i in &order {
            match o.vault.apply_changes(answers[i].clone(), now()) {
                Ok(report) => {
                    adopted = Some((i, report));
                    break;
                }
                Err(e) => refusals.push(format!("refusing what {} sent: {e}", remotes[i].base)),
            }
        }
        let Some((best, report)) = adopted else {
            bail!("{}", refusals.join("; "));
        };
        for r in &refusals {
            eprintln!("warning: {r}");
        }
        o.device.save(&o.vault)?;
        o.merged += report.merged;
        o.kept += report.kept;
        if report.merged > 0 {
            eprintln!(
                "merged {} item(s) edited on another device too (both edits kept; replaced values are in the item's history)",
                report.merged
            );
        }
        if report.kept > 0 {
            eprintln!(
                "kept {} item(s) deleted here but edited on another device",
                report.kept
            );
        }
        let mut dropped = repair(&remotes, &heads, best, &o.vault, o.payer.as_ref());
        // A replica whose answer did not verify is left out even if its head looks current.
        for &i in &order {
            if i == best {
                break;
            }
            if !dropped.contains(&i) {
                dropped.push(i);
            }
        }
        let mut i = 0;
        remotes.retain(|_| {
            i += 1;
            !dropped.contains(&(i - 1))
        });
        if remotes.len() < quorum {
            return Ok(false);
        }

        // Push the next batch everywhere.
        let mut max = 500;
        let prepared: Prepared = loop {
            match o.vault.prepare_push(max, now())? {
                None => return Ok(true),
                Some(p) => {
                    let size: usize = p.push.items.iter().map(|r| r.body.len() * 4 / 3).sum();
                    if size > PUSH_BYTES && max > 1 {
                        max /= 2;
                        continue;
                    }
                    break p;
                }
            }
        };
        let n = prepared.push.items.len();
        let body = serde_json::to_vec(&prepared.push)?;
        let mut landed = 0;
        let (account, seq) = (&o.vault.header().account, prepared.push.manifest.seq);
        for r in &remotes {
            match paid_write(r, "/push", body.clone(), account, seq, o.payer.as_ref()) {
                Ok(Reply::Ok(_)) => landed += 1,
                Ok(Reply::Status(409, _)) => {}
                Ok(Reply::Status(s, b)) => {
                    bail!("{}: {}", r.base, refusal(s, &b, o.payer.as_ref()))
                }
                Err(e) if unreachable(&e) => eprintln!("warning: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        if landed >= quorum {
            o.vault.pushed(prepared);
            o.device.save(&o.vault)?;
            if let Some(advance) = progress {
                advance(n as u64);
            }
        }
    }
}

/// Syncs with the account's nodes (unless offline); nodes that cannot be reached leave the
/// changes queued, which is not an error.
fn sync(opts: &VaultOpts, o: &mut Open, progress: Option<&dyn Fn(u64)>) -> anyhow::Result<()> {
    if opts.offline {
        o.unsynced = Some("working offline".into());
        report_pending(&o.vault, None);
        return Ok(());
    }
    if with_discovered(&mut o.device.file.servers) {
        o.device.save(&o.vault)?;
    }
    let set = replicas(&o.vault.header().account, &o.device.file.servers);
    if set.is_empty() {
        o.unsynced = Some("this device knows no node".into());
        report_pending(&o.vault, o.unsynced.as_deref());
        return Ok(());
    }
    let quorum = set.len() / 2 + 1;
    let mut remotes = Vec::new();
    let mut why = Vec::new();
    let mut refused = Vec::new();
    for url in &set {
        match connect(o, url) {
            Ok(r) => remotes.push(r),
            Err(e) if unreachable(&e) => why.push(format!("{e:#}")),
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    if remotes.is_empty() && !refused.is_empty() {
        bail!("{}", refused.join("; "));
    }
    for r in &refused {
        eprintln!("warning: leaving a replica out: {r}");
    }
    let reachable = remotes.len();
    let urls: Vec<String> = remotes.iter().map(|r| r.base.clone()).collect();
    if reachable > 0 && sync_replicas(o, remotes, quorum, progress)? {
        o.unsynced = None;
        confirm_holdings(o, &urls);
        return Ok(());
    }
    let why = if reachable == 0 {
        why.join("; ")
    } else {
        format!(
            "only {reachable} of {} replicas reachable, {quorum} needed to write",
            set.len()
        )
    };
    if o.vault.pending() == 0 && reachable == 0 {
        eprintln!("not synced: {why}");
    }
    report_pending(&o.vault, Some(&why));
    o.unsynced = Some(why);
    Ok(())
}

fn report_pending(vault: &Vault, why: Option<&str>) {
    let n = vault.pending();
    if n > 0 {
        match why {
            Some(w) => {
                eprintln!("saved on this device; {n} change(s) wait for the next sync ({w})")
            }
            None => eprintln!("saved on this device; {n} change(s) wait for the next sync"),
        }
    }
}

fn pick(vault: &Vault, what: &str) -> anyhow::Result<(ItemId, Item)> {
    let mut found = vault.find(what)?;
    match found.len() {
        0 => bail!("no item named {what:?} (see `nx1 vault list`)"),
        1 => Ok(found.remove(0)),
        n => bail!("{n} items are named {what:?}: give the id (see `nx1 vault list`)"),
    }
}

fn split_field(s: &str) -> anyhow::Result<(&str, &str)> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| anyhow!("{s:?}: custom fields are NAME=VALUE"))
}

fn apply_fields(item: &mut Item, f: &ItemFields, replace_urls: bool) -> anyhow::Result<()> {
    let t = now();
    if let Some(u) = &f.username {
        item.set_text("username", u, t);
    }
    if !f.urls.is_empty() || !replace_urls {
        if replace_urls {
            item.urls.clone_from(&f.urls);
        } else {
            item.urls.extend(f.urls.iter().cloned());
        }
    }
    if let Some(n) = &f.notes {
        item.set_text("notes", n, t);
    }
    if let Some(s) = &f.totp {
        totp::check(s)?;
        item.set_text("totp", s, t);
    }
    if let Some(d) = &f.folder {
        item.set_text("folder", d, t);
    }
    for c in &f.custom {
        let (k, v) = split_field(c)?;
        item.set_field(k, v, false, t);
    }
    for c in &f.hidden {
        let (k, v) = split_field(c)?;
        item.set_field(k, v, true, t);
    }
    let password = if let Some(p) = &f.password {
        Some(p.clone())
    } else if let Some(len) = f.generate {
        Some(Zeroizing::new(generate::password(len, true)))
    } else if let Some(fd) = f.item_password_fd {
        Some(read_fd(fd)?)
    } else if f.ask_password {
        Some(prompt("Item password")?)
    } else {
        None
    };
    if let Some(p) = password {
        item.set_text("password", &p, t);
    }
    item.modified = t;
    Ok(())
}

fn print_item(id: &ItemId, item: &Item, show: bool) {
    let mask = |s: &str| {
        if show || s.is_empty() {
            s.to_owned()
        } else {
            "••••••••".to_owned()
        }
    };
    println!("id        {id}");
    println!("name      {}", item.name);
    if !item.username.is_empty() {
        println!("username  {}", item.username);
    }
    if !item.password.is_empty() {
        println!("password  {}", mask(&item.password));
    }
    for u in &item.urls {
        println!("url       {u}");
    }
    if !item.folder.is_empty() {
        println!("folder    {}", item.folder);
    }
    if !item.totp.is_empty() {
        match totp::code(&item.totp, now() as u64) {
            Ok(c) => println!("totp      {} ({} s left)", c.code, c.remaining),
            Err(_) => println!("totp      (unreadable secret)"),
        }
    }
    for f in &item.fields {
        let v = if f.hidden {
            mask(&f.value)
        } else {
            f.value.clone()
        };
        println!("{:<9} {v}", format!("{}:", f.name));
    }
    if !item.notes.is_empty() {
        println!("notes     {}", item.notes.replace('\n', "\n          "));
    }
    if !item.history.is_empty() {
        println!(
            "history   {} earlier value(s) (--json shows them)",
            item.history.len()
        );
    }
}

fn field_of(item: &Item, field: &str) -> anyhow::Result<String> {
    Ok(match field {
        "name" => item.name.clone(),
        "username" => item.username.clone(),
        "password" => item.password.clone(),
        "url" => item.urls.first().cloned().unwrap_or_default(),
        "notes" => item.notes.clone(),
        "folder" => item.folder.clone(),
        "totp" => totp::code(&item.totp, now() as u64)?.code,
        other => item
            .fields
            .iter()
            .find(|f| f.name == other)
            .map(|f| f.value.clone())
            .ok_or_else(|| anyhow!("the item has no field {other:?}"))?,
    })
}

/// Runs a vault command (blocking: KDF, files and HTTP).
pub fn run(opts: &VaultOpts, command: VaultCommand) -> anyhow::Result<()> {
    match command {
        VaultCommand::Generate {
            length,
            no_symbols,
            words,
            separator,
        } => {
            match words {
                Some(n) => println!("{}", generate::passphrase(n, &separator)),
                None => println!("{}", generate::password(length, !no_symbols)),
            }
            Ok(())
        }
        VaultCommand::Register {
            servers,
            kdf_memory,
            kdf_passes,
            kdf_lanes,
        } => register(opts, servers, kdf_memory, kdf_passes, kdf_lanes),
        VaultCommand::Unlock { servers } => unlock(opts, servers),
        VaultCommand::Add { name, fields } => {
            let mut o = open(opts)?;
            let mut item = Item {
                name: name.clone(),
                ..Item::default()
            };
            apply_fields(&mut item, &fields, false)?;
            let id = o.vault.add(item);
            o.device.save(&o.vault)?;
            println!("added {name} ({id})");
            sync(opts, &mut o, None)
        }
        VaultCommand::Edit {
            item,
            rename,
            fields,
        } => {
            let mut o = open(opts)?;
            let (id, mut it) = pick(&o.vault, &item)?;
            if let Some(n) = &rename {
                it.set_text("name", n, now());
            }
            apply_fields(&mut it, &fields, true)?;
            o.vault.put(&id, it)?;
            o.device.save(&o.vault)?;
            println!("changed {item} ({id})");
            sync(opts, &mut o, None)
        }
        VaultCommand::Rm { item } => {
            let mut o = open(opts)?;
            let (id, it) = pick(&o.vault, &item)?;
            o.vault.remove(&id)?;
            o.device.save(&o.vault)?;
            println!("deleted {} ({id})", it.name);
            sync(opts, &mut o, None)
        }
        VaultCommand::Sync => {
            let mut o = open(opts)?;
            sync(opts, &mut o, None)?;
            let seq = o.vault.seen().map_or(0, |s| s.seq);
            println!(
                "{} items, change #{seq}, {} waiting",
                o.vault.items()?.len(),
                o.vault.pending()
            );
            Ok(())
        }
        VaultCommand::Get {
            item,
            field,
            show,
            json,
        } => {
            let mut o = open(opts)?;
            sync(opts, &mut o, None)?;
            let (id, it) = pick(&o.vault, &item)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&it)?);
            } else if let Some(f) = field {
                println!("{}", field_of(&it, &f)?);
            } else {
                print_item(&id, &it, show);
            }
            Ok(())
        }
        VaultCommand::List { query, json } => {
            let mut o = open(opts)?;
            sync(opts, &mut o, None)?;
            let items: Vec<(ItemId, Item)> = o
                .vault
                .items()?
                .into_iter()
                .filter(|(_, it)| query.as_deref().is_none_or(|q| it.matches(q)))
                .collect();
            if json {
                let list: Vec<serde_json::Value> = items
                    .iter()
                    .map(|(id, it)| {
                        serde_json::json!({
                            "id": id.to_string(), "name": it.name, "username": it.username,
                            "urls": it.urls, "folder": it.folder,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for (id, it) in &items {
                    println!(
                        "{}  {:<24} {:<24} {}",
                        &id.to_string()[..8],
                        it.name,
                        it.username,
                        it.urls.first().map_or("", String::as_str)
                    );
                }
            }
            Ok(())
        }
        VaultCommand::Import {
            file,
            format,
            file_password_fd,
        } => import_file(opts, &file, format.as_deref(), file_password_fd),
        VaultCommand::Export {
            file,
            encrypt,
            file_password_fd,
        } => export_file(opts, &file, encrypt, file_password_fd),
        VaultCommand::Serve => serve::run(opts),
        VaultCommand::Totp { item } => {
            let o = open(opts)?;
            let (_, it) = pick(&o.vault, &item)?;
            if it.totp.is_empty() {
                bail!("{} has no TOTP secret", it.name);
            }
            let c = totp::code(&it.totp, now() as u64)?;
            println!("{}", c.code);
            eprintln!("valid for {} more second(s)", c.remaining);
            Ok(())
        }
    }
}

fn register(
    opts: &VaultOpts,
    servers: Vec<String>,
    m: Option<u32>,
    t: Option<u32>,
    p: Option<u32>,
) -> anyhow::Result<()> {
    let name = opts
        .account
        .clone()
        .ok_or_else(|| anyhow!("name the account with --account NAME"))?;
    if Device::find(opts)?.is_some() {
        bail!("this device already has the account {name:?}");
    }
    let d = KdfParams::DEFAULT;
    let kdf = KdfParams {
        m_kib: m.unwrap_or(d.m_kib),
        t: t.unwrap_or(d.t),
        p: p.unwrap_or(d.p),
    };
    kdf.check()?;
    let password = master_password(opts, true)?;
    let device = create_account(opts, &name, servers, kdf, &password)?;
    println!("registered {name} (account {})", device.file.header.account);
    println!("vault file: {}", device.path.display());
    Ok(())
}

/// Creates an account on its replicas among `servers` and on this device.
fn create_account(
    opts: &VaultOpts,
    name: &str,
    servers: Vec<String>,
    kdf: KdfParams,
    password: &str,
) -> anyhow::Result<Device> {
    if Device::find(opts)?.is_some() {
        bail!("this device already has the account {name:?}");
    }
    let (vault, reg) = Vault::create(name, password.as_bytes(), kdf)?;
    // The account goes to its replicas; one is enough to start (the others get it at the
    // first sync that reaches them).
    let body = serde_json::to_vec(&reg)?;
    let (mut created, mut exists) = (0, None);
    for url in replicas(&reg.account, &servers) {
        match Remote::new(&url).call("POST", "/register", Some(body.clone())) {
            Ok(Reply::Ok(_)) => created += 1,
            Ok(Reply::Status(409, _)) => {
                eprintln!("warning: {url}: an account named {name:?} exists there");
                exists.get_or_insert(url);
            }
            Ok(Reply::Status(s, b)) => eprintln!("warning: {url}: {}", error_text(s, &b)),
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    if created == 0 {
        match exists {
            Some(url) => bail!(
                "the account {name:?} exists; set this device up with `nx1 vault unlock --server {url} --account {name}`"
            ),
            None => bail!("no node took the account (see the warnings above)"),
        }
    }
    let dir = vault_dir(opts)?;
    let mut device = Device {
        path: Device::path_for(&dir, &reg.account),
        file: VaultFile {
            header: vault.header().clone(),
            servers,
            sealed: Vec::new(),
        },
    };
    device.save(&vault)?;
    Ok(device)
}

fn unlock(opts: &VaultOpts, servers: Vec<String>) -> anyhow::Result<()> {
    if Device::find(opts)?.is_none() {
        // A new device: everything comes from a node.
        let name = opts
            .account
            .clone()
            .ok_or_else(|| anyhow!("name the account with --account NAME"))?;
        if servers.is_empty() || opts.offline {
            bail!("this device has no copy of {name:?} yet: give a node with --server URL");
        }
        let password = master_password(opts, false)?;
        let o = join(opts, &name, servers, password)?;
        println!(
            "unlocked {name} on this device: {} items",
            o.vault.items()?.len()
        );
        return Ok(());
    }
    let mut o = open(opts)?;
    o.device.add_servers(servers);
    sync(opts, &mut o, None)?;
    o.device.save(&o.vault)?;
    println!(
        "unlocked {}: {} items, change #{}, {} waiting to sync",
        o.vault.header().name,
        o.vault.items()?.len(),
        o.vault.seen().map_or(0, |s| s.seq),
        o.vault.pending()
    );
    Ok(())
}

/// Sets this device up with an account that exists on the nodes: the first of `servers` (and
/// the nodes their mesh knows) that logs the device in gives it the account, then it syncs.
fn join(
    opts: &VaultOpts,
    name: &str,
    servers: Vec<String>,
    password: Zeroizing<String>,
) -> anyhow::Result<Open> {
    // The first node that answers sets the device up (the account's replicas first, from
    // what the given nodes' mesh directory knows); the sync below then reads from all.
    let mut servers = servers;
    with_discovered(&mut servers);
    let mut joined = None;
    let mut why = Vec::new();
    for url in &rank(&AccountId::from_name(name), &servers) {
        match Remote::new(url).login(name, &password, None, None) {
            Ok(l) => {
                joined = Some(l);
                break;
            }
            Err(e) => why.push(format!("{e:#}")),
        }
    }
    let Some((session, pre, master)) = joined else {
        bail!("no node set this device up: {}", why.join("; "));
    };
    let master = master.expect("a new device derives its keys");
    let vault = Vault::join(name, &master, &pre, &session).map_err(|e| match e {
        VaultError::Crypto(_) => anyhow!("wrong master password"),
        e => e.into(),
    })?;
    let dir = vault_dir(opts)?;
    let mut device = Device {
        path: Device::path_for(&dir, &vault.header().account),
        file: VaultFile {
            header: vault.header().clone(),
            servers,
            sealed: Vec::new(),
        },
    };
    device.save(&vault)?;
    let mut o = Open::new(vault, device, password, master, opts)?;
    sync(opts, &mut o, None)?;
    Ok(o)
}

fn import_file(
    opts: &VaultOpts,
    file: &Path,
    format: Option<&str>,
    password_fd: Option<u32>,
) -> anyhow::Result<()> {
    let password = || match password_fd {
        Some(fd) => read_fd(fd),
        None => prompt("Password of the exported file"),
    };
    let (items, format) = read_export(file, format, password)?;
    let mut o = open(opts)?;
    let n = items.len();
    for item in items {
        o.vault.add(item);
    }
    o.device.save(&o.vault)?;
    eprintln!("read {n} item(s) from {} ({format})", file.display());
    let bar = indicatif::ProgressBar::new(o.vault.pending() as u64).with_style(
        indicatif::ProgressStyle::with_template("uploading {bar:40} {pos}/{len} items")
            .expect("a valid template"),
    );
    sync(opts, &mut o, Some(&|n| bar.inc(n)))?;
    bar.finish_and_clear();
    println!("imported {n} item(s)");
    Ok(())
}

/// The items of another password manager's export (`format` recognised from the file when
/// not given); `password` is asked only for a password-protected export.
fn read_export(
    file: &Path,
    format: Option<&str>,
    password: impl FnOnce() -> anyhow::Result<Zeroizing<String>>,
) -> anyhow::Result<(Vec<Item>, nx1_vault::import::Format)> {
    use nx1_vault::import::{self, Format, ImportError};
    let bytes =
        Zeroizing::new(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let format = match format {
        Some(f) => Format::parse_name(f)
            .ok_or_else(|| anyhow!("unknown format {f:?}; one of: {}", Format::NAMES.join(", ")))?,
        None => import::detect(&name, &bytes).ok_or_else(|| {
            anyhow!(
                "cannot tell what {} is: say --format ({})",
                file.display(),
                Format::NAMES.join(", ")
            )
        })?,
    };
    let items = match import::import(format, &bytes) {
        Err(ImportError::PasswordRequired) => import::import_protected(&bytes, &password()?)?,
        other => other?,
    };
    Ok((items, format))
}

fn export_file(
    opts: &VaultOpts,
    file: &Path,
    encrypt: bool,
    password_fd: Option<u32>,
) -> anyhow::Result<()> {
    let mut o = open(opts)?;
    sync(opts, &mut o, None)?;
    let items: Vec<Item> = o.vault.items()?.into_iter().map(|(_, it)| it).collect();
    let text = Zeroizing::new(if encrypt {
        let pw = match password_fd {
            Some(fd) => read_fd(fd)?,
            None => {
                let pw = prompt("Password for the exported file")?;
                if *prompt("Again")? != *pw {
                    bail!("the passwords differ");
                }
                pw
            }
        };
        if pw.is_empty() {
            bail!("the export password is empty");
        }
        nx1_vault::export::bitwarden_json_protected(&items, &pw)?
    } else {
        eprintln!(
            "warning: {} holds every password in clear; keep it safe and delete it when done (or use --encrypt)",
            file.display()
        );
        nx1_vault::export::bitwarden_json(&items)
    });
    write_private(file, text.as_bytes())?;
    println!("exported {} item(s) to {}", items.len(), file.display());
    Ok(())
}
