//! `nx1 vault serve`: one vault session for the desktop app (or any other front end).
//!
//! The app is a separate, unprivileged process; it keeps no copy of the vault code. It runs
//! this command as the same user and speaks JSON lines with it: each request is one object
//! with an `op` on a line of stdin, each answer one object on a line of stdout —
//! `{"ok":true,…}` or `{"ok":false,"error":"…"}`. A long request (`import`, `sync`, a change
//! that syncs) may first send `{"event":"progress","done":N,"total":M}` lines. Passwords
//! travel on stdin, never on a command line; stdout carries only the protocol, notices go to
//! stderr. The session holds the unlocked vault in memory until `lock` or the end of stdin,
//! so the master password's KDF runs once per unlock, not once per request. Every change is
//! saved on the device before it is synced, exactly as the command line does.

use super::{
    Device, ItemFields, Open, VaultFile, VaultOpts, apply_fields, create_account, join, now,
    open_with, read_export, sync, vault_dir,
};
use anyhow::{Context as _, anyhow, bail};
use nx1_vault::crypto::KdfParams;
use nx1_vault::ids::ItemId;
use nx1_vault::item::Item;
use nx1_vault::{generate, totp};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead as _, Read as _, Write as _};
use zeroize::Zeroizing;

/// The longest request line read (an import's path, an item's notes).
const MAX_REQUEST: usize = 1 << 20;

/// An item's fields as the app edits them; a field left out is left as it is.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    name: Option<String>,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    url: Option<String>,
    notes: Option<String>,
    totp: Option<String>,
    folder: Option<String>,
}

/// One request.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The accounts on this device and whether one is unlocked.
    State,
    /// Unlock an account of this device; on a new device, set it up from `servers`.
    Open {
        account: Option<String>,
        password: Zeroizing<String>,
        #[serde(default)]
        servers: Vec<String>,
    },
    /// Create an account on the nodes and this device.
    Register {
        account: String,
        password: Zeroizing<String>,
        servers: Vec<String>,
    },
    /// The unlocked account: items, sync state, conflicts resolved.
    Status,
    /// Items (no secrets), or those matching a search.
    List { query: Option<String> },
    /// One item, secrets included.
    Get { id: String },
    /// Add an item (then sync).
    Add { item: ItemInput },
    /// Change an item (replaced values go to its history; then sync).
    Edit { id: String, item: ItemInput },
    /// Delete an item (then sync).
    Delete { id: String },
    /// An item's current TOTP code.
    Totp { id: String },
    /// A random password or passphrase (no vault needed).
    Generate {
        length: Option<usize>,
        symbols: Option<bool>,
        words: Option<usize>,
    },
    /// Add every entry of another password manager's export (then sync, with progress).
    Import {
        path: String,
        format: Option<String>,
        password: Option<Zeroizing<String>>,
    },
    /// Send this device's changes and fetch everyone else's.
    Sync,
    /// Forget the unlocked vault.
    Lock,
}

/// Writes one line of the protocol.
fn emit(value: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the app is gone; the loop ends at the next read.
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}

/// Runs a session until stdin closes.
pub fn run(opts: &VaultOpts) -> anyhow::Result<()> {
    let mut session = Session {
        opts: opts.clone(),
        open: None,
    };
    let mut stdin = std::io::stdin().lock();
    let mut line = Zeroizing::new(String::new());
    loop {
        line.clear();
        let n = (&mut stdin)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
            .context("reading a request")?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_REQUEST {
            emit(&json!({ "ok": false, "error": "request too long" }));
            // Skip the rest of that line.
            let mut rest = Vec::new();
            stdin.read_until(b'\n', &mut rest)?;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(anyhow!("not a request: {e}")),
            Ok(request) => session.handle(request),
        };
        emit(&match answer {
            Ok(mut v) => {
                v["ok"] = Value::Bool(true);
                v
            }
            Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
        });
    }
}

struct Session {
    opts: VaultOpts,
    open: Option<Open>,
}

/// A progress event for `done` of `total` items sent.
fn progress(total: usize) -> impl Fn(u64) {
    let done = std::cell::Cell::new(0u64);
    move |n| {
        done.set(done.get() + n);
        emit(&json!({ "event": "progress", "done": done.get(), "total": total }));
    }
}

impl Session {
    fn vault(&mut self) -> anyhow::Result<&mut Open> {
        self.open
            .as_mut()
            .ok_or_else(|| anyhow!("the vault is locked: unlock it first"))
    }

    /// Locks what is open, for an unlock or a new account: the options for `account`.
    fn start_over(&mut self, account: Option<String>, password: &str) -> anyhow::Result<VaultOpts> {
        if password.is_empty() {
            bail!("the master password is empty");
        }
        self.open = None;
        Ok(VaultOpts {
            account: account.or_else(|| self.opts.account.clone()),
            ..self.opts.clone()
        })
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<Value> {
        match request {
            Request::State => self.state(),
            Request::Generate {
                length,
                symbols,
                words,
            } => Ok(match words {
                Some(n) => json!({
                    "password": generate::passphrase(n.clamp(3, 20), "-"),
                    "bits": generate::passphrase_bits(n.clamp(3, 20)),
                }),
                None => {
                    let (len, sym) = (length.unwrap_or(20).clamp(8, 128), symbols.unwrap_or(true));
                    json!({
                        "password": generate::password(len, sym),
                        "bits": generate::password_bits(len, sym),
                    })
                }
            }),
            Request::Open {
                account,
                password,
                servers,
            } => {
                let opts = self.start_over(account.clone(), &password)?;
                let o = if let Some(device) = Device::find(&opts)? {
                    let mut o = open_with(&opts, device, password)?;
                    o.device.add_servers(servers);
                    o.device.save(&o.vault)?;
                    sync(&opts, &mut o, None)?;
                    o
                } else {
                    let name = account.ok_or_else(|| anyhow!("which account?"))?;
                    if servers.is_empty() {
                        bail!("this device has no copy of {name:?} yet: give a node's address");
                    }
                    // Sets the device up and syncs.
                    join(&opts, &name, servers, password)?
                };
                self.opts = opts;
                self.open = Some(o);
                self.status()
            }
            Request::Register {
                account,
                password,
                servers,
            } => {
                if servers.is_empty() {
                    bail!("give at least one node's address");
                }
                let opts = self.start_over(Some(account.clone()), &password)?;
                let device =
                    create_account(&opts, &account, servers, KdfParams::DEFAULT, &password)?;
                let mut o = open_with(&opts, device, password)?;
                sync(&opts, &mut o, None)?;
                self.opts = opts;
                self.open = Some(o);
                self.status()
            }
            Request::Lock => {
                self.open = None;
                Ok(json!({}))
            }
            Request::Status => self.status(),
            Request::Sync => {
                let opts = self.opts.clone();
                let o = self.vault()?;
                let advance = progress(o.vault.pending());
                sync(&opts, o, Some(&advance))?;
                self.status()
            }
            Request::List { query } => {
                let o = self.vault()?;
                let q = query.as_deref().map(str::trim).filter(|q| !q.is_empty());
                let mut items: Vec<Value> = o
                    .vault
                    .items()?
                    .into_iter()
                    .filter(|(_, it)| q.is_none_or(|q| it.matches(q)))
                    .map(|(id, it)| {
                        json!({
                            "id": id.to_string(), "name": it.name, "username": it.username,
                            "url": it.urls.first(), "folder": it.folder,
                            "totp": !it.totp.is_empty(),
                        })
                    })
                    .collect();
                items.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_lowercase());
                Ok(json!({ "items": items }))
            }
            Request::Get { id } => {
                let id = item_id(&id)?;
                let it = self.vault()?.vault.get(&id)?;
                Ok(json!({ "id": id.to_string(), "item": it }))
            }
            Request::Totp { id } => {
                let id = item_id(&id)?;
                let it = self.vault()?.vault.get(&id)?;
                if it.totp.is_empty() {
                    bail!("{} has no TOTP secret", it.name);
                }
                let c = totp::code(&it.totp, now() as u64)?;
                Ok(json!({ "code": c.code, "remaining": c.remaining, "period": c.period }))
            }
            Request::Add { item } => {
                let name = item
                    .name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| anyhow!("an item needs a name"))?;
                let mut it = Item {
                    name,
                    ..Item::default()
                };
                apply_fields(&mut it, &fields_of(item), true)?;
                let o = self.vault()?;
                let id = o.vault.add(it);
                o.device.save(&o.vault)?;
                self.synced(json!({ "id": id.to_string() }))
            }
            Request::Edit { id, item } => {
                let id = item_id(&id)?;
                let o = self.vault()?;
                let mut it = o.vault.get(&id)?;
                if let Some(n) = item.name.as_deref().filter(|n| !n.trim().is_empty()) {
                    it.set_text("name", n, now());
                }
                // An emptied field clears it (the command line's options only set).
                if item.totp.as_deref().is_some_and(|t| t.trim().is_empty()) {
                    it.set_text("totp", "", now());
                }
                if item.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
                    it.urls.clear();
                }
                apply_fields(&mut it, &fields_of(item), true)?;
                o.vault.put(&id, it)?;
                o.device.save(&o.vault)?;
                self.synced(json!({ "id": id.to_string() }))
            }
            Request::Delete { id } => {
                let id = item_id(&id)?;
                let o = self.vault()?;
                o.vault.remove(&id)?;
                o.device.save(&o.vault)?;
                self.synced(json!({ "id": id.to_string() }))
            }
            Request::Import {
                path,
                format,
                password,
            } => {
                let path = std::path::PathBuf::from(path);
                let (items, format) = read_export(&path, format.as_deref(), || {
                    password.ok_or_else(|| anyhow!("this export is protected: give its password"))
                })?;
                let n = items.len();
                let o = self.vault()?;
                for item in items {
                    o.vault.add(item);
                }
                o.device.save(&o.vault)?;
                let opts = self.opts.clone();
                let o = self.vault()?;
                let advance = progress(o.vault.pending());
                advance(0);
                sync(&opts, o, Some(&advance))?;
                let mut status = self.status()?;
                status["imported"] = json!(n);
                status["format"] = json!(format.name());
                Ok(status)
            }
        }
    }

    /// Syncs after a change and answers `value` with the sync state.
    fn synced(&mut self, mut value: Value) -> anyhow::Result<Value> {
        let opts = self.opts.clone();
        sync(&opts, self.vault()?, None)?;
        value["status"] = self.status()?;
        Ok(value)
    }

    /// The accounts this device holds (by name), and the unlocked one's state.
    fn state(&mut self) -> anyhow::Result<Value> {
        let dir = vault_dir(&self.opts)?;
        let mut accounts = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json")
                    && let Ok(bytes) = std::fs::read(&p)
                    && let Ok(f) = serde_json::from_slice::<VaultFile>(&bytes)
                {
                    accounts.push(f.header.name);
                }
            }
        }
        accounts.sort();
        let status = match self.open {
            Some(_) => self.status()?,
            None => Value::Null,
        };
        Ok(json!({ "accounts": accounts, "unlocked": status }))
    }

    fn status(&mut self) -> anyhow::Result<Value> {
        let o = self.vault()?;
        Ok(json!({
            "account": o.vault.header().name,
            "items": o.vault.items()?.len(),
            "change": o.vault.seen().map_or(0, |s| s.seq),
            "pending": o.vault.pending(),
            "servers": o.device.file.servers,
            "synced": o.unsynced.is_none(),
            "unsynced_because": o.unsynced,
            "merged": o.merged,
            "kept": o.kept,
        }))
    }
}

fn item_id(s: &str) -> anyhow::Result<ItemId> {
    ItemId::parse(s.trim()).ok_or_else(|| anyhow!("{s:?} is not an item id"))
}

/// The command line's item fields for what the app sent.
fn fields_of(item: ItemInput) -> ItemFields {
    ItemFields {
        username: item.username,
        urls: item
            .url
            .into_iter()
            .filter(|u| !u.trim().is_empty())
            .collect(),
        notes: item.notes,
        totp: item.totp.filter(|t| !t.trim().is_empty()),
        folder: item.folder,
        password: item.password,
        ..ItemFields::default()
    }
}
