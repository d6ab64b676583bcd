//! Pausing contributed work while the owner's machine is busy (`[contribute] cpu_percent`,
//! `only_when_idle`, `memory_mb`).
//!
//! Every second the node reads how much CPU the machine spent on *other* processes (all of
//! `/proc/stat` less this process's own time, so relaying does not count against itself) and
//! this process's resident memory. Relay duty pauses once the others have stayed above the
//! limit for [`PAUSE_AFTER`], or at once when the node's memory is over its cap, and resumes
//! after [`RESUME_AFTER`] below both. The decision is pure ([`Governor::observe`]); reading
//! `/proc` is [`Sampler`].

use std::time::{Duration, Instant};

/// Busy this long before relay duty pauses.
pub const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// Calm this long before it resumes.
pub const RESUME_AFTER: Duration = Duration::from_secs(10);
/// Others' CPU use (% of all cores) above which the machine is not idle.
pub const IDLE_PERCENT: f64 = 15.0;

/// The limits, from `[contribute]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Others' CPU use (% of all cores) above which work pauses (0: no limit).
    pub cpu_percent: u32,
    /// Work only while the machine is idle (others below [`IDLE_PERCENT`]).
    pub only_when_idle: bool,
    /// This node's resident memory (MiB) above which work pauses (0: no cap).
    pub memory_mb: u32,
}

impl Policy {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.cpu_percent > 0 || self.only_when_idle || self.memory_mb > 0
    }

    fn cpu_limit(&self) -> Option<f64> {
        let set = (self.cpu_percent > 0).then_some(f64::from(self.cpu_percent));
        match (set, self.only_when_idle) {
            (Some(c), true) => Some(c.min(IDLE_PERCENT)),
            (None, true) => Some(IDLE_PERCENT),
            (c, false) => c,
        }
    }
}

/// Decides, sample by sample, whether work is paused and why.
#[derive(Debug)]
pub struct Governor {
    policy: Policy,
    busy_since: Option<Instant>,
    calm_since: Option<Instant>,
    paused: Option<String>,
}

impl Governor {
    /// A governor that has seen nothing yet (not paused).
    pub fn new(policy: Policy) -> Self {
        Governor {
            policy,
            busy_since: None,
            calm_since: None,
            paused: None,
        }
    }

    /// Why work is paused, if it is.
    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// Takes one sample: others' CPU use in % of all cores and this node's memory in MiB.
    /// Returns true when the pause state changed.
    pub fn observe(&mut self, now: Instant, others_cpu: f64, memory_mb: u64) -> bool {
        let over_memory = self.policy.memory_mb > 0 && memory_mb > u64::from(self.policy.memory_mb);
        let over_cpu = self.policy.cpu_limit().is_some_and(|l| others_cpu > l);
        let was = self.paused.is_some();
        if over_memory || over_cpu {
            self.calm_since = None;
            let since = *self.busy_since.get_or_insert(now);
            if over_memory {
                self.paused = Some(format!(
                    "this node uses {memory_mb} MiB, over its cap of {} MiB",
                    self.policy.memory_mb
                ));
            } else if self.paused.is_some() || now.duration_since(since) >= PAUSE_AFTER {
                self.paused = Some(format!(
                    "the machine is busy: other programs use {others_cpu:.0}% of its CPU (limit {:.0}%)",
                    self.policy.cpu_limit().unwrap_or(100.0)
                ));
            }
        } else {
            self.busy_since = None;
            let since = *self.calm_since.get_or_insert(now);
            if now.duration_since(since) >= RESUME_AFTER {
                self.paused = None;
            }
        }
        was != self.paused.is_some()
    }
}

/// Reads CPU and memory use from `/proc`.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<(u64, u64, u64)>,
}

impl Sampler {
    /// Others' CPU use since the last call (% of all cores; `None` on the first call or when
    /// `/proc` cannot be read) and this process's resident memory in MiB.
    pub fn sample(&mut self) -> (Option<f64>, u64) {
        let now = cpu_times();
        let cpu = match (self.last, now) {
            (Some(a), Some(b)) => others_percent(a, b),
            _ => None,
        };
        self.last = now;
        (cpu, resident_mb().unwrap_or(0))
    }
}

/// Others' CPU use between two (total, idle, own) samples in clock ticks.
pub fn others_percent(a: (u64, u64, u64), b: (u64, u64, u64)) -> Option<f64> {
    let total = b.0.checked_sub(a.0).filter(|t| *t > 0)?;
    let idle = b.1.saturating_sub(a.1);
    let own = b.2.saturating_sub(a.2);
    let others = total.saturating_sub(idle).saturating_sub(own);
    Some(others as f64 * 100.0 / total as f64)
}

/// (all CPU time, idle time, this process's time), in clock ticks.
fn cpu_times() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (total, idle) = parse_cpu_line(stat.lines().next()?)?;
    Some((total, idle, parse_own_ticks(&own)?))
}

/// The aggregate `cpu` line of `/proc/stat`: (user … steal summed, idle + iowait).
pub fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    if words.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = words
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    Some((v.iter().sum(), v[3] + v[4]))
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15, after the command name,
/// which may hold spaces and parentheses).
pub fn parse_own_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn resident_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Watches the machine every second and calls `apply` with the pause reason whenever it
/// changes (`None`: resumed).
pub fn watch(
    policy: Policy,
    apply: impl Fn(Option<String>) + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut governor = Governor::new(policy);
        let mut sampler = Sampler::default();
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = crate::daemon::stopped(&mut stop) => return,
                _ = every.tick() => {}
            }
            let (cpu, memory) = sampler.sample();
            let Some(cpu) = cpu else { continue };
            if governor.observe(Instant::now(), cpu, memory) {
                match governor.paused() {
                    Some(why) => tracing::warn!(%why, "contributed work paused"),
                    None => tracing::info!("contributed work resumed"),
                }
                apply(governor.paused().map(str::to_owned));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_pauses_after_sustained_load_and_resumes_after_calm() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = Governor::new(Policy {
            cpu_percent: 50,
            only_when_idle: false,
            memory_mb: 0,
        });
        // A short spike does not pause.
        assert!(!g.observe(at(0), 90.0, 10));
        assert!(!g.observe(at(1), 20.0, 10));
        // Sustained load does, after PAUSE_AFTER.
        assert!(!g.observe(at(2), 80.0, 10));
        assert!(!g.observe(at(4), 80.0, 10));
        assert!(g.observe(at(5), 80.0, 10));
        assert!(g.paused().unwrap().contains("busy"));
        // A moment of calm is not enough; RESUME_AFTER of it is.
        assert!(!g.observe(at(6), 10.0, 10));
        assert!(!g.observe(at(7), 70.0, 10));
        assert!(!g.observe(at(8), 10.0, 10));
        assert!(!g.observe(at(17), 10.0, 10));
        assert!(g.observe(at(18), 10.0, 10));
        assert_eq!(g.paused(), None);
    }

    #[test]
    fn idle_only_and_memory_caps() {
        let t0 = Instant::now();
        let mut idle = Governor::new(Policy {
            cpu_percent: 0,
            only_when_idle: true,
            memory_mb: 0,
        });
        idle.observe(t0, 20.0, 0);
        assert!(idle.observe(t0 + PAUSE_AFTER, 20.0, 0));
        let mut mem = Governor::new(Policy {
            cpu_percent: 0,
            only_when_idle: false,
            memory_mb: 100,
        });
        assert!(!mem.observe(t0, 99.0, 100));
        assert!(
            mem.observe(t0, 0.0, 101),
            "over the memory cap pauses at once"
        );
        assert!(mem.paused().unwrap().contains("101 MiB"));
        // No limits: never paused.
        let mut none = Governor::new(Policy {
            cpu_percent: 0,
            only_when_idle: false,
            memory_mb: 0,
        });
        assert!(!none.observe(t0, 100.0, u64::MAX));
        assert!(!none.observe(t0 + Duration::from_secs(60), 100.0, u64::MAX));
    }

    #[test]
    fn proc_lines_parse_and_junk_does_not() {
        assert_eq!(
            parse_cpu_line("cpu  100 5 50 1000 20 1 2 3 0 0"),
            Some((1181, 1020))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5"), None);
        assert_eq!(parse_cpu_line("cpu x"), None);
        assert_eq!(parse_cpu_line(""), None);
        let stat =
            "1234 (nx1 (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 9 0";
        assert_eq!(parse_own_ticks(stat), Some(100));
        assert_eq!(parse_own_ticks("1234 (x) S 1"), None);
        assert_eq!(parse_own_ticks("no parens"), None);
        // Others' share: 1000 ticks passed, 600 idle, 100 ours: 30%.
        assert_eq!(others_percent((0, 0, 0), (1000, 600, 100)), Some(30.0));
        assert_eq!(others_percent((5, 0, 0), (5, 0, 0)), None);
        assert!(Sampler::default().sample().0.is_none());
    }
}
