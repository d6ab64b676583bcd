//! Per-peer traffic features and the detectors that read them: connection bursts, periodic
//! beaconing, upload volume far above the peer's baseline, and an online anomaly score
//! learned from the peer's own traffic.
//!
//! Features are damped incremental statistics in the style of Kitsune's AfterImage: for each
//! stream (packets up, packets down, new flows) and each decay rate λ in [`LAMBDAS`], a
//! weight, a linear sum and a squared sum that decay as 2^(−λ·Δt). The packet path only adds
//! to a few counters ([`PeerTraffic::outbound`], [`PeerTraffic::inbound`]); every
//! [`PeerTraffic::tick`] folds them into the statistics, so the per-packet cost is a handful
//! of additions and nothing is allocated.
//!
//! Pure: time is an `Instant` argument.

use crate::flows::FlowKey;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Decay rates (per second) of the damped statistics: half-lives of 1 s, 10 s and 100 s.
pub const LAMBDAS: [f64; 3] = [1.0, 0.1, 0.01];
/// Indexes into [`LAMBDAS`].
const SHORT: usize = 0;
const MEDIUM: usize = 1;
const LONG: usize = 2;
/// Destinations watched for beaconing per peer.
const BEACON_SLOTS: usize = 32;
/// Connection starts kept per destination.
const BEACON_HISTORY: usize = 8;
/// Dimensions of the anomaly model's feature vector.
const DIMS: usize = 10;
/// Names of those dimensions, for findings.
const FEATURE_NAMES: [&str; DIMS] = [
    "packets up/s (1 s)",
    "bytes up/s (1 s)",
    "bytes down/s (1 s)",
    "new connections/s (1 s)",
    "packets up/s (10 s)",
    "bytes up/s (10 s)",
    "bytes down/s (10 s)",
    "new connections/s (10 s)",
    "mean packet size up (10 s)",
    "packet size spread up (10 s)",
];
/// Smallest spread a feature is measured against (log scale: a factor of about 1.6), so a
/// feature that never varied does not make any change infinitely surprising.
const SPREAD_FLOOR: f64 = 0.5;

/// Thresholds of the detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// New connections per second (over ~1 s) that can make a burst…
    pub burst_rate: f64,
    /// …when also this many times the peer's usual rate (over ~100 s).
    pub burst_factor: f64,
    /// Upload bytes per second (over ~10 s) that can be unusual…
    pub upload_rate: f64,
    /// …when also this many times the peer's baseline.
    pub upload_factor: f64,
    /// How long a peer's traffic is learned before its baseline and anomaly score are used.
    pub learning: Duration,
    /// The peer's baseline of upload bytes/s forgets with this time constant.
    pub baseline_horizon: Duration,
    /// Anomaly score (root mean square of the features' z-scores) that flags…
    pub anomaly_score: f64,
    /// …when sustained over this many ticks in a row.
    pub anomaly_ticks: u32,
    /// Connections to one destination that can make a beacon (their starts give one fewer
    /// intervals)…
    pub beacon_connections: usize,
    /// …at least this far apart on average…
    pub beacon_min_period: Duration,
    /// …and this regular: standard deviation over mean of the intervals.
    pub beacon_max_jitter: f64,
    /// A burst, upload or anomaly is reported again only after this long.
    pub repeat_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            burst_rate: 100.0,
            burst_factor: 10.0,
            upload_rate: 1_000_000.0,
            upload_factor: 10.0,
            learning: Duration::from_secs(600),
            baseline_horizon: Duration::from_secs(3600),
            anomaly_score: 4.0,
            anomaly_ticks: 8,
            beacon_connections: BEACON_HISTORY,
            beacon_min_period: Duration::from_secs(1),
            beacon_max_jitter: 0.1,
            repeat_after: Duration::from_secs(60),
        }
    }
}

/// What a detector saw, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Detection {
    /// Many new connections at once.
    Burst {
        /// New connections/s over ~1 s.
        rate: f64,
        /// The peer's usual rate over ~100 s.
        usual: f64,
    },
    /// Upload far above the peer's baseline.
    Upload {
        /// Bytes/s over ~10 s.
        rate: f64,
        /// The peer's baseline, bytes/s.
        baseline: f64,
    },
    /// Connections to one destination at a regular period.
    Beacon {
        /// The destination.
        remote: IpAddr,
        /// Its port (0 without ports).
        port: u16,
        /// IP protocol.
        protocol: u8,
        /// Mean interval.
        period: Duration,
        /// Standard deviation of the intervals.
        jitter: Duration,
        /// Connections seen.
        connections: usize,
    },
    /// Traffic unlike the peer's own.
    Anomaly {
        /// Root mean square of the z-scores.
        score: f64,
        /// The most unusual feature.
        feature: &'static str,
        /// Its value now.
        value: f64,
        /// Its usual value.
        usual: f64,
    },
}

impl Detection {
    /// The detector's name: `burst`, `upload`, `beacon` or `anomaly`.
    pub fn detector(&self) -> &'static str {
        match self {
            Detection::Burst { .. } => "burst",
            Detection::Upload { .. } => "upload",
            Detection::Beacon { .. } => "beacon",
            Detection::Anomaly { .. } => "anomaly",
        }
    }
}

impl std::fmt::Display for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detection::Burst { rate, usual } => write!(
                f,
                "connection burst: {rate:.0} new connections/s, usually {usual:.1}/s"
            ),
            Detection::Upload { rate, baseline } => write!(
                f,
                "upload {:.2} MB/s over ~10 s, {:.0}x the peer's baseline {:.3} MB/s",
                rate / 1e6,
                rate / baseline.max(1.0),
                baseline / 1e6
            ),
            Detection::Beacon {
                remote,
                port,
                protocol,
                period,
                jitter,
                connections,
            } => {
                let proto = match protocol {
                    6 => "TCP",
                    17 => "UDP",
                    1 | 58 => "ICMP",
                    _ => "IP",
                };
                let to = match remote {
                    IpAddr::V6(_) => format!("[{remote}]:{port}"),
                    IpAddr::V4(_) => format!("{remote}:{port}"),
                };
                write!(
                    f,
                    "beaconing: {connections} {proto} connections to {to} every {:.2} s ± {:.2} s",
                    period.as_secs_f64(),
                    jitter.as_secs_f64()
                )
            }
            Detection::Anomaly {
                score,
                feature,
                value,
                usual,
            } => write!(
                f,
                "anomaly score {score:.1}: {feature} is {value:.0}, usually {usual:.0}"
            ),
        }
    }
}

/// One damped statistic: weight, linear sum, squared sum.
#[derive(Debug, Clone, Copy, Default)]
struct Damped {
    w: f64,
    ls: f64,
    ss: f64,
}

impl Damped {
    fn add(&mut self, decay: f64, n: f64, sum: f64, squares: f64) {
        self.w = self.w * decay + n;
        self.ls = self.ls * decay + sum;
        self.ss = self.ss * decay + squares;
    }

    fn mean(&self) -> f64 {
        if self.w > 1e-9 { self.ls / self.w } else { 0.0 }
    }

    fn std(&self) -> f64 {
        if self.w > 1e-9 {
            (self.ss / self.w - self.mean().powi(2)).max(0.0).sqrt()
        } else {
            0.0
        }
    }
}

/// A stream's statistics over every λ.
#[derive(Debug, Clone, Copy, Default)]
struct Stream([Damped; LAMBDAS.len()]);

impl Stream {
    fn add(&mut self, decays: &[f64; LAMBDAS.len()], n: f64, sum: f64, squares: f64) {
        for (d, decay) in self.0.iter_mut().zip(decays) {
            d.add(*decay, n, sum, squares);
        }
    }
}

/// Counters the packet path adds to between ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    up_packets: u64,
    up_bytes: u64,
    up_squares: f64,
    down_packets: u64,
    down_bytes: u64,
    new_flows: u64,
}

/// Connection starts to one destination.
#[derive(Debug, Clone, Copy)]
struct Destination {
    protocol: u8,
    remote: IpAddr,
    port: u16,
    starts: [Option<Instant>; BEACON_HISTORY],
    next: usize,
    last: Instant,
    reported: bool,
}

/// The anomaly model: each feature's running mean and variance.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    mean: [f64; DIMS],
    var: [f64; DIMS],
    samples: u64,
}

/// One peer's traffic statistics and detector state.
#[derive(Debug, Clone)]
pub struct PeerTraffic {
    bucket: Bucket,
    up: Stream,
    down: Stream,
    flows: Stream,
    first: Option<Instant>,
    last_tick: Option<Instant>,
    /// Long-run upload bytes/s, learned.
    upload_baseline: f64,
    baseline: Baseline,
    anomalous_ticks: u32,
    destinations: [Option<Destination>; BEACON_SLOTS],
    /// When a burst, an upload and an anomaly were last reported.
    reported: [Option<Instant>; 3],
}

impl Default for PeerTraffic {
    fn default() -> Self {
        Self {
            bucket: Bucket::default(),
            up: Stream::default(),
            down: Stream::default(),
            flows: Stream::default(),
            first: None,
            last_tick: None,
            upload_baseline: 0.0,
            baseline: Baseline::default(),
            anomalous_ticks: 0,
            destinations: [None; BEACON_SLOTS],
            reported: [None; 3],
        }
    }
}

impl PeerTraffic {
    /// A packet from the peer, `len` bytes.
    pub fn outbound(&mut self, len: usize) {
        self.bucket.up_packets += 1;
        self.bucket.up_bytes += len as u64;
        self.bucket.up_squares += (len * len) as f64;
    }

    /// A packet to the peer.
    pub fn inbound(&mut self, len: usize) {
        self.bucket.down_packets += 1;
        self.bucket.down_bytes += len as u64;
    }

    /// The peer opened a new flow; a beacon if this makes its connections to that
    /// destination regular.
    pub fn new_flow(
        &mut self,
        key: &FlowKey,
        now: Instant,
        thresholds: &Thresholds,
    ) -> Option<Detection> {
        self.bucket.new_flows += 1;
        // Beacons are TCP or UDP: pings and other protocols are not tracked.
        if !matches!(key.protocol, 6 | 17) {
            return None;
        }
        let port = key.remote_port;
        let same = |d: &Destination| {
            d.protocol == key.protocol && d.remote == key.remote && d.port == port
        };
        let slot = match self
            .destinations
            .iter()
            .position(|d| d.as_ref().is_some_and(same))
        {
            Some(i) => i,
            None => {
                // A free slot, or the destination seen longest ago.
                let i = self
                    .destinations
                    .iter()
                    .position(Option::is_none)
                    .unwrap_or_else(|| {
                        (0..BEACON_SLOTS)
                            .min_by_key(|&i| self.destinations[i].map(|d| d.last))
                            .unwrap_or(0)
                    });
                self.destinations[i] = Some(Destination {
                    protocol: key.protocol,
                    remote: key.remote,
                    port,
                    starts: [None; BEACON_HISTORY],
                    next: 0,
                    last: now,
                    reported: false,
                });
                i
            }
        };
        let d = self.destinations[slot].as_mut()?;
        d.starts[d.next] = Some(now);
        d.next = (d.next + 1) % BEACON_HISTORY;
        d.last = now;
        if d.reported {
            return None;
        }
        let wanted = thresholds.beacon_connections.clamp(3, BEACON_HISTORY);
        // The newest `wanted` starts, oldest first.
        let mut starts = [now; BEACON_HISTORY];
        let mut n = 0;
        for k in 0..wanted {
            let idx = (d.next + BEACON_HISTORY - wanted + k) % BEACON_HISTORY;
            if let Some(t) = d.starts[idx] {
                starts[n] = t;
                n += 1;
            }
        }
        if n < wanted {
            return None;
        }
        let intervals = starts[..n]
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64());
        let count = (n - 1) as f64;
        let mean = intervals.clone().sum::<f64>() / count;
        let var = intervals.map(|i| (i - mean).powi(2)).sum::<f64>() / count;
        let jitter = var.sqrt();
        if mean >= thresholds.beacon_min_period.as_secs_f64()
            && jitter <= thresholds.beacon_max_jitter * mean
        {
            d.reported = true;
            return Some(Detection::Beacon {
                remote: d.remote,
                port: d.port,
                protocol: d.protocol,
                period: Duration::from_secs_f64(mean),
                jitter: Duration::from_secs_f64(jitter),
                connections: n,
            });
        }
        None
    }

    /// Rate of a damped weight for λ index `i`, per second, given the tick length `dt`.
    fn rate(w: f64, i: usize, dt: f64) -> f64 {
        w * (1.0 - (-LAMBDAS[i] * dt).exp2()) / dt
    }

    /// Folds the counters into the statistics and runs the rate detectors; run every
    /// `dt` (a fraction of a second), with the same `dt` each time.
    pub fn tick(&mut self, now: Instant, thresholds: &Thresholds) -> Vec<Detection> {
        let mut found = Vec::new();
        let first = *self.first.get_or_insert(now);
        let mut reported = self.reported;
        let mut report = |which: usize, found: &mut Vec<Detection>, d: Detection| {
            let due = reported[which]
                .is_none_or(|t| now.saturating_duration_since(t) >= thresholds.repeat_after);
            if due {
                reported[which] = Some(now);
                found.push(d);
            }
        };
        let Some(last) = self.last_tick.replace(now) else {
            return found;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return found;
        }
        let decays = LAMBDAS.map(|l| (-l * dt).exp2());
        let b = std::mem::take(&mut self.bucket);
        self.up.add(
            &decays,
            b.up_packets as f64,
            b.up_bytes as f64,
            b.up_squares,
        );
        self.down
            .add(&decays, b.down_packets as f64, b.down_bytes as f64, 0.0);
        self.flows.add(&decays, b.new_flows as f64, 0.0, 0.0);

        let learned = now.saturating_duration_since(first) >= thresholds.learning;
        let active = b.up_packets + b.down_packets > 0;

        // Bursts: new connections over ~1 s against the last ~100 s.
        let burst = Self::rate(self.flows.0[SHORT].w, SHORT, dt);
        let usual = Self::rate(self.flows.0[LONG].w, LONG, dt);
        if burst >= thresholds.burst_rate && burst >= thresholds.burst_factor * usual {
            report(0, &mut found, Detection::Burst { rate: burst, usual });
        }

        // Upload volume: bytes up over ~10 s against the learned baseline.
        let upload = self.up.0[MEDIUM].ls * (1.0 - decays[MEDIUM]) / dt;
        if learned
            && upload >= thresholds.upload_rate
            && upload >= thresholds.upload_factor * self.upload_baseline
        {
            let baseline = self.upload_baseline;
            report(
                1,
                &mut found,
                Detection::Upload {
                    rate: upload,
                    baseline,
                },
            );
        } else {
            let alpha = (dt / thresholds.baseline_horizon.as_secs_f64()).min(1.0);
            let bytes_now = b.up_bytes as f64 / dt;
            self.upload_baseline += alpha * (bytes_now - self.upload_baseline);
        }

        // The anomaly score, over ticks with traffic.
        if active {
            let x = self.features(dt);
            let model = &mut self.baseline;
            let mut sum = 0.0;
            let mut worst = (0, 0.0f64);
            for (i, ((value, mean), var)) in x.iter().zip(&model.mean).zip(&model.var).enumerate() {
                let z = (value - mean) / var.sqrt().max(SPREAD_FLOOR);
                sum += z * z;
                if z.abs() > worst.1 {
                    worst = (i, z.abs());
                }
            }
            let score = (sum / DIMS as f64).sqrt();
            let flagged = learned && score >= thresholds.anomaly_score;
            if flagged {
                self.anomalous_ticks += 1;
                if self.anomalous_ticks >= thresholds.anomaly_ticks.max(1) {
                    let i = worst.0;
                    report(
                        2,
                        &mut found,
                        Detection::Anomaly {
                            score,
                            feature: FEATURE_NAMES[i],
                            value: x[i].exp_m1(),
                            usual: model.mean[i].exp_m1(),
                        },
                    );
                }
            } else {
                self.anomalous_ticks = 0;
                // Learn from ordinary ticks only: an attack does not become the baseline.
                model.samples += 1;
                let horizon = thresholds.baseline_horizon.as_secs_f64() / dt;
                let alpha = 1.0 / (model.samples as f64).min(horizon);
                for ((value, mean), var) in x.iter().zip(&mut model.mean).zip(&mut model.var) {
                    let delta = value - *mean;
                    *mean += alpha * delta;
                    *var = (1.0 - alpha) * (*var + alpha * delta * delta);
                }
            }
        }
        self.reported = reported;
        found
    }

    /// The feature vector, each on a log scale.
    fn features(&self, dt: f64) -> [f64; DIMS] {
        let mut x = [0.0; DIMS];
        for (k, i) in [SHORT, MEDIUM].into_iter().enumerate() {
            let decay = 1.0 - (-LAMBDAS[i] * dt).exp2();
            x[k * 4] = Self::rate(self.up.0[i].w, i, dt);
            x[k * 4 + 1] = self.up.0[i].ls * decay / dt;
            x[k * 4 + 2] = self.down.0[i].ls * decay / dt;
            x[k * 4 + 3] = Self::rate(self.flows.0[i].w, i, dt);
        }
        x[8] = self.up.0[MEDIUM].mean();
        x[9] = self.up.0[MEDIUM].std();
        x.map(f64::ln_1p)
    }

    /// Bytes per second the peer sent over ~1 s.
    pub fn upload_rate(&self, dt: f64) -> f64 {
        self.up.0[SHORT].ls * (1.0 - (-LAMBDAS[SHORT] * dt).exp2()) / dt
    }

    /// The peer's learned upload baseline, bytes/s.
    pub fn upload_baseline(&self) -> f64 {
        self.upload_baseline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);

    fn key(remote: [u8; 4], port: u16) -> FlowKey {
        FlowKey {
            protocol: 6,
            local: IpAddr::from([10, 87, 0, 2]),
            remote: IpAddr::from(remote),
            local_port: 40000,
            remote_port: port,
        }
    }

    /// Runs `seconds` of ticks, calling `each` before every tick with the tick number.
    fn run(
        p: &mut PeerTraffic,
        start: Instant,
        from: u64,
        seconds: u64,
        t: &Thresholds,
        mut each: impl FnMut(&mut PeerTraffic, u64, Instant),
    ) -> Vec<Detection> {
        let mut found = Vec::new();
        for i in from * 4..(from + seconds) * 4 {
            let now = start + TICK * i as u32;
            each(p, i, now);
            found.extend(p.tick(now, t));
        }
        found
    }

    /// Browsing-like traffic: a few connections, some kilobytes each way, varying by tick.
    fn browse(p: &mut PeerTraffic, i: u64, now: Instant, t: &Thresholds) {
        let k = i % 7;
        for _ in 0..(5 + k) {
            p.outbound(80 + 100 * k as usize);
            p.inbound(1400);
        }
        if i % 5 == 0 {
            p.new_flow(&key([198, 18, 2, (i % 200) as u8], 443), now, t);
        }
    }

    #[test]
    fn ordinary_traffic_raises_nothing() {
        let t = Thresholds::default();
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        let found = run(&mut p, start, 0, 1800, &t, |p, i, now| {
            browse(p, i, now, &t)
        });
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_burst_of_connections_is_seen_at_once() {
        let t = Thresholds::default();
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        run(&mut p, start, 0, 60, &t, |p, i, now| browse(p, i, now, &t));
        let found = run(&mut p, start, 60, 2, &t, |p, _, now| {
            for port in 0..100 {
                p.new_flow(&key([198, 18, 2, 9], port), now, &t);
            }
        });
        assert!(
            matches!(found.first(), Some(Detection::Burst { rate, .. }) if *rate > 100.0),
            "{found:?}"
        );
    }

    #[test]
    fn a_large_upload_after_learning_is_seen_not_before() {
        let t = Thresholds {
            learning: Duration::from_secs(120),
            ..Thresholds::default()
        };
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        // During learning, a big upload is just learned.
        let upload = |p: &mut PeerTraffic, _: u64, _: Instant| {
            for _ in 0..1000 {
                p.outbound(1400);
            }
        };
        assert!(run(&mut p, start, 0, 10, &t, upload).is_empty());
        run(&mut p, start, 10, 300, &t, |p, i, now| {
            browse(p, i, now, &t)
        });
        // 5.6 MB/s against a baseline of a few kB/s.
        let found = run(&mut p, start, 310, 20, &t, upload);
        let upload = found
            .iter()
            .find(|d| d.detector() == "upload")
            .expect("upload");
        let Detection::Upload { rate, baseline } = upload else {
            unreachable!()
        };
        assert!(*rate > 1e6 && *baseline < 1e5, "{upload}");
        assert_eq!(found.len(), 1, "reported once: {found:?}");
    }

    #[test]
    fn traffic_unlike_the_peers_own_gets_a_high_anomaly_score() {
        let t = Thresholds {
            learning: Duration::from_secs(120),
            ..Thresholds::default()
        };
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        assert!(run(&mut p, start, 0, 300, &t, |p, i, now| browse(p, i, now, &t)).is_empty());
        // Many small packets up, no answers: nothing this peer ever did.
        let found = run(&mut p, start, 300, 10, &t, |p, _, _| {
            for _ in 0..3000 {
                p.outbound(60);
            }
        });
        let anomaly = found
            .iter()
            .find(|d| d.detector() == "anomaly")
            .expect("anomaly");
        let Detection::Anomaly { score, .. } = anomaly else {
            unreachable!()
        };
        assert!(*score >= 4.0, "{anomaly}");
        assert!(anomaly.to_string().contains("usually"), "{anomaly}");
        // Back to normal: the score falls, and nothing more is reported.
        let after = run(&mut p, start, 310, 120, &t, |p, i, now| {
            browse(p, i, now, &t)
        });
        assert!(after.iter().all(|d| d.detector() != "anomaly"), "{after:?}");
    }

    #[test]
    fn regular_connections_are_beacons_irregular_ones_are_not() {
        let t = Thresholds::default();
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        let mut found = None;
        for i in 0..8u32 {
            // Every 5 s, give or take 50 ms.
            let jitter = Duration::from_millis(u64::from(i % 3) * 50);
            let now = start + Duration::from_secs(5) * i + jitter;
            found = p.new_flow(&key([203, 0, 113, 7], 8443), now, &t).or(found);
        }
        let beacon = found.expect("beacon");
        assert!(
            beacon.to_string().contains("203.0.113.7:8443 every 5."),
            "{beacon}"
        );
        // Reported once.
        assert_eq!(
            p.new_flow(
                &key([203, 0, 113, 7], 8443),
                start + Duration::from_secs(40),
                &t
            ),
            None
        );
        // Irregular intervals (a person clicking) are not.
        let mut p = PeerTraffic::default();
        let gaps = [1, 7, 2, 13, 4, 3, 9, 5, 1, 8];
        let mut now = start;
        for g in gaps {
            now += Duration::from_secs(g);
            assert_eq!(p.new_flow(&key([198, 18, 2, 2], 80), now, &t), None);
        }
        // Nor many quick connections (a page load).
        for k in 0..20 {
            let now = start + Duration::from_millis(k * 30);
            assert_eq!(p.new_flow(&key([198, 18, 2, 3], 443), now, &t), None);
        }
    }

    #[test]
    fn the_destination_table_holds_its_size() {
        let t = Thresholds::default();
        let mut p = PeerTraffic::default();
        let start = Instant::now();
        for i in 0..10_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            p.new_flow(&key(i.to_be_bytes(), 80), now, &t);
        }
        assert_eq!(p.destinations.iter().flatten().count(), BEACON_SLOTS);
    }
}
