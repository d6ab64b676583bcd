//! What Guard costs per packet and per DNS lookup: the packet-path checks `FlowGuard` runs on
//! every decrypted packet (flood class and bucket, connection-attempt tracking), and a verdict
//! from a one-million-name block list.
//!
//! `cargo bench -p nx1-guard` (numbers in docs/benchmarks.md).

use criterion::{Criterion, criterion_group, criterion_main};
use nx1_guard::blocklist::{Blocklist, List};
use nx1_guard::flood::{self, FloodLimiter};
use nx1_guard::scan::Attempts;
use std::hint::black_box;
use std::time::Instant;

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
    let syn = tcp_packet(0x02, 0);
    let mut flood = FloodLimiter::default();
    let mut attempts = Attempts::default();
    let now = Instant::now();
    c.bench_function("guard per packet: TCP data segment", |b| {
        b.iter(|| {
            let p = black_box(&data);
            if let Some(kind) = flood::kind(p) {
                black_box(flood.allow(kind, now));
            }
            attempts.outbound(p, now);
        })
    });
    c.bench_function("guard per packet: TCP SYN", |b| {
        b.iter(|| {
            let p = black_box(&syn);
            if let Some(kind) = flood::kind(p) {
                black_box(flood.allow(kind, now));
            }
            attempts.outbound(p, now);
        })
    });
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

criterion_group!(benches, packet_path, dns_verdict);
criterion_main!(benches);
