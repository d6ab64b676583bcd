//! Usage receipts: what a client's account signs for the traffic a node carried for it.
//!
//! A client in `nx1 connect` mode signs, every few seconds, a *cumulative* receipt for its
//! session — session id, its account (an ed25519 key), its tunnel's WireGuard key, this node,
//! bytes up and down, seconds — and sends it through the tunnel to the node's tunnel address.
//! The node keeps only the highest receipt of each session. The rules make redemption
//! idempotent and unforgeable: a receipt must verify under the account it names and name this
//! node; a session belongs to the first account and tunnel that used it; totals never go
//! down (a lower one is refused, an equal one changes nothing). A node therefore holds, for
//! every session, exactly what the client signed, and can claim no more.

use crate::store::Store;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

/// UDP port on the node's tunnel address that takes receipts.
pub const RECEIPT_PORT: u16 = 7873;
/// What a receipt signature covers before the receipt's bytes.
const DOMAIN: &[u8] = b"nx1-usage-receipt/1\0";
/// Largest signed receipt taken (it travels in one datagram).
pub const MAX_RECEIPT: usize = 1024;
/// New sessions one tunnel may start per hour (a client starts one per connect or move).
pub const SESSIONS_PER_HOUR: i64 = 64;
/// Receipts taken from one tunnel at most this often; faster ones are dropped unanswered.
pub const RECEIPT_GAP: std::time::Duration = std::time::Duration::from_millis(50);

/// Cumulative usage of one session, as the client's account signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Format.
    pub v: u8,
    /// Random session id (base64, 16 bytes), new for every tunnel.
    pub session: String,
    /// The account (base64 ed25519 public key) that signs.
    pub account: String,
    /// The tunnel's WireGuard public key.
    pub client_key: String,
    /// The node (its id) that carried the traffic.
    pub node: String,
    /// The relay (its node id) the traffic went through, if any (private two-hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Bytes the client sent (WireGuard datagrams), since the session began.
    pub bytes_up: u64,
    /// Bytes it received.
    pub bytes_down: u64,
    /// Seconds since the session began.
    pub seconds: u64,
}

/// A receipt as sent: its exact JSON text and the account's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// The receipt's JSON.
    pub receipt: String,
    /// Base64 ed25519 signature over the domain label and `receipt`.
    pub signature: String,
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not a receipt.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The signature does not verify under the account it names.
    #[error("bad signature")]
    Signature,
    /// For another node.
    #[error("the receipt is for node {0}, not this one")]
    OtherNode(String),
    /// Sent from a tunnel other than the one it names.
    #[error("sent through another tunnel than the one it names")]
    WrongTunnel,
    /// The session belongs to another account or tunnel.
    #[error("session {0} belongs to another account or tunnel")]
    SessionTaken(String),
    /// A total beyond 2^53.
    #[error("a total is out of range")]
    OutOfRange,
    /// Too many new sessions from one tunnel.
    #[error("too many new sessions from this tunnel in the last hour")]
    TooManySessions,
    /// A total went down.
    #[error("totals went down ({field}: {was} → {now})")]
    Decreasing {
        /// Which total.
        field: &'static str,
        /// What the node holds.
        was: u64,
        /// What the receipt says.
        now: u64,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

impl ReceiptError {
    /// A short label for metrics and status.
    pub fn label(&self) -> &'static str {
        match self {
            ReceiptError::Malformed(_) => "malformed",
            ReceiptError::Signature => "signature",
            ReceiptError::OtherNode(_) => "other_node",
            ReceiptError::WrongTunnel => "wrong_tunnel",
            ReceiptError::SessionTaken(_) => "session_taken",
            ReceiptError::Decreasing { .. } => "decreasing",
            ReceiptError::OutOfRange => "out_of_range",
            ReceiptError::TooManySessions => "too_many_sessions",
            ReceiptError::Store(_) => "store",
        }
    }
}

impl From<sqlx::Error> for ReceiptError {
    fn from(e: sqlx::Error) -> Self {
        ReceiptError::Store(e.to_string())
    }
}

impl SignedReceipt {
    /// Signs `receipt` with the account key (whose public half must be `receipt.account`).
    pub fn sign(receipt: &Receipt, account: &SigningKey) -> SignedReceipt {
        let (receipt, signature) = crate::signed::sign(DOMAIN, receipt, account);
        SignedReceipt { receipt, signature }
    }

    /// The receipt, if it is well-formed and signed by the account it names.
    pub fn verify(&self) -> Result<Receipt, ReceiptError> {
        if self.receipt.len() > MAX_RECEIPT {
            return Err(ReceiptError::Malformed("too long".into()));
        }
        let r: Receipt = serde_json::from_str(&self.receipt)
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if r.v != 1 {
            return Err(ReceiptError::Malformed(format!("format {}", r.v)));
        }
        crate::signed::verify(DOMAIN, &self.receipt, &self.signature, &r.account).map_err(|e| {
            match e {
                crate::signed::SignatureError::BadKey => {
                    ReceiptError::Malformed("account is not a key".into())
                }
                crate::signed::SignatureError::BadSignature => ReceiptError::Signature,
            }
        })?;
        Ok(r)
    }
}

/// What taking a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A new session.
    New,
    /// Higher totals for a known session.
    Raised,
    /// The same totals again: nothing changed.
    Same,
}

/// Takes a receipt that arrived through the tunnel of `sender` (its WireGuard key). Receipts
/// are taken one at a time (one task reads them), so read-then-write is enough here.
pub async fn take(
    store: &Store,
    node_id: &str,
    sender: &str,
    signed: &SignedReceipt,
    now: i64,
) -> Result<(Receipt, Taken), ReceiptError> {
    let r = signed.verify()?;
    if r.node != node_id {
        return Err(ReceiptError::OtherNode(r.node));
    }
    if r.client_key != sender {
        return Err(ReceiptError::WrongTunnel);
    }
    // 2^53 bytes is 8 PiB a session: far beyond any tunnel, and sums of many stay in range.
    if [r.bytes_up, r.bytes_down, r.seconds]
        .iter()
        .any(|&t| t > crate::ledger::MAX_AMOUNT)
    {
        return Err(ReceiptError::OutOfRange);
    }
    let held = sqlx::query(
        "SELECT account, client_key, bytes_up, bytes_down, seconds FROM usage_receipts WHERE session = $1",
    )
    .bind(&r.session)
    .fetch_optional(store.pool())
    .await?;
    let Some(held) = held else {
        let recent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM usage_receipts WHERE client_key = $1 AND first_at > $2",
        )
        .bind(&r.client_key)
        .bind(now - 3600)
        .fetch_one(store.pool())
        .await?;
        if recent >= SESSIONS_PER_HOUR {
            return Err(ReceiptError::TooManySessions);
        }
        sqlx::query(
            "INSERT INTO usage_receipts (session, account, client_key, bytes_up, bytes_down, seconds, receipt, signature, first_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&r.session)
        .bind(&r.account)
        .bind(&r.client_key)
        .bind(r.bytes_up as i64)
        .bind(r.bytes_down as i64)
        .bind(r.seconds as i64)
        .bind(&signed.receipt)
        .bind(&signed.signature)
        .bind(now)
        .execute(store.pool())
        .await?;
        return Ok((r, Taken::New));
    };
    let (account, client_key): (String, String) = (held.try_get(0)?, held.try_get(1)?);
    if account != r.account || client_key != r.client_key {
        return Err(ReceiptError::SessionTaken(r.session));
    }
    let was = [
        held.try_get::<i64, _>(2)? as u64,
        held.try_get::<i64, _>(3)? as u64,
        held.try_get::<i64, _>(4)? as u64,
    ];
    let now_totals = [r.bytes_up, r.bytes_down, r.seconds];
    for ((field, was), now) in ["bytes_up", "bytes_down", "seconds"]
        .into_iter()
        .zip(was)
        .zip(now_totals)
    {
        if now < was {
            return Err(ReceiptError::Decreasing { field, was, now });
        }
    }
    if was == now_totals {
        return Ok((r, Taken::Same));
    }
    sqlx::query(
        "UPDATE usage_receipts SET bytes_up = $1, bytes_down = $2, seconds = $3, receipt = $4, signature = $5, updated_at = $6 WHERE session = $7",
    )
    .bind(r.bytes_up as i64)
    .bind(r.bytes_down as i64)
    .bind(r.seconds as i64)
    .bind(&signed.receipt)
    .bind(&signed.signature)
    .bind(now)
    .bind(&r.session)
    .execute(store.pool())
    .await?;
    Ok((r, Taken::Raised))
}

/// Receipts taken and refused, for `nx1 credits` and `/metrics`.
#[derive(Debug, Default)]
pub struct ReceiptCounters {
    /// Receipts taken (new sessions and raised totals).
    pub taken: std::sync::atomic::AtomicU64,
    /// Refused, by reason.
    pub refused: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// What each client signed since this node started: per tunnel key, per session, the
/// session's bytes (up + down). Compared with what the node carried for that tunnel.
#[derive(Debug, Default)]
pub struct Meter {
    signed: parking_lot::Mutex<std::collections::HashMap<String, TunnelMeter>>,
    /// Tunnels whose account could not pay for traffic beyond the free tier, and why.
    out_of_credits: parking_lot::Mutex<std::collections::HashMap<String, String>>,
}

/// One tunnel's signed bytes: its latest sessions, and the sum of older ones.
#[derive(Debug, Default)]
struct TunnelMeter {
    retired: u64,
    sessions: std::collections::VecDeque<(String, u64)>,
}

impl Meter {
    fn record(&self, r: &Receipt) {
        let mut signed = self.signed.lock();
        let t = signed.entry(r.client_key.clone()).or_default();
        let bytes = r.bytes_up.saturating_add(r.bytes_down);
        match t.sessions.iter_mut().find(|(s, _)| *s == r.session) {
            Some((_, b)) => *b = bytes,
            None => {
                t.sessions.push_back((r.session.clone(), bytes));
                // Bounded: the oldest sessions (whose totals no longer change) are summed.
                if t.sessions.len() > SESSIONS_PER_HOUR as usize
                    && let Some((_, old)) = t.sessions.pop_front()
                {
                    t.retired = t.retired.saturating_add(old);
                }
            }
        }
    }

    /// Why a tunnel's account cannot pay, if it cannot.
    pub fn out_of_credits(&self, client_key: &str) -> Option<String> {
        self.out_of_credits.lock().get(client_key).cloned()
    }

    /// Records whether a tunnel's account could pay; true when that changed.
    fn set_out_of_credits(&self, client_key: &str, why: Option<String>) -> bool {
        let mut map = self.out_of_credits.lock();
        match why {
            Some(w) => map.insert(client_key.to_owned(), w).is_none(),
            None => map.remove(client_key).is_some(),
        }
    }

    /// Bytes a tunnel's receipts cover, over all its sessions.
    pub fn signed(&self, client_key: &str) -> u64 {
        self.signed.lock().get(client_key).map_or(0, |t| {
            t.sessions
                .iter()
                .fold(t.retired, |a, (_, b)| a.saturating_add(*b))
        })
    }
}

/// The node's answer to a receipt, sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptAnswer {
    /// Why the receipt was refused, if it was.
    pub refused: Option<String>,
    /// Whether the tunnel is cut off for unpaid usage.
    pub cut_off: bool,
    /// Why the account cannot pay for the tunnel beyond the free tier, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_credits: Option<String>,
    /// The latest findings of the node's Guard for this tunnel's addresses (blocked names,
    /// detectors), newest last: what the client's user sees as blocked for this device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard: Vec<crate::guard::Finding>,
}

/// A client's request, over its tunnel to the receipt port, that the node's Guard allow a
/// domain for it alone (a per-peer rule, as `nx1 guard allow DOMAIN --peer NAME` sets): what
/// the app's Allow does for a name the exit blocked for this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardAllow {
    /// The domain.
    pub guard_allow: String,
}

/// The node's answer to a [`GuardAllow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardAllowAnswer {
    /// The domain as allowed (normalised), when it was.
    pub allowed: Option<String>,
    /// The peer it was allowed for.
    pub peer: Option<String>,
    /// Why not, when it was not.
    pub refused: Option<String>,
}

/// One message per source address at most every `gap`; the table forgets addresses that
/// kept quiet for a gap whenever it grows past 65,536.
struct Spacing {
    gap: std::time::Duration,
    last: std::collections::HashMap<std::net::IpAddr, std::time::Instant>,
}

impl Spacing {
    fn new(gap: std::time::Duration) -> Spacing {
        Spacing {
            gap,
            last: Default::default(),
        }
    }

    /// Whether a message from `from` at `at` comes at least a gap after its last one (and
    /// if so, it is the last one now).
    fn admit(&mut self, from: std::net::IpAddr, at: std::time::Instant) -> bool {
        if self
            .last
            .get(&from)
            .is_some_and(|t| at.duration_since(*t) < self.gap)
        {
            return false;
        }
        self.last.insert(from, at);
        if self.last.len() > 65_536 {
            let gap = self.gap;
            self.last.retain(|_, t| at.duration_since(*t) < gap);
        }
        true
    }
}

/// A tunnel may change its rules this often.
const RULE_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// The refusal of a rule change that came sooner: the client tries again.
pub const RULE_BUSY: &str = "one rule change a second: try again";

/// Allows `domain` for the peer of `tunnel` alone; returns the peer's name and the domain.
async fn allow_for_tunnel(
    store: &Store,
    guard: &crate::guard::GuardService,
    tunnel: &nx1_vpn::keys::PublicKey,
    domain: &str,
) -> anyhow::Result<(String, String)> {
    let Some(domain) = nx1_guard::blocklist::normalise(domain) else {
        anyhow::bail!("{domain:?} is not a domain name");
    };
    let key = tunnel.to_base64();
    let Some(peer) = crate::peers::list(store)
        .await?
        .into_iter()
        .find(|p| p.public_key == key)
    else {
        anyhow::bail!("this tunnel is not registered here");
    };
    crate::guard::set_peer_rule(store, &peer.name, &domain, Some("allow")).await?;
    guard.reload_rules(store).await?;
    Ok((peer.name, domain))
}

/// Bytes of findings an answer carries at most, so that it stays one datagram well inside
/// the tunnel's MTU.
const ANSWER_FINDINGS_BYTES: usize = 800;

/// The newest of `findings` (oldest first) that fit in [`ANSWER_FINDINGS_BYTES`], oldest
/// first.
fn latest_findings(findings: Vec<crate::guard::Finding>) -> Vec<crate::guard::Finding> {
    let mut kept = Vec::new();
    let mut size = 0;
    for f in findings.into_iter().rev() {
        size += serde_json::to_vec(&f).map_or(usize::MAX, |b| b.len() + 1);
        if size > ANSWER_FINDINGS_BYTES {
            break;
        }
        kept.push(f);
    }
    kept.reverse();
    kept
}

/// Cuts off, every second, the clients whose carried traffic runs more than `allowance`
/// bytes ahead of what they signed, and lets them through again once it no longer does.
pub fn enforce(
    store: Store,
    device: std::sync::Arc<nx1_vpn::device::Device>,
    meter: std::sync::Arc<Meter>,
    allowance: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = crate::daemon::stopped(&mut stop) => return,
                _ = every.tick() => {}
            }
            let Ok(clients) = crate::peers::list(&store).await else {
                continue;
            };
            for c in clients {
                let Ok(key) = nx1_vpn::keys::PublicKey::from_base64(&c.public_key) else {
                    continue;
                };
                let Some(stats) = device.peer(&key) else {
                    continue;
                };
                let carried = stats.rx_bytes + stats.tx_bytes;
                let unpaid = carried.saturating_sub(meter.signed(&c.public_key));
                let cut = unpaid > allowance || meter.out_of_credits(&c.public_key).is_some();
                if device.is_restricted(&key) != cut {
                    device.set_restricted(&key, cut);
                    if cut {
                        tracing::warn!(peer = %c.name, unpaid, "out of credits: cut off until its receipts catch up");
                    } else {
                        tracing::info!(peer = %c.name, "paid up: through again");
                    }
                }
            }
        }
    });
}

/// Takes receipts on the node's tunnel IPv4 address, one at a time, from its own clients,
/// and answers each; what they raise is claimed in the ledger.
#[allow(clippy::too_many_arguments)] // each is a different part of the node it connects
pub async fn serve(
    store: Store,
    node_id: String,
    device: std::sync::Arc<nx1_vpn::device::Device>,
    address: std::net::Ipv4Addr,
    counters: std::sync::Arc<ReceiptCounters>,
    meter: std::sync::Arc<Meter>,
    ledger: std::sync::Arc<crate::ledger::Ledger>,
    guard: Option<std::sync::Arc<crate::guard::GuardService>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let socket = tokio::net::UdpSocket::bind((address, RECEIPT_PORT)).await?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2 * MAX_RECEIPT];
        let mut receipts_from = Spacing::new(RECEIPT_GAP);
        let mut rules_from = Spacing::new(RULE_GAP);
        loop {
            let (n, from) = tokio::select! {
                () = crate::daemon::stopped(&mut stop) => return,
                got = socket.recv_from(&mut buf) => match got {
                    Ok(got) => got,
                    Err(_) => continue,
                },
            };
            // One at a time per tunnel address: a flood from one client cannot hold up the
            // others' receipts (each costs a database write).
            let at = std::time::Instant::now();
            if !receipts_from.admit(from.ip(), at) {
                *counters.refused.lock().entry("rate_limited").or_default() += 1;
                continue;
            }
            let sender = device.peer_for(from.ip());
            if let Ok(request) = serde_json::from_slice::<GuardAllow>(&buf[..n]) {
                let refuse = |why: &str| GuardAllowAnswer {
                    allowed: None,
                    peer: None,
                    refused: Some(why.to_owned()),
                };
                let answer = match (&guard, sender) {
                    (None, _) => refuse("Guard is off on this node"),
                    (_, None) => refuse("not from a tunnel of this node"),
                    (Some(_), Some(_)) if !rules_from.admit(from.ip(), at) => refuse(RULE_BUSY),
                    (Some(g), Some(k)) => {
                        match allow_for_tunnel(&store, g, &k, &request.guard_allow).await {
                            Ok((peer, domain)) => {
                                tracing::info!(%peer, %domain, "allowed at the peer's request");
                                GuardAllowAnswer {
                                    allowed: Some(domain),
                                    peer: Some(peer),
                                    refused: None,
                                }
                            }
                            Err(e) => refuse(&format!("{e:#}")),
                        }
                    }
                };
                if let Ok(text) = serde_json::to_vec(&answer) {
                    let _ = socket.send_to(&text, from).await;
                }
                continue;
            }
            let result = match (serde_json::from_slice::<SignedReceipt>(&buf[..n]), sender) {
                (Err(e), _) => Err(ReceiptError::Malformed(e.to_string())),
                (Ok(_), None) => Err(ReceiptError::WrongTunnel),
                (Ok(signed), Some(sender)) => {
                    let taken = take(
                        &store,
                        &node_id,
                        &sender.to_base64(),
                        &signed,
                        crate::now_unix(),
                    )
                    .await;
                    if let Ok((r, t)) = &taken {
                        if *t != Taken::Same {
                            // What it carried earns credits for the node's owner, and for the
                            // relay the client came through.
                            ledger.claim(
                                crate::ledger::Duty::Exit,
                                signed.clone(),
                                r.session.clone(),
                            );
                            if let Some(relay) = &r.via {
                                let from = device.peer(&sender).and_then(|p| p.endpoint);
                                ledger.relayed(relay, from, signed.clone(), r.session.clone());
                            }
                        }
                        // Beyond the free tier the account pays; one that cannot is cut off
                        // until it can (each receipt tries again).
                        if *t != Taken::Same || meter.out_of_credits(&r.client_key).is_some() {
                            tokio::spawn(charge(
                                store.clone(),
                                ledger.clone(),
                                device.clone(),
                                meter.clone(),
                                sender,
                                signed,
                            ));
                        }
                    }
                    taken
                }
            };
            let answer = ReceiptAnswer {
                refused: result.as_ref().err().map(|e| e.to_string()),
                cut_off: sender.is_some_and(|k| device.is_restricted(&k)),
                out_of_credits: sender.and_then(|k| meter.out_of_credits(&k.to_base64())),
                // Every address of the tunnel (IPv4 and IPv6 queries alike).
                guard: match (&guard, sender) {
                    (Some(g), Some(k)) => {
                        latest_findings(g.findings_where(|f| device.peer_for(f.client) == Some(k)))
                    }
                    _ => Vec::new(),
                },
            };
            match result {
                Ok((r, taken)) => {
                    meter.record(&r);
                    if taken != Taken::Same {
                        counters
                            .taken
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::debug!(session = %r.session, up = r.bytes_up, down = r.bytes_down, "receipt taken");
                }
                Err(e) => {
                    *counters.refused.lock().entry(e.label()).or_default() += 1;
                    tracing::debug!(%from, error = %e, "receipt refused");
                }
            }
            if let Ok(text) = serde_json::to_vec(&answer) {
                let _ = socket.send_to(&text, from).await;
            }
        }
    });
    Ok(())
}

/// Length of a free-tier period (tunnels and vault sync alike).
pub const PERIOD_SECS: i64 = 30 * 24 * 3600;

/// Charges a session's account for its traffic beyond the free tier and cuts the tunnel off
/// while the account cannot pay (lets it through again once it can).
async fn charge(
    store: Store,
    ledger: std::sync::Arc<crate::ledger::Ledger>,
    device: std::sync::Arc<nx1_vpn::device::Device>,
    meter: std::sync::Arc<Meter>,
    tunnel: nx1_vpn::keys::PublicKey,
    signed: SignedReceipt,
) {
    let Ok(r) = signed.verify() else { return };
    // The free tier is per account and node: what the account's other sessions here used
    // in this period comes off it first.
    let since = crate::now_unix() - crate::now_unix().rem_euclid(PERIOD_SECS);
    // Summed here, saturating.
    let others: Result<Vec<(i64, i64)>, _> = sqlx::query_as(
        "SELECT bytes_up, bytes_down FROM usage_receipts WHERE account = $1 AND session <> $2 AND first_at >= $3",
    )
    .bind(&r.account)
    .bind(&r.session)
    .bind(since)
    .fetch_all(store.pool())
    .await;
    let others = match others {
        Ok(rows) => rows.iter().fold(0u64, |sum, (up, down)| {
            sum.saturating_add((*up).max(0).unsigned_abs())
                .saturating_add((*down).max(0).unsigned_abs())
        }),
        Err(e) => {
            tracing::warn!(error = %e, "credits: reading a tunnel's usage");
            return;
        }
    };
    let free = ledger.pricing.vpn_free_bytes.saturating_sub(others);
    let why = match ledger.charge(&signed, free).await {
        Ok(()) => None,
        Err(e @ crate::ledger::LedgerError::OutOfCredits { .. }) => Some(e.to_string()),
        Err(e) => {
            // Replicas out of reach: the tunnel keeps going; the next receipt tries again.
            tracing::debug!(error = %e, "credits: charging a tunnel");
            return;
        }
    };
    let key = tunnel.to_base64();
    let cut = why.is_some();
    if meter.set_out_of_credits(&key, why) {
        device.set_restricted(&tunnel, cut);
        if cut {
            tracing::warn!(account = %r.account, "out of credits: tunnel cut off until the account can pay");
        } else {
            tracing::info!(account = %r.account, "the account can pay again: tunnel through");
        }
    }
}

/// One account's usage on this node, from its receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUsage {
    /// The account.
    pub account: String,
    /// Sessions with a receipt.
    pub sessions: u64,
    /// Bytes up, signed.
    pub bytes_up: u64,
    /// Bytes down, signed.
    pub bytes_down: u64,
    /// Seconds, signed.
    pub seconds: u64,
}

/// Every account's signed usage on this node.
pub async fn usage(store: &Store) -> Result<Vec<AccountUsage>, ReceiptError> {
    let rows = sqlx::query(
        "SELECT account, COUNT(*), CAST(SUM(bytes_up) AS BIGINT), CAST(SUM(bytes_down) AS BIGINT), CAST(SUM(seconds) AS BIGINT) FROM usage_receipts GROUP BY account ORDER BY account",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AccountUsage {
                account: row.try_get(0)?,
                sessions: row.try_get::<i64, _>(1)? as u64,
                bytes_up: row.try_get::<i64, _>(2)? as u64,
                bytes_down: row.try_get::<i64, _>(3)? as u64,
                seconds: row.try_get::<i64, _>(4)? as u64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_a_gap_per_source() {
        let mut spacing = Spacing::new(std::time::Duration::from_millis(50));
        let t = std::time::Instant::now();
        let (a, b) = ("10.87.0.2".parse().unwrap(), "10.87.0.3".parse().unwrap());
        let ms = std::time::Duration::from_millis;
        assert!(spacing.admit(a, t));
        assert!(!spacing.admit(a, t + ms(10)));
        assert!(spacing.admit(b, t + ms(10)));
        assert!(!spacing.admit(a, t + ms(49)));
        assert!(spacing.admit(a, t + ms(60)));
    }
    use crate::store::testing::TestDb;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    fn receipt(account: &SigningKey, session: &str, up: u64, down: u64, secs: u64) -> Receipt {
        Receipt {
            v: 1,
            session: session.into(),
            account: STANDARD.encode(account.verifying_key().as_bytes()),
            client_key: "CLIENT=".into(),
            node: "NODE=".into(),
            via: None,
            bytes_up: up,
            bytes_down: down,
            seconds: secs,
        }
    }

    async fn rules(db: TestDb) {
        let store = Store::open(&db.database, 2).await.unwrap();
        let alice = SigningKey::from_bytes(&[1; 32]);
        let mallory = SigningKey::from_bytes(&[2; 32]);
        let take = |s: SignedReceipt, sender: &'static str| {
            let store = store.clone();
            async move { super::take(&store, "NODE=", sender, &s, 100).await }
        };
        let first = SignedReceipt::sign(&receipt(&alice, "S1", 10, 20, 1), &alice);
        assert_eq!(take(first.clone(), "CLIENT=").await.unwrap().1, Taken::New);
        // Replayed: nothing changes. Raised: taken.
        assert_eq!(take(first.clone(), "CLIENT=").await.unwrap().1, Taken::Same);
        let more = SignedReceipt::sign(&receipt(&alice, "S1", 15, 25, 2), &alice);
        assert_eq!(
            take(more.clone(), "CLIENT=").await.unwrap().1,
            Taken::Raised
        );
        // The old one again is a decrease.
        assert!(matches!(
            take(first, "CLIENT=").await,
            Err(ReceiptError::Decreasing {
                field: "bytes_up",
                ..
            })
        ));
        // Forged: totals changed after signing, or signed by another key.
        let mut forged = more.clone();
        forged.receipt = forged
            .receipt
            .replace("\"bytes_up\":15", "\"bytes_up\":9999");
        assert_eq!(take(forged, "CLIENT=").await, Err(ReceiptError::Signature));
        let mut r = receipt(&alice, "S1", 9999, 9999, 9);
        let wrong_key = SignedReceipt::sign(&r, &mallory);
        assert_eq!(
            take(wrong_key, "CLIENT=").await,
            Err(ReceiptError::Signature)
        );
        // Another account cannot take over the session.
        r = receipt(&mallory, "S1", 9999, 9999, 9);
        assert!(matches!(
            take(SignedReceipt::sign(&r, &mallory), "CLIENT=").await,
            Err(ReceiptError::SessionTaken(_))
        ));
        // Another node's receipt, or one sent through another tunnel.
        let mut other = receipt(&alice, "S2", 1, 1, 1);
        other.node = "ELSEWHERE=".into();
        assert!(matches!(
            take(SignedReceipt::sign(&other, &alice), "CLIENT=").await,
            Err(ReceiptError::OtherNode(_))
        ));
        let s3 = SignedReceipt::sign(&receipt(&alice, "S3", 1, 1, 1), &alice);
        assert_eq!(take(s3, "OTHER=").await, Err(ReceiptError::WrongTunnel));
        // Totals the store cannot hold, and too many new sessions from one tunnel.
        let huge = SignedReceipt::sign(&receipt(&alice, "S9", u64::MAX, 1, 1), &alice);
        assert_eq!(take(huge, "CLIENT=").await, Err(ReceiptError::OutOfRange));
        for i in 0..SESSIONS_PER_HOUR - 1 {
            let s = SignedReceipt::sign(&receipt(&alice, &format!("N{i}"), 0, 0, 0), &alice);
            assert_eq!(take(s, "CLIENT=").await.unwrap().1, Taken::New);
        }
        let one_more = SignedReceipt::sign(&receipt(&alice, "LAST", 0, 0, 0), &alice);
        assert_eq!(
            take(one_more, "CLIENT=").await,
            Err(ReceiptError::TooManySessions)
        );
        // Garbage.
        for junk in ["", "{}", "[]", &"x".repeat(2000)] {
            let j = SignedReceipt {
                receipt: junk.into(),
                signature: more.signature.clone(),
            };
            assert!(take(j, "CLIENT=").await.is_err());
        }
        // The usage is exactly what was signed.
        let u = usage(&store).await.unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(
            (u[0].sessions, u[0].bytes_up, u[0].bytes_down, u[0].seconds),
            (SESSIONS_PER_HOUR as u64, 15, 25, 2)
        );
        store.close().await;
        db.drop_now().await;
    }

    #[test]
    fn the_meter_sums_every_session_in_bounded_memory() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let m = Meter::default();
        for i in 0..200 {
            m.record(&receipt(&key, &format!("S{i}"), 10, 5, 1));
        }
        // A later receipt of the newest session raises it, not a new one.
        m.record(&receipt(&key, "S199", 20, 5, 2));
        assert_eq!(m.signed("CLIENT="), 199 * 15 + 25);
        assert_eq!(m.signed("OTHER="), 0);
        let t = m.signed.lock();
        assert!(t["CLIENT="].sessions.len() <= SESSIONS_PER_HOUR as usize);
    }

    #[tokio::test]
    async fn sqlite_takes_only_signed_rising_receipts() {
        rules(TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn postgres_takes_only_signed_rising_receipts() {
        rules(TestDb::postgres().await).await;
    }
}
