//! `/v1/credits/*` and `/v1/contribute`: the ledger over HTTP, for the other replicas, for the
//! services that charge, and for the desktop app.
//!
//! Everything a replica takes is signed by whoever's say-so it is (see [`crate::ledger`]), so
//! anyone may send entries, spends and holdings. What would tell strangers about this node's
//! clients (their receipts, accounts, usage) is answered only to this machine (a loopback
//! peer, like the control socket) and to the members of the mesh, which need it to compare
//! replicas; changing what the node contributes only to this machine.

use crate::control::Request;
use crate::daemon::Node;
use crate::ledger::{ApplyRequest, ApplyResult, Duty, LedgerError, MAX_BATCH, Mode, SignedEntry};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body: a batch of entries.
const MAX_BODY: usize = (MAX_BATCH + 1) * (crate::ledger::MAX_ENTRY + 256);

/// The routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/credits", get(summary))
        .route("/v1/credits/node", get(node_info))
        .route("/v1/credits/spend", post(spend))
        .route("/v1/credits/account", get(account))
        .route("/v1/credits/replica/account", get(local_account))
        .route("/v1/credits/replica/apply", post(apply))
        .route("/v1/credits/replica/confirm", post(confirm))
        .route("/v1/credits/replica/digest", get(digest))
        .route("/v1/credits/replica/entries", get(entries))
        .route("/v1/credits/carried", post(carried))
        .route("/v1/credits/held", post(held))
        .route("/v1/contribute", get(contribution).post(contribute))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

/// Whether `peer` is this machine.
fn local(peer: &SocketAddr) -> bool {
    peer.ip().is_loopback()
}

/// Whether `peer` is this machine or a live member of the mesh (where it gossips from, or
/// the host of its published API or endpoints).
async fn member(node: &Node, peer: &SocketAddr) -> bool {
    if local(peer) {
        return true;
    }
    let Some(mesh) = &node.mesh else {
        return false;
    };
    mesh.directory()
        .await
        .members
        .values()
        .any(|m| is_at(m, peer.ip()))
}

/// Whether a live member sends from `ip`: where it gossips from, or the host of its published
/// API or endpoints.
fn is_at(m: &crate::mesh::Member, ip: std::net::IpAddr) -> bool {
    m.state == "live"
        && (m.gossip.ip() == ip
            || m.record
                .api
                .iter()
                .chain(&m.record.endpoints)
                .any(|a| host_ip(a) == Some(ip)))
}

/// The IP of "http://IP:PORT/…" or "IP:PORT", if it is a literal address.
fn host_ip(address: &str) -> Option<std::net::IpAddr> {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let host = rest.split('/').next()?;
    host.parse::<SocketAddr>().ok().map(|a| a.ip())
}

fn forbidden() -> Response {
    error(
        403,
        "this is answered only to this machine and to the members of its mesh",
    )
}

fn error(status: u16, message: impl Into<String>) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

fn ledger_error(e: LedgerError) -> Response {
    error(e.status(), e.to_string())
}

fn json_error(r: JsonRejection) -> Response {
    error(
        r.status().as_u16(),
        format!("invalid request body: {}", r.body_text()),
    )
}

fn query_error(r: QueryRejection) -> Response {
    error(
        r.status().as_u16(),
        format!("invalid query: {}", r.body_text()),
    )
}

/// `?account=KEY` (base64, percent-encoded).
#[derive(Debug, Deserialize)]
struct AccountQuery {
    account: String,
}

/// The account a query names, or the answer that refuses it.
fn checked(q: Result<Query<AccountQuery>, QueryRejection>) -> Result<String, Box<Response>> {
    let Query(q) = q.map_err(|r| Box::new(query_error(r)))?;
    if crate::signed::public_key(&q.account).is_none() {
        return Err(Box::new(error(
            400,
            "account: not a base64 ed25519 public key",
        )));
    }
    Ok(q.account)
}

/// This node's id and prices: what a device needs to confirm a holding or pay.
async fn node_info(State(node): State<Arc<Node>>) -> Response {
    Json(serde_json::json!({
        "node_id": node.node_id,
        "pricing": node.config.raw.credits.pricing_info(),
    }))
    .into_response()
}

/// The account a mesh member (or this machine) asks about, or the answer that refuses it.
async fn member_asking(
    node: &Node,
    peer: &SocketAddr,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<String, Box<Response>> {
    if !member(node, peer).await {
        return Err(Box::new(forbidden()));
    }
    checked(q)
}

/// What this node carried and what its owner's account holds (`nx1 credits`).
async fn summary(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !local(&peer) {
        return error(
            403,
            "this node's credits are answered to its own machine only",
        );
    }
    match node.handle(Request::Credits).await {
        crate::control::Response::Credits(c) => Json(c).into_response(),
        crate::control::Response::Error { message } => error(500, message),
        _ => error(500, "unexpected answer"),
    }
}

/// Spends for a service: the spend goes to every replica of its account and counts once a
/// majority took it.
async fn spend(
    State(node): State<Arc<Node>>,
    body: Result<Json<SignedEntry>, JsonRejection>,
) -> Response {
    let Json(signed) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    match node.ledger.spend(&signed).await {
        Ok(spend) => Json(serde_json::json!({ "spent": spend })).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// An account's balance and history, from one of its replicas.
async fn account(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let account = match member_asking(&node, &peer, q).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match node.ledger.account(&account).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// An account as this node holds it.
async fn local_account(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let account = match member_asking(&node, &peer, q).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match node.ledger.local_view(&account).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// Takes entries into this replica: an answer for each.
async fn apply(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    // Merged entries skip the balance check (another replica decided them): only the mesh's
    // members (and this machine) may send them.
    if req.merge && !member(&node, &peer).await {
        return forbidden();
    }
    if req.entries.len() > MAX_BATCH {
        return error(
            400,
            format!(
                "{} entries in one request; at most {MAX_BATCH}",
                req.entries.len()
            ),
        );
    }
    let mode = if req.merge { Mode::Merge } else { Mode::Check };
    let mut out = Vec::with_capacity(req.entries.len());
    for e in &req.entries {
        out.push(match node.ledger.apply(e, mode).await {
            Ok(a) => ApplyResult {
                ok: Some(a),
                error: None,
                status: 200,
            },
            Err(e) => ApplyResult {
                ok: None,
                status: e.status(),
                error: Some(e.to_string()),
            },
        });
    }
    Json(out).into_response()
}

/// Spends a majority of their replicas took: decided here too. Open to anyone: it can only
/// settle a spend its account signed and this replica took.
async fn confirm(
    State(node): State<Arc<Node>>,
    body: Result<Json<crate::ledger::ConfirmRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    if req.ids.len() > MAX_BATCH
        || req
            .ids
            .iter()
            .any(|i| !i.starts_with("spend/") || i.len() > 160)
    {
        return error(400, "ids: at most 512 spend ids");
    }
    match node.ledger.finalize(&req.ids).await {
        Ok(()) => Json(serde_json::json!({ "confirmed": req.ids.len() })).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// What an account's entries hash to here.
async fn digest(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let account = match member_asking(&node, &peer, q).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match node.ledger.digest(&account).await {
        Ok(d) => Json(d).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// Every entry of an account held here.
async fn entries(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Response {
    let account = match member_asking(&node, &peer, q).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match node.ledger.decided(&account).await {
        Ok(entries) => Json(entries).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// A receipt an exit passes on to the relay its client came through: the relay claims its
/// earning.
async fn carried(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<crate::credits::SignedReceipt>, JsonRejection>,
) -> Response {
    let Json(signed) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    if node.relay.is_none() {
        return error(404, "this node does not relay");
    }
    let receipt = match signed.verify() {
        Ok(r) => r,
        Err(e) => return error(400, e.to_string()),
    };
    if receipt.via.as_deref() != Some(node.node_id.as_str()) {
        return error(400, "the receipt does not name this node as its relay");
    }
    // Only the exit the receipt names passes it on (it checked that the client came through
    // this relay); a client posting its own receipts here earns the relay nothing.
    let from_exit = match &node.mesh {
        Some(mesh) => mesh
            .directory()
            .await
            .members
            .get(&receipt.node)
            .is_some_and(|m| is_at(m, peer.ip())),
        None => false,
    };
    if !from_exit {
        return error(403, "receipts are passed on by the exit they name");
    }
    node.ledger.claim(Duty::Relay, signed, receipt.session);
    Json(crate::ledger::Applied::New).into_response()
}

/// A client's confirmation that this node holds a replica of its vault today: storage duty
/// earns on it (claimed for this node's owner).
async fn held(
    State(node): State<Arc<Node>>,
    body: Result<Json<crate::credits::SignedReceipt>, JsonRejection>,
) -> Response {
    let Json(signed) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    let Some(vault) = &node.vault else {
        return error(404, "this node holds no vaults");
    };
    let h = match crate::ledger::Holding::verify(&signed) {
        Ok(h) => h,
        Err(e) => return ledger_error(e),
    };
    if h.node != node.node_id {
        return error(400, "the holding names another node");
    }
    let today = crate::now_unix().div_euclid(86_400);
    if h.day != today {
        return error(
            400,
            format!("the holding is for day {}; today is {today}", h.day),
        );
    }
    match vault.bytes_of(&h.vault).await {
        Ok(Some(held)) if h.bytes <= held => {}
        Ok(Some(held)) => {
            return error(
                400,
                format!(
                    "the holding claims {} bytes; this node holds {held}",
                    h.bytes
                ),
            );
        }
        Ok(None) => return error(404, format!("this node holds no vault {}", h.vault)),
        Err(e) => return error(500, e.to_string()),
    }
    // One earning per vault and day, whichever account confirms it.
    let session = format!("{}/{}", h.vault, h.day);
    node.ledger.claim(Duty::Storage, signed, session);
    Json(crate::ledger::Applied::New).into_response()
}

/// What this node contributes.
async fn contribution(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !local(&peer) {
        return error(
            403,
            "what a node contributes is answered to its own machine only",
        );
    }
    contribute_with(&node, None, None).await
}

/// A change to what this node contributes (`nx1 contribute on|off|--bandwidth`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContributeChange {
    #[serde(default)]
    relay: Option<bool>,
    #[serde(default)]
    bandwidth_mbit: Option<u32>,
}

async fn contribute(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<ContributeChange>, JsonRejection>,
) -> Response {
    if !local(&peer) {
        return error(
            403,
            "what a node contributes is changed from the node's own machine only",
        );
    }
    let Json(c) = match body {
        Ok(b) => b,
        Err(r) => return json_error(r),
    };
    contribute_with(&node, c.relay, c.bandwidth_mbit).await
}

async fn contribute_with(
    node: &Node,
    relay: Option<bool>,
    bandwidth_mbit: Option<u32>,
) -> Response {
    match node
        .handle(Request::Contribute {
            relay,
            bandwidth_mbit,
        })
        .await
    {
        crate::control::Response::Contribution(c) => Json(c).into_response(),
        crate::control::Response::Error { message } => error(400, message),
        _ => error(500, "unexpected answer"),
    }
}
