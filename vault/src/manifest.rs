//! The signed, hash-chained manifest: after every change an account's devices sign the whole
//! vault's state (a root hash over every item's id, version and record hash), linked to the
//! manifest before it. A device remembers the newest manifest it has seen, so a server that
//! serves an older state (rollback), drops or alters an item, or shows two devices different
//! histories (a fork) is caught.

use crate::ids::{AccountId, DeviceId, ItemId};
use crate::record::ItemRecord;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A 32-byte hash, hex on the wire.
pub type Hash = [u8; 32];

/// One manifest: the state of the vault after change number `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The account.
    pub account: AccountId,
    /// Change number, from 1, consecutive.
    pub seq: u64,
    /// Hash of manifest `seq - 1` (zeros for the first).
    #[serde(with = "hex32")]
    pub prev: Hash,
    /// Root hash over every item record (tombstones included), see [`root`].
    #[serde(with = "hex32")]
    pub root: Hash,
    /// How many records the root covers.
    pub items: u64,
    /// The device that made the change.
    pub device: DeviceId,
    /// Unix time on that device.
    pub time: i64,
    /// Ed25519 signature by the account's manifest key over the fields above.
    #[serde(with = "crate::b64")]
    pub signature: Vec<u8>,
}

/// Why a manifest or a server's state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The signature does not verify under the account's manifest key.
    #[error("manifest {seq}: bad signature (not signed by a device of this account)")]
    Signature {
        /// Which manifest.
        seq: u64,
    },
    /// A manifest of another account.
    #[error("manifest {seq}: belongs to another account")]
    Account {
        /// Which manifest.
        seq: u64,
    },
    /// The server's newest state is older than one this device has seen.
    #[error(
        "rollback: the server shows change {offered}, but this device has seen change {seen}; the server (or a restored copy of it) is serving an old state"
    )]
    Rollback {
        /// Newest change this device has seen.
        seen: u64,
        /// Newest change the server shows.
        offered: u64,
    },
    /// The server's history differs from the one this device has seen.
    #[error(
        "fork: the server's change {seq} is not the one this device saw; it is showing devices different histories"
    )]
    Fork {
        /// Where the histories differ.
        seq: u64,
    },
    /// The chain has a hole or a link that does not match.
    #[error("broken manifest chain at change {seq}: {why}")]
    Chain {
        /// Where.
        seq: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The items the server sent do not add up to what the manifest signs.
    #[error(
        "the server's items do not match the signed manifest {seq} (an item was dropped, altered or rolled back)"
    )]
    Root {
        /// Which manifest.
        seq: u64,
    },
}

impl Manifest {
    /// The bytes the signature covers.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(160);
        b.extend_from_slice(b"nx1-vault/1 manifest\0");
        b.extend_from_slice(self.account.as_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.prev);
        b.extend_from_slice(&self.root);
        b.extend_from_slice(&self.items.to_be_bytes());
        b.extend_from_slice(self.device.as_bytes());
        b.extend_from_slice(&self.time.to_be_bytes());
        b
    }

    /// Builds and signs a manifest.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &SigningKey,
        account: AccountId,
        seq: u64,
        prev: Hash,
        root: Hash,
        items: u64,
        device: DeviceId,
        time: i64,
    ) -> Manifest {
        let mut m = Manifest {
            account,
            seq,
            prev,
            root,
            items,
            device,
            time,
            signature: Vec::new(),
        };
        m.signature = key.sign(&m.signed_bytes()).to_bytes().to_vec();
        m
    }

    /// Checks the signature and the account.
    pub fn verify(&self, key: &VerifyingKey, account: &AccountId) -> Result<(), ManifestError> {
        if &self.account != account {
            return Err(ManifestError::Account { seq: self.seq });
        }
        let sig = Signature::from_slice(&self.signature)
            .map_err(|_| ManifestError::Signature { seq: self.seq })?;
        key.verify(&self.signed_bytes(), &sig)
            .map_err(|_| ManifestError::Signature { seq: self.seq })
    }

    /// The hash the next manifest links to (covers the signature too).
    pub fn hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(self.signed_bytes());
        h.update(&self.signature);
        h.finalize().into()
    }
}

/// The root hash over a vault's records, keyed and ordered by item id.
pub fn root<'a>(records: impl IntoIterator<Item = (&'a ItemId, Hash)>) -> Hash {
    let mut h = Sha256::new();
    h.update(b"nx1-vault/1 root\0");
    for (id, rec) in records {
        h.update(id.as_bytes());
        h.update(rec);
    }
    h.finalize().into()
}

/// The root over a map of records.
pub fn root_of(records: &BTreeMap<ItemId, ItemRecord>) -> Hash {
    root(records.iter().map(|(id, r)| (id, r.hash())))
}

/// What a device remembers of the newest manifest it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Its change number.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex32")]
    pub hash: Hash,
}

/// Checks what a server shows (its newest manifest `head` and the manifests after `seen`,
/// oldest first) against what this device has seen. Returns the new head to remember.
pub fn check_history(
    key: &VerifyingKey,
    account: &AccountId,
    seen: Option<Seen>,
    head: Option<&Manifest>,
    chain: &[Manifest],
) -> Result<Option<Seen>, ManifestError> {
    let Some(head) = head else {
        return match seen {
            None => Ok(None),
            Some(s) => Err(ManifestError::Rollback {
                seen: s.seq,
                offered: 0,
            }),
        };
    };
    head.verify(key, account)?;
    let head_seen = Seen {
        seq: head.seq,
        hash: head.hash(),
    };
    let Some(seen) = seen else {
        return Ok(Some(head_seen));
    };
    if head.seq < seen.seq {
        return Err(ManifestError::Rollback {
            seen: seen.seq,
            offered: head.seq,
        });
    }
    if head.seq == seen.seq {
        return if head_seen.hash == seen.hash {
            Ok(Some(seen))
        } else {
            Err(ManifestError::Fork { seq: seen.seq })
        };
    }
    // Walk the chain from the manifest after `seen` up to the head.
    let mut prev = seen;
    for m in chain {
        if m.seq <= seen.seq {
            continue;
        }
        if m.seq != prev.seq + 1 {
            return Err(ManifestError::Chain {
                seq: m.seq,
                why: "a change is missing",
            });
        }
        m.verify(key, account)?;
        if m.prev != prev.hash {
            return Err(if prev.seq == seen.seq {
                ManifestError::Fork { seq: m.seq }
            } else {
                ManifestError::Chain {
                    seq: m.seq,
                    why: "does not link to the change before it",
                }
            });
        }
        prev = Seen {
            seq: m.seq,
            hash: m.hash(),
        };
    }
    if prev != head_seen {
        return Err(ManifestError::Chain {
            seq: head.seq,
            why: "the chain does not reach the newest change",
        });
    }
    Ok(Some(head_seen))
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let v = hex::decode(s.as_ref()).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes (64 hex digits)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        key: SigningKey,
        account: AccountId,
        chain: Vec<Manifest>,
    }

    fn fixture(n: u64) -> Fixture {
        let key = SigningKey::from_bytes(&[5; 32]);
        let account = AccountId::from_bytes([1; 16]);
        let mut chain: Vec<Manifest> = Vec::new();
        for seq in 1..=n {
            let prev = chain.last().map(Manifest::hash).unwrap_or([0; 32]);
            chain.push(Manifest::sign(
                &key,
                account,
                seq,
                prev,
                [seq as u8; 32],
                seq,
                DeviceId::from_bytes([2; 16]),
                100 + seq as i64,
            ));
        }
        Fixture {
            key,
            account,
            chain,
        }
    }

    fn seen(m: &Manifest) -> Seen {
        Seen {
            seq: m.seq,
            hash: m.hash(),
        }
    }

    #[test]
    fn a_linked_chain_is_accepted() {
        let f = fixture(5);
        let vk = f.key.verifying_key();
        let got = check_history(
            &vk,
            &f.account,
            Some(seen(&f.chain[1])),
            f.chain.last(),
            &f.chain[2..],
        )
        .unwrap();
        assert_eq!(got, Some(seen(&f.chain[4])));
        // A new device takes the head as it is.
        assert_eq!(
            check_history(&vk, &f.account, None, f.chain.last(), &[]).unwrap(),
            Some(seen(&f.chain[4]))
        );
        // Nothing new.
        assert_eq!(
            check_history(
                &vk,
                &f.account,
                Some(seen(&f.chain[4])),
                f.chain.last(),
                &[]
            )
            .unwrap(),
            Some(seen(&f.chain[4]))
        );
    }

    #[test]
    fn rollback_fork_gap_and_forgery_are_caught() {
        let f = fixture(5);
        let vk = f.key.verifying_key();
        let s4 = Some(seen(&f.chain[3]));
        // Rollback: the server shows change 3 to a device that saw 4, or nothing at all.
        assert_eq!(
            check_history(&vk, &f.account, s4, Some(&f.chain[2]), &[]),
            Err(ManifestError::Rollback {
                seen: 4,
                offered: 3
            })
        );
        assert!(matches!(
            check_history(&vk, &f.account, s4, None, &[]),
            Err(ManifestError::Rollback { .. })
        ));
        // Fork: another history of the same length, and one that branches off before.
        let other_key = SigningKey::from_bytes(&[6; 32]);
        let mut fork = f.chain[..3].to_vec();
        for seq in 4..=5 {
            let prev = fork.last().unwrap().hash();
            fork.push(Manifest::sign(
                &other_key,
                f.account,
                seq,
                prev,
                [9; 32],
                9,
                DeviceId::from_bytes([3; 16]),
                1,
            ));
        }
        // (Signed with the wrong key: a forgery.)
        assert_eq!(
            check_history(&vk, &f.account, s4, Some(&fork[4]), &fork[4..]),
            Err(ManifestError::Signature { seq: 5 })
        );
        let mut fork = f.chain[..3].to_vec();
        for seq in 4..=5 {
            let prev = fork.last().unwrap().hash();
            fork.push(Manifest::sign(
                &f.key,
                f.account,
                seq,
                prev,
                [9; 32],
                9,
                DeviceId::from_bytes([3; 16]),
                1,
            ));
        }
        assert_eq!(
            check_history(&vk, &f.account, s4, Some(&fork[3]), &[]),
            Err(ManifestError::Fork { seq: 4 })
        );
        assert_eq!(
            check_history(&vk, &f.account, s4, Some(&fork[4]), &fork[4..]),
            Err(ManifestError::Fork { seq: 5 })
        );
        // A gap in the chain.
        assert!(matches!(
            check_history(
                &vk,
                &f.account,
                Some(seen(&f.chain[1])),
                Some(&f.chain[4]),
                &[f.chain[2].clone(), f.chain[4].clone()]
            ),
            Err(ManifestError::Chain { seq: 5, .. })
        ));
        // A tampered field breaks the signature; another account's manifest is refused.
        let mut t = f.chain[4].clone();
        t.root[0] ^= 1;
        assert_eq!(
            t.verify(&vk, &f.account),
            Err(ManifestError::Signature { seq: 5 })
        );
        assert_eq!(
            f.chain[4].verify(&vk, &AccountId::from_bytes([9; 16])),
            Err(ManifestError::Account { seq: 5 })
        );
        let json = serde_json::to_string(&f.chain[4]).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), f.chain[4]);
    }
}
