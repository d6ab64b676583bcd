//! Guard's packet path allocates nothing per packet: after a warm-up pass, the same traffic
//! through the flood limiter, the flow table, the per-peer features and the attempt tracker
//! makes no heap allocation at all. Checked with a counting global allocator.

use nx1_guard::flood::{self, FloodLimiter};
use nx1_guard::flows::{self, FlowTable, Seen};
use nx1_guard::scan::Attempts;
use nx1_guard::traffic::{PeerTraffic, Thresholds};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn packet(protocol: u8, dst: [u8; 4], sport: u16, dport: u16, flags: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(40)];
    p[0] = 0x45;
    p[9] = protocol;
    p[12..16].copy_from_slice(&[10, 87, 0, 2]);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[33] = flags;
    p
}

#[test]
fn the_packet_path_makes_no_allocation() {
    // Traffic of every kind: new connections (SYN), data of known flows both ways, UDP,
    // pings, answers (SYN-ACK, RST), and more new flows than the table can hold.
    let mut out = Vec::new();
    let mut back = Vec::new();
    for i in 0..3000u16 {
        let host = [198, 18, 2, (i % 50) as u8];
        out.push(packet(6, host, 40000 + i, 80 + i % 7, 0x02, 40));
        out.push(packet(6, host, 40000 + i, 80 + i % 7, 0x18, 1400));
        out.push(packet(17, host, 50000 + i, 443, 0, 1200));
        out.push(packet(1, host, 0, 0, 0, 84));
        let mut answer = packet(6, [10, 87, 0, 2], 80 + i % 7, 40000 + i, 0x12, 40);
        answer[12..16].copy_from_slice(&host);
        back.push(answer.clone());
        answer[33] = 0x14;
        back.push(answer);
    }
    let mut flood = FloodLimiter::default();
    let mut table = FlowTable::new(4096);
    let mut traffic = PeerTraffic::default();
    let mut attempts = Attempts::default();
    let thresholds = Thresholds::default();
    let start = Instant::now();
    let mut pass = |round: u64| {
        let now = start + Duration::from_secs(round * 1000);
        for p in &out {
            if let Some(kind) = flood::kind(p) {
                flood.allow(kind, now);
            }
            let parsed = flows::parse(p).expect("IP");
            if table.outbound(1, &parsed, now) == Seen::New {
                traffic.new_flow(&parsed.key, now, &thresholds);
            }
            attempts.outbound(p, now);
            traffic.outbound(parsed.len);
        }
        for p in &back {
            let parsed = flows::parse(p).expect("IP");
            table.inbound(&parsed, now);
            traffic.inbound(parsed.len);
            attempts.inbound(p, now);
        }
        // Between rounds everything expires, so the next round creates its flows anew.
        let later = now + Duration::from_secs(500);
        table.expire(later);
        attempts.expire(later);
        table.counters.untracked
    };
    assert!(pass(0) > 0, "the table filled up");
    COUNTING.store(true, Relaxed);
    pass(1);
    pass(2);
    COUNTING.store(false, Relaxed);
    assert_eq!(ALLOCATIONS.load(Relaxed), 0);
}
