//! The WireGuard exit end to end: wireguard-go in `cli`, configured only from `nx1 peer add`,
//! reaches `web` through the node in `exit`.

use nx1_tests::lab::{CLI_ADDR, ExitLab, WEB_V4, WEB_V6, config_value};
use nx1_tests::netns::must;
use nx1_tests::text;
use std::time::Duration;

#[test]
fn a_wireguard_go_client_reaches_the_web_through_the_exit() {
    let mut lab = ExitLab::new();
    lab.start_node();
    lab.start_web_server("nx1-web\n");

    let config = lab.add_peer("laptop");
    assert!(config.starts_with("[Interface]\nPrivateKey = "), "{config}");
    assert_eq!(
        config_value(&config, "Address"),
        "10.87.0.2/32, fd00:87::2/128"
    );
    assert_eq!(config_value(&config, "Endpoint"), "198.18.1.1:51820");
    assert_eq!(config_value(&config, "AllowedIPs"), "0.0.0.0/0, ::/0");
    assert_eq!(config_value(&config, "PersistentKeepalive"), "25");
    let status = lab.status().unwrap();
    assert_eq!(
        config_value(&config, "PublicKey"),
        status["wireguard_public_key"].as_str().unwrap()
    );

    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    assert!(lab.ping(WEB_V6, 2), "IPv6 through the tunnel");

    // TCP: an HTTP fetch. `web` has no route to 10.87.0.0/16: only masquerading answers.
    let fetched = lab.in_cli(&format!(
        "curl -sS --max-time 10 http://{WEB_V4}:8080/hello.txt"
    ));
    assert_eq!(
        text(&fetched.stdout),
        "nx1-web\n",
        "{}",
        text(&fetched.stderr)
    );

    // UDP: a datagram out and its answer back (bash's /dev/udp to a UDP echo in `web`).
    let echo = lab
        .web
        .command("python3")
        .args(["-c", "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9999))\nd,a=s.recvfrom(100)\ns.sendto(d[::-1],a)"])
        .spawn()
        .unwrap();
    let _echo = nx1_tests::lab::Background(echo);
    std::thread::sleep(Duration::from_millis(300));
    let udp = lab.in_cli(&format!(
        "python3 -c \"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\ns.sendto(b'olleh',('{WEB_V4}',9999))\nprint(s.recvfrom(100)[0].decode())\""
    ));
    assert_eq!(text(&udp.stdout).trim(), "hello", "{}", text(&udp.stderr));

    // Nothing from outside may open a connection to a client: even a `web` that routes the
    // pool to the exit gets no answer from 10.87.0.2.
    lab.web
        .ip(&["route", "add", "10.87.0.0/16", "via", "198.18.2.1"]);
    assert!(
        !lab.web
            .sh("ping -c 2 -W 1 10.87.0.2 >/dev/null 2>&1")
            .status
            .success()
    );
    lab.web
        .ip(&["route", "del", "10.87.0.0/16", "via", "198.18.2.1"]);

    // The node knows the client: endpoint, a recent handshake, traffic both ways.
    let peers = lab.peers();
    let laptop = &peers[0];
    assert_eq!(laptop["name"], "laptop");
    assert!(
        laptop["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{CLI_ADDR}:"))
    );
    assert!(laptop["latest_handshake"].as_u64().unwrap() > 1_700_000_000);
    assert!(laptop["rx_bytes"].as_u64().unwrap() > 0 && laptop["tx_bytes"].as_u64().unwrap() > 0);
    let status = lab.status().unwrap();
    assert_eq!(status["vpn"]["peers"], 1);
    assert_eq!(status["vpn"]["active_peers"], 1);
    let http = status["http_listen"].as_str().unwrap().to_owned();
    let metrics = lab.exit.sh(&format!("curl -sS http://{http}/metrics"));
    assert!(
        text(&metrics.stdout).contains(&format!(
            "nx1_peer_rx_bytes_total{{peer=\"{}\"}}",
            laptop["public_key"].as_str().unwrap()
        )),
        "{}",
        text(&metrics.stdout)
    );

    // `wg show` on the node, through its UAPI socket: wireguard-tools reads the interface key,
    // port, the peer, its endpoint, a Unix-time latest handshake and transfer.
    let show = text(&lab.exit.sh(&format!("wg show {}", lab.node_if)).stdout);
    let server_key = status["wireguard_public_key"].as_str().unwrap();
    let client_key = laptop["public_key"].as_str().unwrap();
    for want in [
        format!("public key: {server_key}"),
        "listening port: 51820".to_owned(),
        format!("peer: {client_key}"),
        format!("endpoint: {CLI_ADDR}:"),
        "allowed ips: 10.87.0.2/32, fd00:87::2/128".to_owned(),
        "latest handshake: ".to_owned(),
        "transfer: ".to_owned(),
    ] {
        assert!(show.contains(&want), "{want:?} not in:\n{show}");
    }
    let handshakes = text(
        &lab.exit
            .sh(&format!("wg show {} latest-handshakes", lab.node_if))
            .stdout,
    );
    let when: u64 = handshakes
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(when) < 300,
        "latest handshake {when} vs now {now}"
    );

    // Roaming: the client's source changes mid-session (as a NAT rebinding does: a new
    // source port); traffic continues and the node's endpoint for it follows.
    must(
        lab.cli
            .command("wg")
            .args(["set", &lab.client_if, "listen-port", "40123"]),
    );
    lab.ping_eventually(WEB_V4, Duration::from_secs(10));
    let endpoint = lab.peers()[0]["endpoint"].as_str().unwrap().to_owned();
    assert_eq!(endpoint, format!("{CLI_ADDR}:40123"));

    // Garbage and truncated datagrams are counted and the node keeps serving.
    let junk = lab.in_cli(
        "for i in $(seq 50); do head -c $((RANDOM % 300 + 1)) /dev/urandom > /dev/udp/198.18.1.1/51820; done; \
         for i in $(seq 20); do printf '\\x04\\x00\\x00\\x00\\x01\\x02' > /dev/udp/198.18.1.1/51820; done; \
         for i in $(seq 20); do printf '\\x01\\x00\\x00\\x00' > /dev/udp/198.18.1.1/51820; done",
    );
    assert!(junk.status.success(), "{}", text(&junk.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let drops = &lab.status().unwrap()["vpn"]["drops"];
    let dropped: u64 = ["malformed", "unknown_peer", "bad_mac", "rejected"]
        .iter()
        .map(|k| drops[k].as_u64().unwrap())
        .sum();
    assert!(dropped >= 90, "{drops}");
    assert!(lab.ping(WEB_V4, 2), "still serving after garbage");

    // Replays: nftables in `cli` duplicates every datagram the client sends, so the node sees
    // each one twice. The second copy is refused (its counter was seen), counted, and traffic
    // flows on.
    let rejected_before = lab.status().unwrap()["vpn"]["drops"]["rejected"]
        .as_u64()
        .unwrap();
    let dup = lab.cli.sh(
        "nft 'add table ip replay; add chain ip replay out { type filter hook output priority 0; }; \
              add rule ip replay out udp dport 51820 dup to 198.18.1.1 device c0'",
    );
    assert!(dup.status.success(), "{}", text(&dup.stderr));
    for _ in 0..5 {
        assert!(
            lab.ping(WEB_V4, 2),
            "traffic flows while every datagram is replayed"
        );
    }
    assert!(lab.cli.sh("nft delete table ip replay").status.success());
    let rejected = lab.status().unwrap()["vpn"]["drops"]["rejected"]
        .as_u64()
        .unwrap();
    assert!(
        rejected >= rejected_before + 5,
        "{rejected_before} -> {rejected}"
    );

    // Peers survive a restart; shutdown removes the exit table and the interface.
    assert!(lab.stop_node());
    let tables = lab.exit.sh("nft list tables");
    assert!(
        !text(&tables.stdout).contains("nx1_"),
        "{}",
        text(&tables.stdout)
    );
    assert!(
        !lab.exit
            .sh(&format!("ip link show {}", lab.node_if))
            .status
            .success()
    );
    lab.start_node();
    lab.ping_eventually(WEB_V4, Duration::from_secs(40));
    assert_eq!(lab.peers()[0]["name"], "laptop");

    // A peer removed live is refused at once.
    let out = lab.nx1(&["peer", "remove", "laptop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!lab.ping(WEB_V4, 2));
    assert!(!lab.ping(WEB_V4, 2));
    assert_eq!(lab.peers().as_array().unwrap().len(), 0);
}

#[test]
fn a_stale_exit_table_from_a_crash_is_replaced_and_peer_commands_fail_clearly() {
    let mut lab = ExitLab::new();
    let forwarding = |lab: &ExitLab| text(&lab.exit.sh("cat /proc/sys/net/ipv4/ip_forward").stdout);
    let before = forwarding(&lab);
    assert_eq!(
        before.trim(),
        "0",
        "a new namespace starts without forwarding"
    );
    lab.start_node();
    assert_eq!(forwarding(&lab).trim(), "1");
    // A crash (SIGKILL) leaves the table behind; the next start replaces it.
    lab.node.take().unwrap().stop_with(libc::SIGKILL);
    assert!(text(&lab.exit.sh("nft list tables").stdout).contains("nx1_"));
    lab.start_node();
    assert!(
        std::fs::read_to_string(lab.dir.path().join("node.log"))
            .unwrap()
            .contains("replaced an exit table")
    );

    for (args, expect) in [
        (&["peer", "add", "bad name"][..], "peer name"),
        (
            &["peer", "add", "x", "--public-key", "nope"],
            "--public-key",
        ),
        (&["peer", "remove", "ghost"], "no peer named"),
    ] {
        let out = lab.nx1(args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // With --public-key the config carries no private key: it never existed on the node.
    let key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    let out = lab.nx1(&["peer", "add", "phone", "--public-key", key]);
    let config = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !config.lines().any(|l| l.starts_with("PrivateKey")),
        "{config}"
    );
    assert_eq!(lab.peers()[0]["public_key"], key);
    // --qr adds the same config as a terminal QR code (Unicode half blocks).
    let qr = lab.nx1(&["peer", "add", "tablet", "--qr"]);
    let shown = text(&qr.stdout);
    assert!(qr.status.success(), "{}", text(&qr.stderr));
    assert!(shown.starts_with("[Interface]\nPrivateKey = "));
    assert!(
        shown
            .lines()
            .filter(|l| l.contains('█') || l.contains('▀'))
            .count()
            > 20,
        "{shown}"
    );
    let out = lab.nx1(&["peer", "remove", "tablet"]);
    assert!(out.status.success());
    let dup = lab.nx1(&["peer", "add", "phone2", "--public-key", key]);
    assert!(text(&dup.stderr).contains("registered already"));

    // Over UAPI, `wg set … remove` works (and sticks: the store forgets the peer too);
    // every other change is refused.
    let refused = lab
        .exit
        .sh(&format!("wg set {} listen-port 1234", lab.node_if));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("Operation not permitted"),
        "{}",
        text(&refused.stderr)
    );
    let removed = lab
        .exit
        .sh(&format!("wg set {} peer {key} remove", lab.node_if));
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_eq!(lab.peers().as_array().unwrap().len(), 0);
    assert!(!text(&lab.exit.sh(&format!("wg show {}", lab.node_if)).stdout).contains(key));
    assert!(lab.stop_node());
    // The clean stop after the crash restores the forwarding setting found before the crash.
    assert_eq!(forwarding(&lab), before);
    assert!(!lab.data_dir().join("exit-originals").exists());
}
