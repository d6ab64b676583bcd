//! What Guard costs per packet and per DNS lookup: the packet-path checks `FlowGuard` runs on
//! every decrypted packet (flood class and bucket, flow table, per-peer traffic features,
//! connection-attempt tracking), each peer's detectors per tick, a verdict from a
//! one-million-name block list, and the learned domain models.
//!
//! `cargo bench -p nx1-guard` (numbers in docs/benchmarks.md).

use criterion::{Criterion, criterion_group, criterion_main};
use nx1_guard::blocklist::{Blocklist, List};
use nx1_guard::flood::{self, FloodLimiter};
use nx1_guard::flows::{self, FlowTable, Seen};
use nx1_guard::model::{Kind, builtin};
use nx1_guard::scan::Attempts;
use nx1_guard::traffic::{PeerTraffic, Thresholds};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Everything `FlowGuard` keeps for one peer, and the shared flow table.
struct Path {
    flood: FloodLimiter,
    attempts: Attempts,
    traffic: PeerTraffic,
    flows: FlowTable,
    thresholds: Thresholds,
}

impl Path {
    fn new(capacity: usize) -> Self {
        Self {
            flood: FloodLimiter::default(),
            attempts: Attempts::default(),
            traffic: PeerTraffic::default(),
            flows: FlowTable::new(capacity),
            thresholds: Thresholds::default(),
        }
    }

    /// The checks of `FlowGuard::packet_from_peer`, without its lock and peer lookup.
    fn outbound(&mut self, p: &[u8], now: Instant) -> bool {
        if let Some(kind) = flood::kind(p)
            && !self.flood.allow(kind, now)
        {
            return false;
        }
        let Some(parsed) = flows::parse(p) else {
            return true;
        };
        if self.flows.outbound(1, &parsed, now) == Seen::New {
            black_box(self.traffic.new_flow(&parsed.key, now, &self.thresholds));
        }
        self.attempts.outbound(p, now);
        self.traffic.outbound(parsed.len);
        true
    }
}

fn tcp_packet(flags: u8, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x45;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 87, 0, 2]);
    p[16..20].copy_from_slice(&[198, 18, 2, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p[33] = flags;
    p
}

fn packet_path(c: &mut Criterion) {
    let data = tcp_packet(0x18, 1360);
    let now = Instant::now();
    let mut path = Path::new(65_536);
    c.bench_function("guard per packet: TCP data segment of a known flow", |b| {
        b.iter(|| black_box(path.outbound(black_box(&data), now)))
    });
    c.bench_function("guard per packet: TCP SYN opening a new flow", |b| {
        b.iter_custom(|n| {
            // A fresh table with room for every new flow of this batch, SYNs to distinct
            // ports on distinct hosts; the bucket is refilled by advancing time.
            let mut path = Path::new(n as usize);
            let mut syn = tcp_packet(0x02, 0);
            let start = Instant::now();
            for i in 0..n {
                syn[16..20].copy_from_slice(&(0xc612_0000u32 | (i as u32 >> 16)).to_be_bytes());
                syn[22..24].copy_from_slice(&(i as u16).to_be_bytes());
                let at = now + Duration::from_millis(i);
                black_box(path.outbound(black_box(&syn), at));
            }
            start.elapsed()
        })
    });
    let mut path = Path::new(65_536);
    let mut at = now;
    c.bench_function("guard per peer per tick: detectors", |b| {
        b.iter(|| {
            for _ in 0..100 {
                path.traffic.outbound(1400);
            }
            at += Duration::from_millis(250);
            black_box(path.traffic.tick(at, &path.thresholds))
        })
    });
}

fn domain_models(c: &mut Criterion) {
    let dga = builtin(Kind::Dga).expect("model");
    let phishing = builtin(Kind::Phishing).expect("model");
    for (what, name) in [
        ("an ordinary name", "www.gardening-club-leipzig.de"),
        ("a generated name", "yaochykossjcyjla.su"),
        ("a look-alike", "myetherwallet-claim.xyz"),
    ] {
        c.bench_function(&format!("guard DGA model, {what}"), |b| {
            b.iter(|| black_box(dga.score(black_box(name))))
        });
        c.bench_function(&format!("guard phishing model, {what}"), |b| {
            b.iter(|| black_box(phishing.score(black_box(name))))
        });
    }
}

fn dns_verdict(c: &mut Criterion) {
    let text: String = (0..1_000_000)
        .map(|i| format!("host{i}.ads{}.example\n", i % 997))
        .collect();
    let list = Blocklist::compile(&[List::parse("big", &text)]).expect("compiles");
    eprintln!("1M-name index: {} bytes", list.index_bytes());
    c.bench_function("guard DNS verdict, 1M-name list, listed name", |b| {
        b.iter(|| black_box(list.check(black_box("host123456.ads825.example"))))
    });
    c.bench_function("guard DNS verdict, 1M-name list, unlisted name", |b| {
        b.iter(|| black_box(list.check(black_box("www.some-site.example.org"))))
    });
}

criterion_group!(benches, packet_path, domain_models, dns_verdict);
criterion_main!(benches);
