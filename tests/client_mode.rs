//! Client mode end to end: `nx1 connect` with a standard wg-quick config, against a
//! wireguard-go server acting as the exit.

use nx1_tests::lab::{Background, EXIT_CLI_ADDR, ExitLab, WEB_V4, WEB_V6};
use nx1_tests::netns::must;
use nx1_tests::{eventually, set_config, text};
use std::process::Stdio;
use std::time::Duration;

fn wg_genkey() -> (String, String) {
    let private = text(&must(std::process::Command::new("wg").arg("genkey")).stdout)
        .trim()
        .to_owned();
    let mut pubkey = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = text(&pubkey.wait_with_output().unwrap().stdout)
        .trim()
        .to_owned();
    (private, public)
}

/// wireguard-go as the server in `exit`, forwarding and masquerading with nftables, and a
/// client config for it: the server (stopped when dropped), the config's path and the
/// server's interface.
fn wireguard_go_server(lab: &ExitLab) -> (Background, std::path::PathBuf, String) {
    let server_if = format!("wgs{}", lab.tag);
    let (server_private, server_public) = wg_genkey();
    let (client_private, client_public) = wg_genkey();
    let server = lab
        .exit
        .command("wireguard-go")
        .args(["-f", &server_if])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Background(server);
    let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{server_if}.sock"));
    eventually("wireguard-go's socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    let key_file = lab.dir.path().join("server.key");
    std::fs::write(&key_file, &server_private).unwrap();
    must(lab.exit.command("wg").args([
        "set",
        &server_if,
        "listen-port",
        "51820",
        "private-key",
        key_file.to_str().unwrap(),
        "peer",
        &client_public,
        "allowed-ips",
        "10.99.0.2/32,fd99::2/128",
    ]));
    lab.exit
        .ip(&["addr", "add", "10.99.0.1/24", "dev", &server_if]);
    lab.exit
        .ip(&["addr", "add", "fd99::1/64", "dev", &server_if, "nodad"]);
    lab.exit.ip(&["link", "set", &server_if, "up"]);
    let nat = lab.exit.sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 && \
         nft 'add table inet t; add chain inet t p { type nat hook postrouting priority srcnat; }; \
              add rule inet t p ip saddr 10.99.0.0/24 masquerade; add rule inet t p ip6 saddr fd99::/64 masquerade'",
    );
    assert!(nat.status.success(), "{}", text(&nat.stderr));

    let conf = lab.dir.path().join("client.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nPrivateKey = {client_private}\nAddress = 10.99.0.2/32, fd99::2/128\n\n\
             [Peer]\nPublicKey = {server_public}\nEndpoint = 198.18.1.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n"
        ),
    )
    .unwrap();
    (server, conf, server_if)
}

/// The lab with the node in `cli` as a client only (no server interface of its own) and
/// wireguard-go serving in `exit`: the lab, the server, its client config, the server's
/// interface, and the name for the client's.
fn client_lab() -> (ExitLab, Background, std::path::PathBuf, String, String) {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "vpn", "enabled", "false");
    lab.start_node_in(true);
    let (server, conf, server_if) = wireguard_go_server(&lab);
    let client_if = format!("nx1c{}", lab.tag);
    (lab, server, conf, server_if, client_if)
}

#[test]
fn nx1_connect_reaches_the_web_through_a_wireguard_go_server_and_disconnects() {
    let (mut lab, _server, conf, server_if, client_if) = client_lab();
    let out = lab.nx1(&["connect", conf.to_str().unwrap(), "--interface", &client_if]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("connected on"),
        "{}",
        text(&out.stdout)
    );

    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    assert!(lab.ping(WEB_V6, 2), "IPv6 through the client tunnel");
    // The host's own default route is untouched; the endpoint is pinned outside the tunnel.
    let routes = text(&lab.cli.sh("ip route").stdout);
    assert!(
        routes.contains(&format!("0.0.0.0/1 dev {client_if}")),
        "{routes}"
    );
    assert!(routes.contains("198.18.1.1 dev c0"), "{routes}");
    let status = lab.status().unwrap();
    assert_eq!(status["client"]["interface"], client_if.as_str());
    assert!(status["client"]["latest_handshake"].as_u64().is_some());
    let show = text(
        &lab.exit
            .sh(&format!("wg show {server_if} endpoints"))
            .stdout,
    );
    assert!(show.contains("198.18.1.2:"), "{show}");

    // A second connect is refused while one is up.
    let again = lab.nx1(&["connect", conf.to_str().unwrap(), "--interface", &client_if]);
    assert!(text(&again.stderr).contains("already connected"));

    let out = lab.nx1(&["disconnect"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!lab.ping(WEB_V4, 1));
    assert!(
        !lab.cli
            .sh(&format!("ip link show {client_if}"))
            .status
            .success()
    );
    assert!(!text(&lab.cli.sh("ip route").stdout).contains("198.18.1.1 dev c0"));
    assert!(text(&lab.nx1(&["disconnect"]).stderr).contains("not connected"));
    assert!(lab.stop_node());
}

#[test]
fn a_broken_client_config_is_refused_with_its_line() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "vpn", "enabled", "false");
    lab.start_node_in(true);
    let conf = lab.dir.path().join("bad.conf");
    std::fs::write(&conf, "[Interface]\nPrivateKey = abc\n").unwrap();
    let out = lab.nx1(&["connect", conf.to_str().unwrap(), "--interface", "nx1bad"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 2: bad PrivateKey"), "{err}");
    assert_eq!(lab.status().unwrap()["client"], serde_json::Value::Null);
    assert!(lab.stop_node());
}

/// The nftables table's counters in the status: (DNS, other) packets stopped.
fn blocked(lab: &ExitLab) -> (u64, u64) {
    let st = lab.status().unwrap();
    let p = &st["client"]["protection"];
    (
        p["dns_blocked"].as_u64().unwrap(),
        p["other_blocked"].as_u64().unwrap(),
    )
}

#[test]
fn dns_leak_protection_and_the_kill_switch_keep_traffic_in_the_tunnel() {
    let (mut lab, server, conf, _, client_if) = client_lab();
    let table = format!("nx1ks_{client_if}");
    let has_table = |lab: &ExitLab| {
        lab.cli
            .sh(&format!("nft list table inet {table}"))
            .status
            .success()
    };
    let conf = conf.to_str().unwrap();
    // The exit's own address is reached outside the tunnel (the endpoint's host route):
    // the way a leak would go.
    let outside = |lab: &ExitLab| {
        lab.cli
            .sh(&format!("ping -c 1 -W 1 {EXIT_CLI_ADDR}"))
            .status
            .success()
    };
    let dig_outside = |lab: &ExitLab| {
        lab.cli.sh(&format!(
            "dig @{EXIT_CLI_ADDR} +time=1 +tries=1 example.com A"
        ));
    };
    assert!(outside(&lab), "the control: reachable without protection");

    // DNS-leak protection only: DNS outside the tunnel is stopped, other traffic is not.
    let out = lab.nx1(&[
        "connect",
        conf,
        "--interface",
        &client_if,
        "--dns-protection",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    assert!(outside(&lab));
    assert_eq!(blocked(&lab).0, 0);
    dig_outside(&lab);
    assert!(
        blocked(&lab).0 >= 1,
        "the query outside the tunnel was stopped"
    );
    assert_eq!(
        lab.status().unwrap()["client"]["protection"]["kill_switch"],
        false
    );
    assert!(lab.nx1(&["disconnect"]).status.success());
    assert!(!has_table(&lab));

    // The kill switch: only the tunnel (and its datagrams to the server) gets out.
    let out = lab.nx1(&["connect", conf, "--interface", &client_if, "--kill-switch"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    assert!(
        !outside(&lab),
        "the kill switch stops traffic outside the tunnel"
    );
    dig_outside(&lab);
    let (dns, other) = blocked(&lab);
    assert!(dns >= 1 && other >= 1, "{dns} {other}");
    let shown = text(&lab.nx1(&["status"]).stdout);
    assert!(shown.contains("kill switch on"), "{shown}");

    // The server goes: traffic stops instead of taking the host's own way.
    drop(server);
    assert!(!lab.ping(WEB_V4, 2));
    assert!(!outside(&lab));

    // Disconnected: the table is gone and the host's own way works again.
    assert!(lab.nx1(&["disconnect"]).status.success());
    assert!(!has_table(&lab));
    assert!(outside(&lab));

    // A daemon that dies with the kill switch on leaves the host blocked (fail closed)
    // until `nx1 disconnect` on the next run clears it.
    let (_server, conf, _) = wireguard_go_server(&lab);
    let conf = conf.to_str().unwrap();
    let out = lab.nx1(&["connect", conf, "--interface", &client_if, "--kill-switch"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    lab.node.take().unwrap().stop_with(libc::SIGKILL);
    assert!(has_table(&lab), "the table outlives the daemon");
    assert!(!outside(&lab), "still blocked after the daemon died");
    lab.start_node_in(true);
    let out = lab.nx1(&["disconnect"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a previous run left"),
        "{}",
        text(&out.stdout)
    );
    assert!(outside(&lab));
    assert!(text(&lab.nx1(&["disconnect"]).stderr).contains("not connected"));
    assert!(lab.stop_node());
}
