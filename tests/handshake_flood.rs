//! Under a flood of handshake initiations from a third namespace, a real client still
//! connects: per-source rate limiting and cookie replies keep the node answering.

use nx1_tests::lab::{ExitLab, WEB_V4};
use nx1_tests::netns::{Netns, link};
use nx1_tests::{nx1_bin, text};
use std::time::Duration;

#[test]
fn a_handshake_flood_does_not_lock_out_a_real_client() {
    let mut lab = ExitLab::new();
    let atk = Netns::new("atk", &lab.tag);
    link(
        &atk,
        "a0",
        &["198.18.3.2/24"],
        &lab.exit,
        "e2",
        &["198.18.3.1/24"],
    );
    lab.start_node();
    let server_key = lab.status().unwrap()["wireguard_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let flood_bin = nx1_bin().with_file_name("nx1-handshake-flood");
    let flood = atk
        .command(flood_bin.to_str().unwrap())
        // 50,000 initiations a second: 500 times what the node takes before it demands cookies.
        .args(["198.18.3.1:51820", &server_key, "20", "50000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nx1-handshake-flood (built by `cargo build --workspace --bins`)");
    std::thread::sleep(Duration::from_secs(2));

    // The real client comes in while the flood is on.
    let config = lab.add_peer("laptop");
    lab.connect_client(&config);
    lab.ping_eventually(WEB_V4, Duration::from_secs(15));

    let out = flood.wait_with_output().unwrap();
    let sent: u64 = text(&out.stdout).trim().parse().unwrap();
    let drops = lab.status().unwrap()["vpn"]["drops"].clone();
    let limited = drops["rate_limited"].as_u64().unwrap() + drops["cookie_reply"].as_u64().unwrap();
    assert!(
        sent > 10_000,
        "the flood was too weak to mean anything: {sent}"
    );
    assert!(limited > 1_000, "{drops}");
    assert!(lab.ping(WEB_V4, 2));
    assert!(lab.stop_node());
}
