//! Usage receipts end to end: an `nx1 connect` client signs cumulative receipts for its session
//! with its account key and sends them through the tunnel; the exit keeps exactly what was
//! signed, per account, and refuses what is not a receipt or not signed by the account it
//! names.

use nx1_tests::lab::{EXIT_RELAY_ADDR, ExitLab, RELAY_EXIT_ADDR, WEB_V4, config_value};
use nx1_tests::{Daemon, eventually, init_node, nx1, nx1_bin, set_config, text, wait_output};
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

/// What `bytes` carried earn at `per_mib` credits per MiB (rounded down, per session).
fn earned(bytes: u64, per_mib: u64) -> i64 {
    (u128::from(bytes) * u128::from(per_mib) / (1 << 20)) as i64
}

#[test]
fn credits_earned_by_relaying_pay_for_vault_sync_and_match_the_receipts() {
    let mut lab = ExitLab::with_relay();
    let relay_config = lab.relay_config.clone().unwrap();
    // Both nodes publish their API on the link between them: each is a replica of the other's
    // account, and both hold vaults.
    set_config(
        &lab.config,
        "api",
        "listen",
        &format!("\"{EXIT_RELAY_ADDR}:7870\""),
    );
    set_config(
        &relay_config,
        "api",
        "listen",
        &format!("\"{RELAY_EXIT_ADDR}:7870\""),
    );
    for c in [&lab.config, &relay_config] {
        set_config(c, "credits", "exit_per_mib", "40");
        set_config(c, "credits", "relay_per_mib", "100");
        set_config(c, "credits", "vault_free_kib", "1");
        set_config(c, "credits", "vault_sync_per_mib", "100000");
        set_config(c, "credits", "storage_per_mib_day", "100000");
        set_config(c, "credits", "sync_interval_ms", "300");
    }
    lab.start_node();
    lab.start_relay();
    lab.start_web_server(&"r".repeat(3_000_000));
    let cwd = lab.dir.path().to_owned();
    let relay_id = lab.relay_status().unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let exit_id = lab.status().unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conf_text = eventually(
        "a config through the relay",
        Duration::from_secs(30),
        || {
            let out = lab.nx1(&["peer", "add", "laptop", "--via", &relay_id]);
            out.status.success().then(|| text(&out.stdout))
        },
    );
    assert_eq!(config_value(&conf_text, "# nx1-via"), relay_id);

    // A client of the exit, through the relay, signing receipts as it goes.
    let (client, account, daemon) = connect_client(&lab, &conf_text);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    for _ in 0..3 {
        let got = lab.in_cli(&format!(
            "curl -s --max-time 30 http://{WEB_V4}:8080/hello.txt | wc -c"
        ));
        assert_eq!(text(&got.stdout).trim(), "3000000");
    }
    let credits = |config: &Path| json(config, &["credits", "--json"], &cwd).unwrap();
    eventually("the transfers signed for", Duration::from_secs(20), || {
        (credits(&lab.config)["accounts"][0]["bytes_down"].as_u64()? > 9_000_000).then_some(())
    });
    assert!(
        nx1(&["--config", client.to_str().unwrap(), "disconnect"], &cwd)
            .status
            .success()
    );
    assert!(daemon.stop_with(libc::SIGTERM).success());

    // What the exit holds is exactly what the client signed; the relay's owner earned on it
    // at the relay rate, the exit's at the exit rate, to the credit.
    let (relay_earned, carried) = eventually(
        "earnings to match the receipts",
        Duration::from_secs(20),
        || {
            let held = credits(&lab.config)["accounts"][0].clone();
            (held["account"] == account.as_str()).then_some(())?;
            let carried = held["bytes_up"].as_u64()? + held["bytes_down"].as_u64()?;
            let relay = credits(&relay_config)["balance"].clone();
            let exit = credits(&lab.config)["balance"].clone();
            (relay["by_service"]["relay"].as_i64()? == earned(carried, 100)
                && relay["earned"].as_i64()? == earned(carried, 100)
                && exit["by_service"]["exit"].as_i64()? == earned(carried, 40))
            .then(|| (earned(carried, 100), carried))
        },
    );
    assert!(carried > 9_000_000, "{carried} bytes carried");
    let relay_balance = credits(&relay_config)["balance"].clone();
    assert_eq!(relay_balance["balance"].as_i64(), Some(relay_earned));
    // Every earning is auditable: the relay's claim holds the client's signed receipt.
    let history = json(&relay_config, &["credits", "history", "--json"], &cwd).unwrap();
    let claim: serde_json::Value =
        serde_json::from_str(history["history"][0]["signed"]["entry"].as_str().unwrap()).unwrap();
    assert_eq!(
        (claim["kind"].as_str(), claim["duty"].as_str()),
        (Some("earn"), Some("relay"))
    );
    let receipt: serde_json::Value =
        serde_json::from_str(claim["receipt"].as_str().unwrap()).unwrap();
    assert_eq!(receipt["account"], account.as_str());
    assert_eq!(receipt["node"], exit_id.as_str());
    assert_eq!(receipt["via"], relay_id.as_str());

    // A stranger (the client's namespace, routed to the relay's API) learns nothing about the
    // relay's accounts and cannot pass receipts on itself; the node's id and prices are public.
    lab.cli.ip(&[
        "route",
        "add",
        &format!("{RELAY_EXIT_ADDR}/32"),
        "via",
        "198.18.4.1",
    ]);
    let api = format!("http://{RELAY_EXIT_ADDR}:7870");
    let query = relay_id
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let status_of = |args: &str| {
        let out = lab.in_cli(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {args}"
        ));
        text(&out.stdout)
    };
    for path in [
        "/v1/credits".to_owned(),
        format!("/v1/credits/account?account={query}"),
        format!("/v1/credits/replica/entries?account={query}"),
        "/v1/contribute".to_owned(),
    ] {
        assert_eq!(status_of(&format!("{api}{path}")), "403", "{path}");
    }
    assert_eq!(status_of(&format!("{api}/v1/credits/node")), "200");
    // Nor can it merge entries past the balance check: that is for the mesh's members.
    assert_eq!(
        status_of(&format!(
            "-X POST -H 'content-type: application/json' --data '{{\"entries\":[],\"merge\":true}}' {api}/v1/credits/replica/apply"
        )),
        "403"
    );
    let own = serde_json::json!({
        "receipt": claim["receipt"], "signature": claim["receipt_signature"],
    });
    std::fs::write(cwd.join("own.json"), own.to_string()).unwrap();
    assert_eq!(
        status_of(&format!(
            "-X POST -H 'content-type: application/json' --data @{} {api}/v1/credits/carried",
            cwd.join("own.json").display()
        )),
        "403"
    );

    // The relay's owner syncs a vault from the relay's machine: beyond the free tier the
    // node wants credits, and says so; paid with the owner's key, the sync goes through.
    let rly = lab.relay.as_ref().unwrap();
    let password = cwd.join("owner.pw");
    std::fs::write(&password, "the relay owner's master password\n").unwrap();
    let vault = |args: &[&str]| {
        let mut cmd = rly.command(nx1_bin().to_str().unwrap());
        cmd.arg("vault")
            .args(args)
            .args(["--vault-dir", cwd.join("owner-vault").to_str().unwrap()])
            .args(["--account", "owner", "--password-fd", "0"])
            .env_remove("NX1_PAY_WITH")
            .stdin(std::fs::File::open(&password).unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        wait_output(cmd.spawn().unwrap(), Duration::from_secs(120))
    };
    let out = vault(&[
        "register",
        "--server",
        &format!("http://{RELAY_EXIT_ADDR}:7870"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes = "n".repeat(6000);
    let out = vault(&["add", "router", "--username", "admin", "--notes", &notes]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("out of credits — contribute or top up"),
        "{err}"
    );
    assert!(err.contains("--pay-with"), "{err}");
    let key = relay_config.parent().unwrap().join("identity.key");
    let out = vault(&["sync", "--pay-with", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("paying"),
        "{}",
        text(&out.stderr)
    );
    let out = vault(&["get", "router", "--field", "username"]);
    assert_eq!(text(&out.stdout).trim(), "admin");

    // The spend is in the ledger, once, and the balance is what was earned less what was spent.
    let after = json(&relay_config, &["credits", "history", "--json"], &cwd).unwrap();
    let spends: Vec<&serde_json::Value> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "spend")
        .collect();
    assert_eq!(spends.len(), 1, "{after}");
    assert_eq!(spends[0]["service"], "vault_sync");
    let spent = -spends[0]["amount"].as_i64().unwrap();
    assert!(
        spent > 0 && spent < relay_earned,
        "{spent} of {relay_earned}"
    );
    let b = credits(&relay_config)["balance"].clone();
    assert_eq!(b["balance"].as_i64(), Some(relay_earned - spent));
    assert_eq!(b["spent"].as_i64(), Some(spent));

    // The paying device confirmed what each replica holds of its vault: the exit (another
    // owner) earns storage credits on it, exactly at its rate; the relay earns nothing on its
    // own owner's vault.
    let stored = eventually(
        "storage earned by the exit",
        Duration::from_secs(15),
        || {
            let h = json(&lab.config, &["credits", "history", "--json"], &cwd)?;
            h["history"].as_array()?.iter().find_map(|e| {
                let entry: serde_json::Value =
                    serde_json::from_str(e["signed"]["entry"].as_str()?).ok()?;
                (entry["duty"] == "storage").then(|| (e["amount"].as_i64().unwrap(), entry))
            })
        },
    );
    let holding: serde_json::Value =
        serde_json::from_str(stored.1["receipt"].as_str().unwrap()).unwrap();
    assert_eq!(holding["node"], exit_id.as_str());
    let held = holding["bytes"].as_u64().unwrap();
    assert!(held > 6000, "{holding}");
    assert_eq!(stored.0, earned(held, 100_000));
    let exit_balance = credits(&lab.config)["balance"].clone();
    assert_eq!(
        exit_balance["by_service"]["storage"].as_i64(),
        Some(stored.0)
    );
    assert!(credits(&relay_config)["balance"]["by_service"]["storage"].is_null());
}

#[test]
fn a_tunnel_beyond_the_free_tier_is_paid_for_and_cut_off_when_the_account_cannot_pay() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "credits", "vpn_free_mib", "1");
    set_config(&lab.config, "credits", "vpn_per_mib", "100");
    // The exit honours its own grants (a top-up from the node's operator).
    let exit_id = lab.node_id.clone();
    set_config(
        &lab.config,
        "credits",
        "issuers",
        &format!("[\"{exit_id}\"]"),
    );
    lab.start_node();
    lab.start_web_server(&"v".repeat(3_000_000));
    let cwd = lab.dir.path().to_owned();
    let (client, account, daemon) = connect_client(&lab, &lab.add_peer("paying"));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));

    // 3 MB down is beyond the 1 MiB free tier, and the account has nothing: the exit cuts
    // the tunnel off and tells the client why.
    let _ = lab.in_cli(&format!(
        "curl -s --max-time 20 http://{WEB_V4}:8080/hello.txt | wc -c"
    ));
    let why = eventually("the tunnel cut off", Duration::from_secs(20), || {
        let answer = json(&client, &["status", "--json"], &cwd)?["client"]["node_answer"].clone();
        (answer["cut_off"] == true)
            .then(|| answer["out_of_credits"].as_str().map(str::to_owned))
            .flatten()
    });
    assert!(
        why.contains("out of credits — contribute or top up"),
        "{why}"
    );
    assert!(
        !lab.ping(WEB_V4, 2),
        "a client out of credits still gets through"
    );

    // Topped up, the next receipt pays and the tunnel is through again.
    let granted = lab.nx1(&["credits", "grant", &account, "100000", "--memo", "top-up"]);
    assert!(granted.status.success(), "{}", text(&granted.stderr));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));

    // The charge is the client's own receipt beyond the free tier, at the rate, exactly.
    let charged = eventually("the charge settled", Duration::from_secs(20), || {
        let h = json(
            &lab.config,
            &["credits", "history", "--account", &account, "--json"],
            &cwd,
        )?;
        let charge = h["history"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "charge")?
            .clone();
        let entry: serde_json::Value =
            serde_json::from_str(charge["signed"]["entry"].as_str()?).ok()?;
        let receipt: serde_json::Value = serde_json::from_str(entry["receipt"].as_str()?).ok()?;
        let bytes = receipt["bytes_up"].as_u64()? + receipt["bytes_down"].as_u64()?;
        let paid = bytes - entry["free_bytes"].as_u64()?;
        let expected = (u128::from(paid) * 100).div_ceil(1 << 20) as i64;
        (charge["amount"].as_i64()? == -expected).then_some((
            entry,
            h["balance"]["balance"].as_i64()?,
            expected,
        ))
    });
    assert_eq!(charged.0["node"], exit_id.as_str());
    assert_eq!(charged.0["free_bytes"], 1 << 20);
    assert_eq!(charged.1, 100_000 - charged.2);
    assert!(
        nx1(&["--config", client.to_str().unwrap(), "disconnect"], &cwd)
            .status
            .success()
    );
    assert!(daemon.stop_with(libc::SIGTERM).success());
}

#[test]
fn the_exit_tells_a_client_what_its_guard_blocked_for_it() {
    let mut lab = ExitLab::new();
    let list = lab.dir.path().join("trackers.txt");
    std::fs::write(&list, "||tracker.example^\n").unwrap();
    set_config(
        &lab.config,
        "guard",
        "blocklists",
        &format!("[\"{}\"]", list.display()),
    );
    lab.start_node();
    let cwd = lab.dir.path().to_owned();
    let (client, _, daemon) = connect_client(&lab, &lab.add_peer("laptop"));
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    let guard = |client: &Path| {
        json(client, &["status", "--json"], &cwd)
            .map(|s| s["client"]["node_answer"]["guard"].clone())
    };
    // Nothing yet: the answers carry no findings.
    eventually("a first answer", Duration::from_secs(10), || {
        json(&client, &["status", "--json"], &cwd)?["client"]["node_answer"]
            .is_object()
            .then_some(())
    });
    assert!(guard(&client).unwrap().is_null());
    let dig = lab.in_cli("dig @10.87.0.1 +short +time=2 +tries=2 tracker.example A");
    assert_eq!(text(&dig.stdout).trim(), "0.0.0.0", "{}", text(&dig.stderr));
    let found = eventually(
        "the finding in the client's status",
        Duration::from_secs(15),
        || {
            let g = guard(&client)?;
            let f = g
                .as_array()?
                .iter()
                .find(|f| f["name"] == "tracker.example")?
                .clone();
            Some(f)
        },
    );
    assert!(
        found["list"].as_str().unwrap().ends_with("trackers.txt"),
        "{found}"
    );
    assert_eq!(found["query_type"], "A");

    // The client asks, through its tunnel, that the exit allow the name for it alone.
    let out = nx1(
        &[
            "--config",
            client.to_str().unwrap(),
            "guard",
            "allow",
            "Tracker.Example.",
            "--at-node",
        ],
        &cwd,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("tracker.example: allowed"),
        "{}",
        text(&out.stdout)
    );
    let verdict = |peer: Option<&str>| {
        let mut args = vec!["guard", "check", "tracker.example", "--json"];
        if let Some(p) = peer {
            args.extend(["--peer", p]);
        }
        json(&lab.config, &args, &cwd).unwrap()["verdict"].clone()
    };
    assert_eq!(verdict(Some("laptop")), "allowed");
    assert_eq!(
        verdict(None),
        "blocked",
        "for everyone else it stays blocked"
    );
    let dig = lab.in_cli("dig @10.87.0.1 +short +time=2 +tries=1 tracker.example A");
    assert_ne!(text(&dig.stdout).trim(), "0.0.0.0");
    // Not a domain: refused with a reason, nothing changed.
    let out = nx1(
        &[
            "--config",
            client.to_str().unwrap(),
            "guard",
            "allow",
            "not a domain",
            "--at-node",
        ],
        &cwd,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a domain name"),
        "{}",
        text(&out.stderr)
    );
    assert!(daemon.stop_with(libc::SIGTERM).success());
}
