//! Contributed work pauses while the owner's machine is busy: a relay node with
//! `[contribute] cpu_percent` stops relaying (and leaves the relay role out of its signed
//! record) while other programs keep every core busy, and resumes once they stop.

use nx1_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Keeps one core busy until dropped.
struct Burner(std::process::Child);

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn relay_duty_pauses_while_the_machine_is_busy_and_resumes_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    let (config, id) = init_node(&dir, tmp.path());
    let api = format!("127.0.0.1:{}", free_tcp_port());
    set_config(&config, "vpn", "enabled", "false");
    set_config(&config, "api", "listen", &format!("\"{api}\""));
    set_config(&config, "mesh", "enabled", "true");
    set_config(
        &config,
        "mesh",
        "listen",
        &format!("\"127.0.0.1:{}\"", free_udp_port()),
    );
    set_config(&config, "relay", "enabled", "true");
    set_config(
        &config,
        "relay",
        "listen_port",
        &free_udp_port().to_string(),
    );
    set_config(&config, "contribute", "cpu_percent", "60");
    let daemon = Daemon::start(Some(&config), tmp.path(), &dir.join("up.log"));
    let contribution = || -> Option<serde_json::Value> {
        let out = nx1(
            &["--config", config.to_str().unwrap(), "contribute", "--json"],
            tmp.path(),
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    };
    let roles = || -> Vec<String> {
        let (_, body) = http_get(&api, "/v1/directory").unwrap();
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        serde_json::from_value(d["members"][&id]["record"]["roles"].clone()).unwrap_or_default()
    };
    let c = eventually("the node", Duration::from_secs(30), contribution);
    assert_eq!(c["relay_on"], true);
    assert!(c["paused"].is_null(), "{c}");
    assert_eq!(c["limits"]["cpu_percent"], 60);
    eventually("the relay role published", Duration::from_secs(10), || {
        roles().contains(&"relay".to_owned()).then_some(())
    });

    // Other programs take every core: relaying pauses, and the record says so.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let burners: Vec<Burner> = (0..cores)
        .map(|_| {
            Burner(
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let why = eventually("relay duty paused", Duration::from_secs(20), || {
        contribution()?["paused"].as_str().map(str::to_owned)
    });
    assert!(why.contains("the machine is busy"), "{why}");
    eventually("the relay role withdrawn", Duration::from_secs(10), || {
        (!roles().contains(&"relay".to_owned())).then_some(())
    });
    let text_status = nx1(
        &["--config", config.to_str().unwrap(), "contribute"],
        tmp.path(),
    );
    assert!(text(&text_status.stdout).contains("paused: the machine is busy"));

    // They stop: relaying resumes after the calm period, and is published again.
    drop(burners);
    eventually("relay duty resumed", Duration::from_secs(40), || {
        contribution()?["paused"].is_null().then_some(())
    });
    eventually("the relay role back", Duration::from_secs(10), || {
        roles().contains(&"relay".to_owned()).then_some(())
    });
    assert_eq!(contribution().unwrap()["relay_on"], true);
    assert!(daemon.stop_with(libc::SIGTERM).success());
}
