//! Exit failover end to end. A wireguard-go client in `cli` holds its tunnel to node A, which
//! is no exit: A sends the client's traffic out through the mesh's exits B, C and D. The
//! client pings `web` every 50 ms while the exit in use is killed (`kill -9`), and later
//! while the next one loses its uplink; each time A moves the client's traffic to another
//! exit and the pings come back, with no change on the client.
//!
//! ```text
//!   cli ── 198.18.1.0/24 ── A ──┐                        ┌── B ──┐
//!                               └── core 10.203.0.0/24 ──┼── C ──┼── inet 198.18.2.0/24 ── web
//!                                    (bridge in `sw`)    └── D ──┘    (bridge in `sw`)
//! ```
//!
//! `web` has only its connected network: it answers the exits' masqueraded addresses, and
//! its HTTP server says which one asked.

use nx1_tests::lab::{UapiSockets, pings_during, whoami_server, wireguard_go_client};
use nx1_tests::netns::{Netns, attach, link, unique_tag};
use nx1_tests::{Daemon, eventually, init_node, nx1, set_config, text};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WEB: &str = "198.18.2.2";

struct Node {
    ns: Netns,
    config: PathBuf,
    daemon: Option<Daemon>,
    id: String,
    interface: String,
}

impl Node {
    fn nx1(&self, args: &[&str], cwd: &Path) -> std::process::Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        nx1(&all, cwd)
    }

    fn status(&self, cwd: &Path) -> Option<serde_json::Value> {
        let out = self.nx1(&["status", "--json"], cwd);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }
}

/// Which exit `web` saw the client's HTTP request come from (its address on `inet`).
fn fetch_origin(cli: &Netns) -> Option<String> {
    let out = cli.sh(&format!("curl -sS --max-time 3 http://{WEB}:8080/"));
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_owned())
}

#[test]
fn the_clients_traffic_moves_to_another_exit_when_the_one_in_use_dies_or_loses_its_uplink() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = unique_tag();
    let switch = Netns::new("sw", &tag);
    for br in ["core", "inet"] {
        switch.ip(&["link", "add", br, "type", "bridge"]);
        switch.ip(&["link", "set", br, "up"]);
    }
    let cli = Netns::new("cli", &tag);
    let web = Netns::new("web", &tag);
    attach(&switch, "inet", "pw", &web, "w0", &[&format!("{WEB}/24")]);

    // A (index 0) holds the client; B, C, D (1..=3) are exits.
    let mut nodes = Vec::new();
    for i in 0..4u8 {
        let ns = Netns::new(&format!("n{i}"), &tag);
        let core = format!("10.203.0.{}", i + 1);
        attach(
            &switch,
            "core",
            &format!("c{i}"),
            &ns,
            "core",
            &[&format!("{core}/24")],
        );
        if i > 0 {
            let inet = format!("198.18.2.1{i}/24");
            attach(&switch, "inet", &format!("i{i}"), &ns, "inet", &[&inet]);
        } else {
            link(
                &cli,
                "c0",
                &["198.18.1.2/24"],
                &ns,
                "e0",
                &["198.18.1.1/24"],
            );
        }
        let (config, id) = init_node(&tmp.path().join(format!("n{i}")), tmp.path());
        let interface = format!("nx1f{tag}{i}");
        set_config(&config, "api", "listen", "\"127.0.0.1:0\"");
        set_config(&config, "vpn", "interface", &format!("\"{interface}\""));
        set_config(&config, "mesh", "enabled", "true");
        set_config(&config, "mesh", "listen", &format!("\"{core}:7871\""));
        set_config(&config, "mesh", "bootstrap", "[\"10.203.0.2:7871\"]");
        set_config(&config, "mesh", "uplink_check", &format!("\"{WEB}\""));
        if i == 0 {
            set_config(&config, "vpn", "exit", "false");
            set_config(&config, "vpn", "endpoint", "\"198.18.1.1:51820\"");
            set_config(&config, "mesh", "egress", "true");
        } else {
            set_config(&config, "vpn", "endpoint", &format!("\"{core}:51820\""));
        }
        nodes.push(Node {
            ns,
            config,
            daemon: None,
            id,
            interface,
        });
    }
    let _cleanup = UapiSockets(nodes.iter().map(|n| n.interface.clone()).collect());
    for n in nodes.iter_mut().rev() {
        let log = n.config.with_file_name("up.log");
        n.daemon = Some(Daemon::start_in(
            Some(&n.ns),
            Some(&n.config),
            tmp.path(),
            &log,
        ));
    }
    for n in &nodes {
        eventually("a node to answer", Duration::from_secs(30), || {
            n.status(tmp.path())
        });
    }
    // A links to every exit and picks one.
    let a = &nodes[0];
    eventually(
        "A to have three healthy exits",
        Duration::from_secs(30),
        || {
            let s = a.status(tmp.path())?;
            let e = &s["egress"];
            let healthy = e["exits"]
                .as_array()?
                .iter()
                .filter(|x| x["healthy"] == true)
                .count();
            (healthy == 3 && e["active"].is_string()).then_some(())
        },
    );

    // The web server answers with the address that asked.
    let server = whoami_server(&web);

    let out = nodes[0].nx1(&["peer", "add", "laptop"], tmp.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let client = wireguard_go_client(&cli, tmp.path(), &format!("wgf{tag}"), &text(&out.stdout));
    eventually("the client to reach web", Duration::from_secs(20), || {
        cli.sh(&format!("ping -c1 -W1 {WEB}"))
            .status
            .success()
            .then_some(())
    });
    let exit_of = |origin: &str| -> usize {
        let i: usize = origin
            .strip_prefix("198.18.2.1")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("web saw {origin}, not an exit"));
        i
    };
    let active_exit = |nodes: &[Node]| -> usize {
        let s = nodes[0].status(tmp.path()).unwrap();
        let id = s["egress"]["active"].as_str().unwrap().to_owned();
        nodes.iter().position(|n| n.id == id).unwrap()
    };
    let first = exit_of(&fetch_origin(&cli).expect("HTTP through the first exit"));
    assert_eq!(first, active_exit(&nodes), "web saw the exit A uses");

    // Kill the exit in use while the client pings every 50 ms.
    let got = pings_during(&cli, WEB, 140, || {
        nodes[first].daemon.take().unwrap().stop_with(libc::SIGKILL);
    });
    report("kill -9 of the exit in use", &got, 140);
    let second = exit_of(&fetch_origin(&cli).expect("HTTP after the failover"));
    assert_ne!(second, first);
    assert_eq!(second, active_exit(&nodes));

    // The next one loses its uplink (its link to `inet` goes down).
    let got = pings_during(&cli, WEB, 140, || {
        nodes[second].ns.ip(&["link", "set", "inet", "down"]);
    });
    report("uplink of the exit in use down", &got, 140);
    let third = exit_of(&fetch_origin(&cli).expect("HTTP after the second failover"));
    assert!(third != first && third != second);
    let status = nodes[0].status(tmp.path()).unwrap();
    assert!(
        status["egress"]["switches"].as_u64().unwrap() >= 3,
        "{status}"
    );

    drop(client);
    drop(server);
    for n in &mut nodes {
        if let Some(d) = n.daemon.take() {
            assert!(d.stop_with(libc::SIGTERM).success());
        }
    }
    // A removed its policy routing when it stopped.
    let rules = nodes[0].ns.sh("ip rule show; ip -6 rule show");
    assert!(
        !text(&rules.stdout).contains("51871"),
        "{}",
        text(&rules.stdout)
    );
}

/// Prints the gap and checks that pings went through before the event and came back after.
fn report(event: &str, answered: &[u32], count: u32) {
    let lost = count as usize - answered.len();
    eprintln!("{event}: {lost} of {count} pings lost ({} ms)", lost * 50);
    assert!(
        answered.contains(&1),
        "{event}: no ping went through before"
    );
    assert!(
        answered.iter().any(|&s| s >= count - 5),
        "{event}: pings did not come back: {answered:?}"
    );
}
