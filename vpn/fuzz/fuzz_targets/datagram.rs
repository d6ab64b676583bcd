//! Arbitrary datagrams from the network into a device with one peer: every message type's
//! parser, the mac checks, the rate limiters and boringtun's decapsulation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_vpn::device::{Device, Outbox};
use nx1_vpn::keys::PrivateKey;
use nx1_vpn::peer::PeerConfig;
use std::net::SocketAddr;
use std::sync::OnceLock;

struct Discard;
impl Outbox for Discard {
    fn to_network(&mut self, _: SocketAddr, _: &[u8]) {}
    fn to_tunnel(&mut self, _: &[u8]) {}
}

fn device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let device = Device::new(&PrivateKey::from_bytes([7; 32]));
        device
            .upsert_peer(PeerConfig {
                public_key: PrivateKey::from_bytes([9; 32]).public_key(),
                allowed_ips: vec!["10.87.0.2/32".parse().unwrap()],
                endpoint: None,
                persistent_keepalive: None,
                preshared_key: None,
            })
            .unwrap();
        device
    })
}

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; data.len().max(148) + 64];
    let src: SocketAddr = "198.18.0.9:4000".parse().unwrap();
    device().receive_datagram(src, data, &mut buf, &mut Discard);
});
