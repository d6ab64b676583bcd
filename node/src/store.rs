//! The node's database: SQLite (an embedded file, the default) or PostgreSQL, through one
//! sqlx `Any` pool so both run the same migrations and the same queries.
//!
//! Queries use `$1`-style placeholders, which both backends accept.

use crate::config::Database;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor as _, Row as _};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect or create the database.
    #[error("cannot open the {backend} database: {reason}")]
    Open { backend: Backend, reason: String },
    /// A migration failed.
    #[error("cannot migrate the {backend} database: {reason}")]
    Migrate { backend: Backend, reason: String },
    /// The database was made by another node.
    #[error(
        "the database belongs to node {owner}, not to this node ({me}); give each node its own database"
    )]
    WrongNode { owner: String, me: String },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// An open, migrated database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Removes user and password from a URL before it goes into a message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Connects (creating an SQLite file if needed) and runs the migrations.
    pub async fn open(database: &Database, max_connections: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        let (url, backend) = match database {
            Database::Sqlite(path) => (
                format!("sqlite://{}?mode=rwc", path.display()),
                Backend::Sqlite,
            ),
            Database::Postgres(url) => (url.clone(), Backend::Postgres),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; the busy timeout makes a
                        // second writer wait instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| StoreError::Open {
                backend,
                reason: format!("{} ({})", e, redact(&url)),
            })?;
        if let Database::Sqlite(path) = database {
            restrict_sqlite_files(path);
        }
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Migrate {
            backend,
            reason: e.to_string(),
        })?;
        Ok(Self { pool, backend })
    }

    /// The engine behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for the services that keep their tables here.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The newest migration applied.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success = $1")
            .bind(true)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    /// Binds the database to `node_id` on first use; refuses a database made by another node.
    pub async fn claim(&self, node_id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO node_meta (key, value) VALUES ('node_id', $1) ON CONFLICT (key) DO NOTHING")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        let owner = self.meta("node_id").await?.unwrap_or_default();
        if owner != node_id {
            return Err(StoreError::WrongNode {
                owner,
                me: node_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Reads a node fact.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM node_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<String, _>("value")).transpose()?)
    }

    /// Writes a node fact, replacing any earlier value.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO node_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes every connection (checkpointing SQLite's WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The database holds the node's state: owner-only, like the key files.
fn restrict_sqlite_files(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}

/// Test databases on both backends: a fresh SQLite file, and a fresh database on the
/// PostgreSQL server named by `NX1_TEST_POSTGRES` (default: the local server, trust auth).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// One throw-away database.
    pub struct TestDb {
        pub database: Database,
        _dir: Option<tempfile::TempDir>,
        pg_name: Option<String>,
    }

    fn admin_url() -> String {
        std::env::var("NX1_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    impl TestDb {
        pub fn sqlite() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Self {
                database: Database::Sqlite(dir.path().join("nx1.db")),
                _dir: Some(dir),
                pg_name: None,
            }
        }

        /// Creates a fresh database; panics (fails the test) when the server is unreachable,
        /// so CI never skips the PostgreSQL half silently.
        pub async fn postgres() -> Self {
            install_default_drivers();
            let name = format!(
                "nx1_test_{}_{}",
                std::process::id(),
                u64::from_le_bytes(rand8())
            );
            let admin = AnyPool::connect(&admin_url()).await.unwrap_or_else(|e| {
                panic!("PostgreSQL at {} is needed for this test: {e}", admin_url())
            });
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap();
            admin.close().await;
            let base = admin_url();
            let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
            Self {
                database: Database::Postgres(url),
                _dir: None,
                pg_name: Some(name),
            }
        }

        pub async fn drop_now(self) {
            if let Some(name) = &self.pg_name {
                let admin = AnyPool::connect(&admin_url()).await.unwrap();
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await
                    .unwrap();
                admin.close().await;
            }
        }
    }

    fn rand8() -> [u8; 8] {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestDb;
    use super::*;

    fn latest() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap()
    }

    async fn opens_migrates_and_claims(db: TestDb, backend: Backend) {
        let store = Store::open(&db.database, 4).await.unwrap();
        assert_eq!(store.backend(), backend);
        assert_eq!(store.schema_version().await.unwrap(), latest());
        store.claim("node-a").await.unwrap();
        store.claim("node-a").await.unwrap();
        store.set_meta("k", "v1").await.unwrap();
        store.set_meta("k", "v2").await.unwrap();
        assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("v2"));
        assert_eq!(store.meta("missing").await.unwrap(), None);
        store.close().await;

        // Reopening runs no migration twice and keeps what was written.
        let again = Store::open(&db.database, 2).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), latest());
        assert_eq!(again.meta("k").await.unwrap().as_deref(), Some("v2"));
        let err = again.claim("node-b").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::WrongNode { owner, .. } if owner == "node-a"),
            "{err}"
        );
        again.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn sqlite_store_opens_migrates_and_refuses_another_node() {
        opens_migrates_and_claims(TestDb::sqlite(), Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres_store_opens_migrates_and_refuses_another_node() {
        opens_migrates_and_claims(TestDb::postgres().await, Backend::Postgres).await;
    }

    #[tokio::test]
    async fn sqlite_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let db = TestDb::sqlite();
        let store = Store::open(&db.database, 1).await.unwrap();
        let Database::Sqlite(path) = &db.database else {
            unreachable!()
        };
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn an_unreachable_postgres_gives_a_clear_error_without_the_password() {
        let db = Database::Postgres("postgres://nx1:hunter2@127.0.0.1:1/none".into());
        let err = Store::open(&db, 1).await.err().unwrap().to_string();
        assert!(
            err.starts_with("cannot open the PostgreSQL database"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(redact("postgres://u:p@h:5432/d"), "postgres://…@h:5432/d");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
