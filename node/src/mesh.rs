//! Mesh membership and the signed directory.
//!
//! Membership is chitchat's (scuttlebutt gossip with phi-accrual failure detection, as in
//! Quickwit): each node gossips a small key-value state, and every node learns every other's.
//! That state is untrusted input: anyone can gossip anything under any name. So the one value
//! that matters, the node's record (its keys, endpoints, roles, region, capacity, load,
//! version, expiry), is signed with the node's ed25519 identity, and the directory holds only
//! records whose signature verifies under the key the record names, whose id is that key and
//! the gossip member's name, and that have not expired. A node re-signs its record every
//! [`RESIGN`] with a fresh expiry, so a record that stops being renewed ages out even if the
//! gossip layer keeps it. Leaving is part of the record too (`leaving: true`, signed), so
//! only the node itself can take itself out of the directory.

use crate::signed::SignatureError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The gossip key a node's signed record lives under.
pub const RECORD_KEY: &str = "nx1.record";
/// How often a node re-signs its record.
pub const RESIGN: Duration = Duration::from_secs(20);
/// How long a record is valid after it is signed.
pub const RECORD_TTL: Duration = Duration::from_secs(90);
/// The chitchat cluster every NX1 node joins.
pub const CLUSTER: &str = "nx1";
/// What a record signature covers before the record's bytes.
const DOMAIN: &[u8] = b"nx1-node-record/1\0";
/// Largest record accepted from gossip.
const MAX_RECORD: usize = 4096;

/// What a node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Forwards clients' traffic to the internet.
    Exit,
    /// Forwards WireGuard datagrams between clients and exits.
    Relay,
    /// Holds vault replicas.
    Vault,
}

/// What a node publishes about itself, signed with its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Record format.
    pub v: u8,
    /// The node id: base64 ed25519 public key, which signs this record.
    pub id: String,
    /// Its WireGuard public key (base64).
    pub wireguard_key: Option<String>,
    /// Where WireGuard clients reach it, "host:port" (v4 and/or v6 addresses, or names).
    pub endpoints: Vec<String>,
    /// Its HTTP API (vault sync), if it publishes one.
    pub api: Option<String>,
    /// Where clients reach its relay, "host:port", if it relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// What it offers.
    pub roles: Vec<Role>,
    /// A region label ("eu-west", "home-lab").
    pub region: String,
    /// Capacity offered.
    pub capacity: Capacity,
    /// Current load.
    pub load: Load,
    /// Software version.
    pub software: String,
    /// Unix time it was signed.
    pub issued: i64,
    /// Unix time after which it is void.
    pub expires: i64,
    /// The node is leaving the mesh: drop it now.
    #[serde(default)]
    pub leaving: bool,
}

/// Capacity a node offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// WireGuard clients it takes at most (0: no limit announced).
    pub peers: u32,
    /// Bandwidth in Mbit/s (0: not announced).
    pub bandwidth_mbps: u32,
}

/// A node's current load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// WireGuard clients registered.
    pub peers: u32,
    /// Of those, with a handshake in the last 3 minutes.
    pub active_peers: u32,
}

/// A record as gossiped: its exact JSON text and the signature over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The record's JSON.
    pub record: String,
    /// Base64 ed25519 signature over the domain label and `record`.
    pub signature: String,
}

/// Why a gossiped record was not taken into the directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or not a record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record's id is not a public key.
    #[error("the record's id is not an ed25519 public key")]
    BadId,
    /// The signature does not verify under the record's id.
    #[error("bad signature")]
    Signature,
    /// The gossip member publishing it is another node.
    #[error("published by {member}, but the record is {id}'s")]
    WrongMember {
        /// Who gossiped it.
        member: String,
        /// Whose record it claims to be.
        id: String,
    },
    /// Past its expiry.
    #[error("expired {0} s ago")]
    Expired(i64),
    /// A format this node does not know.
    #[error("record format {0} is not 1")]
    Version(u8),
}

impl RecordError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RecordError::Malformed(_) => "malformed",
            RecordError::BadId => "bad_id",
            RecordError::Signature => "signature",
            RecordError::WrongMember { .. } => "wrong_member",
            RecordError::Expired(_) => "expired",
            RecordError::Version(_) => "version",
        }
    }
}

impl SignedRecord {
    /// Signs `record` with `key` (whose public half must be `record.id`).
    pub fn sign(record: &NodeRecord, key: &SigningKey) -> SignedRecord {
        let (record, signature) = crate::signed::sign(DOMAIN, record, key);
        SignedRecord { record, signature }
    }

    /// Checks a record gossiped by `member` at Unix time `now`: well-formed, signed by the
    /// key it names, that key is the member's id, not expired.
    pub fn verify(&self, member: &str, now: i64) -> Result<NodeRecord, RecordError> {
        if self.record.len() > MAX_RECORD {
            return Err(RecordError::Malformed(format!(
                "{} bytes is over {MAX_RECORD}",
                self.record.len()
            )));
        }
        let record: NodeRecord = serde_json::from_str(&self.record)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if record.v != 1 {
            return Err(RecordError::Version(record.v));
        }
        crate::signed::verify(DOMAIN, &self.record, &self.signature, &record.id).map_err(|e| {
            match e {
                SignatureError::BadKey => RecordError::BadId,
                SignatureError::BadSignature => RecordError::Signature,
            }
        })?;
        if record.id != member {
            return Err(RecordError::WrongMember {
                member: member.to_owned(),
                id: record.id,
            });
        }
        if record.expires < now {
            return Err(RecordError::Expired(now - record.expires));
        }
        Ok(record)
    }
}

/// Gossip keys of client registrations start with this, followed by the client's key.
pub const CLIENT_PREFIX: &str = "nx1.client.";
const CLIENT_DOMAIN: &[u8] = b"nx1-client-registration/1\0";

/// A WireGuard client registered on a node, shared with the mesh so that other nodes can
/// take the client, with the same tunnel addresses, when its node goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRegistration {
    /// The node it was registered on (which signs it).
    pub node: String,
    /// The client's WireGuard public key.
    pub public_key: String,
    /// Its name on that node.
    pub name: String,
    /// Its IPv4 tunnel address.
    pub ipv4: std::net::Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub ipv6: std::net::Ipv6Addr,
}

#[derive(Serialize, Deserialize)]
struct SignedClient {
    registration: String,
    signature: String,
}

impl ClientRegistration {
    fn sign(&self, key: &SigningKey) -> String {
        let (registration, signature) = crate::signed::sign(CLIENT_DOMAIN, self, key);
        serde_json::to_string(&SignedClient {
            registration,
            signature,
        })
        .expect("registrations serialize")
    }

    /// A registration gossiped by `member`, if it is one, signed by that member and naming
    /// it as the node.
    fn verify(text: &str, member: &str) -> Option<ClientRegistration> {
        if text.len() > MAX_RECORD {
            return None;
        }
        let signed: SignedClient = serde_json::from_str(text).ok()?;
        let r: ClientRegistration = serde_json::from_str(&signed.registration).ok()?;
        if r.node != member || crate::peers::check_name(&r.name).is_err() {
            return None;
        }
        crate::signed::verify(
            CLIENT_DOMAIN,
            &signed.registration,
            &signed.signature,
            &r.node,
        )
        .ok()?;
        Some(r)
    }
}

/// One member of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its verified record.
    pub record: NodeRecord,
    /// `live`, or `dead` (the failure detector gave up on it; dropped after a grace period).
    pub state: String,
    /// Where it gossips.
    pub gossip: SocketAddr,
}

/// The directory: every member whose record verifies, and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// This node's id.
    pub node_id: String,
    /// Members by id (this node included).
    pub members: BTreeMap<String, Member>,
    /// Members whose record was refused, with the reason.
    pub refused: BTreeMap<String, String>,
}

/// Settings of the mesh, from `[mesh]`.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// UDP address gossip listens on.
    pub listen: SocketAddr,
    /// The address others gossip to.
    pub advertise: SocketAddr,
    /// Nodes to join through ("host:port").
    pub bootstrap: Vec<String>,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Region label.
    pub region: String,
    /// The URL of this node's HTTP API to publish, when set explicitly.
    pub api_url: Option<String>,
    /// Send clients out through other exits.
    pub egress: bool,
    /// Interval of egress probes.
    pub egress_probe: Duration,
    /// Silence after which an exit is failed over from.
    pub egress_timeout: Duration,
    /// As an exit: the address the uplink must route to for egress probes to be answered.
    pub uplink_check: Option<std::net::IpAddr>,
}

/// What goes into this node's record (besides what the mesh fills in).
pub type RecordSource = Box<dyn Fn() -> NodeRecord + Send + Sync>;

/// A running mesh membership.
pub struct Mesh {
    handle: ChitchatHandle,
    node_id: String,
    key: SigningKey,
    source: RecordSource,
    /// Members refused at the last look, by reason (for `/metrics`).
    pub refused_now: parking_lot::Mutex<BTreeMap<&'static str, u64>>,
}

impl Mesh {
    /// Joins the mesh: gossips this node's signed record from `source` and keeps it fresh.
    pub async fn start(
        settings: &MeshSettings,
        key: SigningKey,
        source: RecordSource,
    ) -> anyhow::Result<Arc<Mesh>> {
        let node_id = STANDARD.encode(key.verifying_key().as_bytes());
        // A new generation on every start, so the mesh tells a restarted node from its past.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let interval = settings.gossip_interval;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.clone(), generation, settings.advertise),
            cluster_id: CLUSTER.to_owned(),
            gossip_interval: interval,
            listen_addr: settings.listen,
            seed_nodes: settings.bootstrap.clone(),
            // Tuned for seconds: heartbeats every gossip round, a node silent for about ten
            // rounds is dead.
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 100,
                max_interval: interval * 10,
                initial_interval: interval,
                dead_node_grace_period: Duration::from_secs(60),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let record = SignedRecord::sign(&Self::fill(&node_id, &source, false), &key);
        let initial = vec![(
            RECORD_KEY.to_owned(),
            serde_json::to_string(&record).expect("records serialize"),
        )];
        let handle = spawn_chitchat(config, initial, &UdpTransport).await?;
        Ok(Arc::new(Mesh {
            handle,
            node_id,
            key,
            source,
            refused_now: parking_lot::Mutex::new(BTreeMap::new()),
        }))
    }

    fn fill(node_id: &str, source: &RecordSource, leaving: bool) -> NodeRecord {
        let now = crate::now_unix();
        let mut r = source();
        r.v = 1;
        r.id = node_id.to_owned();
        r.issued = now;
        r.expires = now + RECORD_TTL.as_secs() as i64;
        r.leaving = leaving;
        r
    }

    /// Re-signs and republishes this node's record (fresh load and expiry).
    pub async fn refresh(&self) {
        self.publish(false).await;
    }

    async fn publish(&self, leaving: bool) {
        let record =
            SignedRecord::sign(&Self::fill(&self.node_id, &self.source, leaving), &self.key);
        let text = serde_json::to_string(&record).expect("records serialize");
        self.handle
            .with_chitchat(|c| c.self_node_state().set(RECORD_KEY, text.clone()))
            .await;
    }

    /// Shares a client registered on this node with the mesh.
    pub async fn publish_client(
        &self,
        public_key: &str,
        name: &str,
        ipv4: std::net::Ipv4Addr,
        ipv6: std::net::Ipv6Addr,
    ) {
        let r = ClientRegistration {
            node: self.node_id.clone(),
            public_key: public_key.to_owned(),
            name: name.to_owned(),
            ipv4,
            ipv6,
        };
        let text = r.sign(&self.key);
        self.handle
            .with_chitchat(|c| {
                c.self_node_state()
                    .set(format!("{CLIENT_PREFIX}{public_key}"), text.clone())
            })
            .await;
    }

    /// Withdraws a client this node shared.
    pub async fn withdraw_client(&self, public_key: &str) {
        self.handle
            .with_chitchat(|c| {
                c.self_node_state()
                    .delete(&format!("{CLIENT_PREFIX}{public_key}"))
            })
            .await;
    }

    /// Every client registration in the mesh whose signature verifies (this node's own
    /// included), with whether its node is live.
    pub async fn clients(&self) -> Vec<(ClientRegistration, bool)> {
        // Copied out under the lock, verified after it: signature checks must not hold up
        // the gossip.
        let gossiped: Vec<(String, String, String, bool)> = {
            let chitchat = self.handle.chitchat();
            let c = chitchat.lock().await;
            let live: Vec<ChitchatId> = c.live_nodes().cloned().collect();
            c.node_states()
                .iter()
                .flat_map(|(id, state)| {
                    let is_live = live.contains(id);
                    state.iter_prefix(CLIENT_PREFIX).map(move |(key, value)| {
                        (
                            key[CLIENT_PREFIX.len()..].to_owned(),
                            value.value.clone(),
                            id.node_id.to_string(),
                            is_live,
                        )
                    })
                })
                .collect()
        };
        gossiped
            .into_iter()
            .filter_map(|(key, text, member, live)| {
                ClientRegistration::verify(&text, &member)
                    .filter(|r| r.public_key == key)
                    .map(|r| (r, live))
            })
            .collect()
    }

    /// Tells the others this node is leaving, gives the news a few rounds to spread, and
    /// stops gossiping.
    pub async fn leave(self: Arc<Self>, interval: Duration) {
        self.publish(true).await;
        tokio::time::sleep(interval * 4).await;
        let _ = self.handle.initiate_shutdown();
    }

    /// The directory as this node sees it now.
    pub async fn directory(&self) -> Directory {
        let now = crate::now_unix();
        let chitchat = self.handle.chitchat();
        let c = chitchat.lock().await;
        let live: Vec<ChitchatId> = c.live_nodes().cloned().collect();
        let mut dir = Directory {
            node_id: self.node_id.clone(),
            ..Directory::default()
        };
        let mut refused = Vec::new();
        for (id, state) in c.node_states() {
            let Some(text) = state.get(RECORD_KEY) else {
                continue;
            };
            let checked = serde_json::from_str::<SignedRecord>(text)
                .map_err(|e| RecordError::Malformed(e.to_string()))
                .and_then(|s| s.verify(&id.node_id, now));
            match checked {
                // It said goodbye (and signed it).
                Ok(record) if record.leaving => {}
                Ok(record) => {
                    let member = Member {
                        record,
                        state: if live.contains(id) { "live" } else { "dead" }.to_owned(),
                        gossip: id.gossip_advertise_addr,
                    };
                    // A restarted node has an older generation too: the live or newer wins.
                    let keep = match dir.members.get(&*id.node_id) {
                        Some(old) => old.state != "live" || member.state == "live",
                        None => true,
                    };
                    if keep {
                        dir.members.insert(id.node_id.to_string(), member);
                    }
                }
                Err(e) => {
                    dir.refused.insert(id.node_id.to_string(), e.to_string());
                    refused.push(e.label());
                }
            }
        }
        drop(c);
        let mut now = BTreeMap::new();
        for label in refused {
            *now.entry(label).or_default() += 1;
        }
        *self.refused_now.lock() = now;
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &SigningKey, expires: i64) -> NodeRecord {
        NodeRecord {
            v: 1,
            id: STANDARD.encode(key.verifying_key().as_bytes()),
            wireguard_key: None,
            endpoints: vec!["192.0.2.1:51820".into()],
            api: None,
            relay: None,
            roles: vec![Role::Exit],
            region: "test".into(),
            capacity: Capacity::default(),
            load: Load::default(),
            software: "0".into(),
            issued: 0,
            expires,
            leaving: false,
        }
    }

    #[test]
    fn client_registrations_verify_only_as_signed_by_their_node() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let id = STANDARD.encode(key.verifying_key().as_bytes());
        let r = ClientRegistration {
            node: id.clone(),
            public_key: "K=".into(),
            name: "laptop".into(),
            ipv4: "10.87.0.2".parse().unwrap(),
            ipv6: "fd00:87::2".parse().unwrap(),
        };
        let text = r.sign(&key);
        assert_eq!(ClientRegistration::verify(&text, &id), Some(r.clone()));
        // Gossiped by another member, altered, or signed by another key: refused.
        let other = SigningKey::from_bytes(&[2; 32]);
        let other_id = STANDARD.encode(other.verifying_key().as_bytes());
        assert_eq!(ClientRegistration::verify(&text, &other_id), None);
        assert_eq!(
            ClientRegistration::verify(&text.replace("10.87.0.2", "10.87.0.9"), &id),
            None
        );
        let forged = ClientRegistration { ..r }.sign(&other);
        assert_eq!(ClientRegistration::verify(&forged, &id), None);
        assert_eq!(ClientRegistration::verify("garbage", &id), None);
    }

    #[test]
    fn records_verify_only_as_their_own_signed_fresh_selves() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let r = record(&key, 100);
        let s = SignedRecord::sign(&r, &key);
        assert_eq!(s.verify(&r.id, 50), Ok(r.clone()));
        // Expired.
        assert_eq!(s.verify(&r.id, 101), Err(RecordError::Expired(1)));
        // Gossiped under another member's name.
        let other_id = STANDARD.encode(other.verifying_key().as_bytes());
        assert!(matches!(
            s.verify(&other_id, 50),
            Err(RecordError::WrongMember { .. })
        ));
        // Signed by someone else, or altered after signing.
        let forged = SignedRecord::sign(&r, &other);
        assert_eq!(forged.verify(&r.id, 50), Err(RecordError::Signature));
        let mut altered = s.clone();
        altered.record = altered.record.replace("\"test\"", "\"evil\"");
        assert_eq!(altered.verify(&r.id, 50), Err(RecordError::Signature));
        // Garbage.
        for junk in ["", "{}", "[1]", &"x".repeat(5000)] {
            let j = SignedRecord {
                record: junk.to_owned(),
                signature: s.signature.clone(),
            };
            assert!(j.verify(&r.id, 50).is_err(), "{junk:.20}");
        }
        let bad_id = SignedRecord::sign(
            &NodeRecord {
                id: "not a key".into(),
                ..r
            },
            &key,
        );
        assert_eq!(bad_id.verify("not a key", 50), Err(RecordError::BadId));
    }
}
