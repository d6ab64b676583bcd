//! The credit ledger across three `nx1 up` nodes on loopback: an account's entries live on its
//! replicas, a grant reaches all of them, two spends of the same credits sent to two nodes at
//! once cannot both go through (and the replicas end up agreeing on what happened), and a
//! spend beyond the balance is refused with a clear "out of credits" answer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use nx1_tests::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct LedgerNode {
    daemon: Option<Daemon>,
    config: PathBuf,
    dir: PathBuf,
    api: String,
    id: String,
}

impl LedgerNode {
    fn init(tmp: &Path, name: &str) -> LedgerNode {
        let dir = tmp.join(name);
        let (config, id) = init_node(&dir, tmp);
        let api = format!("127.0.0.1:{}", free_tcp_port());
        set_config(&config, "vpn", "enabled", "false");
        set_config(&config, "api", "listen", &format!("\"{api}\""));
        set_config(&config, "mesh", "enabled", "true");
        set_config(&config, "mesh", "api_url", &format!("\"http://{api}\""));
        set_config(&config, "credits", "sync_interval_ms", "300");
        set_config(&config, "credits", "spend_hold_secs", "3");
        LedgerNode {
            daemon: None,
            config,
            dir,
            api,
            id,
        }
    }

    fn start(&mut self) {
        let log = self.dir.join("up.log");
        self.daemon = Some(Daemon::start(
            Some(&self.config),
            self.dir.parent().unwrap(),
            &log,
        ));
        eventually("the node's API", Duration::from_secs(30), || {
            http_get(&self.api, "/healthz")
                .ok()
                .filter(|(c, _)| *c == 200)
        });
    }

    fn nx1(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        nx1(&all, self.dir.parent().unwrap())
    }

    /// The account as this node holds it (balance and history).
    fn held(&self, account: &str) -> serde_json::Value {
        let (code, body) = http_get(
            &self.api,
            &format!("/v1/credits/replica/account?account={}", query(account)),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        http_request(
            &self.api,
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap()
    }
}

impl Drop for LedgerNode {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop_with(libc::SIGKILL);
        }
    }
}

fn query(account: &str) -> String {
    account
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn id_of(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().as_bytes())
}

/// A spend as a device signs it: the entry's JSON and the signature over the ledger's domain
/// label and that text.
fn spend(key: &SigningKey, account: &str, id: &str, amount: u64) -> String {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let entry = serde_json::json!({
        "kind": "spend", "v": 1, "id": id, "account": account, "signer": id_of(key),
        "service": "test", "amount": amount, "memo": "", "at": at,
    })
    .to_string();
    let mut msg = b"nx1-credit-entry/1\0".to_vec();
    msg.extend_from_slice(entry.as_bytes());
    serde_json::json!({
        "entry": entry,
        "signature": STANDARD.encode(key.sign(&msg).to_bytes()),
    })
    .to_string()
}

#[test]
fn the_same_credits_spent_on_two_nodes_at_once_go_through_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<LedgerNode> = ["a", "b", "c"]
        .iter()
        .map(|n| LedgerNode::init(tmp.path(), n))
        .collect();
    let gossip: Vec<SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()).parse().unwrap())
        .collect();
    let issuer = nodes[0].id.clone();
    for (i, n) in nodes.iter().enumerate() {
        set_config(&n.config, "mesh", "listen", &format!("\"{}\"", gossip[i]));
        if i > 0 {
            set_config(
                &n.config,
                "mesh",
                "bootstrap",
                &format!("[\"{}\"]", gossip[0]),
            );
        }
        // Every node honours node a's grants.
        set_config(&n.config, "credits", "issuers", &format!("[\"{issuer}\"]"));
    }
    for n in &mut nodes {
        n.start();
    }
    eventually(
        "three live members with an API",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| {
                    let (_, body) = http_get(&n.api, "/v1/directory").unwrap();
                    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
                    d["members"].as_object().is_some_and(|m| {
                        m.len() == 3
                            && m.values()
                                .all(|m| m["state"] == "live" && m["record"]["api"].is_string())
                    })
                })
                .then_some(())
        },
    );

    // An account (a device's key) topped up by the issuer: every replica holds the grant.
    let device = SigningKey::from_bytes(&[7; 32]);
    let account = id_of(&device);
    let granted = nodes[0].nx1(&["credits", "grant", &account, "100", "--memo", "welcome"]);
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    assert!(
        text(&granted.stdout).contains("taken by 3 replica(s)"),
        "{}",
        text(&granted.stdout)
    );
    for n in &nodes {
        assert_eq!(n.held(&account)["balance"]["balance"], 100);
    }

    // A grant by a node no one honours, and a spend signed by a key that is not the account's.
    let rogue = nodes[1].nx1(&["credits", "grant", &account, "1000"]);
    assert!(!rogue.status.success());
    assert!(
        text(&rogue.stderr).contains("not an issuer"),
        "{}",
        text(&rogue.stderr)
    );
    let mallory = SigningKey::from_bytes(&[8; 32]);
    let (code, body) = nodes[2].post(
        "/v1/credits/spend",
        &spend(&mallory, &account, "AAAAAAAAAAAAAAAAAAAAAA==", 1),
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("is not a device of account"), "{body}");

    // Two spends of all of it, at once, on two nodes.
    let first = spend(&device, &account, "AQEBAQEBAQEBAQEBAQEBAQ==", 100);
    let second = spend(&device, &account, "AgICAgICAgICAgICAgICAg==", 100);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let a = s.spawn(|| nodes[0].post("/v1/credits/spend", &first));
        let b = s.spawn(|| nodes[1].post("/v1/credits/spend", &second));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let won: Vec<_> = answers.iter().filter(|(c, _)| *c == 200).collect();
    assert_eq!(won.len(), 1, "exactly one spend goes through: {answers:?}");
    let (code, body) = answers.iter().find(|(c, _)| *c != 200).unwrap();
    assert!(
        (*code == 402 && body.contains("out of credits — contribute or top up"))
            || (*code == 503 && body.contains("did not reach a majority")),
        "{code} {body}"
    );

    // The replicas compare notes and agree on what happened: only the spend that went
    // through. The other one a minority may have taken is held there, never shared, and its
    // credits come back when its hold runs out (3 s here): the account is not overdrawn.
    let agreed = eventually("the replicas to agree", Duration::from_secs(20), || {
        let views: Vec<serde_json::Value> = nodes.iter().map(|n| n.held(&account)).collect();
        let histories: Vec<&serde_json::Value> = views.iter().map(|v| &v["history"]).collect();
        let settled = views
            .iter()
            .all(|v| v["balance"]["balance"] == 0 && v["history"].as_array().unwrap().len() == 2);
        (settled && histories.windows(2).all(|w| w[0] == w[1])).then(|| views[0].clone())
    });
    let spends: Vec<&serde_json::Value> = agreed["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "spend")
        .collect();
    assert_eq!(spends.len(), 1, "{agreed}");
    assert_eq!(spends[0]["pending"], false);
    assert_eq!(agreed["balance"]["overdrawn"], false);
    let winner = if answers[0].0 == 200 { &first } else { &second };
    let winner: serde_json::Value = serde_json::from_str(winner).unwrap();
    assert_eq!(spends[0]["signed"]["entry"], winner["entry"]);

    // Nothing is left to spend: the plain answer, from any node.
    let (code, body) = nodes[2].post(
        "/v1/credits/spend",
        &spend(&device, &account, "AwMDAwMDAwMDAwMDAwMDAw==", 1),
    );
    assert_eq!(code, 402, "{body}");
    assert!(
        body.contains("out of credits — contribute or top up"),
        "{body}"
    );

    // The history, signed entry by entry, from the command line of any node.
    let history = nodes[2].nx1(&["credits", "history", "--account", &account, "--json"]);
    assert!(history.status.success(), "{}", text(&history.stderr));
    let h: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(h["history"], agreed["history"]);
    assert_eq!(h["history"][0]["kind"], "grant");

    // Several devices per account: node b's identity is an account; it lets a phone's key
    // spend for it, and later stops it.
    let phone = SigningKey::from_bytes(&[9; 32]);
    let b_account = nodes[1].id.clone();
    let granted = nodes[0].nx1(&["credits", "grant", &b_account, "10"]);
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    let added = nodes[1].nx1(&["credits", "device", "add", &id_of(&phone)]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let (code, body) = nodes[2].post(
        "/v1/credits/spend",
        &spend(&phone, &b_account, "BQUFBQUFBQUFBQUFBQUFBQ==", 4),
    );
    assert_eq!(code, 200, "{body}");
    let b_view = nodes[1].nx1(&["credits", "--json"]);
    let b_view: serde_json::Value = serde_json::from_slice(&b_view.stdout).unwrap();
    assert_eq!(b_view["balance"]["balance"], 6);
    assert_eq!(b_view["balance"]["devices"][0], id_of(&phone).as_str());
    let removed = nodes[1].nx1(&["credits", "device", "remove", &id_of(&phone)]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let (code, body) = nodes[0].post(
        "/v1/credits/spend",
        &spend(&phone, &b_account, "BgYGBgYGBgYGBgYGBgYGBg==", 1),
    );
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("is not a device of account"), "{body}");

    // A node that goes dark: the account's other replicas carry on.
    let c = nodes.pop().unwrap();
    drop(c);
    eventually("the dead node left out", Duration::from_secs(15), || {
        let granted = nodes[0].nx1(&["credits", "grant", &account, "500"]);
        (granted.status.success() && text(&granted.stdout).contains("taken by 2 replica(s)"))
            .then_some(())
    });
    let (code, body) = nodes[1].post(
        "/v1/credits/spend",
        &spend(&device, &account, "BAQEBAQEBAQEBAQEBAQEBA==", 50),
    );
    assert_eq!(code, 200, "{body}");
}
