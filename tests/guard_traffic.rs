//! Guard's traffic detectors end to end, through a wireguard-go tunnel: ordinary browsing and
//! an iperf3 transfer raise nothing; a beacon (a connection every second) is reported and its
//! destination blocked; a burst of connections is reported; an upload far above the peer's
//! learned baseline is reported and rate-limited.

use nx1_tests::lab::{Background, ExitLab, WEB_V4};
use nx1_tests::{eventually, set_config, text};
use std::process::Stdio;
use std::time::Duration;

fn findings(lab: &ExitLab) -> Vec<serde_json::Value> {
    let out = lab.nx1(&["guard", "findings", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn finding_of(lab: &ExitLab, list: &str) -> serde_json::Value {
    eventually(
        &format!("a finding of {list}"),
        Duration::from_secs(10),
        || findings(lab).into_iter().find(|f| f["list"] == list),
    )
}

fn curl(lab: &ExitLab) -> bool {
    lab.in_cli(&format!(
        "curl -sS -o /dev/null --max-time 3 http://{WEB_V4}:8080/hello.txt"
    ))
    .status
    .success()
}

/// An iperf3 run from the client to `web` for `seconds`; its throughput in Mbit/s.
fn iperf3(lab: &ExitLab, seconds: u32, reverse: bool) -> f64 {
    let out = lab.in_cli(&format!(
        "iperf3 -c {WEB_V4} -t {seconds} -J {} --connect-timeout 3000",
        if reverse { "-R" } else { "" }
    ));
    assert!(out.status.success(), "iperf3: {}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e6
}

fn iperf3_server(lab: &ExitLab) -> Background {
    let child = lab
        .web
        .command("iperf3")
        .args(["-s", "-B", WEB_V4])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    let server = Background(child);
    eventually("the iperf3 server", Duration::from_secs(10), || {
        lab.web
            .sh(&format!("exec 3<>/dev/tcp/{WEB_V4}/5201"))
            .status
            .success()
            .then_some(())
    });
    server
}

#[test]
fn browsing_raises_nothing_and_a_beacon_is_reported_and_blocked() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "guard", "on_beacon", "\"block-flow\"");
    set_config(&lab.config, "guard", "quarantine_secs", "60");
    lab.start_node();
    lab.start_web_server("page\n");
    let _iperf = iperf3_server(&lab);
    let config = lab.add_peer("laptop");
    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));

    // Browsing-like: fetches at irregular moments, DNS through Guard, a transfer each way.
    for pause in [0.3, 1.1, 0.2, 0.7, 1.6, 0.1, 0.9, 0.4, 1.3, 0.5, 0.2, 0.8] {
        assert!(curl(&lab));
        std::thread::sleep(Duration::from_secs_f64(pause));
    }
    lab.in_cli("dig @10.87.0.1 +time=1 +tries=1 example.test A >/dev/null");
    assert!(iperf3(&lab, 2, false) > 1.0);
    assert!(iperf3(&lab, 2, true) > 1.0);
    std::thread::sleep(Duration::from_secs(1));
    let none = findings(&lab);
    assert!(none.is_empty(), "ordinary traffic raised {none:#?}");

    // A beacon: one connection every second to the same service.
    for _ in 0..9 {
        curl(&lab);
        std::thread::sleep(Duration::from_secs(1));
    }
    let beacon = finding_of(&lab, "beaconing detection");
    let rule = beacon["rule"].as_str().unwrap();
    assert!(
        rule.contains(&format!("TCP connections to {WEB_V4}:8080 every 1.")),
        "{rule}"
    );
    assert!(rule.ends_with("(block-flow)"), "{rule}");
    assert_eq!(beacon["peer"], "laptop");
    // Its destination is blocked; the rest of the peer's traffic is not.
    assert!(!curl(&lab), "the beacon's destination is blocked");
    assert!(lab.ping(WEB_V4, 2));
    assert!(iperf3(&lab, 1, true) > 1.0);
    let status = lab.status().unwrap();
    assert_eq!(
        status["guard"]["findings_by_list"]["beaconing detection"], 1,
        "{status}"
    );
    assert!(status["guard"]["flows"].as_u64().unwrap() > 0, "{status}");
    let http = status["http_listen"].as_str().unwrap();
    let metrics = text(
        &lab.exit
            .sh(&format!("curl -sS http://{http}/metrics"))
            .stdout,
    );
    assert!(
        metrics.contains("nx1_guard_findings_total{list=\"beaconing detection\"} 1"),
        "{metrics}"
    );

    // A burst: 300 connection attempts at once.
    lab.in_cli(&format!(
        "for p in $(seq 2000 2299); do (exec 3<>/dev/tcp/{WEB_V4}/$p) 2>/dev/null & done; wait"
    ));
    let burst = finding_of(&lab, "connection burst detection");
    let rule = burst["rule"].as_str().unwrap();
    assert!(rule.starts_with("connection burst: "), "{rule}");
    assert!(lab.stop_node());
}

#[test]
fn an_upload_far_above_the_learned_baseline_is_reported_and_rate_limited() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "guard", "learning_secs", "12");
    set_config(&lab.config, "guard", "on_upload", "\"rate-limit\"");
    lab.start_node();
    let _iperf = iperf3_server(&lab);
    let config = lab.add_peer("laptop");
    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));

    // The peer's baseline: light traffic while Guard learns.
    let light = lab.in_cli(&format!("ping -q -c 70 -i 0.2 -s 200 {WEB_V4}"));
    assert!(light.status.success(), "{}", text(&light.stdout));
    assert!(findings(&lab).is_empty(), "{:#?}", findings(&lab));

    // Then a bulk upload, far above it.
    let first = iperf3(&lab, 4, false);
    let upload = finding_of(&lab, "upload volume detection");
    let rule = upload["rule"].as_str().unwrap();
    assert!(
        rule.starts_with("upload ") && rule.ends_with("(rate-limit)"),
        "{rule}"
    );
    // Held to 1 MB/s (8 Mbit/s) for a while now; downloads are not limited.
    let limited = iperf3(&lab, 3, false);
    assert!(
        limited < 12.0 && first > 3.0 * limited,
        "before {first}, after {limited}"
    );
    assert!(iperf3(&lab, 2, true) > 2.0 * limited);
    assert!(lab.stop_node());
}
