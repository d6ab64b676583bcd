//! The daemon's life from the outside: init, up, status, the HTTP API, a second daemon
//! refused, and SIGTERM/SIGINT leaving nothing behind.

use nx1_tests::*;
use std::path::Path;
use std::time::Duration;

fn status_json(config: &Path, cwd: &Path) -> Option<serde_json::Value> {
    let out = nx1(
        &["--config", config.to_str().unwrap(), "status", "--json"],
        cwd,
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
}

#[test]
fn up_serves_status_and_http_then_sigterm_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let init = nx1(&["init", "--dir", dir.to_str().unwrap()], tmp.path());
    assert!(init.status.success(), "{}", text(&init.stderr));
    let config = dir.join("nx1.toml");
    set_config(&config, "api", "listen", "\"127.0.0.1:0\"");
    set_config(&config, "log", "format", "\"json\"");
    set_config(&config, "vpn", "enabled", "false");

    // Before the daemon runs, status says so in one line and fails.
    let out = nx1(
        &["--config", config.to_str().unwrap(), "status"],
        tmp.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("no nx1 daemon is running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let log = tmp.path().join("up.log");
    let mut daemon = Daemon::start(Some(&config), tmp.path(), &log);
    let status = eventually("nx1 status to answer", Duration::from_secs(30), || {
        status_json(&config, tmp.path())
    });
    let node_id = text(&init.stdout)
        .split_whitespace()
        .nth(2)
        .expect("init prints the node id")
        .to_owned();
    assert_eq!(status["node_id"], node_id.as_str());
    assert_eq!(status["pid"], daemon.pid());
    assert_eq!(status["store"]["backend"], "sqlite");
    assert!(status["store"]["schema_version"].as_i64().unwrap() >= 1);

    // The human form names the same node.
    let human = nx1(
        &["--config", config.to_str().unwrap(), "status"],
        tmp.path(),
    );
    assert!(text(&human.stdout).contains(&node_id));

    let http = status["http_listen"].as_str().unwrap().to_owned();
    assert_eq!(
        http_get(&http, "/healthz").unwrap(),
        (200, "ok\n".to_owned())
    );
    let (code, metrics) = http_get(&http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("nx1_control_requests_total{command=\"status\"}"),
        "{metrics}"
    );
    assert_eq!(http_get(&http, "/nope").unwrap().0, 404);

    // A second daemon on the same node is refused and leaves the first one serving.
    let second = wait_output(
        std::process::Command::new(nx1_bin())
            .args(["--config", config.to_str().unwrap(), "up"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(30),
    );
    assert!(!second.status.success());
    assert!(
        text(&second.stderr).contains("already running"),
        "{}",
        text(&second.stderr)
    );
    assert!(daemon.is_running());
    assert!(status_json(&config, tmp.path()).is_some());

    let exit = daemon.stop_with(libc::SIGTERM);
    assert!(exit.success(), "{exit:?}");
    assert!(!dir.join("nx1.sock").exists(), "control socket left behind");
    assert!(
        std::net::TcpStream::connect(&http).is_err(),
        "HTTP API still listening"
    );
    let out = nx1(
        &["--config", config.to_str().unwrap(), "status"],
        tmp.path(),
    );
    assert!(text(&out.stderr).contains("no nx1 daemon is running"));

    // Logs were JSON, one object per line, and never carried a key.
    let logs = std::fs::read_to_string(&log).unwrap();
    let wg_key = std::fs::read_to_string(dir.join("wireguard.key")).unwrap();
    let id_key = std::fs::read_to_string(dir.join("identity.key")).unwrap();
    assert!(logs.contains("nx1 node up"), "{logs}");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(!line.contains(wg_key.trim()) && !line.contains(id_key.trim()));
    }
}

#[test]
fn up_on_a_fresh_machine_creates_the_node_itself_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    // The README's command, in an empty directory: no config, no data dir. It runs in a
    // namespace of its own, so its WireGuard interface and exit table touch nothing else.
    let ns = netns::Netns::new("fresh", &netns::unique_tag());
    let log = tmp.path().join("up.log");
    let daemon = Daemon::start_in(Some(&ns), None, tmp.path(), &log);
    let status = eventually("the fresh node to answer", Duration::from_secs(30), || {
        let out = nx1(&["status", "--json"], tmp.path());
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    });
    assert!(tmp.path().join("nx1-data/identity.key").exists());
    assert!(tmp.path().join("nx1-data/nx1.db").exists());
    assert_eq!(status["store"]["backend"], "sqlite");
    assert_eq!(status["vpn"]["interface"], "nx1");
    assert_eq!(status["vpn"]["exit_table"], "nx1_nx1");
    assert!(text(&ns.sh("nft list tables").stdout).contains("nx1_nx1"));
    let exit = daemon.stop_with(libc::SIGINT);
    assert!(
        exit.success(),
        "{exit:?}: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!tmp.path().join("nx1-data/nx1.sock").exists());
    // Shutdown removed the exit table and the interface.
    assert!(!text(&ns.sh("nft list tables").stdout).contains("nx1_nx1"));
    assert!(!ns.sh("ip link show nx1").status.success());
}

#[test]
fn bad_configs_fail_at_start_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    assert!(
        nx1(&["init", "--dir", dir.to_str().unwrap()], tmp.path())
            .status
            .success()
    );
    let config = dir.join("nx1.toml");
    set_config(&config, "vpn", "enabled", "false");
    let good = std::fs::read_to_string(&config).unwrap();
    let cases: &[(&str, &str)] = &[
        ("[api]\nlisten = \"not-an-address\"\n", "socket address"),
        ("[api]\nlistne = \"127.0.0.1:1\"\n", "listne"),
        (
            "[store]\ndatabase_url = \"mysql://db\"\n",
            "store.database_url",
        ),
        (
            "[node]\nidentity_key = \"missing.key\"\n",
            "cannot read key file",
        ),
    ];
    for (bad, expect) in cases {
        std::fs::write(&config, bad).unwrap();
        let out = nx1(&["--config", config.to_str().unwrap(), "up"], tmp.path());
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(err.contains(expect), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
    }
    std::fs::write(&config, good).unwrap();
    // A key file others can read is refused rather than used.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("wireguard.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = nx1(&["--config", config.to_str().unwrap(), "up"], tmp.path());
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("nx1.sock").exists());
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let d = dir.to_str().unwrap();
    assert!(nx1(&["init", "--dir", d], tmp.path()).status.success());
    let key = std::fs::read(dir.join("identity.key")).unwrap();
    let again = nx1(&["init", "--dir", d], tmp.path());
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(dir.join("identity.key")).unwrap(), key);
    let forced = nx1(&["init", "--dir", d, "--force"], tmp.path());
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(dir.join("identity.key")).unwrap(), key);
}

#[test]
fn version_and_help_are_there() {
    let tmp = tempfile::tempdir().unwrap();
    let v = nx1(&["--version"], tmp.path());
    assert!(text(&v.stdout).starts_with("nx1 "), "{}", text(&v.stdout));
    for cmd in [
        &["--help"][..],
        &["up", "--help"],
        &["init", "--help"],
        &["status", "--help"],
    ] {
        let out = nx1(cmd, tmp.path());
        assert!(out.status.success(), "{cmd:?}");
        assert!(text(&out.stdout).contains("Usage"), "{cmd:?}");
    }
    let bad = nx1(&["frobnicate"], tmp.path());
    assert!(!bad.status.success());
}

#[test]
fn up_keeps_its_state_in_postgresql_when_database_url_says_so() {
    let pg = PgDatabase::create("daemon");
    let tmp = tempfile::tempdir().unwrap();
    let config = pg.node(tmp.path(), "node");

    for round in 0..2 {
        let log = tmp.path().join(format!("up{round}.log"));
        let daemon = Daemon::start(Some(&config), tmp.path(), &log);
        let status = eventually("the node on PostgreSQL", Duration::from_secs(30), || {
            status_json(&config, tmp.path())
        });
        assert_eq!(status["store"]["backend"], "postgres");
        assert!(status["store"]["schema_version"].as_i64().unwrap() >= 2);
        // The password-free URL of the test server is fine to show; the log names the backend.
        assert!(daemon.stop_with(libc::SIGTERM).success());
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("PostgreSQL")
        );
    }
    // The node claimed the database: another identity is refused with a clear line.
    let other_config = pg.node(tmp.path(), "other");
    let out = nx1(
        &["--config", other_config.to_str().unwrap(), "up"],
        tmp.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("belongs to node"),
        "{}",
        text(&out.stderr)
    );
}
