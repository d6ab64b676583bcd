//! `nx1 init`: a new node's data directory — identity key, WireGuard key, a commented
//! `nx1.toml` with every key at its default, and the SQLite database.
//!
//! The identity key is written last: its presence marks a complete data directory. If any
//! step fails, the files this run wrote are removed again (with `--force`, the replaced
//! `nx1.toml` and `wireguard.key` too; the old database stays, renamed).

use crate::config::{self, Config, Database};
use crate::identity::{NodeIdentity, write_secret};
use crate::store::Store;
use anyhow::{Context as _, bail};
use nx1_vpn::keys::PrivateKey;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// File names inside a data directory made by `init`.
pub const CONFIG_FILE: &str = "nx1.toml";

/// What `init` made.
#[derive(Debug)]
pub struct Initialised {
    /// The configuration file.
    pub config: PathBuf,
    /// The new node id.
    pub node_id: String,
    /// The new WireGuard public key.
    pub wireguard_public_key: String,
    /// An earlier database moved aside by `--force`.
    pub moved_aside: Option<PathBuf>,
}

/// Removes the paths it holds unless disarmed.
struct Undo(Vec<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates (or with `force` replaces) a node's data directory.
pub async fn init(dir: &Path, force: bool) -> anyhow::Result<Initialised> {
    let defaults = config::NodeSection::default();
    let identity_path = dir.join(&defaults.identity_key);
    if identity_path.exists() && !force {
        bail!(
            "{} already holds a node identity; use --force to replace it (the node gets a new id)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))?;

    let config_path = dir.join(CONFIG_FILE);
    let resolved = Config::default().resolve(&config_path)?;
    let mut undo = Undo(Vec::new());

    // A replaced identity cannot use the old identity's database: keep it, under another name.
    let mut moved_aside = None;
    if let Database::Sqlite(db) = &resolved.database
        && force
        && db.exists()
    {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = db.with_extension(format!("db.replaced-{stamp}"));
        for suffix in ["", "-wal", "-shm"] {
            let mut from = db.as_os_str().to_owned();
            from.push(suffix);
            let mut to = aside.as_os_str().to_owned();
            to.push(suffix);
            if Path::new(&from).exists() {
                std::fs::rename(&from, &to).with_context(|| {
                    format!("moving the old database aside to {}", aside.display())
                })?;
            }
        }
        moved_aside = Some(aside);
    }

    write_secret(&config_path, &config::default_file())?;
    undo.0.push(config_path.clone());

    let wireguard = PrivateKey::generate();
    let key_line = zeroize::Zeroizing::new(format!("{}\n", wireguard.to_base64().as_str()));
    write_secret(&resolved.wireguard_key, &key_line)?;
    undo.0.push(resolved.wireguard_key.clone());

    let identity = NodeIdentity::generate();
    let node_id = identity.node_id();
    if let Database::Sqlite(db) = &resolved.database {
        let created = !db.exists();
        if created {
            undo.0.push(db.clone());
        }
        let store = Store::open(&resolved.database, 1).await?;
        store.claim(&node_id).await?;
        store.close().await;
    }

    write_secret(&resolved.identity_key, &identity.to_file_text())?;
    undo.0.clear();
    Ok(Initialised {
        config: config_path,
        node_id,
        wireguard_public_key: wireguard.public_key().to_base64(),
        moved_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeIdentity, load_wireguard_key};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn init_makes_an_owner_only_data_dir_that_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nx1-data");
        let made = init(&dir, false).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        for f in ["identity.key", "wireguard.key", "nx1.toml", "nx1.db"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        let cfg = Config::load(&made.config).unwrap();
        assert_eq!(cfg.raw, Config::default());
        assert_eq!(
            NodeIdentity::load(&cfg.identity_key).unwrap().node_id(),
            made.node_id
        );
        assert_eq!(
            load_wireguard_key(&cfg.wireguard_key)
                .unwrap()
                .public_key()
                .to_base64(),
            made.wireguard_public_key
        );
        let store = Store::open(&cfg.database, 1).await.unwrap();
        store.claim(&made.node_id).await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn init_refuses_to_overwrite_an_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path(), false).await.unwrap();
        let before = std::fs::read(tmp.path().join("identity.key")).unwrap();
        let err = init(tmp.path(), false).await.unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join("identity.key")).unwrap(),
            before
        );
        let id = NodeIdentity::load(&tmp.path().join("identity.key")).unwrap();
        assert_eq!(id.node_id(), first.node_id);
    }

    #[tokio::test]
    async fn force_makes_a_new_identity_and_keeps_the_old_database() {
        let tmp = tempfile::tempdir().unwrap();
        let first = init(tmp.path(), false).await.unwrap();
        let second = init(tmp.path(), true).await.unwrap();
        assert_ne!(first.node_id, second.node_id);
        let aside = second.moved_aside.expect("old database kept");
        assert!(aside.exists());
        // The new identity owns the new database, the old one its own.
        let cfg = Config::load(&second.config).unwrap();
        let store = Store::open(&cfg.database, 1).await.unwrap();
        store.claim(&second.node_id).await.unwrap();
        store.close().await;
        let old = Store::open(&Database::Sqlite(aside), 1).await.unwrap();
        old.claim(&first.node_id).await.unwrap();
        old.close().await;
    }

    #[tokio::test]
    async fn a_failed_init_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the database file should go makes the store fail to open.
        std::fs::create_dir_all(tmp.path().join("nx1.db")).unwrap();
        assert!(init(tmp.path(), false).await.is_err());
        for f in ["identity.key", "wireguard.key", "nx1.toml"] {
            assert!(!tmp.path().join(f).exists(), "{f} left behind");
        }
    }
}
