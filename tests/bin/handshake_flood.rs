//! `nx1-handshake-flood TARGET SERVER_PUBLIC_KEY SECONDS PER_SECOND`: sends WireGuard
//! handshake initiations with a valid mac1 (so they pass the cheap check and cost the target
//! work) from throw-away identities, PER_SECOND of them (0: as fast as one socket can), for
//! SECONDS. A load tool for the tests'
//! own namespaces only; it prints how many it sent.

use base64::Engine as _;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: nx1-handshake-flood TARGET SERVER_PUBLIC_KEY SECONDS PER_SECOND");
        std::process::exit(2);
    }
    let target: std::net::SocketAddr = args[1].parse().expect("TARGET is ip:port");
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&args[2])
        .expect("base64 key")
        .try_into()
        .expect("32-byte key");
    let seconds: u64 = args[3].parse().expect("SECONDS");
    let per_second: u64 = args[4].parse().expect("PER_SECOND");
    let server = PublicKey::from(key);

    // A few distinct initiations, replayed round-robin.
    let mut initiations = Vec::new();
    let mut buf = [0u8; 256];
    for i in 0..16u32 {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&i.to_le_bytes());
        secret[31] = 0x5a;
        let mut tunn = Tunn::new(StaticSecret::from(secret), server, None, None, i, None);
        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut buf, true) {
            initiations.push(p.to_vec());
        }
    }
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .expect("bind");
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut sent = 0u64;
    while Instant::now() < end {
        for p in &initiations {
            if socket.send_to(p, target).is_ok() {
                sent += 1;
            }
        }
        if per_second > 0 {
            // Pace: sleep until the schedule has caught up with what was sent.
            let due = Duration::from_secs_f64(sent as f64 / per_second as f64);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    println!("{sent}");
}
