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

/// A running `nx1 up`, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node with relay duty (no WireGuard, so no privileges needed): its directory and the
/// running daemon.
fn start_node(dir: &Path) -> (Node, Daemon, String) {
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
    let mut set = |section: &str, key: &str, value: toml::Value| {
        t.get_mut(section)
            .and_then(|s| s.as_table_mut())
            .unwrap()
            .insert(key.into(), value);
    };
    set("vpn", "enabled", false.into());
    set(
        "api",
        "listen",
        format!("127.0.0.1:{}", free_port(false)).into(),
    );
    set("mesh", "enabled", true.into());
    set(
        "mesh",
        "listen",
        format!("127.0.0.1:{}", free_port(true)).into(),
    );
    set("relay", "enabled", true.into());
    set("relay", "listen_port", i64::from(free_port(true)).into());
    std::fs::write(&config, t.to_string()).unwrap();
    let child = Command::new(nx1_bin())
        .arg("--config")
        .arg(&config)
        .arg("up")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node(child);
    let daemon = Daemon::at(dir.join("nx1.sock"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let id = loop {
        if let Ok(s) = rt.block_on(daemon.status()) {
            break s["node_id"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    (node, daemon, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_does_what_the_daemon_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let (_node, daemon, id) = tokio::task::block_in_place(|| start_node(&dir));

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

    // Credits: the owner is the node itself, with an empty balance.
    let k = daemon.credits().await.unwrap();
    assert_eq!(k["owner"], id.as_str());
    assert_eq!(k["balance"]["balance"], 0);
    assert!(k["pricing"]["relay_per_mib"].as_u64().unwrap() > 0);

    // Client mode: what cannot be done is said plainly.
    let e = daemon.disconnect().await.unwrap_err();
    assert_eq!(e, "not connected");
    let e = daemon
        .connect(&tmp.path().join("missing.conf"), "nx1c")
        .await
        .unwrap_err();
    assert!(e.contains("missing.conf"), "{e}");
    std::fs::write(
        tmp.path().join("bad.conf"),
        "[Interface]\nPrivateKey = nope\n",
    )
    .unwrap();
    let e = daemon
        .connect(&tmp.path().join("bad.conf"), "nx1c")
        .await
        .unwrap_err();
    assert!(!e.is_empty());
}
