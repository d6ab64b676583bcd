//! Private two-hop end to end: wireguard-go in `cli` reaches `web` through a relay node in
//! `rly` and the exit in `exit`, configured only from what `nx1 peer add --via` prints. The
//! client has no route to the exit; the exit sees the relay's address, never the client's; the
//! relay sees only WireGuard datagrams.

use nx1_tests::lab::{
    Background, EXIT_RELAY_ADDR, ExitLab, RELAY_CLI_ADDR, RELAY_EXIT_ADDR, RELAY_PORT, WEB_V4,
    WEB_V6, config_value,
};
use nx1_tests::{eventually, text};
use std::process::Stdio;
use std::time::Duration;

fn relay_counter(lab: &ExitLab, key: &str) -> u64 {
    lab.relay_status().unwrap()["relay"][key].as_u64().unwrap()
}

fn relay_dropped(lab: &ExitLab, reason: &str) -> u64 {
    let status = lab.relay_status().unwrap();
    status["relay"]["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == reason)
        .map_or(0, |d| d[1].as_u64().unwrap())
}

/// The relay lab running, with a web server, once the relay knows the exit from the signed
/// directory: the lab and the relay's node id.
fn relay_lab() -> (ExitLab, String) {
    let mut lab = ExitLab::with_relay();
    lab.start_node();
    lab.start_relay();
    lab.start_web_server("nx1-two-hop\n");
    let relay_id = lab.relay_status().unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        "the relay to know the exit",
        Duration::from_secs(30),
        || (relay_counter(&lab, "exits") == 1).then_some(()),
    );
    (lab, relay_id)
}

#[test]
fn a_standard_client_goes_through_a_relay_that_sees_only_ciphertext() {
    // The relay learns the exit from the signed directory, the exit learns the relay.
    let (mut lab, relay_id) = relay_lab();
    let exit_key = lab.status().unwrap()["wireguard_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the exit to see the relay", Duration::from_secs(30), || {
        let status = lab.status()?;
        let members = status["mesh"]["members"].as_array()?.clone();
        members
            .iter()
            .any(|m| m["id"] == relay_id.as_str() && m["state"] == "live")
            .then_some(())
    });

    // Relays are named by node id (or its start) or by address; anything else is a clear error.
    let out = lab.nx1(&["peer", "add", "nobody", "--via", "not-a-relay"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no relay"),
        "{}",
        text(&out.stderr)
    );
    let exit_id = lab.status().unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = lab.nx1(&["peer", "add", "nobody", "--via", &exit_id]);
    assert!(
        text(&out.stderr).contains("does not relay"),
        "{}",
        text(&out.stderr)
    );

    let out = lab.nx1(&["peer", "add", "alice", "--via", &relay_id[..10]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = text(&out.stdout);
    assert_eq!(
        config_value(&config, "Endpoint"),
        format!("{RELAY_CLI_ADDR}:{RELAY_PORT}")
    );
    assert_eq!(config_value(&config, "PublicKey"), exit_key);
    assert_eq!(config_value(&config, "PersistentKeepalive"), "25");

    // Everything the relay's interfaces carry while the client works.
    let pcap = lab.dir.path().join("relay.pcap");
    let capture = Background(
        lab.relay
            .as_ref()
            .unwrap()
            .command("tcpdump")
            .args(["-i", "any", "-U", "-s", "0", "-w"])
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump"),
    );
    eventually("tcpdump to start", Duration::from_secs(10), || {
        pcap.exists().then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));

    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    assert!(lab.ping(WEB_V6, 2), "IPv6 through two hops");
    let fetched = lab.in_cli(&format!(
        "curl -sS --max-time 10 http://{WEB_V4}:8080/hello.txt"
    ));
    assert_eq!(
        text(&fetched.stdout),
        "nx1-two-hop\n",
        "{}",
        text(&fetched.stderr)
    );
    // Outside the tunnel, the client has no path to the exit.
    assert!(
        !lab.in_cli(&format!("ping -c1 -W1 -I c0 {EXIT_RELAY_ADDR}"))
            .status
            .success()
    );

    // The exit knows the client by the relay's address only.
    let peers = lab.peers();
    let alice = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "alice")
        .unwrap();
    assert_eq!(
        alice["endpoint"].as_str(),
        Some(format!("{RELAY_EXIT_ADDR}:{RELAY_PORT}").as_str()),
        "{alice}"
    );
    assert!(relay_counter(&lab, "sessions") >= 1);
    assert!(relay_counter(&lab, "to_exit_packets") >= 5);
    assert!(relay_counter(&lab, "to_client_packets") >= 5);

    // The relay carried the fetch, but never its text.
    std::thread::sleep(Duration::from_millis(500));
    drop(capture);
    let captured = std::fs::read(&pcap).unwrap();
    assert!(captured.len() > 2000, "the capture saw the traffic");
    let contains = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(b"nx1-two-hop"),
        "the body crossed the relay in clear"
    );
    assert!(
        !contains(b"GET /hello.txt"),
        "the request crossed the relay in clear"
    );

    // Junk and forged handshakes sent to the relay are counted and dropped; it keeps serving.
    let junk = lab.in_cli(&format!(
        "python3 -c \"import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for m in [b'', b'x'*3, bytes([1,0,0,0])+b'x'*10, bytes([1,0,0,0])+os.urandom(144), bytes([4,0,0,0])+os.urandom(60), bytes([2,0,0,0])+os.urandom(88)]:\n s.sendto(m,('{RELAY_CLI_ADDR}',{RELAY_PORT}))\""
    ));
    assert!(junk.status.success(), "{}", text(&junk.stderr));
    eventually("the junk to be counted", Duration::from_secs(5), || {
        (relay_dropped(&lab, "malformed") >= 2
            && relay_dropped(&lab, "no_exit") >= 1
            && relay_dropped(&lab, "no_session") >= 1
            && relay_dropped(&lab, "wrong_side") >= 1)
            .then_some(())
    });
    let metrics = lab.relay.as_ref().unwrap().sh(&format!(
        "curl -sS --max-time 5 http://{}/metrics",
        lab.relay_status().unwrap()["http_listen"].as_str().unwrap()
    ));
    let metrics = text(&metrics.stdout);
    assert!(
        metrics.contains("nx1_relay_packets_total{direction=\"to_exit\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nx1_relay_dropped_total{reason=\"no_exit\"} 1"),
        "{metrics}"
    );
    assert!(lab.ping(WEB_V4, 2), "the tunnel survives the junk");

    // Opting out of relay duty stops relaying at once, and the directory says so.
    let out = lab.relay_nx1(&["contribute", "off"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!lab.ping(WEB_V4, 1), "relayed after opting out");
    assert!(relay_dropped(&lab, "disabled") >= 1);
    assert_eq!(relay_counter(&lab, "sessions"), 0);
    eventually(
        "the directory to drop the relay role",
        Duration::from_secs(10),
        || {
            let status = lab.status()?;
            let members = status["mesh"]["members"].as_array()?.clone();
            members
                .iter()
                .any(|m| m["id"] == relay_id.as_str() && !m["roles"].to_string().contains("relay"))
                .then_some(())
        },
    );
    let out = lab.relay_nx1(&["contribute", "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["relay_on"], false, "{c}");
    let out = lab.relay_nx1(&["contribute", "on"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The client handshakes again by itself (the relay forgot its session).
    lab.ping_eventually(WEB_V4, Duration::from_secs(40));

    // A relay that restarts has forgotten every session: the client handshakes again by
    // itself (it gets no answer to its data) and carries on.
    lab.relay_node = None;
    assert!(!lab.ping(WEB_V4, 1));
    lab.start_relay();
    eventually(
        "the relay to know the exit again",
        Duration::from_secs(30),
        || (relay_counter(&lab, "exits") == 1).then_some(()),
    );
    lab.ping_eventually(WEB_V4, Duration::from_secs(40));
}

/// `nx1 --config CONFIG ARGS` as JSON, from `cwd`.
fn nx1_json(
    config: &std::path::Path,
    args: &[&str],
    cwd: &std::path::Path,
) -> Option<serde_json::Value> {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = nx1_tests::nx1(&all, cwd);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn nx1_connect_two_hop_picks_a_relay_from_the_mesh_and_the_exit_never_sees_the_client() {
    let (lab, relay_id) = relay_lab();

    // The client: an nx1 node in `cli`, in the mesh through the relay's gossip address (the
    // relay host answers on it; nothing in `cli` routes to the exit).
    nx1_tests::netns::must(lab.cli.command("ip").args([
        "route",
        "add",
        &format!("{RELAY_EXIT_ADDR}/32"),
        "via",
        RELAY_CLI_ADDR,
    ]));
    let cwd = lab.dir.path().to_owned();
    let (client, _) = nx1_tests::init_node(&cwd.join("client"), &cwd);
    let set = |s: &str, k: &str, v: &str| nx1_tests::set_config(&client, s, k, v);
    set("api", "listen", "\"127.0.0.1:0\"");
    set("vpn", "enabled", "false");
    set("mesh", "enabled", "true");
    set("mesh", "listen", "\"198.18.4.2:7871\"");
    set(
        "mesh",
        "bootstrap",
        &format!("[\"{RELAY_EXIT_ADDR}:7871\"]"),
    );
    let daemon =
        nx1_tests::Daemon::start_in(Some(&lab.cli), Some(&client), &cwd, &cwd.join("client.log"));
    eventually(
        "the client to see the relay",
        Duration::from_secs(30),
        || {
            let s = nx1_json(&client, &["status", "--json"], &cwd)?;
            s["mesh"]["members"]
                .as_array()?
                .iter()
                .any(|m| m["id"] == relay_id.as_str() && m["state"] == "live")
                .then_some(())
        },
    );

    // The exit hands out an ordinary config, aimed at itself, which `cli` cannot reach.
    let conf = cwd.join("bob.conf");
    std::fs::write(&conf, lab.add_peer("bob")).unwrap();
    let conf = conf.to_str().unwrap();
    let client_if = format!("nx1c{}", lab.tag);
    let connect = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            client.to_str().unwrap(),
            "connect",
            conf,
            "--interface",
            &client_if,
        ];
        args.extend_from_slice(extra);
        nx1_tests::nx1(&args, &cwd)
    };
    let out = connect(&["--two-hop", "not-a-relay"]);
    assert!(
        text(&out.stderr).contains("no live relay"),
        "{}",
        text(&out.stderr)
    );
    let out = connect(&["--two-hop", "auto"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("through relay {relay_id}")),
        "{}",
        text(&out.stdout)
    );
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    let body = lab.in_cli(&format!(
        "curl -s --max-time 10 http://{WEB_V4}:8080/hello.txt"
    ));
    assert_eq!(text(&body.stdout), "nx1-two-hop\n");
    let st = nx1_json(&client, &["status", "--json"], &cwd).unwrap();
    assert_eq!(st["client"]["via"], relay_id.as_str());
    // The exit sees the relay's address as the client's endpoint.
    let peers = lab.peers();
    let bob = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bob")
        .unwrap();
    assert_eq!(
        bob["endpoint"].as_str().unwrap(),
        format!("{RELAY_EXIT_ADDR}:{RELAY_PORT}"),
        "{bob}"
    );
    let out = nx1_tests::nx1(&["--config", client.to_str().unwrap(), "disconnect"], &cwd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(daemon.stop_with(libc::SIGTERM).success());
}
