//! The vault's server side: `/v1/vault/*` over the node's store. It holds ciphertext, public
//! keys and the signed manifest chain; it can refuse or lose data but not read or forge it
//! (devices check everything it sends, see `nx1_vault::client`).
//!
//! Writes are all-or-nothing: a push moves the account's head from `base` to `base + 1` with
//! a compare-and-swap, then each item from its version to the next (`UPDATE … WHERE version`),
//! in one transaction; any mismatch rolls everything back and answers 409 with the current
//! records. Login is a signature over a one-time challenge by a key only the master password
//! derives; failed attempts are rate-limited per account and per source address.

use crate::config::VaultSection;
use crate::store::{Backend, Store};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use nx1_vault::crypto::KdfParams;
use nx1_vault::ids::{AccountId, ItemId};
use nx1_vault::manifest::Manifest;
use nx1_vault::record::ItemRecord;
use nx1_vault::wire;
use sha2::{Digest, Sha256};
use sqlx::{Acquire as _, Row as _};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a login challenge stays valid.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges kept (older ones are dropped first).
const MAX_CHALLENGES: usize = 100_000;
/// Largest request body (a push is sent in batches below this).
pub const MAX_BODY: usize = 8 << 20;
/// Largest catch-up body: a whole vault at the account quota, in base64, with room for the
/// JSON around it.
fn catchup_body_limit(max_bytes: u64) -> usize {
    usize::try_from(max_bytes / 3 * 4 + (16 << 20)).unwrap_or(usize::MAX)
}

/// The vault service of a node.
pub struct VaultService {
    store: Store,
    limits: VaultSection,
    ledger: Arc<crate::ledger::Ledger>,
    /// Storage this node gives all vaults together, bytes (`[contribute] storage_mb`; 0: none).
    storage_cap: u64,
    prelogin_secret: [u8; 32],
    challenges: parking_lot::Mutex<HashMap<[u8; 32], (AccountId, Instant)>>,
    failures_by_account: FailureLimit<AccountId>,
    failures_by_source: FailureLimit<IpAddr>,
    challenges_by_source: DefaultKeyedRateLimiter<IpAddr>,
    register_by_source: DefaultKeyedRateLimiter<IpAddr>,
    /// Requests by call and answer status, for `/metrics`.
    pub requests: prometheus_client::metrics::family::Family<
        RequestLabel,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// A vault request's call and the status it was answered with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabel {
    /// The call (`push`, `changes`, …).
    pub call: String,
    /// The HTTP status.
    pub status: u16,
}

/// Limits failed logins: each failure takes a token; a key out of tokens is refused every
/// attempt (successful or not) until the bucket refills enough for one more. Successful
/// logins cost nothing, so a user with many devices is never locked out by using them.
struct FailureLimit<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    blocked: parking_lot::Mutex<HashMap<K, Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureLimit<K> {
    fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            blocked: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must still wait, if it is blocked.
    fn blocked(&self, key: &K) -> Option<Duration> {
        let now = Instant::now();
        let until = *self.blocked.lock().get(key)?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns the wait when that used up the key's allowance.
    fn failed(&self, key: &K) -> Option<Duration> {
        let not_until = self.limiter.check_key(key).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked.lock();
        if blocked.len() > 100_000 {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(key.clone(), Instant::now() + wait);
        Some(wait)
    }
}

fn too_many(what: &str, wait: Duration) -> ApiError {
    let secs = wait.as_secs().max(1);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many {what}; try again in {secs} s"),
    );
    e.retry_after = Some(secs);
    e
}

/// An error answer: a status and a sentence, as `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    conflict: Option<wire::Conflict>,
    /// For 402: the credits that would pay for the request.
    price: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            conflict: None,
            price: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "vault: database error");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::new(
            r.status(),
            format!("invalid request body: {}", r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(r.status(), format!("invalid query: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(c) = self.conflict {
            return (self.status, Json(c)).into_response();
        }
        if let Some(price) = self.price {
            return (
                self.status,
                Json(serde_json::json!({ "error": self.message, "price": price })),
            )
                .into_response();
        }
        let mut resp = (
            self.status,
            Json(wire::ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"))
}

impl VaultService {
    /// The service over `store`, with `limits` from `[vault]`.
    pub async fn new(
        store: Store,
        limits: VaultSection,
        ledger: Arc<crate::ledger::Ledger>,
        storage_cap: u64,
    ) -> Result<Self, crate::store::StoreError> {
        let secret = match store.meta("vault_prelogin_secret").await? {
            Some(s) => s,
            None => {
                let fresh = hex::encode(nx1_vault::crypto::random::<32>());
                store.set_meta("vault_prelogin_secret", &fresh).await?;
                fresh
            }
        };
        let mut prelogin_secret = [0u8; 32];
        prelogin_secret.copy_from_slice(&Sha256::digest(secret.as_bytes()));
        Ok(Self {
            failures_by_account: FailureLimit::new(per_minute(limits.logins_per_minute)),
            failures_by_source: FailureLimit::new(per_minute(
                limits.logins_per_minute.saturating_mul(3),
            )),
            challenges_by_source: RateLimiter::keyed(per_minute(600)),
            register_by_source: RateLimiter::keyed(Quota::per_hour(
                NonZeroU32::new(limits.registrations_per_hour.max(1)).expect("≥1"),
            )),
            requests: Default::default(),
            store,
            limits,
            ledger,
            storage_cap,
            prelogin_secret,
            challenges: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// The routes, to be nested under `/v1/vault`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/prelogin", get(prelogin))
            .route("/register", post(register))
            .route("/challenge", post(challenge))
            .route("/login", post(login))
            .route("/changes", get(changes))
            .route("/push", post(push))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            // Seeding a replica carries the whole vault in one request.
            .route(
                "/catchup",
                post(catchup).layer(DefaultBodyLimit::max(catchup_body_limit(
                    self.limits.max_bytes,
                ))),
            )
            .layer(axum::middleware::from_fn_with_state(self.clone(), count))
            .with_state(self)
    }

    fn limited<K: std::hash::Hash + Eq + Clone>(
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        what: &str,
    ) -> ApiResult<()> {
        limiter.check_key(key).map_err(|not_until| {
            too_many(
                what,
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// The account's manifest key (401 when there is no such account).
    async fn manifest_key(&self, account: &AccountId) -> ApiResult<VerifyingKey> {
        let row = self
            .account_row(account)
            .await?
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "no such account"))?;
        let key: Vec<u8> = row.try_get("manifest_key")?;
        verifying_key(&key)
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad manifest key"))
    }

    async fn account_row(&self, account: &AccountId) -> ApiResult<Option<sqlx::any::AnyRow>> {
        Ok(sqlx::query("SELECT salt, kdf_m_kib, kdf_t, kdf_p, auth_key, manifest_key, wrapped_key, head_seq, item_count, bytes_used FROM vault_accounts WHERE id = $1")
            .bind(account.to_string())
            .fetch_optional(self.store.pool())
            .await?)
    }
}

impl VaultService {
    /// Accounts, live items and bytes this node holds.
    pub async fn totals(&self) -> Result<(u64, u64, u64), sqlx::Error> {
        // SUM over BIGINT is NUMERIC on PostgreSQL, which the Any driver does not read: cast.
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS accounts, CAST(COALESCE(SUM(item_count), 0) AS BIGINT) AS items, CAST(COALESCE(SUM(bytes_used), 0) AS BIGINT) AS bytes FROM vault_accounts",
        )
        .fetch_one(self.store.pool())
        .await?;
        let get =
            |c: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(c)?.max(0) as u64) };
        Ok((get("accounts")?, get("items")?, get("bytes")?))
    }
}

fn kdf_of(row: &sqlx::any::AnyRow) -> ApiResult<KdfParams> {
    let get = |c: &str| -> ApiResult<u32> {
        u32::try_from(row.try_get::<i64, _>(c)?)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad KDF row"))
    };
    Ok(KdfParams {
        m_kib: get("kdf_m_kib")?,
        t: get("kdf_t")?,
        p: get("kdf_p")?,
    })
}

fn verifying_key(bytes: &[u8]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(bytes.try_into().ok()?).ok()
}

#[derive(serde::Deserialize)]
struct PreloginQuery {
    account: AccountId,
}

/// The salt and KDF parameters of an account. An unknown account gets a stable made-up salt
/// and the default parameters, so this does not tell who has an account.
async fn prelogin(
    State(svc): State<Arc<VaultService>>,
    q: Result<Query<PreloginQuery>, QueryRejection>,
) -> ApiResult<Json<wire::Prelogin>> {
    let Query(q) = q?;
    if let Some(row) = svc.account_row(&q.account).await? {
        return Ok(Json(wire::Prelogin {
            salt: row.try_get("salt")?,
            kdf: kdf_of(&row)?,
        }));
    }
    let mut h = Sha256::new();
    h.update(svc.prelogin_secret);
    h.update(q.account.as_bytes());
    Ok(Json(wire::Prelogin {
        salt: h.finalize()[..16].to_vec(),
        kdf: KdfParams::DEFAULT,
    }))
}

async fn register(
    State(svc): State<Arc<VaultService>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<wire::Register>, JsonRejection>,
) -> ApiResult<StatusCode> {
    VaultService::limited(&svc.register_by_source, &peer.ip(), "registrations")?;
    let Json(r) = body?;
    if r.salt.len() != 16 {
        return Err(ApiError::bad("salt must be 16 bytes"));
    }
    r.kdf.check().map_err(|e| ApiError::bad(e.to_string()))?;
    if r.wrapped_key.is_empty() || r.wrapped_key.len() > 512 {
        return Err(ApiError::bad("wrapped_key must be 1..=512 bytes"));
    }
    let auth = verifying_key(&r.auth_key)
        .ok_or_else(|| ApiError::bad("auth_key is not an ed25519 public key"))?;
    verifying_key(&r.manifest_key)
        .ok_or_else(|| ApiError::bad("manifest_key is not an ed25519 public key"))?;
    let proof =
        Signature::from_slice(&r.proof).map_err(|_| ApiError::bad("proof is not a signature"))?;
    auth.verify(&wire::register_message(&r), &proof)
        .map_err(|_| ApiError::bad("proof does not verify under auth_key"))?;
    // A node whose contributed storage is full takes no new account (one byte more is over).
    let mut conn = svc.store.pool().acquire().await?;
    svc.check_storage(&mut conn, &r.account.to_string(), 1)
        .await?;
    drop(conn);
    let res = sqlx::query("INSERT INTO vault_accounts (id, salt, kdf_m_kib, kdf_t, kdf_p, auth_key, manifest_key, wrapped_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING")
        .bind(r.account.to_string())
        .bind(r.salt)
        .bind(i64::from(r.kdf.m_kib))
        .bind(i64::from(r.kdf.t))
        .bind(i64::from(r.kdf.p))
        .bind(r.auth_key)
        .bind(r.manifest_key)
        .bind(r.wrapped_key)
        .bind(crate::now_unix())
        .execute(svc.store.pool())
        .await?;
    if res.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "an account with this name exists",
        ));
    }
    tracing::info!(account = %r.account, "vault: account registered");
    Ok(StatusCode::CREATED)
}

async fn challenge(
    State(svc): State<Arc<VaultService>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<wire::ChallengeRequest>, JsonRejection>,
) -> ApiResult<Json<wire::Challenge>> {
    VaultService::limited(
        &svc.challenges_by_source,
        &peer.ip(),
        "logins from this address",
    )?;
    let Json(r) = body?;
    let c: [u8; 32] = nx1_vault::crypto::random();
    let mut map = svc.challenges.lock();
    if map.len() >= MAX_CHALLENGES {
        map.retain(|_, (_, t)| t.elapsed() < CHALLENGE_TTL);
        if map.len() >= MAX_CHALLENGES {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many logins in progress",
            ));
        }
    }
    map.insert(c, (r.account, Instant::now()));
    Ok(Json(wire::Challenge {
        challenge: c.to_vec(),
    }))
}

async fn login(
    State(svc): State<Arc<VaultService>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<wire::Login>, JsonRejection>,
) -> ApiResult<Json<wire::Session>> {
    let Json(r) = body?;
    let (source, by_source, by_account) = (
        peer.ip(),
        "failed logins from this address",
        "failed logins for this account",
    );
    if let Some(wait) = svc.failures_by_source.blocked(&source) {
        return Err(too_many(by_source, wait));
    }
    if let Some(wait) = svc.failures_by_account.blocked(&r.account) {
        return Err(too_many(by_account, wait));
    }
    let failed = || {
        if let Some(wait) = svc.failures_by_source.failed(&source) {
            return too_many(by_source, wait);
        }
        if let Some(wait) = svc.failures_by_account.failed(&r.account) {
            return too_many(by_account, wait);
        }
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "login failed: wrong password or expired challenge",
        )
    };
    // Challenges are one-time and bound to the account they were issued for; several
    // devices (or strangers) asking at once do not spoil each other's.
    let issued = <[u8; 32]>::try_from(r.challenge.as_slice())
        .ok()
        .and_then(|c| svc.challenges.lock().remove(&c).map(|v| (c, v)));
    let Some((c, (for_account, at))) = issued else {
        return Err(failed());
    };
    if at.elapsed() > CHALLENGE_TTL || for_account != r.account {
        return Err(failed());
    }
    let Some(row) = svc.account_row(&r.account).await? else {
        return Err(failed());
    };
    let auth_key: Vec<u8> = row.try_get("auth_key")?;
    let key = verifying_key(&auth_key).ok_or_else(failed)?;
    let sig = Signature::from_slice(&r.signature).map_err(|_| failed())?;
    if key
        .verify(&wire::login_message(&r.account, &c), &sig)
        .is_err()
    {
        tracing::info!(account = %r.account, source = %peer.ip(), "vault: failed login");
        return Err(failed());
    }
    let token: [u8; 32] = nx1_vault::crypto::random();
    let token = URL_SAFE_NO_PAD.encode(token);
    let now = crate::now_unix();
    sqlx::query("DELETE FROM vault_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(svc.store.pool())
        .await?;
    sqlx::query("INSERT INTO vault_sessions (token_hash, account, expires_at) VALUES ($1, $2, $3)")
        .bind(hex::encode(Sha256::digest(token.as_bytes())))
        .bind(r.account.to_string())
        .bind(now + svc.limits.session_secs as i64)
        .execute(svc.store.pool())
        .await?;
    Ok(Json(wire::Session {
        token,
        expires_in: svc.limits.session_secs,
        wrapped_key: row.try_get("wrapped_key")?,
    }))
}

/// The account a request's bearer token belongs to.
struct Authed(AccountId);

impl FromRequestParts<Arc<VaultService>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<VaultService>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized =
            |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, format!("not logged in: {m}"));
        let token = bearer(&parts.headers).ok_or_else(|| unauthorized("no bearer token"))?;
        let row =
            sqlx::query("SELECT account, expires_at FROM vault_sessions WHERE token_hash = $1")
                .bind(hex::encode(Sha256::digest(token.as_bytes())))
                .fetch_optional(svc.store.pool())
                .await?
                .ok_or_else(|| unauthorized("unknown token"))?;
        if row.try_get::<i64, _>("expires_at")? < crate::now_unix() {
            return Err(unauthorized("session expired"));
        }
        let account: String = row.try_get("account")?;
        Ok(Authed(
            account.parse().map_err(|_| unauthorized("bad session"))?,
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[derive(serde::Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    /// Include the manifest chain even from change 0 (for seeding a new replica).
    #[serde(default)]
    chain: bool,
}

fn record_of(row: &sqlx::any::AnyRow) -> ApiResult<ItemRecord> {
    let id: String = row.try_get("id")?;
    Ok(ItemRecord {
        id: id.parse().map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad item id in store")
        })?,
        version: row.try_get::<i64, _>("version")? as u64,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        key: row.try_get("item_key")?,
        body: row.try_get("body")?,
    })
}

/// The account's manifest number `seq`.
async fn manifest_at(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    seq: i64,
) -> ApiResult<Manifest> {
    let row = sqlx::query("SELECT manifest FROM vault_manifests WHERE account = $1 AND seq = $2")
        .bind(account)
        .bind(seq)
        .fetch_one(conn)
        .await?;
    manifest_of(&row)
}

/// The hash the manifest after change `seq` must link to (zeros before the first change).
async fn link_hash(conn: &mut sqlx::AnyConnection, account: &str, seq: i64) -> ApiResult<[u8; 32]> {
    if seq == 0 {
        return Ok([0; 32]);
    }
    Ok(manifest_at(conn, account, seq).await?.hash())
}

/// Keeps a manifest in the account's chain.
async fn store_manifest(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    m: &Manifest,
) -> ApiResult<()> {
    sqlx::query("INSERT INTO vault_manifests (account, seq, manifest) VALUES ($1, $2, $3)")
        .bind(account)
        .bind(m.seq as i64)
        .bind(serde_json::to_string(m).expect("manifests serialize"))
        .execute(conn)
        .await?;
    Ok(())
}

fn manifest_of(row: &sqlx::any::AnyRow) -> ApiResult<Manifest> {
    let text: String = row.try_get("manifest")?;
    serde_json::from_str(&text)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad manifest in store"))
}

/// Everything after the cursor `since`, read from one snapshot.
async fn changes(
    State(svc): State<Arc<VaultService>>,
    Authed(account): Authed,
    q: Result<Query<ChangesQuery>, QueryRejection>,
) -> ApiResult<Json<wire::Changes>> {
    let Query(q) = q?;
    let since = i64::try_from(q.since).map_err(|_| ApiError::bad("since is too large"))?;
    let mut conn = svc.store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    if svc.store.backend() == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
    }
    let id = account.to_string();
    let head_seq: i64 = sqlx::query("SELECT head_seq FROM vault_accounts WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("head_seq")?;
    let mut out = wire::Changes::default();
    if head_seq > 0 {
        out.head = Some(manifest_at(&mut tx, &id, head_seq).await?);
    }
    if (since > 0 || q.chain) && since < head_seq {
        for row in sqlx::query(
            "SELECT manifest FROM vault_manifests WHERE account = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(&id)
        .bind(since)
        .fetch_all(&mut *tx)
        .await?
        {
            out.chain.push(manifest_of(&row)?);
        }
    }
    for row in sqlx::query("SELECT id, version, deleted, item_key, body FROM vault_items WHERE account = $1 AND seq > $2")
        .bind(&id)
        .bind(since)
        .fetch_all(&mut *tx)
        .await?
    {
        out.items.push(record_of(&row)?);
    }
    tx.commit().await?;
    Ok(Json(out))
}

/// Applies a batch of changes, all or nothing.
async fn push(
    State(svc): State<Arc<VaultService>>,
    Authed(account): Authed,
    headers: HeaderMap,
    body: Result<Json<wire::Push>, JsonRejection>,
) -> ApiResult<Json<wire::Pushed>> {
    let Json(p) = body?;
    if p.items.is_empty() {
        return Err(ApiError::bad("a push carries at least one item"));
    }
    if p.items.len() > wire::MAX_PUSH_ITEMS {
        return Err(ApiError::bad(format!(
            "{} items in one push; at most {}",
            p.items.len(),
            wire::MAX_PUSH_ITEMS
        )));
    }
    let mut ids = HashSet::new();
    for r in &p.items {
        r.check_shape().map_err(ApiError::bad)?;
        if !ids.insert(r.id) {
            return Err(ApiError::bad(format!("item {} appears twice", r.id)));
        }
    }
    let m = &p.manifest;
    if m.account != account {
        return Err(ApiError::bad("the manifest is for another account"));
    }
    if Some(m.seq) != p.base.checked_add(1) {
        return Err(ApiError::bad(format!(
            "the manifest's change number {} is not base + 1 = {}",
            m.seq,
            p.base.saturating_add(1)
        )));
    }
    let base = i64::try_from(p.base).map_err(|_| ApiError::bad("base is too large"))?;
    let mkey = svc.manifest_key(&account).await?;
    m.verify(&mkey, &account)
        .map_err(|e| ApiError::bad(format!("manifest refused: {e}")))?;

    let id = account.to_string();
    let seq = base + 1;
    // Only a push that can land is charged for.
    let head = svc
        .account_row(&account)
        .await?
        .map_or(0, |r| r.try_get::<i64, _>("head_seq").unwrap_or(0));
    if head != base {
        return Err(conflict(
            format!("the vault changed after change {base} (it is at {head}): pull first"),
            head,
            Vec::new(),
        ));
    }
    let synced = sync_bytes(&p.items);
    svc.charge(&account, seq as u64, synced, &headers).await?;
    let mut conn = svc.store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    // The compare-and-swap on the head: also takes the account's write lock.
    let moved =
        sqlx::query("UPDATE vault_accounts SET head_seq = $1 WHERE id = $2 AND head_seq = $3")
            .bind(seq)
            .bind(&id)
            .bind(base)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if moved != 1 {
        tx.rollback().await?;
        let head = svc
            .account_row(&account)
            .await?
            .map_or(0, |r| r.try_get::<i64, _>("head_seq").unwrap_or(0));
        return Err(conflict(
            format!("the vault changed after change {base} (it is at {head}): pull first"),
            head,
            Vec::new(),
        ));
    }
    let prev = link_hash(&mut tx, &id, base).await?;
    if m.prev != prev {
        tx.rollback().await?;
        return Err(ApiError::bad(format!(
            "the manifest does not link to change {base}"
        )));
    }

    let totals = sqlx::query("SELECT item_count, bytes_used FROM vault_accounts WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    let mut count: i64 = totals.try_get("item_count")?;
    let mut bytes: i64 = totals.try_get("bytes_used")?;
    let mut conflicts: Vec<ItemId> = Vec::new();
    for r in &p.items {
        let rid = r.id.to_string();
        let size = (r.key.len() + r.body.len()) as i64;
        let old = sqlx::query(
            "SELECT version, deleted, size FROM vault_items WHERE account = $1 AND id = $2",
        )
        .bind(&id)
        .bind(&rid)
        .fetch_optional(&mut *tx)
        .await?;
        let (cur, was_live, old_size) = match &old {
            Some(o) => (
                o.try_get::<i64, _>("version")?,
                o.try_get::<i64, _>("deleted")? == 0,
                o.try_get::<i64, _>("size")?,
            ),
            None => (0, false, 0),
        };
        if r.version as i64 != cur + 1 {
            conflicts.push(r.id);
            continue;
        }
        let written = if old.is_some() {
            sqlx::query("UPDATE vault_items SET version = $1, seq = $2, deleted = $3, item_key = $4, body = $5, size = $6 WHERE account = $7 AND id = $8 AND version = $9")
                .bind(r.version as i64)
                .bind(seq)
                .bind(i64::from(r.deleted))
                .bind(r.key.clone())
                .bind(r.body.clone())
                .bind(size)
                .bind(&id)
                .bind(&rid)
                .bind(cur)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            sqlx::query("INSERT INTO vault_items (account, id, version, seq, deleted, item_key, body, size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account, id) DO NOTHING")
                .bind(&id)
                .bind(&rid)
                .bind(r.version as i64)
                .bind(seq)
                .bind(i64::from(r.deleted))
                .bind(r.key.clone())
                .bind(r.body.clone())
                .bind(size)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        if written != 1 {
            conflicts.push(r.id);
            continue;
        }
        count += i64::from(!r.deleted) - i64::from(was_live);
        bytes += size - old_size;
    }
    if !conflicts.is_empty() {
        tx.rollback().await?;
        let mut current = Vec::new();
        for cid in &conflicts {
            if let Some(row) = sqlx::query("SELECT id, version, deleted, item_key, body FROM vault_items WHERE account = $1 AND id = $2")
                .bind(&id)
                .bind(cid.to_string())
                .fetch_optional(svc.store.pool())
                .await?
            {
                current.push(record_of(&row)?);
            }
        }
        return Err(conflict(
            format!(
                "{} item(s) changed since the versions this push was based on",
                conflicts.len()
            ),
            base,
            current,
        ));
    }
    if let Err(e) = svc.check_storage(&mut tx, &id, bytes).await {
        tx.rollback().await?;
        return Err(e);
    }
    if count > svc.limits.max_items as i64 || bytes > svc.limits.max_bytes as i64 {
        tx.rollback().await?;
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "quota exceeded: this push would make {count} items and {bytes} bytes; the account may hold {} items and {} bytes",
                svc.limits.max_items, svc.limits.max_bytes
            ),
        ));
    }
    sqlx::query("UPDATE vault_accounts SET item_count = $1, bytes_used = $2 WHERE id = $3")
        .bind(count)
        .bind(bytes)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    store_manifest(&mut tx, &id, m).await?;
    record_sync(&mut tx, &id, synced).await?;
    tx.commit().await?;
    Ok(Json(wire::Pushed { seq: seq as u64 }))
}

/// The header that carries a payment: a signed spend (`nx1_node::ledger::SignedEntry` JSON,
/// base64url).
pub const PAYMENT_HEADER: &str = "x-nx1-payment";

/// What a spend for change `seq` of vault account `account` names as its memo.
pub fn payment_memo(account: &str, seq: u64) -> String {
    format!("vault:{account}:{seq}")
}

impl VaultService {
    /// Vault sync this account used in the current period, in bytes.
    async fn sync_used(&self, account: &str) -> ApiResult<u64> {
        let period = crate::now_unix() / crate::credits::PERIOD_SECS;
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT bytes FROM vault_sync_usage WHERE account = $1 AND period = $2",
        )
        .bind(account)
        .bind(period)
        .fetch_optional(self.store.pool())
        .await?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    /// Charges for `bytes` of sync up to change `seq`: free within the period's free tier;
    /// beyond it the request must carry a spend of the account's credits for this change,
    /// which the ledger commits on a majority of the paying account's replicas.
    async fn charge(
        &self,
        account: &AccountId,
        seq: u64,
        bytes: u64,
        headers: &HeaderMap,
    ) -> ApiResult<()> {
        let used = self.sync_used(&account.to_string()).await?;
        let pricing = &self.ledger.pricing;
        let price = pricing.vault_sync(used, bytes);
        if price == 0 {
            return Ok(());
        }
        let payment_required = |why: String| {
            let mut e = ApiError::new(StatusCode::PAYMENT_REQUIRED, why);
            e.price = Some(price);
            e
        };
        let Some(payment) = headers.get(PAYMENT_HEADER) else {
            return Err(payment_required(format!(
                "out of credits — contribute or top up: vault sync beyond the free tier ({} KiB every 30 days) costs {} credits per MiB; this sync needs {price}",
                pricing.vault_free_bytes / 1024,
                pricing.vault_sync_per_mib
            )));
        };
        let signed: crate::ledger::SignedEntry = payment
            .to_str()
            .ok()
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad(format!("{PAYMENT_HEADER}: not a signed spend")))?;
        let crate::ledger::Entry::Spend(spend) = signed
            .verify()
            .map_err(|e| ApiError::bad(format!("{PAYMENT_HEADER}: {e}")))?
        else {
            return Err(ApiError::bad(format!("{PAYMENT_HEADER}: not a spend")));
        };
        let memo = payment_memo(&account.to_string(), seq);
        if spend.service != "vault_sync" || spend.memo != memo {
            return Err(ApiError::bad(format!(
                "{PAYMENT_HEADER}: the spend is not for this sync (service vault_sync, memo {memo})"
            )));
        }
        if spend.amount < price {
            return Err(payment_required(format!(
                "the payment of {} credits is short: this sync needs {price}",
                spend.amount
            )));
        }
        match self.ledger.spend(&signed).await {
            Ok(_) => Ok(()),
            Err(e @ crate::ledger::LedgerError::OutOfCredits { .. }) => {
                Err(payment_required(e.to_string()))
            }
            Err(e) => Err(ApiError::new(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
                format!("payment: {e}"),
            )),
        }
    }
}

impl VaultService {
    /// Bytes this node holds of a vault account, if it holds the account.
    pub async fn bytes_of(&self, account: &str) -> Result<Option<u64>, sqlx::Error> {
        let bytes: Option<i64> =
            sqlx::query_scalar("SELECT bytes_used FROM vault_accounts WHERE id = $1")
                .bind(account)
                .fetch_optional(self.store.pool())
                .await?;
        Ok(bytes.map(|b| b.max(0) as u64))
    }

    /// Refuses a write that would take the vaults this node holds past its contributed
    /// storage: `account` would hold `bytes` (the others as they are).
    async fn check_storage(
        &self,
        conn: &mut sqlx::AnyConnection,
        account: &str,
        bytes: i64,
    ) -> ApiResult<()> {
        if self.storage_cap == 0 {
            return Ok(());
        }
        let others: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(bytes_used) AS BIGINT) FROM vault_accounts WHERE id <> $1",
        )
        .bind(account)
        .fetch_one(&mut *conn)
        .await?;
        let total = others.unwrap_or(0).saturating_add(bytes);
        if total as u64 > self.storage_cap {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "this node's contributed storage is full: its vaults would take {total} bytes of the {} it gives (MiB: [contribute] storage_mb); use another node",
                    self.storage_cap
                ),
            ));
        }
        Ok(())
    }
}

/// Adds `bytes` to the account's sync in this period (in the write's transaction).
async fn record_sync(
    conn: &mut sqlx::AnyConnection,
    account: &str,
    bytes: u64,
) -> Result<(), sqlx::Error> {
    let period = crate::now_unix() / crate::credits::PERIOD_SECS;
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let moved = sqlx::query(
        "UPDATE vault_sync_usage SET bytes = bytes + $1 WHERE account = $2 AND period = $3",
    )
    .bind(bytes)
    .bind(account)
    .bind(period)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved == 0 {
        sqlx::query("INSERT INTO vault_sync_usage (account, period, bytes) VALUES ($1, $2, $3)")
            .bind(account)
            .bind(period)
            .bind(bytes)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Bytes a sync carries: every record's key and body.
fn sync_bytes(items: &[ItemRecord]) -> u64 {
    items
        .iter()
        .map(|r| (r.key.len() + r.body.len()) as u64)
        .sum()
}

fn conflict(error: String, head: i64, items: Vec<ItemRecord>) -> ApiError {
    let mut e = ApiError::new(StatusCode::CONFLICT, error.clone());
    e.conflict = Some(wire::Conflict {
        error,
        head: head as u64,
        items,
    });
    e
}

/// Brings a lagging replica up to date with what an up-to-date one answered: the chain must
/// link to this replica's head and be signed by the account, and the records, applied, must
/// add up to the signed root. All or nothing.
async fn catchup(
    State(svc): State<Arc<VaultService>>,
    Authed(account): Authed,
    headers: HeaderMap,
    body: Result<Json<wire::Changes>, JsonRejection>,
) -> ApiResult<Json<wire::Pushed>> {
    let Json(c) = body?;
    let head = c
        .head
        .as_ref()
        .ok_or_else(|| ApiError::bad("a catch-up carries the newest manifest"))?;
    if c.chain.last() != Some(head) {
        return Err(ApiError::bad("the chain must end at the newest manifest"));
    }
    let mut ids = HashSet::new();
    for r in &c.items {
        r.check_shape().map_err(ApiError::bad)?;
        if !ids.insert(r.id) {
            return Err(ApiError::bad(format!("item {} appears twice", r.id)));
        }
    }
    let mkey = svc.manifest_key(&account).await?;
    for m in &c.chain {
        m.verify(&mkey, &account)
            .map_err(|e| ApiError::bad(format!("manifest refused: {e}")))?;
    }

    let id = account.to_string();
    // Catching a replica up is sync too: charged like a push (for the change it ends at).
    let synced = sync_bytes(&c.items);
    svc.charge(&account, head.seq, synced, &headers).await?;
    let mut conn = svc.store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    // Write first: takes the account's write lock before anything is read.
    sqlx::query("UPDATE vault_accounts SET head_seq = head_seq WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let own: i64 = sqlx::query("SELECT head_seq FROM vault_accounts WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?
        .try_get("head_seq")?;
    let mut prev = link_hash(&mut tx, &id, own).await?;
    let mut seq = own as u64;
    for m in &c.chain {
        if m.seq != seq + 1 || m.prev != prev {
            tx.rollback().await?;
            return Err(conflict(
                format!("the chain does not continue this replica's change {own}"),
                own,
                Vec::new(),
            ));
        }
        seq = m.seq;
        prev = m.hash();
    }
    let new_seq = i64::try_from(seq).map_err(|_| ApiError::bad("change number too large"))?;
    for r in &c.items {
        let rid = r.id.to_string();
        let cur: Option<i64> =
            sqlx::query("SELECT version FROM vault_items WHERE account = $1 AND id = $2")
                .bind(&id)
                .bind(&rid)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("version"))
                .transpose()?;
        if cur.is_some_and(|v| v as u64 > r.version) {
            tx.rollback().await?;
            return Err(ApiError::bad(format!(
                "item {} would go back in version",
                r.id
            )));
        }
        let size = (r.key.len() + r.body.len()) as i64;
        sqlx::query("INSERT INTO vault_items (account, id, version, seq, deleted, item_key, body, size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, deleted = excluded.deleted, item_key = excluded.item_key, body = excluded.body, size = excluded.size")
            .bind(&id)
            .bind(&rid)
            .bind(r.version as i64)
            .bind(new_seq)
            .bind(i64::from(r.deleted))
            .bind(r.key.clone())
            .bind(r.body.clone())
            .bind(size)
            .execute(&mut *tx)
            .await?;
    }
    // The state now must be exactly what the newest manifest signs.
    let mut records = std::collections::BTreeMap::new();
    for row in sqlx::query(
        "SELECT id, version, deleted, item_key, body FROM vault_items WHERE account = $1",
    )
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?
    {
        let r = record_of(&row)?;
        records.insert(r.id, r);
    }
    if nx1_vault::manifest::root_of(&records) != head.root || records.len() as u64 != head.items {
        tx.rollback().await?;
        return Err(ApiError::bad(
            "the records do not add up to the signed manifest",
        ));
    }
    let count = records.values().filter(|r| !r.deleted).count() as i64;
    let bytes: i64 = records
        .values()
        .map(|r| (r.key.len() + r.body.len()) as i64)
        .sum();
    if let Err(e) = svc.check_storage(&mut tx, &id, bytes).await {
        tx.rollback().await?;
        return Err(e);
    }
    sqlx::query(
        "UPDATE vault_accounts SET head_seq = $1, item_count = $2, bytes_used = $3 WHERE id = $4",
    )
    .bind(new_seq)
    .bind(count)
    .bind(bytes)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    for m in &c.chain {
        store_manifest(&mut tx, &id, m).await?;
    }
    record_sync(&mut tx, &id, synced).await?;
    tx.commit().await?;
    tracing::info!(account = %account, from = own, to = seq, "vault: replica caught up");
    Ok(Json(wire::Pushed { seq }))
}

/// Counts every request by its call and the status it got.
async fn count(
    State(svc): State<Arc<VaultService>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let call = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .filter(|c| {
            [
                "prelogin",
                "register",
                "challenge",
                "login",
                "changes",
                "push",
                "catchup",
            ]
            .contains(c)
        })
        .unwrap_or("other")
        .to_owned();
    let response = next.run(request).await;
    svc.requests
        .get_or_create(&RequestLabel {
            call,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
