//! Datagrams into a relay's routing table, from two clients and an exit, in any order and at
//! any pace. Inputs can start from a real initiation (so the mac1 match and the sessions
//! behind it are reached) with the input's bytes xored in. Whatever arrives, the relay sends
//! towards exits only to the known exit, and towards clients never to the exit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vpn::device::{Device, Outbox};
use nx1_vpn::keys::PrivateKey;
use nx1_vpn::peer::PeerConfig;
use nx1_vpn::relay::{Direction, Exit, RelayLimits, RelayTable};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Capture(Vec<Vec<u8>>);
impl Outbox for Capture {
    fn to_network(&mut self, _: SocketAddr, d: &[u8]) {
        self.0.push(d.to_vec());
    }
    fn to_tunnel(&mut self, _: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    let exit_key = PrivateKey::from_bytes([7; 32]);
    let exit: SocketAddr = "203.0.113.1:51820".parse().unwrap();
    let clients: [SocketAddr; 2] =
        ["198.51.100.1:40000".parse().unwrap(), "[2001:db8::1]:1".parse().unwrap()];
    let client = Device::new(&PrivateKey::from_bytes([9; 32]));
    client
        .upsert_peer(PeerConfig {
            public_key: exit_key.public_key(),
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
            endpoint: Some(exit),
            persistent_keepalive: None,
            preshared_key: None,
        })
        .unwrap();
    let mut packet = vec![0u8; 40];
    packet[0] = 0x45;
    packet[3] = 40;
    let mut initiation = Capture::default();
    client.send_packet(&packet, &mut vec![0u8; 70_000], &mut initiation);
    let initiation = initiation.0.pop().unwrap_or_default();

    let start = Instant::now();
    let mut table = RelayTable::new(
        RelayLimits {
            max_sessions: 4,
            bytes_per_second: 10_000,
        },
        start,
    );
    table.set_exits(&[Exit {
        public_key: exit_key.public_key(),
        addr: exit,
    }]);
    let mut now = start;
    let mut rest = data;
    while let [head, len, tail @ ..] = rest {
        let (body, next) = tail.split_at((*len as usize).min(tail.len()));
        rest = next;
        let from = match head & 3 {
            0 => clients[0],
            1 => clients[1],
            _ => exit,
        };
        let datagram = if head & 4 != 0 {
            let mut m = initiation.clone();
            for (i, b) in body.iter().enumerate() {
                if let Some(x) = m.get_mut(i) {
                    *x ^= b;
                }
            }
            m
        } else {
            body.to_vec()
        };
        now += Duration::from_millis(u64::from(head >> 3) * 500);
        match table.route(from, &datagram, now) {
            Ok((dst, Direction::ToExit)) => assert_eq!(dst, exit),
            Ok((dst, Direction::ToClient)) => assert!(clients.contains(&dst)),
            Err(_) => {}
        }
        if head & 0x80 != 0 {
            table.expire(now);
        }
        assert!(table.sessions() <= 4);
    }
});
