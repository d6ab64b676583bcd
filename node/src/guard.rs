//! Guard's DNS filter: a DNS server on the node's tunnel addresses — the `DNS =` of every
//! client config — that answers names on the block lists itself (recording why) and forwards
//! everything else to the upstream resolvers. The verdicts come from the `guard` crate; this
//! module is the sockets around it.

use crate::config::{BlockResponse, Guard, ListSource};
use crate::store::Store;
use anyhow::Context as _;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use nx1_guard::blocklist::{Blocklist, List, Verdict};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Findings kept in memory for `nx1 guard findings`.
const FINDINGS_KEPT: usize = 1000;
/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of the answers Guard makes itself.
const BLOCK_TTL: u32 = 60;

/// A blocked query and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// Unix time.
    pub at: u64,
    /// The tunnel address that asked.
    pub client: IpAddr,
    /// The name asked for (lower case, no trailing dot).
    pub name: String,
    /// The query type (A, AAAA, …).
    pub query_type: String,
    /// The list that blocked it.
    pub list: String,
    /// The listed domain that matched.
    pub rule: String,
}

/// Query counters by outcome.
#[derive(Debug, Default)]
pub struct GuardCounters {
    /// Answered by Guard because a list blocks the name.
    pub blocked: AtomicU64,
    /// Forwarded upstream.
    pub forwarded: AtomicU64,
    /// Not a valid query (answered FORMERR or dropped).
    pub malformed: AtomicU64,
    /// No upstream answered (SERVFAIL).
    pub upstream_failures: AtomicU64,
    /// Answers refused because a public name resolved to a private address.
    pub rebinding: AtomicU64,
    /// Queries answered from the cache.
    pub cache_hits: AtomicU64,
    /// Queries blocked because their name looks like tunnelled data.
    pub tunnelling: AtomicU64,
    /// Queries blocked by a learned model.
    pub model_blocks: AtomicU64,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The first A or AAAA record of an answer that points into private address space.
fn first_private_address(answer: &Message) -> Option<IpAddr> {
    answer.answers.iter().find_map(|r| {
        let ip = match &r.data {
            RData::A(A(ip)) => IpAddr::V4(*ip),
            RData::AAAA(AAAA(ip)) => IpAddr::V6(*ip),
            _ => return None,
        };
        is_private(ip).then_some(ip)
    })
}

/// Address space that belongs to private networks or the host itself.
fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Suffixes that only ever name things on local networks.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    [
        "local",
        "lan",
        "home",
        "internal",
        "localdomain",
        "home.arpa",
        "in-addr.arpa",
        "ip6.arpa",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

/// Name under which `nx1 guard allow|deny` rules are reported.
pub const LOCAL_RULES: &str = "nx1 guard allow/deny";
/// Name under which DNS-tunnelling blocks are reported.
pub const TUNNELLING: &str = "tunnelling detection";
/// Name under which rebinding refusals are reported.
pub const REBINDING: &str = "rebinding protection";

/// The name a learned model's blocks are reported under ("dga model").
pub fn model_list(kind: nx1_guard::model::Kind) -> String {
    format!("{} model", kind.name())
}

/// The categories a peer can turn off for itself (`nx1 guard disable CATEGORY --peer NAME`):
/// a block list by its name, or one of these detectors.
pub const DETECTORS: [&str; 4] = ["dga", "phishing", "tunnelling", "rebinding"];

/// Guard's verdict on a name, and the model scores behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Blocked (by a list, a detector or a model), allowed by an exception, or unlisted.
    pub verdict: Verdict,
    /// Scores of the models that judged the name (none when a list decided).
    pub scores: Vec<nx1_guard::model::Score>,
}

/// The compiled lists, swapped whole on reload.
struct Compiled {
    /// The owner's `nx1 guard allow|deny` rules: checked before every list, so no list's
    /// exception undoes the owner's deny.
    local: Blocklist,
    lists: Blocklist,
    /// Names of the local rules and of every list, in order.
    names: Vec<String>,
    /// Each peer's own allow/deny rules, by its tunnel addresses.
    per_peer: std::collections::HashMap<IpAddr, Arc<Blocklist>>,
    /// Categories each peer turned off, by its tunnel addresses.
    disabled: std::collections::HashMap<IpAddr, Arc<std::collections::HashSet<String>>>,
}

/// Why lists are being compiled, which decides how lists at URLs are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The node starts: download; if that fails, the last copy; if none, start without it.
    Start,
    /// `nx1 guard reload`: download; if that fails, the last copy; if none, fail.
    Reload,
    /// Rules changed (allow/deny, categories, a peer removed): the last copy, downloading
    /// only a list never downloaded before — a rule change does not wait on list servers.
    Rules,
}

/// Reads the list files and the local rules and compiles them.
async fn compile(config: &Guard, store: &Store, load: Load) -> anyhow::Result<Compiled> {
    let mut local = List {
        name: LOCAL_RULES.to_owned(),
        block: Default::default(),
        allow: Default::default(),
        skipped: 0,
    };
    for (domain, action) in rules(store).await? {
        match action.as_str() {
            "allow" => local.allow.push(domain),
            _ => local.block.push(domain),
        }
    }
    let local = Blocklist::compile(std::slice::from_ref(&local))?;
    let mut lists = Vec::new();
    for source in &config.blocklists {
        let text = match source {
            ListSource::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading block list {}", path.display()))?,
            ListSource::Url(url) => match cached_or_fetched(url, &config.list_cache, load).await {
                Ok(text) => text,
                // At start a list server that is down must not keep the node (and its VPN)
                // down: the list starts empty and the next reload tries again. On reload the
                // error keeps the lists in use.
                Err(e) if load == Load::Start => {
                    tracing::warn!(list = %url, "{e:#}; starting without this list");
                    String::new()
                }
                Err(e) => return Err(e),
            },
        };
        let name = source.name();
        let list = List::parse(&name, &text);
        tracing::info!(list = %name, blocked = list.block.len(), excepted = list.allow.len(), skipped = list.skipped, "block list loaded");
        lists.push(list);
    }
    Ok(Compiled {
        local,
        lists: Blocklist::compile(&lists)?,
        names: std::iter::once(LOCAL_RULES.to_owned())
            .chain(lists.iter().map(|l| l.name.clone()))
            .collect(),
        per_peer: compile_peer_rules(store).await?,
        disabled: disabled_categories(store).await?,
    })
}

/// Largest block list downloaded.
const MAX_LIST_BYTES: u64 = 256 << 20;
/// How long one download may take.
const LIST_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// The cache file of a list URL: its readable part, and a hash so that different URLs never
/// share a file.
fn cache_file(cache: &std::path::Path, url: &str) -> std::path::PathBuf {
    let readable: String = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    // Stable across releases, unlike std's DefaultHasher.
    let h = nx1_guard::fnv1a(url.bytes());
    cache.join(format!("{readable}-{h:016x}.txt"))
}

/// A list at a URL for `load`: for a rule change its last copy when there is one, otherwise
/// downloaded.
async fn cached_or_fetched(
    url: &str,
    cache: &std::path::Path,
    load: Load,
) -> anyhow::Result<String> {
    if load == Load::Rules
        && let Ok(text) = std::fs::read_to_string(cache_file(cache, url))
    {
        return Ok(text);
    }
    fetch_list(url, cache).await
}

/// Downloads a block list, keeping the copy in `cache`; when the download fails, the cached
/// copy from the last success is used.
async fn fetch_list(url: &str, cache: &std::path::Path) -> anyhow::Result<String> {
    let file = cache_file(cache, url);
    let owned = url.to_owned();
    let downloaded = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(LIST_DOWNLOAD_TIMEOUT))
            .user_agent(concat!("nx1/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut response = agent.get(&owned).call()?;
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_LIST_BYTES)
            .read_to_string()?;
        Ok(text)
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r);
    match downloaded {
        Ok(text) => {
            // A copy that cannot be kept costs only the fallback, not the list.
            let tmp = file.with_extension("tmp");
            let kept = std::fs::create_dir_all(cache)
                .and_then(|()| std::fs::write(&tmp, &text))
                .and_then(|()| std::fs::rename(&tmp, &file));
            if let Err(e) = kept {
                tracing::warn!(list = %url, "cannot keep a copy in {}: {e}", file.display());
            }
            Ok(text)
        }
        Err(e) => match std::fs::read_to_string(&file) {
            Ok(text) => {
                tracing::warn!(list = %url, "downloading block list: {e:#}; using the copy from the last download");
                Ok(text)
            }
            Err(_) => Err(e.context(format!("downloading block list {url} (no earlier copy)"))),
        },
    }
}

/// The categories each peer turned off, by its tunnel addresses.
async fn disabled_categories(
    store: &Store,
) -> anyhow::Result<std::collections::HashMap<IpAddr, Arc<std::collections::HashSet<String>>>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT c.category AS category, p.ipv4 AS ipv4, p.ipv6 AS ipv6 FROM guard_peer_categories c JOIN peers p ON p.name = c.peer ORDER BY c.peer")
        .fetch_all(store.pool())
        .await?;
    let mut by_peer: std::collections::HashMap<
        (String, String),
        std::collections::HashSet<String>,
    > = Default::default();
    for row in &rows {
        let key = (row.try_get("ipv4")?, row.try_get("ipv6")?);
        by_peer
            .entry(key)
            .or_default()
            .insert(row.try_get("category")?);
    }
    let mut out = std::collections::HashMap::new();
    for ((v4, v6), set) in by_peer {
        let set = Arc::new(set);
        for ip in [v4, v6].iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            out.insert(ip, set.clone());
        }
    }
    Ok(out)
}

/// The categories one peer has turned off, sorted.
pub async fn peer_categories(store: &Store, peer: &str) -> anyhow::Result<Vec<String>> {
    use sqlx::Row as _;
    let rows =
        sqlx::query("SELECT category FROM guard_peer_categories WHERE peer = $1 ORDER BY category")
            .bind(peer)
            .fetch_all(store.pool())
            .await?;
    rows.iter().map(|r| Ok(r.try_get("category")?)).collect()
}

/// Turns a category (a list's name or one of [`DETECTORS`]) off or back on for one peer.
pub async fn set_peer_category(
    store: &Store,
    peer: &str,
    category: &str,
    enabled: bool,
) -> anyhow::Result<()> {
    if enabled {
        sqlx::query("DELETE FROM guard_peer_categories WHERE peer = $1 AND category = $2")
            .bind(peer)
            .bind(category)
            .execute(store.pool())
            .await?;
    } else {
        sqlx::query("INSERT INTO guard_peer_categories (peer, category, created_at) VALUES ($1, $2, $3) ON CONFLICT (peer, category) DO NOTHING")
            .bind(peer)
            .bind(category)
            .bind(unix_now() as i64)
            .execute(store.pool())
            .await?;
    }
    Ok(())
}

/// Each peer's rules as a list of its own, reachable by the peer's tunnel addresses.
async fn compile_peer_rules(
    store: &Store,
) -> anyhow::Result<std::collections::HashMap<IpAddr, Arc<Blocklist>>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT r.peer AS peer, r.domain AS domain, r.action AS action, p.ipv4 AS ipv4, p.ipv6 AS ipv6 FROM guard_peer_rules r JOIN peers p ON p.name = r.peer ORDER BY r.peer, r.domain")
        .fetch_all(store.pool())
        .await?;
    let mut by_peer: std::collections::BTreeMap<String, (List, Vec<IpAddr>)> = Default::default();
    for row in &rows {
        let peer: String = row.try_get("peer")?;
        let domain: String = row.try_get("domain")?;
        let action: String = row.try_get("action")?;
        let entry = by_peer.entry(peer.clone()).or_insert_with(|| {
            let ips = [
                row.try_get::<String, _>("ipv4"),
                row.try_get::<String, _>("ipv6"),
            ]
            .into_iter()
            .filter_map(|r| r.ok()?.parse().ok())
            .collect();
            (
                List {
                    name: format!("{LOCAL_RULES} --peer {peer}"),
                    block: Default::default(),
                    allow: Default::default(),
                    skipped: 0,
                },
                ips,
            )
        });
        match action.as_str() {
            "allow" => entry.0.allow.push(domain),
            _ => entry.0.block.push(domain),
        }
    }
    let mut per_peer = std::collections::HashMap::new();
    for (_, (list, ips)) in by_peer {
        let compiled = Arc::new(Blocklist::compile(std::slice::from_ref(&list))?);
        for ip in ips {
            per_peer.insert(ip, compiled.clone());
        }
    }
    Ok(per_peer)
}

/// Sets (or with `None` removes) one peer's rule for `domain`.
pub async fn set_peer_rule(
    store: &Store,
    peer: &str,
    domain: &str,
    action: Option<&str>,
) -> anyhow::Result<()> {
    match action {
        Some(action) => {
            sqlx::query("INSERT INTO guard_peer_rules (peer, domain, action, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (peer, domain) DO UPDATE SET action = excluded.action, created_at = excluded.created_at")
                .bind(peer)
                .bind(domain)
                .bind(action)
                .bind(unix_now() as i64)
                .execute(store.pool())
                .await?;
        }
        None => {
            sqlx::query("DELETE FROM guard_peer_rules WHERE peer = $1 AND domain = $2")
                .bind(peer)
                .bind(domain)
                .execute(store.pool())
                .await?;
        }
    }
    Ok(())
}

/// The local rules: (domain, "allow" | "deny").
pub async fn rules(store: &Store) -> anyhow::Result<Vec<(String, String)>> {
    use sqlx::Row as _;
    let rows = sqlx::query("SELECT domain, action FROM guard_rules ORDER BY domain")
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("domain")?, r.try_get("action")?)))
        .collect()
}

/// Sets (or with `None` removes) the local rule for `domain`.
pub async fn set_rule(store: &Store, domain: &str, action: Option<&str>) -> anyhow::Result<()> {
    match action {
        Some(action) => {
            sqlx::query("INSERT INTO guard_rules (domain, action, created_at) VALUES ($1, $2, $3) ON CONFLICT (domain) DO UPDATE SET action = excluded.action, created_at = excluded.created_at")
                .bind(domain)
                .bind(action)
                .bind(unix_now() as i64)
                .execute(store.pool())
                .await?;
        }
        None => {
            sqlx::query("DELETE FROM guard_rules WHERE domain = $1")
                .bind(domain)
                .execute(store.pool())
                .await?;
        }
    }
    Ok(())
}

/// Most answers kept in the cache.
const CACHE_ENTRIES: usize = 20_000;
/// Longest an answer is kept, whatever its TTL says.
const CACHE_MAX_TTL: u32 = 3600;
/// Largest answer kept (the DNS flag day's safe UDP size).
const CACHE_MAX_ANSWER: usize = 1232;
/// How long an answer with no records (NXDOMAIN, NODATA) is kept.
const CACHE_NEGATIVE_TTL: u32 = 30;

/// Upstream answers by (name, type, class), kept for their smallest TTL.
#[derive(Default)]
struct Cache {
    entries: std::collections::HashMap<(String, u16, u16), (Vec<u8>, std::time::Instant)>,
}

impl Cache {
    fn get(&mut self, key: &(String, u16, u16), id: u16) -> Option<Vec<u8>> {
        let (answer, expires) = self.entries.get(key)?;
        if std::time::Instant::now() >= *expires {
            self.entries.remove(key);
            return None;
        }
        let mut answer = answer.clone();
        answer[..2].copy_from_slice(&id.to_be_bytes());
        Some(answer)
    }

    fn put(&mut self, key: (String, u16, u16), answer: &[u8], message: &Message) {
        let cacheable = matches!(
            message.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ) && !message.metadata.truncation;
        if !cacheable {
            return;
        }
        let ttl = message
            .answers
            .iter()
            .chain(&message.authorities)
            .map(|r| r.ttl)
            .min()
            .unwrap_or(CACHE_NEGATIVE_TTL)
            .min(CACHE_MAX_TTL);
        // Answers only TCP can carry are not kept: a UDP client could not take them.
        if ttl == 0 || answer.len() > CACHE_MAX_ANSWER {
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES {
            let now = std::time::Instant::now();
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= CACHE_ENTRIES {
                self.entries.clear();
            }
        }
        let expires = std::time::Instant::now() + Duration::from_secs(ttl.into());
        self.entries.insert(key, (answer.to_vec(), expires));
    }
}

/// The running filter.
pub struct GuardService {
    cache: Mutex<Cache>,
    config: Guard,
    compiled: parking_lot::RwLock<Arc<Compiled>>,
    upstreams: Vec<SocketAddr>,
    block_response: BlockResponse,
    findings: Mutex<VecDeque<Finding>>,
    /// Findings since the start, by list or detector.
    finding_counts: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Distinct names per client and domain, for tunnels that keep their labels short.
    volume: Mutex<nx1_guard::tunnelling::QueryVolume>,
    models: Vec<nx1_guard::model::Model>,
    /// Counters.
    pub counters: GuardCounters,
    /// Where the DNS server listens.
    pub listen: Vec<SocketAddr>,
}

impl GuardService {
    /// Reads and compiles the lists and binds the DNS sockets on `addresses` (port 53).
    pub async fn start(
        config: &Guard,
        store: &Store,
        addresses: &[IpAddr],
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let compiled = compile(config, store, Load::Start).await?;
        let models = load_models(config)?;
        let upstreams = if config.upstreams.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            crate::config::resolv_conf_nameservers(&text)
        } else {
            config.upstreams.clone()
        };
        if upstreams.is_empty() {
            // Blocking still works; every other name gets SERVFAIL until upstreams are set.
            tracing::warn!(
                "[guard] has no upstreams and /etc/resolv.conf names no nameserver: names that are not blocked will fail to resolve"
            );
        }
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        for ip in addresses {
            let addr = SocketAddr::new(*ip, 53);
            sockets
                .push(bind_dns(addr).with_context(|| format!("binding the DNS server on {addr}"))?);
            listeners.push(
                bind_dns_tcp(addr)
                    .with_context(|| format!("binding the DNS server on {addr} (TCP)"))?,
            );
        }
        let service = Arc::new(Self {
            cache: Mutex::new(Cache::default()),
            config: config.clone(),
            compiled: parking_lot::RwLock::new(Arc::new(compiled)),
            upstreams,
            block_response: config.block_response,
            findings: Mutex::new(VecDeque::new()),
            finding_counts: Mutex::new(Default::default()),
            volume: Mutex::new(Default::default()),
            models,
            counters: GuardCounters::default(),
            listen: sockets.iter().filter_map(|s| s.local_addr().ok()).collect(),
        });
        for socket in sockets {
            tokio::spawn(serve(Arc::new(socket), service.clone(), stop.clone()));
        }
        let connections = Arc::new(tokio::sync::Semaphore::new(TCP_CONNECTIONS));
        for listener in listeners {
            tokio::spawn(serve_tcp(
                listener,
                service.clone(),
                connections.clone(),
                stop.clone(),
            ));
        }
        Ok(service)
    }

    /// The lists' verdict for a name asked by `client` (see [`Compiled::verdict`]).
    #[cfg(test)]
    fn lists_verdict(&self, name: &str, client: Option<IpAddr>) -> Verdict {
        self.compiled.read().verdict(name, client)
    }

    /// Whether `client` turned `category` off.
    fn is_disabled(&self, client: Option<IpAddr>, category: &str) -> bool {
        self.compiled.read().off(client, category)
    }

    /// DNS tunnelling by volume: counts the query, and blocks it when the client has asked
    /// for too many distinct names under its domain.
    fn volume_verdict(&self, name: &str, client: IpAddr) -> Verdict {
        let now = std::time::Instant::now();
        let mut volume = self.volume.lock();
        if let Some(domain) = volume.blocked(client, name, now) {
            return Verdict::Blocked {
                list: TUNNELLING.into(),
                rule: format!("{domain} blocked for this client after a tunnel by query volume"),
            };
        }
        match volume.count(client, name, now) {
            Some(found) => Verdict::Blocked {
                list: TUNNELLING.into(),
                rule: format!("query volume: {found}"),
            },
            None => Verdict::Unlisted,
        }
    }

    /// Guard's whole verdict on a name, as `client` (or, without one, everyone) gets it: the
    /// lists, then DNS-tunnelling detection, then the learned models — each unless the peer
    /// turned it off.
    pub fn judge(&self, name: &str, client: Option<IpAddr>) -> Judgement {
        // One snapshot of the lists and the peer's choices for the whole verdict.
        let compiled = self.compiled.read().clone();
        let verdict = compiled.verdict(name, client);
        if verdict != Verdict::Unlisted {
            return Judgement {
                verdict,
                scores: Vec::new(),
            };
        }
        if !compiled.off(client, "tunnelling")
            && let Some(suspicion) = nx1_guard::tunnelling::suspicious_label(name)
        {
            return Judgement {
                verdict: Verdict::Blocked {
                    list: TUNNELLING.into(),
                    rule: suspicion.to_string(),
                },
                scores: Vec::new(),
            };
        }
        let mut judgement = Judgement {
            verdict: Verdict::Unlisted,
            scores: Vec::new(),
        };
        for model in &self.models {
            if compiled.off(client, model.kind().name()) {
                continue;
            }
            let Some(score) = model.score(name) else {
                continue;
            };
            judgement.scores.push(score);
            if score.flagged && judgement.verdict == Verdict::Unlisted {
                judgement.verdict = Verdict::Blocked {
                    list: model_list(model.kind()),
                    rule: format!(
                        "score {:.3} ≥ threshold {:.3}",
                        score.score,
                        model.threshold()
                    ),
                };
            }
        }
        judgement
    }

    /// The loaded lists.
    pub fn list_names(&self) -> Vec<String> {
        self.compiled.read().names.clone()
    }

    /// Names on the block lists.
    pub fn blocked_names(&self) -> usize {
        let compiled = self.compiled.read();
        compiled.local.blocked_len() + compiled.lists.blocked_len()
    }

    /// Re-reads the list files and local rules; on any error the lists in use stay.
    pub async fn reload(&self, store: &Store) -> anyhow::Result<()> {
        let compiled = compile(&self.config, store, Load::Reload).await?;
        *self.compiled.write() = Arc::new(compiled);
        Ok(())
    }

    /// Recompiles after a rule change: lists at URLs come from their last copies.
    pub async fn reload_rules(&self, store: &Store) -> anyhow::Result<()> {
        let compiled = compile(&self.config, store, Load::Rules).await?;
        *self.compiled.write() = Arc::new(compiled);
        Ok(())
    }

    /// Recent findings, newest last, optionally for one client address.
    pub fn findings(&self, client: Option<IpAddr>) -> Vec<Finding> {
        self.findings_where(|f| client.is_none_or(|c| f.client == c))
    }

    /// The recent findings `keep` takes, newest last (only those are copied).
    pub fn findings_where(&self, keep: impl Fn(&Finding) -> bool) -> Vec<Finding> {
        self.findings
            .lock()
            .iter()
            .filter(|f| keep(f))
            .cloned()
            .collect()
    }

    /// Findings since the start, by list or detector.
    pub fn finding_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.finding_counts.lock().clone()
    }

    pub(crate) fn record(&self, finding: Finding) {
        *self
            .finding_counts
            .lock()
            .entry(finding.list.clone())
            .or_default() += 1;
        let mut findings = self.findings.lock();
        if findings.len() == FINDINGS_KEPT {
            findings.pop_front();
        }
        findings.push_back(finding);
    }

    /// The answer to one query datagram from `client`, if any is due.
    async fn answer(&self, query: &[u8], client: IpAddr) -> Option<Vec<u8>> {
        self.answer_over(query, client, false).await
    }

    /// The answer to one query from `client`, which asked over TCP if `tcp` (then an answer
    /// too large for UDP is fetched whole; over UDP the client gets it truncated and retries
    /// over TCP).
    async fn answer_over(&self, query: &[u8], client: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        let message = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                // With a header, say FORMERR so the client stops waiting; without, drop.
                let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        let id = message.metadata.id;
        if message.metadata.message_type != MessageType::Query || message.queries.len() != 1 {
            self.counters.malformed.fetch_add(1, Relaxed);
            return Message::error_msg(id, message.metadata.op_code, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
        let question = &message.queries[0];
        let name = question.name().to_ascii();
        let verdict = match self.judge(&name, Some(client)).verdict {
            Verdict::Unlisted if !self.is_disabled(Some(client), "tunnelling") => {
                self.volume_verdict(&name, client)
            }
            verdict => verdict,
        };
        let allowed = matches!(verdict, Verdict::Allowed { .. });
        if let Verdict::Blocked { list, rule } = verdict {
            self.counters.blocked.fetch_add(1, Relaxed);
            if list == TUNNELLING {
                self.counters.tunnelling.fetch_add(1, Relaxed);
            } else if list.ends_with(" model") {
                self.counters.model_blocks.fetch_add(1, Relaxed);
            }
            let qtype = question.query_type();
            self.record(Finding {
                at: unix_now(),
                client,
                name: name.trim_end_matches('.').to_ascii_lowercase(),
                query_type: qtype.to_string(),
                list,
                rule,
            });
            let mut reply = own_reply(&message);
            match (self.block_response, qtype) {
                (BlockResponse::Nxdomain, _) => {
                    reply.metadata.response_code = ResponseCode::NXDomain
                }
                (BlockResponse::Zero, RecordType::A) => {
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        BLOCK_TTL,
                        RData::A(A(Ipv4Addr::UNSPECIFIED)),
                    ));
                }
                (BlockResponse::Zero, RecordType::AAAA) => {
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        BLOCK_TTL,
                        RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED)),
                    ));
                }
                (BlockResponse::Zero, _) => {}
            }
            return reply.to_vec().ok();
        }
        let key = (
            name.to_ascii_lowercase(),
            u16::from(question.query_type()),
            u16::from(question.query_class()),
        );
        let room = if tcp {
            usize::MAX
        } else {
            usize::from(message.max_payload())
        };
        if let Some(answer) = self.cache.lock().get(&key, id).filter(|a| a.len() <= room) {
            self.counters.cache_hits.fetch_add(1, Relaxed);
            return Some(answer);
        }
        self.counters.forwarded.fetch_add(1, Relaxed);
        let Some((answer, parsed)) = self.forward(query, question, tcp).await else {
            self.counters.upstream_failures.fetch_add(1, Relaxed);
            return Message::error_msg(id, message.metadata.op_code, ResponseCode::ServFail)
                .to_vec()
                .ok();
        };
        // DNS rebinding: a public name must not resolve into private address space (the
        // clients' home networks, the node itself). Names the owner allowed, and names under
        // local-only suffixes, may. Such answers are never cached: they are checked every time.
        match first_private_address(&parsed) {
            Some(ip)
                if !is_local_name(&name)
                    && !allowed
                    && !self.is_disabled(Some(client), "rebinding") =>
            {
                self.counters.rebinding.fetch_add(1, Relaxed);
                self.counters.blocked.fetch_add(1, Relaxed);
                self.record(Finding {
                    at: unix_now(),
                    client,
                    name: name.trim_end_matches('.').to_ascii_lowercase(),
                    query_type: question.query_type().to_string(),
                    list: REBINDING.into(),
                    rule: format!("answer {ip} is a private address"),
                });
                let mut reply = own_reply(&message);
                reply.metadata.response_code = ResponseCode::Refused;
                reply.to_vec().ok()
            }
            Some(_) => Some(answer),
            None => {
                self.cache.lock().put(key, &answer, &parsed);
                Some(answer)
            }
        }
    }

    /// Asks each upstream in turn, from a fresh random port and with a fresh random id, and
    /// relays the first answer that carries that id and the same question — parsed, so that
    /// every relayed answer has been through the rebinding check. The client's id is put back.
    async fn forward(
        &self,
        query: &[u8],
        question: &hickory_proto::op::Query,
        tcp: bool,
    ) -> Option<(Vec<u8>, Message)> {
        let client_id = [query[0], query[1]];
        let mut id = [0u8; 2];
        getrandom::fill(&mut id).ok()?;
        let mut ours = query.to_vec();
        ours[..2].copy_from_slice(&id);
        for upstream in &self.upstreams {
            let local: SocketAddr = if upstream.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(socket) = UdpSocket::bind(local).await else {
                continue;
            };
            if socket.connect(upstream).await.is_err() || socket.send(&ours).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65_535];
            let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                let Ok(answer) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let same_question = answer.queries.len() == 1
                    && answer.queries[0]
                        .name()
                        .to_ascii()
                        .eq_ignore_ascii_case(&question.name().to_ascii())
                    && answer.queries[0].query_type() == question.query_type();
                if answer.metadata.id == u16::from_be_bytes(id)
                    && answer.metadata.message_type == MessageType::Response
                    && same_question
                {
                    // Too large for UDP: ask the same upstream over TCP.
                    if tcp
                        && answer.metadata.truncation
                        && let Some(mut full) = ask_tcp(*upstream, &ours).await
                        && let Ok(parsed) = Message::from_vec(&full)
                        && parsed.metadata.id == u16::from_be_bytes(id)
                        && parsed.queries == answer.queries
                    {
                        full[..2].copy_from_slice(&client_id);
                        return Some((full, parsed));
                    }
                    buf.truncate(n);
                    buf[..2].copy_from_slice(&client_id);
                    return Some((buf, answer));
                }
            }
        }
        None
    }
}

/// Whether the peer at `client` turned `category` off.
impl Compiled {
    /// The lists' verdict for a name asked by `client`: the peer's own rules first, then the
    /// owner's, then everyone's lists (a list the peer turned off does not block it).
    fn verdict(&self, name: &str, client: Option<IpAddr>) -> Verdict {
        if let Some(own) = client.and_then(|c| self.per_peer.get(&c.to_canonical())) {
            let verdict = own.check(name);
            if verdict != Verdict::Unlisted {
                return verdict;
            }
        }
        let local = self.local.check(name);
        if local != Verdict::Unlisted {
            return local;
        }
        match self.lists.check(name) {
            Verdict::Blocked { list, .. } if self.off(client, &list) => Verdict::Unlisted,
            verdict => verdict,
        }
    }

    /// Whether the peer at `client` turned `category` off.
    fn off(&self, client: Option<IpAddr>, category: &str) -> bool {
        client
            .and_then(|c| self.disabled.get(&c.to_canonical()))
            .is_some_and(|set| set.contains(category))
    }
}

/// The learned models `config` asks for, with their thresholds.
fn load_models(config: &Guard) -> anyhow::Result<Vec<nx1_guard::model::Model>> {
    config
        .models
        .iter()
        .map(|&(kind, threshold)| {
            let mut model = nx1_guard::model::builtin(kind)
                .with_context(|| format!("loading the built-in {} model", kind.name()))?;
            if let Some(t) = threshold {
                model.set_threshold(t);
            }
            Ok(model)
        })
        .collect()
}

/// The frame of an answer Guard gives itself: the query's id, question and RD flag.
fn own_reply(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    reply
}

/// How often [`FlowGuard::tick`] runs.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a rate limit set by a detector lasts.
const RATE_LIMIT_FOR: Duration = Duration::from_secs(60);
/// New connections per second a burst-limited peer may open.
const BURST_LIMIT: f64 = 20.0;

/// Guard in the exit's packet path: a flow table over every peer's connections, and per
/// peer the scan, flood, burst, beacon, upload and anomaly detectors of the `guard` crate.
/// Each detector's finding is recorded with its evidence and acted on as configured.
pub struct FlowGuard {
    dns: Arc<GuardService>,
    actions: crate::config::Actions,
    quarantine: Duration,
    thresholds: nx1_guard::traffic::Thresholds,
    state: Mutex<FlowState>,
    /// Peers quarantined so far.
    pub quarantines: AtomicU64,
}

/// Everything the packet path changes, under one lock.
struct FlowState {
    /// By public key; foldhash, as the flow table (looked up for every packet).
    peers:
        std::collections::HashMap<nx1_vpn::keys::PublicKey, PeerWatch, foldhash::fast::RandomState>,
    flows: nx1_guard::flows::FlowTable,
    next_id: u32,
}

/// A token bucket set by a detector for a while.
#[derive(Debug, Clone, Copy)]
struct Limit {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
    until: std::time::Instant,
}

impl Limit {
    fn new(rate: f64, now: std::time::Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            last: now,
            until: now + RATE_LIMIT_FOR,
        }
    }

    /// Whether `cost` may pass at `now`.
    fn take(&mut self, cost: f64, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

struct PeerWatch {
    id: u32,
    attempts: nx1_guard::scan::Attempts,
    flood: nx1_guard::flood::FloodLimiter,
    traffic: nx1_guard::traffic::PeerTraffic,
    /// Beacons seen on new flows, reported at the next tick.
    beacons: [Option<nx1_guard::traffic::Detection>; 8],
    flood_reported: Option<std::time::Instant>,
    client: Option<IpAddr>,
    reported: Option<std::time::Instant>,
    quarantined_until: Option<std::time::Instant>,
    /// New connections, while a burst is rate-limited.
    burst_limit: Option<Limit>,
    /// Upload bytes, while an upload is rate-limited.
    upload_limit: Option<Limit>,
    /// Beacon destinations blocked (protocol, address, port), each until its time.
    blocked: [Option<(u8, IpAddr, u16, std::time::Instant)>; 4],
}

impl PeerWatch {
    fn new(id: u32) -> Self {
        Self {
            id,
            attempts: Default::default(),
            flood: Default::default(),
            traffic: Default::default(),
            beacons: Default::default(),
            flood_reported: None,
            client: None,
            reported: None,
            quarantined_until: None,
            burst_limit: None,
            upload_limit: None,
            blocked: [None; 4],
        }
    }

    fn quarantined(&self, now: std::time::Instant) -> bool {
        self.quarantined_until.is_some_and(|t| now < t)
    }
}

/// The flow table's state, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableStatus {
    /// Flows tracked now.
    pub flows: usize,
    /// The most it tracks.
    pub capacity: usize,
    /// In emergency mode now.
    pub emergency: bool,
    /// Its counters.
    pub counters: nx1_guard::flows::FlowCounters,
}

impl FlowGuard {
    /// Watches traffic, reporting into `dns`'s findings.
    pub fn new(dns: Arc<GuardService>, config: &Guard) -> Arc<Self> {
        Arc::new(Self {
            dns,
            actions: config.actions,
            quarantine: config.quarantine,
            thresholds: nx1_guard::traffic::Thresholds {
                learning: config.learning,
                ..Default::default()
            },
            state: Mutex::new(FlowState {
                peers: Default::default(),
                flows: nx1_guard::flows::FlowTable::new(config.max_flows),
                next_id: 0,
            }),
            quarantines: AtomicU64::new(0),
        })
    }

    /// Records a packet-path finding.
    fn report(&self, client: Option<IpAddr>, kind: &str, list: &str, rule: String) {
        let client = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        tracing::warn!(%client, detector = list, "guard: {rule}");
        self.dns.record(Finding {
            at: unix_now(),
            client,
            name: String::new(),
            query_type: kind.into(),
            list: list.into(),
            rule,
        });
    }

    /// Expires flows and attempts, runs the detectors and acts on what they find; run every
    /// [`TICK`].
    pub fn tick(&self) {
        use crate::config::Action;
        use nx1_guard::traffic::Detection;
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let FlowState { peers, flows, .. } = &mut *state;
        flows.expire(now);
        for watch in peers.values_mut() {
            watch.attempts.expire(now);
            if watch.burst_limit.is_some_and(|l| now >= l.until) {
                watch.burst_limit = None;
            }
            if watch.upload_limit.is_some_and(|l| now >= l.until) {
                watch.upload_limit = None;
            }
            for slot in &mut watch.blocked {
                if slot.is_some_and(|(_, _, _, until)| now >= until) {
                    *slot = None;
                }
            }
            if let Some((kind, dropped)) = watch.flood.take_dropped()
                && watch
                    .flood_reported
                    .is_none_or(|t| now.duration_since(t) >= nx1_guard::scan::WINDOW)
            {
                watch.flood_reported = Some(now);
                let (rate, _) = kind.rate();
                let rule = match self.actions.flood {
                    Action::Alert => format!(
                        "{} flood: {dropped} packets over {rate:.0}/s in {} ms (alert only)",
                        kind.name(),
                        TICK.as_millis()
                    ),
                    _ => format!(
                        "{} flood: {dropped} packets over {rate:.0}/s dropped in {} ms",
                        kind.name(),
                        TICK.as_millis()
                    ),
                };
                self.act(watch, self.actions.flood, now);
                self.report(watch.client, kind.name(), "flood detection", rule);
            }
            let recently = watch
                .reported
                .is_some_and(|t| now.duration_since(t) < nx1_guard::scan::WINDOW);
            if !recently
                && self.actions.scan != Action::Allow
                && let Some(scan) = watch.attempts.scan()
            {
                watch.reported = Some(now);
                self.act(watch, self.actions.scan, now);
                self.report(watch.client, "TCP", "port scan detection", scan.to_string());
            }
            let mut found = watch.traffic.tick(now, &self.thresholds);
            found.extend(watch.beacons.iter_mut().filter_map(Option::take));
            for detection in found {
                let (action, list) = match &detection {
                    Detection::Burst { .. } => (self.actions.burst, "connection burst detection"),
                    Detection::Beacon { .. } => (self.actions.beacon, "beaconing detection"),
                    Detection::Upload { .. } => (self.actions.upload, "upload volume detection"),
                    Detection::Anomaly { .. } => (self.actions.anomaly, "anomaly detection"),
                };
                if action == Action::Allow {
                    continue;
                }
                match (&detection, action) {
                    (Detection::Burst { .. }, Action::RateLimit) => {
                        watch.burst_limit = Some(Limit::new(BURST_LIMIT, now));
                    }
                    (Detection::Upload { .. }, Action::RateLimit) => {
                        let rate = self.thresholds.upload_rate;
                        watch.upload_limit = Some(Limit::new(rate, now));
                    }
                    (Detection::Upload { .. }, Action::BlockFlow) => {
                        if let Some((key, _)) = flows.take_top_uploader(watch.id) {
                            flows.block(&key, now + self.quarantine);
                        }
                    }
                    (
                        Detection::Beacon {
                            remote,
                            port,
                            protocol,
                            ..
                        },
                        Action::BlockFlow,
                    ) => {
                        let until = now + self.quarantine;
                        flows.block_remote(watch.id, *protocol, *remote, *port, until);
                        // A free slot, or the one ending soonest.
                        let slot = (0..watch.blocked.len())
                            .min_by_key(|&i| watch.blocked[i].map(|b| b.3))
                            .unwrap_or(0);
                        watch.blocked[slot] = Some((*protocol, *remote, *port, until));
                    }
                    _ => self.act(watch, action, now),
                }
                let kind = match &detection {
                    Detection::Beacon { protocol: 17, .. } => "UDP",
                    Detection::Beacon { protocol: 6, .. } => "TCP",
                    _ => "IP",
                };
                let rule = match action {
                    Action::Alert => detection.to_string(),
                    other => format!("{detection} ({})", other.name()),
                };
                self.report(watch.client, kind, list, rule);
            }
        }
    }

    /// Quarantines the peer if `action` says so.
    fn act(&self, watch: &mut PeerWatch, action: crate::config::Action, now: std::time::Instant) {
        if action == crate::config::Action::Quarantine && !watch.quarantined(now) {
            watch.quarantined_until = Some(now + self.quarantine);
            self.quarantines.fetch_add(1, Relaxed);
        }
    }

    /// Peers in quarantine now.
    pub fn quarantined(&self) -> usize {
        let now = std::time::Instant::now();
        self.state
            .lock()
            .peers
            .values()
            .filter(|w| w.quarantined(now))
            .count()
    }

    /// The flow table's state.
    pub fn table(&self) -> FlowTableStatus {
        let state = self.state.lock();
        FlowTableStatus {
            flows: state.flows.len(),
            capacity: state.flows.capacity(),
            emergency: state.flows.emergency(),
            counters: state.flows.counters,
        }
    }
}

impl nx1_vpn::device::Inspector for FlowGuard {
    fn packet_from_peer(&self, peer: &nx1_vpn::keys::PublicKey, packet: &[u8]) -> bool {
        use crate::config::Action;
        use nx1_guard::flows::Seen;
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let FlowState {
            peers,
            flows,
            next_id,
        } = &mut *state;
        // The first packet of a peer allocates its state; no later packet allocates.
        let watch = peers.entry(*peer).or_insert_with(|| {
            *next_id = next_id.wrapping_add(1);
            PeerWatch::new(*next_id)
        });
        if watch.quarantined(now) {
            return false;
        }
        if watch.client.is_none() {
            watch.client = nx1_guard::scan::source(packet);
        }
        if self.actions.flood != Action::Allow
            && let Some(kind) = nx1_guard::flood::kind(packet)
            && !watch.flood.allow(kind, now)
            && self.actions.flood != Action::Alert
        {
            return false;
        }
        let Some(parsed) = nx1_guard::flows::parse(packet) else {
            return true;
        };
        if let Some(limit) = watch.upload_limit.as_mut()
            && !limit.take(parsed.len as f64, now)
        {
            return false;
        }
        let to_blocked = watch
            .blocked
            .iter()
            .flatten()
            .any(|(protocol, remote, port, _)| {
                parsed.key.protocol == *protocol
                    && parsed.key.remote == *remote
                    && parsed.key.remote_port == *port
            });
        if to_blocked {
            return false;
        }
        // A new connection: a TCP SYN, or the first packet of another protocol's flow.
        let opens = if parsed.key.protocol == 6 {
            parsed.syn
        } else {
            !flows.contains(&parsed.key)
        };
        if opens
            && let Some(limit) = watch.burst_limit.as_mut()
            && !limit.take(1.0, now)
        {
            return false;
        }
        let new = match flows.outbound(watch.id, &parsed, now) {
            Seen::Blocked => return false,
            Seen::New => true,
            // Not in the table (it is full): only a SYN is surely a new connection.
            Seen::Untracked => parsed.syn,
            Seen::Known => false,
        };
        // Queries to this node's own DNS are not beacons, however regular.
        let own_dns = parsed.key.remote_port == 53
            && self.dns.listen.iter().any(|a| a.ip() == parsed.key.remote);
        if new
            && !own_dns
            && let Some(beacon) = watch.traffic.new_flow(&parsed.key, now, &self.thresholds)
            && self.actions.beacon != Action::Allow
            && let Some(slot) = watch.beacons.iter_mut().find(|b| b.is_none())
        {
            *slot = Some(beacon);
        }
        watch.attempts.outbound(packet, now);
        watch.traffic.outbound(parsed.len);
        true
    }

    fn packet_to_peer(&self, peer: &nx1_vpn::keys::PublicKey, packet: &[u8]) -> bool {
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let FlowState { peers, flows, .. } = &mut *state;
        let Some(watch) = peers.get_mut(peer) else {
            return true;
        };
        if watch.quarantined(now) {
            return false;
        }
        if let Some(parsed) = nx1_guard::flows::parse(packet) {
            if flows.inbound(&parsed, now) == nx1_guard::flows::Seen::Blocked {
                return false;
            }
            watch.traffic.inbound(parsed.len);
        }
        watch.attempts.inbound(packet, now);
        true
    }
}

/// A UDP socket on a tunnel address. Free-bind, because an IPv6 address on a new interface
/// is "tentative" for a moment and could not be bound yet.
fn bind_dns(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A listening TCP socket on a tunnel address (free-bind, as for UDP).
fn bind_dns_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// TCP connections served at once (beyond, new ones wait in the backlog).
const TCP_CONNECTIONS: usize = 256;
/// A TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers DNS over TCP (RFC 7766: two-byte length, then the message; several queries per
/// connection, answered in order) until told to stop.
async fn serve_tcp(
    listener: tokio::net::TcpListener,
    guard: Arc<GuardService>,
    connections: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            () = crate::daemon::stopped(&mut stop) => return,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = crate::daemon::stopped(&mut stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, from)) = accepted else {
            continue;
        };
        let guard = guard.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let _permit = permit;
            loop {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                let read = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let Some(answer) = guard.answer_over(&query, from.ip(), true).await else {
                    return;
                };
                let Ok(n) = u16::try_from(answer.len()) else {
                    return;
                };
                let mut framed = Vec::with_capacity(answer.len() + 2);
                framed.extend_from_slice(&n.to_be_bytes());
                framed.extend_from_slice(&answer);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Asks `upstream` over TCP (for answers too large for UDP).
async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&u16::try_from(query.len()).ok()?.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .ok()?
}

/// Answers queries on one socket until told to stop.
async fn serve(socket: Arc<UdpSocket>, guard: Arc<GuardService>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            () = crate::daemon::stopped(&mut stop) => return,
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let query = buf[..n].to_vec();
                let (socket, guard) = (socket.clone(), guard.clone());
                tokio::spawn(async move {
                    if let Some(answer) = guard.answer(&query, from.ip()).await {
                        let _ = socket.send_to(&answer, from).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(lists: &[(&str, &str)], response: BlockResponse) -> GuardService {
        let parsed: Vec<List> = lists.iter().map(|(n, t)| List::parse(n, t)).collect();
        GuardService {
            cache: Mutex::new(Cache::default()),
            config: Guard {
                blocklists: Vec::new(),
                list_cache: std::path::PathBuf::from("/nonexistent"),
                upstreams: Vec::new(),
                block_response: response,
                actions: crate::config::Actions {
                    scan: crate::config::Action::Alert,
                    flood: crate::config::Action::RateLimit,
                    burst: crate::config::Action::Alert,
                    beacon: crate::config::Action::Alert,
                    upload: crate::config::Action::Alert,
                    anomaly: crate::config::Action::Alert,
                },
                learning: Duration::from_secs(600),
                max_flows: 65_536,
                quarantine: Duration::from_secs(1),
                models: Vec::new(),
            },
            compiled: parking_lot::RwLock::new(Arc::new(Compiled {
                per_peer: Default::default(),
                disabled: Default::default(),
                local: Blocklist::compile(&[]).unwrap(),
                names: parsed.iter().map(|l| l.name.clone()).collect(),
                lists: Blocklist::compile(&parsed).unwrap(),
            })),
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            block_response: response,
            findings: Mutex::new(VecDeque::new()),
            finding_counts: Mutex::new(Default::default()),
            volume: Mutex::new(Default::default()),
            models: [
                nx1_guard::model::Kind::Dga,
                nx1_guard::model::Kind::Phishing,
            ]
            .into_iter()
            .map(|k| nx1_guard::model::builtin(k).unwrap())
            .collect(),
            counters: GuardCounters::default(),
            listen: Vec::new(),
        }
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            name.parse().unwrap(),
            qtype,
        ));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn a_listed_name_is_answered_with_zero_addresses_and_recorded() {
        let g = service(&[("ads", "||ads.example^\n")], BlockResponse::Zero);
        let client: IpAddr = "10.87.0.2".parse().unwrap();
        let a = Message::from_vec(
            &g.answer(&query("x.ads.example.", RecordType::A), client)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(a.metadata.id, 4242);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));
        let aaaa = Message::from_vec(
            &g.answer(&query("x.ads.example.", RecordType::AAAA), client)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))
        );
        let f = g.findings(Some(client));
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f[0].name.as_str(), f[0].list.as_str(), f[0].rule.as_str()),
            ("x.ads.example", "ads", "ads.example")
        );
        assert!(g.findings(Some("10.87.0.3".parse().unwrap())).is_empty());
    }

    /// Guard's answer to `name`/`qtype` from 10.87.0.2, parsed.
    async fn ask(g: &GuardService, name: &str, qtype: RecordType) -> Message {
        let answer = g
            .answer(&query(name, qtype), "10.87.0.2".parse().unwrap())
            .await;
        Message::from_vec(&answer.expect("an answer")).unwrap()
    }

    #[tokio::test]
    async fn nxdomain_can_be_chosen() {
        let g = service(&[("ads", "ads.example\n")], BlockResponse::Nxdomain);
        let m = ask(&g, "ads.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
    }

    #[tokio::test]
    async fn garbage_gets_formerr_or_nothing_and_is_counted() {
        let g = service(&[], BlockResponse::Zero);
        let client: IpAddr = "10.87.0.2".parse().unwrap();
        assert_eq!(g.answer(&[1], client).await, None);
        let m = Message::from_vec(
            &g.answer(&[0x12, 0x34, 0xff, 0xff, 0, 9], client)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(g.counters.malformed.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_gives_servfail() {
        let g = service(&[], BlockResponse::Zero);
        let m = ask(&g, "example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(g.counters.upstream_failures.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_peers_own_rules_come_first_and_apply_to_it_only() {
        use crate::store::testing::TestDb;
        let db = TestDb::sqlite();
        let store = Store::open(&db.database, 1).await.unwrap();
        let v4 = (Ipv4Addr::new(10, 87, 0, 1), 16);
        let v6 = ("fd00:87::1".parse().unwrap(), 64);
        let a = crate::peers::add(&store, "a", "A=", v4, v6).await.unwrap();
        let b = crate::peers::add(&store, "b", "B=", v4, v6).await.unwrap();
        set_rule(&store, "shared.example", Some("deny"))
            .await
            .unwrap();
        set_peer_rule(&store, "a", "ok.shared.example", Some("allow"))
            .await
            .unwrap();
        set_peer_rule(&store, "a", "mine.example", Some("deny"))
            .await
            .unwrap();
        let g = service(&[], BlockResponse::Zero);
        g.reload(&store).await.unwrap();
        let (a4, a6, b4) = (IpAddr::V4(a.ipv4), IpAddr::V6(a.ipv6), IpAddr::V4(b.ipv4));
        assert!(matches!(
            g.lists_verdict("x.ok.shared.example", Some(a4)),
            Verdict::Allowed { .. }
        ));
        assert!(matches!(
            g.lists_verdict("x.ok.shared.example", Some(b4)),
            Verdict::Blocked { .. }
        ));
        assert!(matches!(
            g.lists_verdict("mine.example", Some(a6)),
            Verdict::Blocked { .. }
        ));
        assert_eq!(g.lists_verdict("mine.example", Some(b4)), Verdict::Unlisted);
        // Removing the peer removes its rules.
        crate::peers::remove(&store, "a").await.unwrap();
        g.reload(&store).await.unwrap();
        assert_eq!(g.lists_verdict("mine.example", Some(a4)), Verdict::Unlisted);
        store.close().await;
    }

    #[tokio::test]
    async fn models_judge_unlisted_names_and_a_peer_can_turn_a_category_off() {
        use crate::store::testing::TestDb;
        let db = TestDb::sqlite();
        let store = Store::open(&db.database, 1).await.unwrap();
        let v4 = (Ipv4Addr::new(10, 87, 0, 1), 16);
        let v6 = ("fd00:87::1".parse().unwrap(), 64);
        let a = crate::peers::add(&store, "a", "A=", v4, v6).await.unwrap();
        let b = crate::peers::add(&store, "b", "B=", v4, v6).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ads = dir.path().join("ads.txt");
        std::fs::write(&ads, "||ads.example^\n").unwrap();
        let mut g = service(&[], BlockResponse::Zero);
        g.config.blocklists = vec![ListSource::File(ads.clone())];
        g.reload(&store).await.unwrap();
        let ads = ads.display().to_string();
        let (a4, b6) = (IpAddr::V4(a.ipv4), IpAddr::V6(b.ipv6));
        // Generated by necurs' published algorithm.
        let generated = "yaochykossjcyjla.su";
        let j = g.judge(generated, Some(a4));
        let Verdict::Blocked { list, rule } = &j.verdict else {
            panic!("{j:?}")
        };
        assert_eq!(list, "dga model");
        assert!(rule.starts_with("score "), "{rule}");
        assert!(j.scores.iter().any(|s| s.flagged && s.score > 0.9));
        let ok = g.judge("gardening-club-leipzig.de", None);
        assert_eq!(ok.verdict, Verdict::Unlisted);
        assert_eq!(ok.scores.len(), 2, "{ok:?}");
        assert!(ok.scores.iter().all(|s| !s.flagged), "{ok:?}");
        // A brand's own domain is not judged by the phishing model.
        assert_eq!(g.judge("wikipedia.org", None).scores.len(), 1);
        // A list decides before the models, and reports no scores.
        assert!(g.judge("x.ads.example", None).scores.is_empty());

        set_peer_category(&store, "a", "dga", false).await.unwrap();
        set_peer_category(&store, "a", &ads, false).await.unwrap();
        set_peer_category(&store, "a", &ads, false).await.unwrap();
        g.reload(&store).await.unwrap();
        assert_eq!(
            peer_categories(&store, "a").await.unwrap(),
            [ads.as_str(), "dga"]
        );
        assert_eq!(g.judge(generated, Some(a4)).verdict, Verdict::Unlisted);
        assert_eq!(
            g.judge("x.ads.example", Some(a4)).verdict,
            Verdict::Unlisted
        );
        assert!(matches!(
            g.judge(generated, Some(b6)).verdict,
            Verdict::Blocked { .. }
        ));
        set_peer_category(&store, "a", "dga", true).await.unwrap();
        g.reload(&store).await.unwrap();
        assert!(matches!(
            g.judge(generated, Some(a4)).verdict,
            Verdict::Blocked { .. }
        ));
        // Through the DNS path: blocked and counted.
        let m = ask(&g, "yaochykossjcyjla.su.", RecordType::A).await;
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));
        assert_eq!(g.counters.model_blocks.load(Relaxed), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn lists_are_downloaded_kept_and_used_when_their_server_is_down() {
        // A list server whose answer the test changes, and can make fail.
        let body = Arc::new(Mutex::new(Some("||remote.example^\n".to_owned())));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/list.txt",
            axum::routing::get(move || {
                let served = served.clone();
                async move {
                    match served.lock().clone() {
                        Some(text) => (axum::http::StatusCode::OK, text),
                        None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/list.txt");

        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::testing::TestDb::sqlite();
        let store = Store::open(&db.database, 1).await.unwrap();
        let mut g = service(&[], BlockResponse::Zero);
        g.config.blocklists = vec![ListSource::Url(url.clone())];
        g.config.list_cache = dir.path().join("lists-cache");
        g.reload(&store).await.unwrap();
        assert_eq!(g.list_names()[1], url);
        let blocked = |g: &GuardService, name: &str| {
            matches!(g.lists_verdict(name, None), Verdict::Blocked { .. })
        };
        assert!(blocked(&g, "x.remote.example"));
        // A changed list is fetched again on reload.
        *body.lock() = Some("||other.example^\n".to_owned());
        g.reload(&store).await.unwrap();
        assert!(blocked(&g, "other.example") && !blocked(&g, "remote.example"));
        // A rule change does not wait on list servers: it uses the last copy.
        *body.lock() = Some("||third.example^\n".to_owned());
        g.reload_rules(&store).await.unwrap();
        assert!(blocked(&g, "other.example") && !blocked(&g, "third.example"));
        g.reload(&store).await.unwrap();
        assert!(blocked(&g, "third.example"));
        *body.lock() = Some("||other.example^\n".to_owned());
        g.reload(&store).await.unwrap();
        // The server fails: the copy of the last download is used.
        *body.lock() = None;
        g.reload(&store).await.unwrap();
        assert!(blocked(&g, "other.example"));
        // No copy and no server: a reload fails (the lists in use stay), a start goes on
        // without the list.
        std::fs::remove_dir_all(dir.path().join("lists-cache")).unwrap();
        let e = g.reload(&store).await.unwrap_err();
        assert!(format!("{e:#}").contains("no earlier copy"), "{e:#}");
        assert!(blocked(&g, "other.example"));
        let started = compile(&g.config, &store, Load::Start).await.unwrap();
        assert_eq!(started.lists.blocked_len(), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn the_owners_deny_beats_a_lists_exception() {
        let db = crate::store::testing::TestDb::sqlite();
        let store = Store::open(&db.database, 1).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("third-party.txt");
        std::fs::write(&file, "@@||tracker.example^\n").unwrap();
        let mut g = service(&[], BlockResponse::Zero);
        g.config.blocklists = vec![ListSource::File(file)];
        set_rule(&store, "tracker.example", Some("deny"))
            .await
            .unwrap();
        g.reload(&store).await.unwrap();
        let Verdict::Blocked { list, .. } = g.lists_verdict("x.tracker.example", None) else {
            panic!("not blocked")
        };
        assert_eq!(list, LOCAL_RULES);
        assert_eq!(g.blocked_names(), 1);
        store.close().await;
    }

    #[test]
    fn private_address_space_is_recognised() {
        for p in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(p.parse().unwrap()), "{p}");
        }
        for p in ["198.18.2.80", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(p.parse().unwrap()), "{p}");
        }
        assert!(is_local_name("printer.lan.") && is_local_name("nas.home.arpa"));
        assert!(!is_local_name("planet.example"));
    }

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let ns = crate::config::resolv_conf_nameservers(
            "# x\nnameserver 9.9.9.9\nsearch lan\nnameserver fe80::1%eth0\nnameserver bogus\n",
        );
        assert_eq!(
            ns,
            vec![
                "9.9.9.9:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
