//! Registered WireGuard clients in the store, and the allocation of their tunnel addresses
//! from the node's pools.

use crate::store::{Store, StoreError};
use sqlx::Row as _;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerRecord {
    /// Unique name chosen by the node owner.
    pub name: String,
    /// Base64 WireGuard public key.
    pub public_key: String,
    /// Its IPv4 tunnel address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub ipv6: Ipv6Addr,
    /// Unix time of registration.
    pub created_at: i64,
}

/// Why a peer could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum PeerStoreError {
    /// Bad name.
    #[error("peer name must be 1-64 letters, digits, '.', '_' or '-', not {0:?}")]
    BadName(String),
    /// Name taken.
    #[error("a peer named {0:?} exists already")]
    NameTaken(String),
    /// Key taken.
    #[error("that public key is registered already (as {0:?})")]
    KeyTaken(String),
    /// Pool exhausted.
    #[error("no free address left in the {0} pool")]
    PoolFull(&'static str),
    /// Concurrent registrations kept taking the same addresses.
    #[error("could not allocate addresses: too many registrations at once, try again")]
    Contended,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PeerStoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Query(e))
    }
}

/// Checks a peer name.
pub fn check_name(name: &str) -> Result<(), PeerStoreError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PeerStoreError::BadName(name.to_owned()))
    }
}

fn row_to_record(row: &sqlx::any::AnyRow) -> Result<PeerRecord, PeerStoreError> {
    let parse_err = |what: &str| {
        PeerStoreError::Store(StoreError::Query(sqlx::Error::Decode(
            format!("bad {what} in peers table").into(),
        )))
    };
    Ok(PeerRecord {
        name: row.try_get("name")?,
        public_key: row.try_get("public_key")?,
        ipv4: row
            .try_get::<String, _>("ipv4")?
            .parse()
            .map_err(|_| parse_err("ipv4"))?,
        ipv6: row
            .try_get::<String, _>("ipv6")?
            .parse()
            .map_err(|_| parse_err("ipv6"))?,
        created_at: row.try_get("created_at")?,
    })
}

/// Every registered peer, by name.
pub async fn list(store: &Store) -> Result<Vec<PeerRecord>, PeerStoreError> {
    sqlx::query("SELECT name, public_key, ipv4, ipv6, created_at FROM peers ORDER BY name")
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(row_to_record)
        .collect()
}

/// The lowest free host address in `pool` (node address, network and broadcast excluded).
fn free_v4(node: (Ipv4Addr, u8), used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let mask = u32::MAX << (32 - node.1);
    let network = u32::from(node.0) & mask;
    let broadcast = network | !mask;
    (network + 1..broadcast)
        .map(Ipv4Addr::from)
        .find(|a| *a != node.0 && !used.contains(a))
}

fn free_v6(node: (Ipv6Addr, u8), used: &HashSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let mask = u128::MAX << (128 - node.1);
    let network = u128::from(node.0) & mask;
    // Only the first 2^20 hosts are scanned: with IPv4 pools of /12 or longer the IPv4 pool
    // runs out first; with a larger IPv4 pool this caps the peers at about a million.
    (network + 1..network | (!mask).min(1 << 20))
        .map(Ipv6Addr::from)
        .find(|a| *a != node.0 && !used.contains(a))
}

/// Registers a peer with the next free addresses. Concurrent adds are serialised by the
/// UNIQUE constraints: a lost race retries with fresh addresses.
#[cfg(test)]
pub async fn add(
    store: &Store,
    name: &str,
    public_key: &str,
    v4: (Ipv4Addr, u8),
    v6: (Ipv6Addr, u8),
) -> Result<PeerRecord, PeerStoreError> {
    add_avoiding(store, name, public_key, v4, v6, &HashSet::new()).await
}

/// Registers a peer with the next free addresses that are also not in `taken` (addresses
/// the mesh's other nodes gave their clients). Concurrent adds are serialised by the UNIQUE
/// constraints: a lost race retries with fresh addresses.
pub async fn add_avoiding(
    store: &Store,
    name: &str,
    public_key: &str,
    v4: (Ipv4Addr, u8),
    v6: (Ipv6Addr, u8),
    taken: &HashSet<std::net::IpAddr>,
) -> Result<PeerRecord, PeerStoreError> {
    check_name(name)?;
    for _ in 0..8 {
        let existing = list(store).await?;
        if existing.iter().any(|p| p.name == name) {
            return Err(PeerStoreError::NameTaken(name.to_owned()));
        }
        if let Some(p) = existing.iter().find(|p| p.public_key == public_key) {
            return Err(PeerStoreError::KeyTaken(p.name.clone()));
        }
        let mut used4: HashSet<_> = existing.iter().map(|p| p.ipv4).collect();
        let mut used6: HashSet<_> = existing.iter().map(|p| p.ipv6).collect();
        for a in taken {
            match a {
                std::net::IpAddr::V4(a) => used4.insert(*a),
                std::net::IpAddr::V6(a) => used6.insert(*a),
            };
        }
        let ipv4 = free_v4(v4, &used4).ok_or(PeerStoreError::PoolFull("IPv4"))?;
        let ipv6 = free_v6(v6, &used6).ok_or(PeerStoreError::PoolFull("IPv6"))?;
        let record = PeerRecord {
            name: name.to_owned(),
            public_key: public_key.to_owned(),
            ipv4,
            ipv6,
            created_at: crate::now_unix(),
        };
        match insert_row(store, &record).await {
            Ok(_) => return Ok(record),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(PeerStoreError::Contended)
}

/// Registers a peer with the addresses it already has (a client taken over from another
/// node). A name in use gets a suffix.
pub async fn insert(store: &Store, record: &PeerRecord) -> Result<PeerRecord, PeerStoreError> {
    let mut record = record.clone();
    let existing = list(store).await?;
    if existing.iter().any(|p| p.public_key == record.public_key) {
        return Err(PeerStoreError::KeyTaken(record.name));
    }
    let base: String = record.name.chars().take(56).collect();
    let mut n = 1;
    while existing.iter().any(|p| p.name == record.name) {
        n += 1;
        record.name = format!("{base}-{n}");
    }
    check_name(&record.name)?;
    insert_row(store, &record).await?;
    Ok(record)
}

async fn insert_row(store: &Store, record: &PeerRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO peers (name, public_key, ipv4, ipv6, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&record.name)
    .bind(&record.public_key)
    .bind(record.ipv4.to_string())
    .bind(record.ipv6.to_string())
    .bind(record.created_at)
    .execute(store.pool())
    .await
    .map(|_| ())
}

/// Removes a peer; returns it if it existed.
pub async fn remove(store: &Store, name: &str) -> Result<Option<PeerRecord>, PeerStoreError> {
    let found = list(store).await?.into_iter().find(|p| p.name == name);
    if found.is_some() {
        sqlx::query("DELETE FROM peers WHERE name = $1")
            .bind(name)
            .execute(store.pool())
            .await?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestDb;

    const V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 87, 0, 1), 29);
    const V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x87, 0, 0, 0, 0, 0, 1), 64);

    async fn allocation_and_removal(db: TestDb) {
        let store = Store::open(&db.database, 2).await.unwrap();
        let a = add(&store, "laptop", "A=", V4, V6).await.unwrap();
        assert_eq!(a.ipv4, Ipv4Addr::new(10, 87, 0, 2));
        assert_eq!(a.ipv6, "fd00:87::2".parse::<Ipv6Addr>().unwrap());
        let b = add(&store, "phone", "B=", V4, V6).await.unwrap();
        assert_eq!(b.ipv4, Ipv4Addr::new(10, 87, 0, 3));
        assert!(matches!(
            add(&store, "laptop", "C=", V4, V6).await,
            Err(PeerStoreError::NameTaken(_))
        ));
        assert!(
            matches!(add(&store, "tablet", "A=", V4, V6).await, Err(PeerStoreError::KeyTaken(n)) if n == "laptop")
        );
        assert!(matches!(
            add(&store, "bad name", "D=", V4, V6).await,
            Err(PeerStoreError::BadName(_))
        ));
        // A /29 holds .2-.6 besides the node: three more, then full.
        for n in ["c", "d", "e"] {
            add(&store, n, &format!("{n}="), V4, V6).await.unwrap();
        }
        assert!(matches!(
            add(&store, "f", "F=", V4, V6).await,
            Err(PeerStoreError::PoolFull("IPv4"))
        ));
        // A removed peer's address is reused.
        assert_eq!(
            remove(&store, "laptop").await.unwrap().unwrap().public_key,
            "A="
        );
        assert_eq!(remove(&store, "laptop").await.unwrap(), None);
        let again = add(&store, "f", "F=", V4, V6).await.unwrap();
        assert_eq!(again.ipv4, Ipv4Addr::new(10, 87, 0, 2));
        assert_eq!(list(&store).await.unwrap().len(), 5);
        store.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn sqlite_allocates_addresses_and_refuses_duplicates() {
        allocation_and_removal(TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn postgres_allocates_addresses_and_refuses_duplicates() {
        allocation_and_removal(TestDb::postgres().await).await;
    }
}
