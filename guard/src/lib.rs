//! Guard: the detection logic of NX1's exit — block lists, learned domain scoring and DNS
//! tunnelling detection for its DNS server; a flow table, flood limits, scan detection and
//! per-peer traffic detectors (bursts, beaconing, upload volume, an online anomaly score) for
//! its packet path. Pure code over plain data: no sockets, no files, no clocks it does not
//! take as input; the `nx1` binary feeds it.
//!
//! ```
//! use nx1_guard::blocklist::{Blocklist, List, Verdict};
//!
//! let ads = List::parse("ads", "||tracker.example^\n@@||ok.tracker.example^\n");
//! let list = Blocklist::compile(&[ads]).unwrap();
//! assert!(matches!(list.check("x.tracker.example"), Verdict::Blocked { .. }));
//! assert!(matches!(list.check("ok.tracker.example"), Verdict::Allowed { .. }));
//! assert_eq!(list.check("example.org"), Verdict::Unlisted);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blocklist;

/// FNV-1a, 64 bits: a hash that is the same on every platform and in every release, for what
/// is stored (model files, cache file names) or must not change between runs.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
pub mod flood;
pub mod flows;
pub mod model;
pub mod scan;
pub mod traffic;
pub mod tunnelling;
