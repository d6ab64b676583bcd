//! The mesh from the outside: `nx1 up` nodes on loopback join through a bootstrap node, the
//! directory converges, records that do not verify (forged, expired, impersonating) are
//! refused, a killed node is marked dead within seconds, a node that stops leaves at once, and
//! a restarted node rejoins.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use nx1_tests::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct MeshNode {
    daemon: Option<Daemon>,
    config: PathBuf,
    dir: PathBuf,
    api: String,
    gossip: SocketAddr,
    id: String,
}

impl MeshNode {
    fn init(tmp: &Path, name: &str, region: &str, bootstrap: Option<SocketAddr>) -> MeshNode {
        let dir = tmp.join(name);
        let (config, id) = init_node(&dir, tmp);
        let api = format!("127.0.0.1:{}", free_tcp_port());
        let gossip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        set_config(&config, "vpn", "enabled", "false");
        set_config(&config, "api", "listen", &format!("\"{api}\""));
        set_config(&config, "mesh", "enabled", "true");
        set_config(&config, "mesh", "listen", &format!("\"{gossip}\""));
        set_config(&config, "mesh", "region", &format!("\"{region}\""));
        let seeds = bootstrap.map_or(String::new(), |b| format!("\"{b}\""));
        set_config(&config, "mesh", "bootstrap", &format!("[{seeds}]"));
        MeshNode {
            daemon: None,
            config,
            dir,
            api,
            gossip,
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

    fn directory(&self) -> serde_json::Value {
        let (code, body) = http_get(&self.api, "/v1/directory").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn states(&self) -> Vec<(String, String)> {
        let d = self.directory();
        let mut v: Vec<(String, String)> = d["members"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, m)| (id.clone(), m["state"].as_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop_with(libc::SIGKILL);
        }
    }
}

fn all_live(ids: &[&String]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = ids.iter().map(|i| ((*i).clone(), "live".into())).collect();
    v.sort();
    v
}

/// A record in the node's format, signed by `key` (as a gossip value).
fn signed_record(key: &SigningKey, id: &str, expires: i64) -> String {
    let record = serde_json::json!({
        "v": 1, "id": id, "wireguard_key": null, "endpoints": [], "api": null,
        "roles": ["exit"], "region": "rogue",
        "capacity": {"peers": 0, "bandwidth_mbps": 0}, "load": {"peers": 0, "active_peers": 0},
        "software": "0", "issued": 0, "expires": expires,
    })
    .to_string();
    let mut msg = b"nx1-node-record/1\0".to_vec();
    msg.extend_from_slice(record.as_bytes());
    serde_json::json!({
        "record": record,
        "signature": STANDARD.encode(key.sign(&msg).to_bytes()),
    })
    .to_string()
}

/// A gossip member that is not an NX1 node: it joins the cluster and publishes `record`
/// under the member name `name`.
fn rogue(
    rt: &tokio::runtime::Runtime,
    name: &str,
    record: String,
    seed: SocketAddr,
) -> chitchat::ChitchatHandle {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let config = chitchat::ChitchatConfig {
        chitchat_id: chitchat::ChitchatId::new(name.to_owned(), 1, addr),
        cluster_id: "nx1".into(),
        gossip_interval: Duration::from_millis(250),
        listen_addr: addr,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: chitchat::FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    rt.block_on(chitchat::spawn_chitchat(
        config,
        vec![("nx1.record".into(), record)],
        &chitchat::transport::UdpTransport,
    ))
    .unwrap()
}

#[test]
fn the_mesh_converges_refuses_bad_records_and_routes_around_dead_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = MeshNode::init(tmp.path(), "n1", "eu", None);
    first.start();
    let seed = first.gossip;
    let mut nodes = vec![first];
    for (i, region) in ["eu", "us", "us"].iter().enumerate() {
        let mut n = MeshNode::init(tmp.path(), &format!("n{}", i + 2), region, Some(seed));
        n.start();
        nodes.push(n);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let id_refs: Vec<&String> = ids.iter().collect();

    // Every node sees all four, live, with their signed records.
    let started = Instant::now();
    for n in &nodes {
        eventually("the directory to converge", Duration::from_secs(20), || {
            (n.states() == all_live(&id_refs)).then_some(())
        });
    }
    eprintln!("converged in {:?}", started.elapsed());
    let d = nodes[2].directory();
    assert_eq!(d["members"][&ids[2]]["record"]["region"], "us");
    assert_eq!(
        d["members"][&ids[0]]["record"]["roles"],
        serde_json::json!(["vault"])
    );
    let status = nx1(
        &["--config", nodes[0].config.to_str().unwrap(), "status"],
        tmp.path(),
    );
    assert!(
        text(&status.stdout).contains("4 members (4 live)"),
        "{}",
        text(&status.stdout)
    );

    // Gossip members with records that must not be believed.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let key = SigningKey::from_bytes(&[7; 32]);
    let key_id = STANDARD.encode(key.verifying_key().as_bytes());
    let other = SigningKey::from_bytes(&[8; 32]);
    let other_id = STANDARD.encode(other.verifying_key().as_bytes());
    let _expired = rogue(&rt, &key_id, signed_record(&key, &key_id, now - 60), seed);
    let _forged = rogue(
        &rt,
        &other_id,
        signed_record(&key, &other_id, now + 60),
        seed,
    );
    let _impostor = rogue(&rt, &ids[3], signed_record(&key, &ids[3], now + 60), seed);
    let refused = eventually(
        "the bad records to be refused",
        Duration::from_secs(20),
        || {
            let d = nodes[1].directory();
            let r = d["refused"].as_object().unwrap().clone();
            [&key_id, &other_id, &ids[3]]
                .iter()
                .all(|id| r.contains_key(id.as_str()))
                .then_some(r)
        },
    );
    assert!(
        refused[&key_id].as_str().unwrap().contains("expired"),
        "{refused:?}"
    );
    assert!(
        refused[&other_id]
            .as_str()
            .unwrap()
            .contains("bad signature"),
        "{refused:?}"
    );
    assert!(
        refused[&ids[3]].as_str().unwrap().contains("bad signature"),
        "{refused:?}"
    );
    // The same, counted in /metrics.
    eventually("the mesh gauges", Duration::from_secs(10), || {
        let (_, m) = http_get(&nodes[1].api, "/metrics").unwrap();
        (m.contains("nx1_mesh_members{state=\"live\"} 4")
            && m.contains("nx1_mesh_records_refused{reason=\"expired\"} 1")
            && m.contains("nx1_mesh_records_refused{reason=\"signature\"} 2"))
        .then_some(())
    });
    // The real node behind the impersonated id keeps its own record.
    assert_eq!(nodes[1].states(), all_live(&id_refs));
    assert_eq!(
        nodes[1].directory()["members"][&ids[3]]["record"]["region"],
        "us"
    );

    // kill -9: marked dead within seconds everywhere else.
    let killed = Instant::now();
    nodes[3].daemon.take().unwrap().stop_with(libc::SIGKILL);
    for n in &nodes[..3] {
        eventually(
            "the killed node to be dead",
            Duration::from_secs(15),
            || {
                n.states()
                    .iter()
                    .any(|(id, s)| id == &ids[3] && s == "dead")
                    .then_some(())
            },
        );
    }
    eprintln!("dead node detected by all in {:?}", killed.elapsed());

    // A node that stops leaves at once.
    nodes[2].daemon.take().unwrap().stop_with(libc::SIGTERM);
    eventually("the stopped node to leave", Duration::from_secs(5), || {
        (!nodes[0].states().iter().any(|(id, _)| id == &ids[2])).then_some(())
    });

    // Both come back and rejoin as live members.
    nodes[2].start();
    nodes[3].start();
    for n in &nodes {
        eventually("the mesh to heal", Duration::from_secs(20), || {
            (n.states() == all_live(&id_refs)).then_some(())
        });
    }
    for n in &mut nodes {
        if let Some(d) = n.daemon.take() {
            assert!(d.stop_with(libc::SIGTERM).success());
        }
    }
}

/// `nx1 status --json`'s mesh members as (id, state), sorted.
fn status_states(config: &Path, cwd: &Path) -> Option<Vec<(String, String)>> {
    let out = nx1(
        &["--config", config.to_str().unwrap(), "status", "--json"],
        cwd,
    );
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut states: Vec<(String, String)> = v["mesh"]["members"]
        .as_array()?
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                m["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    states.sort();
    Some(states)
}

#[test]
fn a_region_cut_off_is_routed_around_and_rejoins_when_the_link_comes_back() {
    use nx1_tests::netns::{Netns, link, unique_tag};
    let tmp = tempfile::tempdir().unwrap();
    let tag = unique_tag();
    // Two regions, each a bridge (in one "switch" namespace) with two nodes, joined by a
    // trunk link: nodes 1 and 2 are region a, 3 and 4 region b.
    let switch = Netns::new("sw", &tag);
    for br in ["bra", "brb"] {
        switch.ip(&["link", "add", br, "type", "bridge"]);
        switch.ip(&["link", "set", br, "up"]);
    }
    switch.ip(&["link", "add", "ta", "type", "veth", "peer", "name", "tb"]);
    switch.ip(&["link", "set", "ta", "master", "bra"]);
    switch.ip(&["link", "set", "tb", "master", "brb"]);
    switch.ip(&["link", "set", "ta", "up"]);
    switch.ip(&["link", "set", "tb", "up"]);
    let mut spaces = Vec::new();
    let mut configs = Vec::new();
    let mut ids = Vec::new();
    let mut daemons = Vec::new();
    for i in 1..=4 {
        let ns = Netns::new(&format!("m{i}"), &tag);
        link(
            &switch,
            &format!("p{i}"),
            &[],
            &ns,
            "eth0",
            &[&format!("10.201.0.{i}/24")],
        );
        let bridge = if i <= 2 { "bra" } else { "brb" };
        switch.ip(&["link", "set", &format!("p{i}"), "master", bridge]);
        let dir = tmp.path().join(format!("n{i}"));
        let (config, id) = init_node(&dir, tmp.path());
        ids.push(id);
        set_config(&config, "vpn", "enabled", "false");
        set_config(&config, "api", "listen", "\"127.0.0.1:7870\"");
        set_config(&config, "mesh", "enabled", "true");
        set_config(&config, "mesh", "listen", &format!("\"10.201.0.{i}:7871\""));
        set_config(
            &config,
            "mesh",
            "region",
            if i <= 2 {
                "\"region-a\""
            } else {
                "\"region-b\""
            },
        );
        set_config(&config, "mesh", "bootstrap", "[\"10.201.0.1:7871\"]");
        let log = dir.join("up.log");
        daemons.push(Daemon::start_in(Some(&ns), Some(&config), tmp.path(), &log));
        spaces.push(ns);
        configs.push(config);
    }
    let all = |state: &str| {
        let mut v: Vec<(String, String)> = ids.iter().map(|i| (i.clone(), state.into())).collect();
        v.sort();
        v
    };
    for c in &configs {
        eventually("the mesh to converge", Duration::from_secs(30), || {
            (status_states(c, tmp.path())? == all("live")).then_some(())
        });
    }

    // Cut the trunk: each region sees the other dead, and keeps its own side live.
    switch.ip(&["link", "set", "ta", "down"]);
    for (i, c) in configs.iter().enumerate() {
        eventually("the cut to be noticed", Duration::from_secs(20), || {
            let s = status_states(c, tmp.path())?;
            let ok = s.iter().all(|(id, state)| {
                let j = ids.iter().position(|x| x == id).unwrap();
                let same_side = (i < 2) == (j < 2);
                state == if same_side { "live" } else { "dead" }
            });
            (ok && s.len() == 4).then_some(())
        });
    }

    // The trunk comes back: one mesh again, everyone live.
    switch.ip(&["link", "set", "ta", "up"]);
    for c in &configs {
        eventually("the mesh to heal", Duration::from_secs(30), || {
            (status_states(c, tmp.path())? == all("live")).then_some(())
        });
    }
    for d in daemons {
        assert!(d.stop_with(libc::SIGTERM).success());
    }
}
