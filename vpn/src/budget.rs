//! A bandwidth cap shared by the threads that move packets: GCRA (the generic cell rate
//! algorithm, as in ATM policing and the `governor` crate) over bytes, with the theoretical
//! arrival time in one atomic, so the hot path takes no lock. `governor` counts cells of a
//! fixed size against a quota it fixes at construction; a byte budget whose rate the owner
//! changes at run time is this small, so it is written here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How far ahead of its rate the traffic may run: a burst of this much time at the full
/// rate. TCP needs room to fill a policed rate: with 200 ms it reached 89% of the cap here,
/// with 500 ms 92–94%, with 1 s less again (larger overshoots, larger losses).
pub const BURST: Duration = Duration::from_millis(500);

/// A byte rate, shared by threads.
#[derive(Debug)]
pub struct ByteBudget {
    start: Instant,
    /// Bytes per second; 0: no cap.
    rate: AtomicU64,
    /// Nanoseconds after `start` at which the budget is used up to.
    tat: AtomicU64,
}

impl Default for ByteBudget {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            rate: AtomicU64::new(0),
            tat: AtomicU64::new(0),
        }
    }
}

impl ByteBudget {
    /// Sets the cap in bytes per second (0: none); it starts with a full burst.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Relaxed);
        self.tat.store(0, Relaxed);
    }

    /// The cap in bytes per second (0: none).
    pub fn rate(&self) -> u64 {
        self.rate.load(Relaxed)
    }

    /// Whether `bytes` more may pass now; if so, they are spent. Reads the clock only when
    /// there is a cap.
    pub fn spend(&self, bytes: usize) -> bool {
        self.rate.load(Relaxed) == 0 || self.take(bytes, Instant::now())
    }

    /// Whether `bytes` more may pass at `now`; if so, they are spent.
    pub fn take(&self, bytes: usize, now: Instant) -> bool {
        let rate = self.rate.load(Relaxed);
        if rate == 0 {
            return true;
        }
        let now = now.saturating_duration_since(self.start).as_nanos() as u64;
        let cost = (bytes as u128 * 1_000_000_000 / u128::from(rate)) as u64;
        let burst = BURST.as_nanos() as u64;
        let mut tat = self.tat.load(Relaxed);
        loop {
            // Conforms while the budget is spent no further ahead than the burst.
            let from = tat.max(now);
            if from - now > burst {
                return false;
            }
            let next = from.saturating_add(cost);
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cap_lets_everything_through() {
        let b = ByteBudget::default();
        let now = Instant::now();
        assert!((0..10_000).all(|_| b.take(65_536, now)));
    }

    #[test]
    fn a_burst_then_the_rate() {
        let b = ByteBudget::default();
        b.set_rate(1_000_000);
        let t0 = b.start + Duration::from_secs(1);
        // 500 ms of burst at 1 MB/s, plus the first packet, at once.
        let passed = (0..1000).filter(|_| b.take(1000, t0)).count();
        assert_eq!(passed, 501);
        // Then 1000 bytes per millisecond.
        let later = t0 + Duration::from_millis(100);
        let passed = (0..1000).filter(|_| b.take(1000, later)).count();
        assert_eq!(passed, 100);
        // Over ten simulated seconds of a sender that always has data, the rate holds.
        let mut sent = 0usize;
        for ms in 0..10_000u64 {
            let t = later + Duration::from_millis(ms);
            while b.take(1400, t) {
                sent += 1400;
            }
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.01, "{rate}");
        // Off again.
        b.set_rate(0);
        assert!(b.take(usize::MAX / 2, later));
    }

    #[test]
    fn threads_share_one_budget() {
        let b = std::sync::Arc::new(ByteBudget::default());
        b.set_rate(10_000_000);
        let t = b.start + Duration::from_secs(5);
        let passed: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| b.take(1000, t)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        // 500 ms at 10 MB/s: 5 MB, whoever asked.
        assert_eq!(passed, 5001);
    }
}
