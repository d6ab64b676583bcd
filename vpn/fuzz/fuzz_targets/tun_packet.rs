//! Arbitrary packets from the TUN device: header parsing and allowed-IPs lookup.
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
                allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                endpoint: Some("198.18.0.1:51820".parse().unwrap()),
                persistent_keepalive: None,
                preshared_key: None,
            })
            .unwrap();
        device
    })
}

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; data.len() + 148];
    device().send_packet(data, &mut buf, &mut Discard);
});
