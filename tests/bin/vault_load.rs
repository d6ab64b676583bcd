//! `nx1-vault-load URL CONCURRENCY SECONDS`: a load generator for a node's vault API. Each of
//! CONCURRENCY workers registers its own account, logs in, and then, for SECONDS, repeats a
//! device's sync cycle against the node: push one changed item (all-or-nothing, with its
//! signed manifest) and pull the changes since its cursor. Items are real sealed records
//! (~300 bytes padded), so the node does the work it does for real devices. Prints one JSON
//! object: requests per second and latency percentiles per operation.

use nx1_vault::client::Vault;
use nx1_vault::crypto::KdfParams;
use nx1_vault::item::Item;
use nx1_vault::wire;
use std::time::{Duration, Instant};

struct Client {
    base: String,
    agent: ureq::Agent,
    token: String,
}

impl Client {
    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> (u16, Option<T>) {
        let mut resp = self
            .agent
            .post(format!("{}/v1/vault{path}", self.base))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .send(serde_json::to_vec(body).unwrap())
            .expect("the node answers");
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        (status, serde_json::from_slice(&bytes).ok())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let mut resp = self
            .agent
            .get(format!("{}/v1/vault{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .call()
            .expect("the node answers");
        assert_eq!(resp.status().as_u16(), 200);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        serde_json::from_slice(&bytes).expect("JSON")
    }
}

fn worker(base: String, n: usize, until: Instant) -> (Vec<Duration>, Vec<Duration>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let name = format!("load-{}-{n}", std::process::id());
    let (mut vault, reg) = Vault::create(&name, b"load", KdfParams::FLOOR).unwrap();
    let mut c = Client {
        base,
        agent,
        token: String::new(),
    };
    let (s, _): (u16, Option<serde_json::Value>) = c.post("/register", &reg);
    assert_eq!(s, 201, "register");
    let pre = wire::Prelogin {
        salt: reg.salt.clone(),
        kdf: reg.kdf,
    };
    let master = Vault::master_for_login(&name, b"load", &pre, None).unwrap();
    let (_, ch): (_, Option<wire::Challenge>) = c.post(
        "/challenge",
        &wire::ChallengeRequest {
            account: reg.account,
        },
    );
    let login = Vault::answer(&master, &reg.account, &ch.unwrap().challenge);
    let (_, session): (_, Option<wire::Session>) = c.post("/login", &login);
    c.token = session.expect("login").token;

    // A handful of items per account, edited round-robin.
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(vault.add(Item {
            name: format!("item {i}"),
            username: "user@example.org".into(),
            password: nx1_vault::generate::password(20, true),
            urls: vec![format!("https://site{i}.example")],
            ..Item::default()
        }));
    }
    let (mut pushes, mut pulls) = (Vec::new(), Vec::new());
    let mut round = 0usize;
    while Instant::now() < until {
        let t = Instant::now();
        let since = vault.seen().map_or(0, |s| s.seq);
        let changes: wire::Changes = c.get(&format!("/changes?since={since}"));
        pulls.push(t.elapsed());
        vault.apply_changes(changes, 1).expect("a consistent node");
        if vault.pending() == 0 {
            let id = ids[round % ids.len()];
            let mut it = vault.get(&id).unwrap();
            it.notes = format!("edit {round}");
            vault.put(&id, it).unwrap();
        }
        round += 1;
        let p = vault.prepare_push(100, 1).unwrap().expect("a change");
        let t = Instant::now();
        let (status, _): (u16, Option<serde_json::Value>) = c.post("/push", &p.push);
        pushes.push(t.elapsed());
        assert_eq!(status, 200, "push");
        vault.pushed(p);
    }
    (pushes, pulls)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: nx1-vault-load URL CONCURRENCY SECONDS");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let concurrency: usize = args[2].parse().expect("CONCURRENCY");
    let seconds: u64 = args[3].parse().expect("SECONDS");
    let start = Instant::now() + Duration::from_millis(200);
    let until = start + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|n| {
            let base = base.clone();
            std::thread::spawn(move || worker(base, n, until))
        })
        .collect();
    let (mut pushes, mut pulls) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, b) = w.join().expect("worker");
        pushes.extend(a);
        pulls.extend(b);
    }
    let elapsed = seconds as f64;
    pushes.sort();
    pulls.sort();
    let out = serde_json::json!({
        "concurrency": concurrency,
        "seconds": seconds,
        "requests_per_second": (pushes.len() + pulls.len()) as f64 / elapsed,
        "push": {"count": pushes.len(), "p50_ms": percentile(&pushes, 0.5), "p99_ms": percentile(&pushes, 0.99)},
        "pull": {"count": pulls.len(), "p50_ms": percentile(&pulls, 0.5), "p99_ms": percentile(&pulls, 0.99)},
    });
    println!("{out}");
}
