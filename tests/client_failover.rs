//! Node failover for `nx1 connect`: a client registered on exit A is shared with the mesh, so
//! exit B stands by for it with the same tunnel addresses. The client (an `nx1` node in client
//! mode) pings `web` every 50 ms while A is killed with `kill -9`; the tunnel moves to B by
//! itself, keeps its addresses, and B takes the client over as its own.
//!
//! ```text
//!   cli ──┐                               ┌── A ──┐
//!         └── lan 10.204.0.0/24 (bridge) ─┤       ├── inet 198.18.2.0/24 (bridge) ── web
//!                                         └── B ──┘
//! ```

use nx1_tests::lab::{UapiSockets, pings_during, whoami_server};
use nx1_tests::netns::{Netns, attach, unique_tag};
use nx1_tests::{Daemon, eventually, init_node, nx1, set_config, text};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WEB: &str = "198.18.2.2";

fn run(config: &Path, args: &[&str], cwd: &Path) -> std::process::Output {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    nx1(&all, cwd)
}

fn status(config: &Path, cwd: &Path) -> Option<serde_json::Value> {
    let out = run(config, &["status", "--json"], cwd);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn an_nx1_connect_client_moves_to_a_standby_node_and_keeps_its_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let tag = unique_tag();
    let switch = Netns::new("sw", &tag);
    for br in ["lan", "inet"] {
        switch.ip(&["link", "add", br, "type", "bridge"]);
        switch.ip(&["link", "set", br, "up"]);
    }
    let web = Netns::new("web", &tag);
    attach(&switch, "inet", "pw", &web, "w0", &[&format!("{WEB}/24")]);
    let cli = Netns::new("cli", &tag);
    attach(&switch, "lan", "pc", &cli, "lan", &["10.204.0.9/24"]);

    let mut spaces = Vec::new();
    let mut configs: Vec<PathBuf> = Vec::new();
    let mut ids = Vec::new();
    let mut interfaces = Vec::new();
    for i in 1..=2u8 {
        let ns = Netns::new(&format!("x{i}"), &tag);
        let lan = format!("10.204.0.{i}");
        attach(
            &switch,
            "lan",
            &format!("l{i}"),
            &ns,
            "lan",
            &[&format!("{lan}/24")],
        );
        let inet = format!("198.18.2.1{i}/24");
        attach(&switch, "inet", &format!("i{i}"), &ns, "inet", &[&inet]);
        let (config, id) = init_node(&cwd.join(format!("x{i}")), cwd);
        ids.push(id);
        let interface = format!("nx1k{tag}{i}");
        set_config(&config, "api", "listen", "\"127.0.0.1:0\"");
        set_config(&config, "vpn", "interface", &format!("\"{interface}\""));
        set_config(&config, "vpn", "endpoint", &format!("\"{lan}:51820\""));
        set_config(&config, "mesh", "enabled", "true");
        set_config(&config, "mesh", "listen", &format!("\"{lan}:7871\""));
        set_config(&config, "mesh", "bootstrap", "[\"10.204.0.1:7871\"]");
        set_config(&config, "mesh", "uplink_check", &format!("\"{WEB}\""));
        spaces.push(ns);
        configs.push(config);
        interfaces.push(interface);
    }
    let client_if = format!("nx1kc{tag}");
    interfaces.push(client_if.clone());
    let _sockets = UapiSockets(interfaces);
    let mut daemons: Vec<Option<Daemon>> = spaces
        .iter()
        .zip(&configs)
        .map(|(ns, c)| {
            Some(Daemon::start_in(
                Some(ns),
                Some(c),
                cwd,
                &c.with_file_name("up.log"),
            ))
        })
        .collect();
    for c in &configs {
        eventually(
            "both nodes live in the mesh",
            Duration::from_secs(30),
            || {
                let s = status(c, cwd)?;
                let live = s["mesh"]["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["state"] == "live")
                    .count();
                (live == 2).then_some(())
            },
        );
    }
    let server = whoami_server(&web);

    // Registered on A; the config names B as standby (comments other clients ignore).
    let out = run(&configs[0], &["peer", "add", "laptop"], cwd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let conf_text = text(&out.stdout);
    let b_key = status(&configs[1], cwd).unwrap()["wireguard_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        conf_text.contains(&format!("# nx1-fallback = {b_key} 10.204.0.2:51820")),
        "{conf_text}"
    );
    assert!(
        conf_text.contains("# nx1-probe = 10.87.0.1:7872"),
        "{conf_text}"
    );
    eventually(
        "B to stand by for the client",
        Duration::from_secs(20),
        || (status(&configs[1], cwd)?["standby_clients"] == 1).then_some(()),
    );

    // The client: an nx1 node in client mode in `cli`.
    let client_dir = cwd.join("client");
    let (client_config, _) = init_node(&client_dir, cwd);
    set_config(&client_config, "api", "listen", "\"127.0.0.1:0\"");
    set_config(&client_config, "vpn", "enabled", "false");
    let client_daemon = Daemon::start_in(
        Some(&cli),
        Some(&client_config),
        cwd,
        &client_dir.join("up.log"),
    );
    eventually("the client node", Duration::from_secs(30), || {
        status(&client_config, cwd)
    });
    let conf = cwd.join("laptop.conf");
    std::fs::write(&conf, &conf_text).unwrap();
    let out = run(
        &client_config,
        &["connect", conf.to_str().unwrap(), "--interface", &client_if],
        cwd,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("the client to reach web", Duration::from_secs(20), || {
        cli.sh(&format!("ping -c1 -W1 {WEB}"))
            .status
            .success()
            .then_some(())
    });
    let origin = || {
        let out = cli.sh(&format!("curl -sS --max-time 3 http://{WEB}:8080/"));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(origin(), "198.18.2.11", "through A first");
    let before = status(&client_config, cwd).unwrap()["client"].clone();
    assert_eq!(before["standby_servers"], 1, "{before}");

    // Kill A while the client pings every 50 ms.
    let answered = pings_during(&cli, WEB, 160, || {
        daemons[0].take().unwrap().stop_with(libc::SIGKILL);
    });
    let lost = 160 - answered.len();
    eprintln!(
        "kill -9 of the client's node: {lost} of 160 pings lost ({} ms)",
        lost * 50
    );
    assert!(answered.contains(&1), "pings went through before");
    assert!(
        answered.iter().any(|&s| s >= 155),
        "pings came back: {answered:?}"
    );

    // Same tunnel, same addresses, another node.
    let after = status(&client_config, cwd).unwrap()["client"].clone();
    assert_eq!(after["addresses"], before["addresses"]);
    assert_eq!(after["server"].as_str(), Some(b_key.as_str()), "{after}");
    assert_eq!(after["moves"], 1, "{after}");
    assert_eq!(origin(), "198.18.2.12", "through B now");

    // B makes the client its own once A is gone from the mesh.
    eventually("B to take the client over", Duration::from_secs(30), || {
        let out = run(&configs[1], &["peer", "list", "--json"], cwd);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let laptop = list
            .as_array()?
            .iter()
            .find(|p| p["name"] == "laptop")?
            .clone();
        (laptop["ipv4"] == "10.87.0.2").then_some(())
    });

    assert!(run(&client_config, &["disconnect"], cwd).status.success());
    drop(server);
    assert!(client_daemon.stop_with(libc::SIGTERM).success());
    for d in daemons.iter_mut().filter_map(Option::take) {
        assert!(d.stop_with(libc::SIGTERM).success());
    }
}
