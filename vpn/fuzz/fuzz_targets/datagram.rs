//! Datagrams from the network into a device. Each input runs a real handshake between a
//! client and the device under test, then feeds the device either the input itself or one of
//! the real messages (initiation, response, data, keepalive) with the input's bytes flipped,
//! truncated or extended into it — so the fuzzer reaches the paths behind mac1, the
//! Diffie-Hellman and the session lookup, not only the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vpn::device::{Device, Outbox};
use nx1_vpn::keys::PrivateKey;
use nx1_vpn::peer::PeerConfig;
use std::net::SocketAddr;

#[derive(Default)]
struct Capture(Vec<Vec<u8>>);
impl Outbox for Capture {
    fn to_network(&mut self, _: SocketAddr, d: &[u8]) {
        self.0.push(d.to_vec());
    }
    fn to_tunnel(&mut self, _: &[u8]) {}
}

fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[3] = 40;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 87, 0, 2]);
    p[16..20].copy_from_slice(&[198, 18, 2, 2]);
    p
}

fuzz_target!(|data: &[u8]| {
    let server_key = PrivateKey::from_bytes([7; 32]);
    let client_key = PrivateKey::from_bytes([9; 32]);
    let server_addr: SocketAddr = "198.18.1.1:51820".parse().unwrap();
    let client_addr: SocketAddr = "198.18.1.2:40000".parse().unwrap();
    let server = Device::new(&server_key);
    let client = Device::new(&client_key);
    let peer = |key: &PrivateKey, ips: &str, endpoint| PeerConfig {
        public_key: key.public_key(),
        allowed_ips: vec![ips.parse().unwrap()],
        endpoint,
        persistent_keepalive: None,
        preshared_key: None,
    };
    server.upsert_peer(peer(&client_key, "10.87.0.2/32", None)).unwrap();
    client
        .upsert_peer(peer(&server_key, "0.0.0.0/0", Some(server_addr)))
        .unwrap();

    let mut buf = vec![0u8; 70_000];
    let mut messages = Capture::default();
    client.send_packet(&packet(), &mut buf, &mut messages);
    let mut replies = Capture::default();
    if let Some(init) = messages.0.first() {
        server.receive_datagram(client_addr, init, &mut buf, &mut replies);
    }
    if let Some(response) = replies.0.first() {
        client.receive_datagram(server_addr, response, &mut buf, &mut messages);
    }
    client.send_packet(&packet(), &mut buf, &mut messages);
    messages.0.extend(replies.0);

    let Some((&mode, rest)) = data.split_first() else { return };
    let datagram = match mode as usize % (messages.0.len() + 1) {
        0 => rest.to_vec(),
        i => {
            let mut m = messages.0[i - 1].clone();
            // Pairs of (position, xor); a trailing odd byte truncates or extends.
            for pair in rest.chunks(2) {
                match pair {
                    [pos, x] if !m.is_empty() => {
                        let at = *pos as usize % m.len();
                        m[at] ^= *x;
                    }
                    [n] if *n < 128 => m.truncate(*n as usize),
                    [n] => m.extend(std::iter::repeat_n(*n, *n as usize)),
                    _ => {}
                }
            }
            m
        }
    };
    let from = if mode & 0x80 != 0 { "198.18.9.9:9".parse().unwrap() } else { client_addr };
    server.receive_datagram(from, &datagram, &mut buf, &mut Capture::default());
    client.receive_datagram(server_addr, &datagram, &mut buf, &mut Capture::default());
});
