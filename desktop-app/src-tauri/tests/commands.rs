//! The app's commands against a real daemon: `nx1 up` (the binary in `$NX1_BIN`) with relay
//! duty, asked through the same calls the window makes.

use nx1_desktop::daemon::Daemon;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn nx1_bin() -> PathBuf {
    let bin = PathBuf::from(std::env::var_os("NX1_BIN").expect(
        "NX1_BIN must name the nx1 binary (scripts/test sets it; build it with `cargo build -p nx1-node`)",
    ));
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A running `nx1 up`, killed when dropped (and its network namespace, if it has one,
/// deleted after it).
struct Node(Child, Option<String>);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(ns) = &self.1 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `nx1 init` in `dir`, the config's `settings` (section, key, value) set, and `nx1 up`
/// started (inside the network namespace `ns`, when given): the running node, the daemon
/// and its node id, once it answers.
async fn start_node(
    dir: &Path,
    ns: Option<&str>,
    settings: &[(&str, &str, toml::Value)],
) -> (Node, Daemon, String) {
    let out = Command::new(nx1_bin())
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("nx1.toml");
    let mut t: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    for (section, key, value) in settings {
        t.get_mut(*section)
            .and_then(|s| s.as_table_mut())
            .unwrap()
            .insert((*key).into(), value.clone());
    }
    std::fs::write(&config, t.to_string()).unwrap();
    let mut up = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(nx1_bin());
            c
        }
        None => Command::new(nx1_bin()),
    };
    let child = up
        .arg("--config")
        .arg(&config)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node(child, ns.map(str::to_owned));
    let daemon = Daemon::at(dir.join("nx1.sock"));
    let start = Instant::now();
    let id = loop {
        if let Ok(s) = daemon.status().await {
            break s["node_id"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (node, daemon, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_does_what_the_daemon_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let api = format!("127.0.0.1:{}", free_port(false));
    // Relay duty, no WireGuard (so no privileges needed).
    let (_node, daemon, id) = start_node(
        &dir,
        None,
        &[
            ("vpn", "enabled", false.into()),
            ("api", "listen", api.clone().into()),
            ("mesh", "api_url", format!("http://{api}").into()),
            ("mesh", "enabled", true.into()),
            (
                "mesh",
                "listen",
                format!("127.0.0.1:{}", free_port(true)).into(),
            ),
            ("relay", "enabled", true.into()),
            ("relay", "listen_port", i64::from(free_port(true)).into()),
        ],
    )
    .await;

    // Status: the node the app talks to, not in client mode.
    let s = daemon.status().await.unwrap();
    assert_eq!(s["node_id"], id.as_str());
    assert!(s["client"].is_null());
    assert_eq!(
        nx1_desktop::daemon::tray_state(&Ok(s)),
        "NX1: not connected"
    );

    // Contribute: relay duty off and on at once, the cap set and read back.
    let c = daemon.contribute(None, None).await.unwrap();
    assert_eq!(
        (c["relay_configured"].as_bool(), c["relay_on"].as_bool()),
        (Some(true), Some(true))
    );
    let c = daemon.contribute(Some(false), None).await.unwrap();
    assert_eq!(c["relay_on"], false);
    let relay = daemon.status().await.unwrap()["relay"].clone();
    assert!(!relay.is_null());
    let c = daemon.contribute(Some(true), Some(25)).await.unwrap();
    assert_eq!(
        (c["relay_on"].as_bool(), c["bandwidth_mbit"].as_u64()),
        (Some(true), Some(25))
    );
    assert_eq!(
        daemon.contribute(None, None).await.unwrap()["bandwidth_mbit"],
        25
    );

    // Latency: the one node of this mesh answers on its API.
    let l = daemon.latency().await.unwrap();
    let ms = l["nodes"][&id].as_f64().expect("a round-trip time");
    assert!((0.0..1000.0).contains(&ms), "{l}");

    // Credits: the owner is the node itself, with an empty balance.
    let k = daemon.credits().await.unwrap();
    assert_eq!(k["owner"], id.as_str());
    assert_eq!(k["balance"]["balance"], 0);
    assert!(k["pricing"]["relay_per_mib"].as_u64().unwrap() > 0);
    let h = daemon.credits_history().await.unwrap();
    assert_eq!(h["history"], serde_json::json!([]));

    // Client mode: what cannot be done is said plainly.
    let e = daemon.disconnect().await.unwrap_err();
    assert_eq!(e, "not connected");
    let e = daemon
        .guard_allow_at_node("tracker.example")
        .await
        .unwrap_err();
    assert_eq!(e, "not connected");
    let e = daemon
        .connect(&tmp.path().join("missing.conf"), "nx1c", true, true, None)
        .await
        .unwrap_err();
    assert!(e.contains("missing.conf"), "{e}");
    std::fs::write(
        tmp.path().join("bad.conf"),
        "[Interface]\nPrivateKey = nope\n",
    )
    .unwrap();
    let e = daemon
        .connect(&tmp.path().join("bad.conf"), "nx1c", true, true, None)
        .await
        .unwrap_err();
    assert!(!e.is_empty());
    // Two-hop needs a relay other than this node: the mesh here has none.
    std::fs::write(
        tmp.path().join("good.conf"),
        "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.87.0.2/32\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nEndpoint = 192.0.2.1:51820\nAllowedIPs = 10.87.0.0/16\n",
    )
    .unwrap();
    let e = daemon
        .connect(
            &tmp.path().join("good.conf"),
            "nx1c",
            false,
            false,
            Some("auto"),
        )
        .await
        .unwrap_err();
    assert!(e.contains("no live relay in the mesh"), "{e}");
}

/// Runs `cmd` in the network namespace `ns`.
fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn guard_commands_show_what_was_blocked_and_allow_it() {
    // A node with WireGuard and Guard, in a network namespace of its own.
    let ns = format!("nx1app{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(made.success(), "ip netns add {ns} (this test needs root)");
    assert!(
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])
            .status
            .success()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    // The block list is in place before the node reads it.
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    std::fs::write(dir.join("lists/ads.txt"), "||ads.example^\n").unwrap();
    let (_node, daemon, _) = start_node(
        &dir,
        Some(&ns),
        &[
            ("vpn", "interface", "nx1app".into()),
            ("vpn", "exit", false.into()),
            ("api", "listen", "127.0.0.1:7870".into()),
            (
                "guard",
                "blocklists",
                toml::Value::Array(vec!["lists/ads.txt".into()]),
            ),
        ],
    )
    .await;
    assert_eq!(daemon.status().await.unwrap()["guard"]["blocked_names"], 1);

    // The verdict for a listed name, and nothing blocked yet.
    let v = daemon.guard_check("ads.example").await.unwrap();
    assert_eq!(v["verdict"], "blocked");
    assert!(
        v["list"].as_str().unwrap().ends_with("lists/ads.txt"),
        "{v}"
    );
    let f = daemon.guard_findings(None).await.unwrap();
    assert_eq!(f["findings"].as_array().map(Vec::len), Some(0));

    // A query for it (dig, on the node's tunnel address) is blocked and shows as a finding.
    let dig = in_ns(
        &ns,
        &[
            "dig",
            "@10.87.0.1",
            "+short",
            "+time=2",
            "+tries=2",
            "ads.example",
            "A",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&dig.stdout).trim(), "0.0.0.0");
    let f = daemon.guard_findings(None).await.unwrap();
    assert_eq!(f["findings"][0]["name"], "ads.example");
    assert!(
        f["findings"][0]["list"]
            .as_str()
            .unwrap()
            .ends_with("lists/ads.txt")
    );

    // Allowed in one call: the verdict and the answer change.
    let v = daemon.guard_rule("ads.example", "allow").await.unwrap();
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(
        daemon.guard_check("ads.example").await.unwrap()["verdict"],
        "allowed"
    );
    let e = daemon.guard_rule("ads.example", "bogus").await.unwrap_err();
    assert!(e.contains("bogus"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vault_session_keeps_the_vault_and_syncs_it_with_a_node() {
    use nx1_desktop::vault::{Session, field_value, get_request};
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port(false));
    let (_node, _daemon, _) = start_node(
        &tmp.path().join("node"),
        None,
        &[
            ("vpn", "enabled", false.into()),
            ("api", "listen", api.clone().into()),
        ],
    )
    .await;
    let url = format!("http://{api}");
    let session = Session::with_program(nx1_bin()).in_dir(&tmp.path().join("vault"));
    let call = |r: serde_json::Value| session.call(r, |_| {});

    let state = call(json!({ "op": "state" })).await.unwrap();
    assert_eq!(state["accounts"], json!([]));
    let e = call(json!({ "op": "list" })).await.unwrap_err();
    assert!(e.contains("locked"), "{e}");
    let st = call(
        json!({ "op": "register", "account": "ada", "password": "pw for ada", "servers": [url] }),
    )
    .await
    .unwrap();
    assert_eq!(st["synced"], true, "{st}");
    let added = call(json!({ "op": "add", "item": { "name": "Mail", "username": "ada@mail.example", "password": "m41l-secret" } }))
        .await
        .unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    let list = call(json!({ "op": "list", "query": "mail" }))
        .await
        .unwrap();
    assert_eq!(list["items"][0]["name"], "Mail");
    let got = call(get_request(&id)).await.unwrap();
    assert_eq!(
        field_value(&got, "password").as_deref(),
        Some("m41l-secret")
    );
    assert_eq!(
        field_value(&got, "username").as_deref(),
        Some("ada@mail.example")
    );

    // Progress events reach the caller during a sync with something to send.
    call(json!({ "op": "lock" })).await.unwrap();
    let e = call(json!({ "op": "open", "account": "ada", "password": "wrong" }))
        .await
        .unwrap_err();
    assert!(e.contains("wrong master password"), "{e}");
    let st = call(json!({ "op": "open", "account": "ada", "password": "pw for ada" }))
        .await
        .unwrap();
    assert_eq!(st["items"], 1);
    let events = std::sync::Mutex::new(Vec::new());
    let export = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../vault/tests/data/import/bitwarden.json");
    let imported = session
        .call(json!({ "op": "import", "path": export }), |e| {
            events.lock().unwrap().push(e)
        })
        .await
        .unwrap();
    let n = imported["imported"].as_u64().unwrap();
    let events = events.into_inner().unwrap();
    assert_eq!(events.last().unwrap()["done"], n, "{events:?}");

    // Anything but a vault request is refused before it reaches the session.
    let e = session
        .call(json!({ "op": "drop_tables" }), |_| {})
        .await
        .unwrap_err();
    assert!(e.contains("not a vault request"), "{e}");
}
