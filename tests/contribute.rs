//! The contribution cap end to end: `nx1 contribute --bandwidth N` holds the traffic through
//! an exit to N Mbit/s under an iperf3 load from a wireguard-go client (both ways), at once
//! and without a restart, and lifting it lets the traffic through again.

use nx1_tests::lab::{Background, ExitLab, WEB_V4};
use nx1_tests::{eventually, text};
use std::process::Stdio;
use std::time::Duration;

/// Receiver-side Mbit/s of a 5-second iperf3 run from `cli` (the first second left out, so
/// the initial burst does not count).
fn iperf(lab: &ExitLab, reverse: bool) -> f64 {
    let out = lab.in_cli(&format!(
        "iperf3 -c {WEB_V4} -t 5 -O 1 -J --connect-timeout 3000 {}",
        if reverse { "-R" } else { "" }
    ));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("iperf3: {}", text(&out.stderr)));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{report}"))
        / 1e6
}

#[test]
fn the_bandwidth_cap_holds_through_the_exit_and_lifts_at_once() {
    let mut lab = ExitLab::new();
    lab.start_node();
    let config = lab.add_peer("bulk");
    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));
    let _server = Background(
        lab.web
            .command("iperf3")
            .arg("-s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("iperf3 -s", Duration::from_secs(10), || {
        lab.web
            .sh("exec 3<>/dev/tcp/127.0.0.1/5201")
            .status
            .success()
            .then_some(())
    });

    let out = lab.nx1(&["contribute", "--bandwidth", "40"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let up = iperf(&lab, false);
    let down = iperf(&lab, true);
    eprintln!("capped at 40 Mbit/s: {up:.1} up, {down:.1} down");
    // The cap holds: never more than 10% over it. It counts IP bytes, and TCP over a policed
    // rate does not fill it completely (iperf3 counts payload only): well over half of it
    // still gets through.
    for (way, rate) in [("up", up), ("down", down)] {
        assert!(
            (28.0..=44.0).contains(&rate),
            "{way}: {rate:.1} Mbit/s under a 40 Mbit/s cap"
        );
    }
    let out = lab.nx1(&["contribute", "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["bandwidth_mbit"], 40, "{c}");
    assert!(c["over_cap_drops"].as_u64().unwrap() > 0, "{c}");
    assert!(c["exited_bytes"].as_u64().unwrap() > 20_000_000, "{c}");

    // Lifted: faster than the cap at once.
    let out = lab.nx1(&["contribute", "--bandwidth", "0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let free = iperf(&lab, false);
    eprintln!("uncapped: {free:.1} up");
    assert!(free > 60.0, "{free:.1} Mbit/s with no cap");

    // The cap is kept across a restart.
    let out = lab.nx1(&["contribute", "--bandwidth", "25"]);
    assert!(out.status.success());
    assert!(lab.stop_node());
    lab.start_node();
    let out = lab.nx1(&["contribute", "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["bandwidth_mbit"], 25, "{c}");
    // Relay duty is not set up here: asking for it is a clear error.
    let out = lab.nx1(&["contribute", "on"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("relay duty is not set up"),
        "{}",
        text(&out.stderr)
    );
}
