//! Arbitrary decrypted packets (a peer chooses every byte) through the flow table and the
//! per-peer features, both ways: never a panic, and the table never holds more than its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nx1_guard::flows::{self, FlowTable};
use nx1_guard::traffic::{PeerTraffic, Thresholds};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let mut table = FlowTable::new(8);
    let mut traffic = PeerTraffic::default();
    let thresholds = Thresholds::default();
    let start = Instant::now();
    // The input is a run of packets, each prefixed by a length byte.
    let mut rest = data;
    let mut i = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let (packet, tail) = tail.split_at((len as usize).min(tail.len()));
        rest = tail;
        i += 1;
        let now = start + Duration::from_millis(i * 97);
        if let Some(p) = flows::parse(packet) {
            if table.outbound((i % 3) as u32, &p, now) == flows::Seen::New {
                traffic.new_flow(&p.key, now, &thresholds);
            }
            table.inbound(&p, now);
            traffic.outbound(p.len);
        }
        if i % 4 == 0 {
            traffic.tick(now, &thresholds);
            table.expire(now);
        }
        assert!(table.len() <= table.capacity());
    }
});
