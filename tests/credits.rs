//! Usage receipts end to end: an `nx1 connect` client signs cumulative receipts for its session
//! with its account key and sends them through the tunnel; the exit keeps exactly what was
//! signed, per account, and refuses what is not a receipt or not signed by the account it
//! names.

use nx1_tests::lab::{ExitLab, WEB_V4, config_value};
use nx1_tests::{Daemon, eventually, init_node, nx1, set_config, text};
use std::path::Path;
use std::time::Duration;

fn json(config: &Path, args: &[&str], cwd: &Path) -> Option<serde_json::Value> {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = nx1(&all, cwd);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// An nx1 node in client mode in `cli`, connected with `conf_text`: its config, its account
/// (node id) and the running daemon.
fn connect_client(lab: &ExitLab, conf_text: &str) -> (std::path::PathBuf, String, Daemon) {
    let cwd = lab.dir.path().to_owned();
    let (client, account) = init_node(&cwd.join("client"), &cwd);
    set_config(&client, "api", "listen", "\"127.0.0.1:0\"");
    set_config(&client, "vpn", "enabled", "false");
    let daemon = Daemon::start_in(Some(&lab.cli), Some(&client), &cwd, &cwd.join("client.log"));
    eventually("the client node", Duration::from_secs(30), || {
        json(&client, &["status", "--json"], &cwd)
    });
    let conf = cwd.join("nx1-client.conf");
    std::fs::write(&conf, conf_text).unwrap();
    let out = nx1(
        &[
            "--config",
            client.to_str().unwrap(),
            "connect",
            conf.to_str().unwrap(),
            "--interface",
            &format!("nx1m{}", lab.tag),
        ],
        &cwd,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    (client, account, daemon)
}

#[test]
fn a_client_that_signs_nothing_is_cut_off_and_a_signing_one_is_not() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "credits", "require_receipts", "true");
    set_config(&lab.config, "credits", "unpaid_allowance_kb", "1024");
    lab.start_node();
    lab.start_web_server(&"x".repeat(3_000_000));
    let cwd = lab.dir.path().to_owned();
    let cut_off = |lab: &ExitLab| -> Vec<String> {
        let c = json(&lab.config, &["credits", "--json"], &cwd).unwrap();
        serde_json::from_value(c["cut_off"].clone()).unwrap()
    };
    let fetch = |lab: &ExitLab| -> usize {
        let out = lab.in_cli(&format!(
            "curl -s --max-time 30 http://{WEB_V4}:8080/hello.txt | wc -c"
        ));
        text(&out.stdout).trim().parse().unwrap_or(0)
    };

    // A standard WireGuard client signs nothing: cut off once it runs 1 MiB ahead.
    let plain = lab.add_peer("plain");
    lab.connect_client(&plain);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    fetch(&lab);
    eventually("the plain client cut off", Duration::from_secs(10), || {
        cut_off(&lab).contains(&"plain".to_owned()).then_some(())
    });
    assert!(!lab.ping(WEB_V4, 2), "a cut-off client still gets through");
    lab.disconnect_client();

    // An nx1 connect client signs as it goes: it carries several times the allowance.
    let (client, _, daemon) = connect_client(&lab, &lab.add_peer("metered"));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    for _ in 0..3 {
        assert_eq!(fetch(&lab), 3_000_000, "a signing client's download");
    }
    eventually(
        "the metered client paid up",
        Duration::from_secs(10),
        || {
            let answer =
                json(&client, &["status", "--json"], &cwd)?["client"]["node_answer"].clone();
            (answer["cut_off"] == false && !cut_off(&lab).contains(&"metered".to_owned()))
                .then_some(())
        },
    );
    assert!(lab.ping(WEB_V4, 2));
    assert!(daemon.stop_with(libc::SIGTERM).success());
}

#[test]
fn the_exit_keeps_exactly_what_the_clients_account_signed() {
    let mut lab = ExitLab::new();
    lab.start_node();
    lab.start_web_server("metered\n");
    let node_id = lab.status().unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conf_text = lab.add_peer("laptop");
    assert_eq!(config_value(&conf_text, "# nx1-node"), node_id);
    assert_eq!(config_value(&conf_text, "# nx1-receipts"), "10.87.0.1:7873");

    // The client: an nx1 node in client mode in `cli`; its identity is the account.
    let cwd = lab.dir.path().to_owned();
    let (client, account, daemon) = connect_client(&lab, &conf_text);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    for _ in 0..5 {
        let got = lab.in_cli(&format!(
            "curl -sS --max-time 5 http://{WEB_V4}:8080/hello.txt"
        ));
        assert_eq!(text(&got.stdout), "metered\n");
    }

    // Receipts arrive: one session, the client's account.
    eventually("a receipt at the exit", Duration::from_secs(15), || {
        let c = json(&lab.config, &["credits", "--json"], &cwd)?;
        let a = c["accounts"].as_array()?.first()?.clone();
        (a["account"] == account.as_str() && a["bytes_down"].as_u64()? > 1000).then_some(())
    });

    // What is not a receipt, or not signed by the account it names, is refused (sent a few
    // times, 300 ms apart: the node takes one receipt per 50 ms from a tunnel).
    let forged = format!(
        "import socket,json,base64,time\n\
         r=json.dumps({{'v':1,'session':'AAAAAAAAAAAAAAAAAAAAAA==','account':'{account}','client_key':'x','node':'{node_id}','bytes_up':10**12,'bytes_down':10**12,'seconds':1}})\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for _ in range(3):\n\
         \x20time.sleep(0.3)\n\
         \x20s.sendto(json.dumps({{'receipt':r,'signature':base64.b64encode(bytes(64)).decode()}}).encode(),('10.87.0.1',7873))\n\
         \x20time.sleep(0.3)\n\
         \x20s.sendto(b'not a receipt',('10.87.0.1',7873))"
    );
    let sent = lab.in_cli(&format!("python3 -c \"{forged}\""));
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    eventually("the forgeries refused", Duration::from_secs(10), || {
        let c = json(&lab.config, &["credits", "--json"], &cwd)?;
        let refused: Vec<(String, u64)> =
            serde_json::from_value(c["receipts_refused"].clone()).ok()?;
        let n = |why: &str| {
            refused
                .iter()
                .find(|(w, _)| w == why)
                .map_or(0, |(_, n)| *n)
        };
        (n("malformed") >= 1 && n("signature") + n("wrong_tunnel") >= 1).then_some(())
    });

    let status = lab.status().unwrap();
    let metrics = lab.exit.sh(&format!(
        "curl -sS --max-time 5 http://{}/metrics",
        status["http_listen"].as_str().unwrap()
    ));
    let metrics = text(&metrics.stdout);
    assert!(metrics.contains("nx1_receipts_taken_total"), "{metrics}");
    assert!(
        metrics.contains("nx1_receipts_refused_total{reason=\"malformed\"}"),
        "{metrics}"
    );

    // With the traffic over, the exit holds exactly the client's last signed totals.
    eventually(
        "the exit to hold the last signed receipt",
        Duration::from_secs(20),
        || {
            let signed =
                json(&client, &["status", "--json"], &cwd)?["client"]["last_receipt"].clone();
            let held = json(&lab.config, &["credits", "--json"], &cwd)?["accounts"][0].clone();
            let same = ["bytes_up", "bytes_down", "seconds"]
                .iter()
                .all(|k| signed[k] == held[k]);
            (same && held["sessions"] == 1).then_some(())
        },
    );

    assert!(
        nx1(&["--config", client.to_str().unwrap(), "disconnect"], &cwd)
            .status
            .success()
    );
    assert!(daemon.stop_with(libc::SIGTERM).success());
}
