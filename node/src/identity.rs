//! The node's keys on disk: its ed25519 identity and its WireGuard static key.
//!
//! Key files hold one base64 line, are created 0600 inside a 0700 directory, are written to a
//! temporary name and renamed into place (never half-written), and are refused at load time
//! when any group or other permission bit is set.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use nx1_vpn::keys::PrivateKey;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a key file could not be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Missing, unreadable, or not a file.
    #[error("cannot read key file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// Group or others may read it.
    #[error("key file {path} has mode {mode:04o}; only its owner may read it (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    /// Not one base64 line of 32 bytes.
    #[error("key file {path} does not hold a key: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// Could not be written.
    #[error("cannot write key file {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads a secret file after checking its permissions. The text is wiped on drop.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let unreadable = |e: std::io::Error| KeyFileError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(KeyFileError::Unreadable {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(Zeroizing::new(
        std::fs::read_to_string(path).map_err(unreadable)?,
    ))
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file + rename).
pub fn write_secret(path: &Path, contents: &str) -> Result<(), KeyFileError> {
    let fail = |e: std::io::Error| KeyFileError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The node's long-term ed25519 identity; its public key is the node id.
pub struct NodeIdentity {
    signing: SigningKey,
}

impl NodeIdentity {
    /// A fresh identity from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).expect("the operating system has no random numbers");
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The key file's text (base64 of the 32-byte seed, one line).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", STANDARD.encode(self.signing.to_bytes())))
    }

    /// Loads the identity from its key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = read_secret(path)?;
        let malformed = |reason: &str| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: reason.into(),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| malformed("not base64"))?,
        );
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| malformed("an ed25519 seed has 32 bytes"))?,
        );
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// A copy of the signing key, for the services that sign as this node (the mesh record).
    pub fn signing_key(&self) -> ed25519_dalek::SigningKey {
        self.signing.clone()
    }

    /// The node id: the base64 ed25519 public key.
    pub fn node_id(&self) -> String {
        STANDARD.encode(self.signing.verifying_key().as_bytes())
    }
}

/// Loads the WireGuard static key from its key file.
pub fn load_wireguard_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let text = read_secret(path)?;
    PrivateKey::from_base64(&text).map_err(|e| KeyFileError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_owner_only_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let id = NodeIdentity::generate();
        write_secret(&path, &id.to_file_text()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(NodeIdentity::load(&path).unwrap().node_id(), id.node_id());
        assert!(!dir.path().join("identity.tmp").exists());
    }

    #[test]
    fn a_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        write_secret(&path, &PrivateKey::generate().to_base64()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_wireguard_key(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_missing_or_garbled_key_file_says_which_and_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        assert!(matches!(
            NodeIdentity::load(&path),
            Err(KeyFileError::Unreadable { .. })
        ));
        write_secret(&path, "c2VjcmV0LXRleHQ=\n").unwrap();
        let err = NodeIdentity::load(&path).err().unwrap().to_string();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
