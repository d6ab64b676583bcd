//! Opaque 128-bit identifiers: accounts, items and devices. On the wire and on disk they are
//! 32 lower-case hex digits; the server never learns what they stand for.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; 16]);

        impl $name {
            /// From raw bytes.
            pub const fn from_bytes(b: [u8; 16]) -> Self {
                Self(b)
            }
            /// A fresh random id.
            pub fn random() -> Self {
                Self(crate::crypto::random())
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
            /// Parses 32 hex digits.
            pub fn parse(s: &str) -> Option<Self> {
                let v = hex::decode(s).ok()?;
                Some(Self(v.try_into().ok()?))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| {
                    format!("{:?} is not an id (32 hex digits)", s.chars().take(40).collect::<String>())
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// An account. Derived from the account name a user types ([`AccountId::from_name`]), so
    /// the server stores a hash, not the name.
    AccountId
);
id_type!(
    /// An item, chosen at random by the device that creates it.
    ItemId
);
id_type!(
    /// A device of an account, chosen at random when the device first unlocks.
    DeviceId
);

impl AccountId {
    /// The id of the account a user calls `name` (trimmed, case-folded): the first 16 bytes of
    /// SHA-256 over a domain label and the name. The server sees only this hash; someone who
    /// guesses the name can of course compute it too, so the name is an address, not a secret.
    pub fn from_name(name: &str) -> AccountId {
        let mut h = Sha256::new();
        h.update(b"nx1-vault v1 account id\0");
        h.update(name.trim().to_lowercase().as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        AccountId(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_junk() {
        let id = ItemId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<ItemId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ItemId>(&json).unwrap(), id);
        for bad in [
            "",
            "zz",
            &s[..30],
            &format!("{s}00"),
            "g".repeat(32).as_str(),
        ] {
            assert!(bad.parse::<ItemId>().is_err(), "{bad}");
        }
        assert_eq!(
            AccountId::from_name(" Alice@Example.org "),
            AccountId::from_name("alice@example.org")
        );
        assert_ne!(AccountId::from_name("alice"), AccountId::from_name("bob"));
    }
}
