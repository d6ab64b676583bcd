//! Two devices talking through byte vectors: handshake, data both ways, roaming, removal,
//! and hostile datagrams — the whole protocol path without sockets.

use crate::device::{Device, Outbox};
use crate::keys::PrivateKey;
use crate::peer::PeerConfig;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Default)]
struct Capture {
    network: Vec<(SocketAddr, Vec<u8>)>,
    tunnel: Vec<Vec<u8>>,
}

impl Outbox for Capture {
    fn to_network(&mut self, dst: SocketAddr, datagram: &[u8]) {
        self.network.push((dst, datagram.to_vec()));
    }
    fn to_tunnel(&mut self, packet: &[u8]) {
        self.tunnel.push(packet.to_vec());
    }
}

/// A minimal IPv4/UDP packet from `src` to `dst` (checksums are not checked on this path).
fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// A handshake initiation from a device that knows the server's public key (so mac1 is
/// valid) but is no peer of it.
fn stranger_initiation(p: &Pair) -> Vec<u8> {
    let stranger = Device::new(&PrivateKey::generate());
    stranger
        .upsert_peer(PeerConfig {
            public_key: p.server.public_key(),
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
            endpoint: Some(p.server_addr),
            persistent_keepalive: None,
            preshared_key: None,
        })
        .unwrap();
    let mut out = Capture::default();
    let mut buf = vec![0u8; 2048];
    stranger.send_packet(
        &ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2], b"x"),
        &mut buf,
        &mut out,
    );
    out.network.remove(0).1
}

struct Pair {
    server: Device,
    client: Device,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
}

fn pair() -> Pair {
    let (sk, ck) = (PrivateKey::generate(), PrivateKey::generate());
    let server = Device::new(&sk);
    let client = Device::new(&ck);
    let server_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let client_addr: SocketAddr = "198.18.1.2:40000".parse().unwrap();
    server
        .upsert_peer(PeerConfig {
            public_key: ck.public_key(),
            allowed_ips: vec!["10.87.0.2/32".parse().unwrap()],
            endpoint: None,
            persistent_keepalive: None,
            preshared_key: None,
        })
        .unwrap();
    client
        .upsert_peer(PeerConfig {
            public_key: sk.public_key(),
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
            endpoint: Some(server_addr),
            persistent_keepalive: None,
            preshared_key: None,
        })
        .unwrap();
    Pair {
        server,
        client,
        server_addr,
        client_addr,
    }
}

/// Client sends an inner packet; everything is shuttled until quiet. Returns what reached
/// the server's TUN.
fn exchange(p: &Pair, inner: &[u8], client_src: SocketAddr) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let mut c_out = Capture::default();
    p.client.send_packet(inner, &mut buf, &mut c_out);
    let mut delivered = Vec::new();
    for _ in 0..10 {
        let mut s_out = Capture::default();
        for (dst, d) in c_out.network.drain(..) {
            assert_eq!(dst, p.server_addr);
            p.server
                .receive_datagram(client_src, &d, &mut buf, &mut s_out);
        }
        delivered.append(&mut s_out.tunnel);
        if s_out.network.is_empty() {
            break;
        }
        for (_, d) in s_out.network {
            p.client
                .receive_datagram(p.server_addr, &d, &mut buf, &mut c_out);
        }
    }
    delivered
}

#[test]
fn a_handshake_then_data_reaches_the_tunnel_both_ways() {
    let p = pair();
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"hello");
    let got = exchange(&p, &inner, p.client_addr);
    assert_eq!(
        got,
        vec![inner.clone()],
        "the queued first packet arrives after the handshake"
    );

    // The server answers through the session; the client's TUN gets it.
    let reply = ipv4_packet([198, 18, 2, 2], [10, 87, 0, 2], b"world");
    let mut buf = vec![0u8; 2048];
    let mut s_out = Capture::default();
    p.server.send_packet(&reply, &mut buf, &mut s_out);
    assert_eq!(s_out.network.len(), 1);
    assert_eq!(s_out.network[0].0, p.client_addr);
    let mut c_out = Capture::default();
    p.client
        .receive_datagram(p.server_addr, &s_out.network[0].1, &mut buf, &mut c_out);
    assert_eq!(c_out.tunnel, vec![reply]);

    let stats = p.server.peer(&p.client.public_key()).unwrap();
    assert!(stats.last_handshake.is_some());
    assert!(stats.rx_bytes > 0 && stats.tx_bytes > 0);
}

#[test]
fn the_endpoint_follows_the_last_authenticated_datagram() {
    let p = pair();
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a");
    exchange(&p, &inner, p.client_addr);
    let roamed: SocketAddr = "198.18.9.9:50000".parse().unwrap();
    assert_eq!(exchange(&p, &inner, roamed).len(), 1);
    let stats = p.server.peer(&p.client.public_key()).unwrap();
    assert_eq!(stats.endpoint, Some(roamed));
}

#[test]
fn replayed_garbage_and_truncated_datagrams_are_counted_not_delivered() {
    let p = pair();
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"x");
    exchange(&p, &inner, p.client_addr);
    let mut buf = vec![0u8; 2048];
    let mut c_out = Capture::default();
    p.client.send_packet(&inner, &mut buf, &mut c_out);
    let data = c_out.network[0].1.clone();
    let mut s_out = Capture::default();
    p.server
        .receive_datagram(p.client_addr, &data, &mut buf, &mut s_out);
    assert_eq!(s_out.tunnel.len(), 1);
    // The same datagram again is a replay.
    p.server
        .receive_datagram(p.client_addr, &data, &mut buf, &mut s_out);
    assert_eq!(s_out.tunnel.len(), 1);
    assert_eq!(p.server.counters.rejected.load(Relaxed), 1);

    for junk in [
        &b""[..],
        b"\x01",
        &data[..20],
        &[4u8, 0, 0, 0, 9, 9, 9, 9][..],
        &[0xffu8; 200][..],
    ] {
        p.server
            .receive_datagram(p.client_addr, junk, &mut buf, &mut s_out);
    }
    let mut flipped = data.clone();
    *flipped.last_mut().unwrap() ^= 1;
    p.server
        .receive_datagram(p.client_addr, &flipped, &mut buf, &mut s_out);
    assert_eq!(s_out.tunnel.len(), 1);
    assert!(p.server.counters.malformed.load(Relaxed) >= 4);
    assert!(p.server.counters.rejected.load(Relaxed) >= 2);
}

#[test]
fn a_spoofed_inner_source_is_dropped() {
    let p = pair();
    let spoofed = ipv4_packet([10, 87, 0, 99], [198, 18, 2, 2], b"spoof");
    // The client routes everything to the server; the server only accepts 10.87.0.2 from it.
    assert!(exchange(&p, &spoofed, p.client_addr).is_empty());
    assert_eq!(p.server.counters.bad_source.load(Relaxed), 1);
}

#[test]
fn a_removed_peer_is_refused_at_once() {
    let p = pair();
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a");
    assert_eq!(exchange(&p, &inner, p.client_addr).len(), 1);
    assert!(p.server.remove_peer(&p.client.public_key()));
    assert!(exchange(&p, &inner, p.client_addr).is_empty());
    assert!(p.server.counters.unknown_peer.load(Relaxed) >= 1);
    assert!(p.server.peer_stats().is_empty());
}

#[test]
fn an_initiation_for_another_key_fails_mac1() {
    let p = pair();
    let other = Device::new(&PrivateKey::generate());
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a");
    let mut buf = vec![0u8; 2048];
    let mut c_out = Capture::default();
    p.client.send_packet(&inner, &mut buf, &mut c_out);
    let mut o_out = Capture::default();
    other.receive_datagram(p.client_addr, &c_out.network[0].1, &mut buf, &mut o_out);
    assert!(o_out.network.is_empty());
    assert_eq!(other.counters.bad_mac.load(Relaxed), 1);
}

#[test]
fn a_flood_from_one_address_is_limited_per_source() {
    let p = pair();
    let mut buf = vec![0u8; 2048];
    let init = stranger_initiation(&p);
    let inner = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a");
    let flooder: SocketAddr = "198.18.5.5:1000".parse().unwrap();
    let mut s_out = Capture::default();
    for _ in 0..50 {
        p.server
            .receive_datagram(flooder, &init, &mut buf, &mut s_out);
    }
    assert_eq!(p.server.counters.rate_limited.load(Relaxed), 45);
    assert!(s_out.network.is_empty() && s_out.tunnel.is_empty());
    // The real client, from its own address, still gets through.
    assert_eq!(exchange(&p, &inner, p.client_addr).len(), 1);
}

#[test]
fn a_relay_is_not_held_to_the_per_source_limit() {
    let p = pair();
    let mut buf = vec![0u8; 2048];
    let init = stranger_initiation(&p);
    let relay: SocketAddr = "198.18.5.6:51821".parse().unwrap();
    p.server.set_relays(["198.18.5.6".parse().unwrap()]);
    for _ in 0..50 {
        p.server
            .receive_datagram(relay, &init, &mut buf, &mut Capture::default());
    }
    assert_eq!(p.server.counters.rate_limited.load(Relaxed), 0);
    // No longer a relay: limited like anyone.
    p.server.set_relays([]);
    for _ in 0..50 {
        p.server
            .receive_datagram(relay, &init, &mut buf, &mut Capture::default());
    }
    assert!(p.server.counters.rate_limited.load(Relaxed) >= 45);
}

#[test]
fn a_cookie_reply_under_load_moves_no_endpoint() {
    let p = pair();
    let mut buf = vec![0u8; 2048];
    // Put the server under load with initiations (valid mac1) from many addresses.
    let init = stranger_initiation(&p);
    let mut s_out = Capture::default();
    for i in 0..300u32 {
        let src = SocketAddr::from(([198, 18, 100 + (i / 250) as u8, (i % 250) as u8 + 1], 1000));
        p.server.receive_datagram(src, &init, &mut buf, &mut s_out);
    }
    // The real client's initiation now gets a cookie reply instead of a response.
    let mut c_out = Capture::default();
    p.client.send_packet(
        &ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a"),
        &mut buf,
        &mut c_out,
    );
    let mut s_out = Capture::default();
    p.server
        .receive_datagram(p.client_addr, &c_out.network[0].1, &mut buf, &mut s_out);
    let (to, cookie) = s_out.network.pop().expect("a cookie reply");
    assert_eq!(to, p.client_addr);
    assert_eq!(cookie[0], 3, "message type 3: cookie reply");
    // Delivered from a spoofed address, it must not redirect the client's traffic.
    let spoofed: SocketAddr = "198.18.7.7:7777".parse().unwrap();
    p.client
        .receive_datagram(spoofed, &cookie, &mut buf, &mut Capture::default());
    let server = p.client.peer(&p.server.public_key()).unwrap();
    assert_eq!(server.endpoint, Some(p.server_addr));
    assert!(p.server.counters.cookie_replies.load(Relaxed) >= 1);
}

#[test]
fn the_default_route_moves_between_peers_at_once() {
    let device = Device::new(&PrivateKey::generate());
    let exit = |addr: &str, transit: &str| {
        let key = PrivateKey::generate().public_key();
        device
            .upsert_mesh_peer(PeerConfig {
                public_key: key,
                allowed_ips: vec![transit.parse().unwrap()],
                endpoint: Some(addr.parse().unwrap()),
                persistent_keepalive: None,
                preshared_key: None,
            })
            .unwrap();
        key
    };
    let a = exit("192.0.2.1:51820", "100.64.0.1/32");
    let b = exit("192.0.2.2:51820", "100.64.0.2/32");
    let mut buf = vec![0u8; 2048];
    let to_web = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"x");
    let sent_to = |device: &Device, buf: &mut Vec<u8>| {
        let mut out = Capture::default();
        device.send_packet(&to_web, buf, &mut out);
        out.network.first().map(|(dst, _)| dst.to_string())
    };
    // No default route yet: nowhere to send.
    assert_eq!(device.default_route(), None);
    assert_eq!(sent_to(&device, &mut buf), None);
    assert!(device.set_default_route(Some(&a)));
    assert_eq!(device.default_route(), Some(a));
    assert_eq!(
        sent_to(&device, &mut buf).as_deref(),
        Some("192.0.2.1:51820")
    );
    // Moving it takes effect with the next packet.
    assert!(device.set_default_route(Some(&b)));
    assert_eq!(device.default_route(), Some(b));
    assert_eq!(
        sent_to(&device, &mut buf).as_deref(),
        Some("192.0.2.2:51820")
    );
    // An unknown peer changes nothing; None clears it.
    assert!(!device.set_default_route(Some(&PrivateKey::generate().public_key())));
    assert_eq!(device.default_route(), Some(b));
    assert!(device.set_default_route(None));
    assert_eq!(sent_to(&device, &mut buf), None);
}

#[test]
fn a_cut_off_peer_reaches_only_the_receipt_address() {
    let p = pair();
    let to_web = ipv4_packet([10, 87, 0, 2], [198, 18, 2, 2], b"a");
    assert_eq!(exchange(&p, &to_web, p.client_addr).len(), 1);
    let client = p.client.public_key();
    p.server
        .set_receipt_address(Some("10.87.0.1:7873".parse().unwrap()));
    assert!(p.server.set_restricted(&client, true));
    assert!(p.server.is_restricted(&client));
    assert!(exchange(&p, &to_web, p.client_addr).is_empty());
    assert_eq!(p.server.counters.unpaid.load(Relaxed), 1);
    let mut receipt = ipv4_packet([10, 87, 0, 2], [10, 87, 0, 1], b"receipt");
    receipt[22..24].copy_from_slice(&7873u16.to_be_bytes());
    assert_eq!(exchange(&p, &receipt, p.client_addr).len(), 1);
    // Another port on the same address is not the receipt address.
    let mut other = receipt.clone();
    other[22..24].copy_from_slice(&53u16.to_be_bytes());
    assert!(exchange(&p, &other, p.client_addr).is_empty());
    // Nothing goes to it either, but the node's answers to its receipts.
    let mut out = Capture::default();
    let mut buf = vec![0u8; 2048];
    p.server.send_packet(
        &ipv4_packet([198, 18, 2, 2], [10, 87, 0, 2], b"b"),
        &mut buf,
        &mut out,
    );
    assert!(out.network.is_empty());
    let mut answer = ipv4_packet([10, 87, 0, 1], [10, 87, 0, 2], b"answer");
    answer[20..22].copy_from_slice(&7873u16.to_be_bytes());
    p.server.send_packet(&answer, &mut buf, &mut out);
    assert_eq!(out.network.len(), 1);
    // Paid up again: through.
    assert!(p.server.set_restricted(&client, false));
    assert_eq!(exchange(&p, &to_web, p.client_addr).len(), 1);
}
