//! Guard in the exit's packet path: an nmap scan from a wireguard-go client through the
//! tunnel is reported within seconds and quarantines the peer; ordinary traffic is not.

use nx1_tests::lab::{ExitLab, WEB_V4};
use nx1_tests::{eventually, set_config, text};
use std::time::Duration;

fn scan_findings(lab: &ExitLab) -> Vec<serde_json::Value> {
    let out = lab.nx1(&["guard", "findings", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter()
        .filter(|f| f["list"] == "port scan detection")
        .collect()
}

#[test]
fn an_nmap_scan_is_reported_and_quarantines_the_peer_while_browsing_is_not() {
    let mut lab = ExitLab::new();
    set_config(&lab.config, "guard", "on_scan", "\"quarantine\"");
    set_config(&lab.config, "guard", "quarantine_secs", "120");
    lab.start_node();
    lab.start_web_server("page\n");
    let config = lab.add_peer("laptop");
    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(20));

    // Browsing-like traffic: many answered connections, no finding.
    for _ in 0..30 {
        let out = lab.in_cli(&format!(
            "curl -sS --max-time 5 http://{WEB_V4}:8080/hello.txt"
        ));
        assert_eq!(text(&out.stdout), "page\n", "{}", text(&out.stderr));
    }
    std::thread::sleep(Duration::from_secs(1));
    let out = lab.nx1(&["guard", "findings", "--json"]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all.is_empty(), "browsing raised {all:#?}");

    // A SYN flood (hping3) is held to the peer's SYN rate and reported, not a scan.
    let flood = lab.in_cli(&format!(
        "timeout 3 hping3 --flood -S -p 80 {WEB_V4} >/dev/null 2>&1; true"
    ));
    assert!(flood.status.success());
    let floods = eventually("a flood finding", Duration::from_secs(5), || {
        let out = lab.nx1(&["guard", "findings", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let f: Vec<_> = all
            .into_iter()
            .filter(|f| f["list"] == "flood detection")
            .collect();
        (!f.is_empty()).then_some(f)
    });
    assert!(
        floods[0]["rule"].as_str().unwrap().starts_with("SYN flood"),
        "{}",
        floods[0]
    );
    let drops = &lab.status().unwrap()["vpn"]["drops"];
    assert!(drops["guard"].as_u64().unwrap() > 1000, "{drops}");
    assert!(
        scan_findings(&lab).is_empty(),
        "one port on one host is no scan"
    );
    assert!(
        lab.ping(WEB_V4, 2),
        "a rate-limited flood does not cut the peer off"
    );

    // A TCP connect scan of 200 ports: closed ports answer with RST.
    let nmap = lab.in_cli(&format!(
        "nmap -sT -Pn -n -p 1-200 --max-retries 0 {WEB_V4}"
    ));
    assert!(nmap.status.success(), "{}", text(&nmap.stderr));
    let findings = eventually("a scan finding", Duration::from_secs(5), || {
        let f = scan_findings(&lab);
        (!f.is_empty()).then_some(f)
    });
    let rule = findings[0]["rule"].as_str().unwrap();
    assert!(
        rule.starts_with("vertical scan") && rule.contains(WEB_V4),
        "{rule}"
    );
    assert_eq!(findings[0]["peer"], "laptop");

    // Quarantined: its traffic goes nowhere now.
    assert!(!lab.ping(WEB_V4, 2));
    assert_eq!(lab.status().unwrap()["guard"]["quarantined_peers"], 1);
    assert!(lab.stop_node());
}
