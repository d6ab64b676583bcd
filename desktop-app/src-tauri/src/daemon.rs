//! The daemon's control socket, as the app uses it: one JSON request per line, one JSON
//! answer per line (the protocol of `nx1_node::control`, spoken here as JSON values so the
//! app needs none of the node's dependencies). The app is unprivileged: everything that needs
//! root (the tunnel, routes, nftables) happens in the daemon.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// How long one request may take (a connect brings a tunnel up).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer read.
const MAX_ANSWER: usize = 4 << 20;

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    /// The daemon at `socket`.
    pub fn at(socket: impl Into<PathBuf>) -> Daemon {
        Daemon {
            socket: socket.into(),
        }
    }

    /// `$NX1_CONTROL_SOCKET`, else `nx1-data/nx1.sock` under the working directory (where
    /// `nx1 up` keeps it by default).
    pub fn from_env() -> Daemon {
        Daemon::at(
            std::env::var_os("NX1_CONTROL_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new("nx1-data").join("nx1.sock")),
        )
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the answer; an error answer, or no daemon, is an `Err`
    /// with a sentence for the user.
    pub async fn call(&self, request: Value) -> Result<Value, String> {
        tokio::time::timeout(TIMEOUT, self.exchange(&request))
            .await
            .map_err(|_| format!("the daemon at {} did not answer", self.socket.display()))?
    }

    async fn exchange(&self, request: &Value) -> Result<Value, String> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                    "no nx1 daemon is running at {}: start one with `nx1 up`",
                    self.socket.display()
                ),
                std::io::ErrorKind::PermissionDenied => format!(
                    "cannot use the daemon at {}: permission denied (run the app as the node's user)",
                    self.socket.display()
                ),
                _ => format!("cannot reach the daemon at {}: {e}", self.socket.display()),
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| format!("sending to the daemon: {e}"))?;
        let mut answer = String::new();
        let mut reader = BufReader::new(read.take(MAX_ANSWER as u64));
        reader
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("reading the daemon's answer: {e}"))?;
        let value: Value = serde_json::from_str(&answer)
            .map_err(|e| format!("the daemon sent an invalid answer: {e}"))?;
        if value["result"] == "error" {
            return Err(value["message"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_owned());
        }
        Ok(value)
    }

    /// Everything `nx1 status` shows.
    pub async fn status(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "status" })).await
    }

    /// What the node contributes; changes relay duty and the cap when given.
    pub async fn contribute(
        &self,
        relay: Option<bool>,
        bandwidth_mbit: Option<u32>,
    ) -> Result<Value, String> {
        self.call(json!({ "cmd": "contribute", "relay": relay, "bandwidth_mbit": bandwidth_mbit }))
            .await
    }

    /// Round-trip time to each live node of the mesh, in milliseconds by node id.
    pub async fn latency(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "latency" })).await
    }

    /// The owner's ledger entries (earnings, spends, grants), oldest first.
    pub async fn credits_history(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "credits_history" })).await
    }

    /// The owner's balance and what the node carried.
    pub async fn credits(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "credits" })).await
    }

    /// Brings the client tunnel up from a wg-quick file (read here, by the user's app; the
    /// daemon gets its text), with DNS-leak protection and the kill switch as asked, and
    /// through a relay of the mesh (`two_hop`: `auto` or a relay's node id) when asked.
    pub async fn connect(
        &self,
        config: &Path,
        interface: &str,
        dns_protection: bool,
        kill_switch: bool,
        two_hop: Option<&str>,
    ) -> Result<Value, String> {
        let text = tokio::fs::read_to_string(config)
            .await
            .map_err(|e| format!("reading {}: {e}", config.display()))?;
        self.call(json!({
            "cmd": "connect", "config": text, "interface": interface,
            "dns_protection": dns_protection, "kill_switch": kill_switch, "two_hop": two_hop,
        }))
        .await
    }

    /// Takes the client tunnel down.
    pub async fn disconnect(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "disconnect" })).await
    }

    /// What Guard blocked lately (of one peer, when named), oldest first.
    pub async fn guard_findings(&self, peer: Option<String>) -> Result<Value, String> {
        self.call(json!({ "cmd": "guard_findings", "peer": peer }))
            .await
    }

    /// Guard's verdict for a domain, with its reason.
    pub async fn guard_check(&self, domain: &str) -> Result<Value, String> {
        self.call(json!({ "cmd": "guard_check", "domain": domain }))
            .await
    }

    /// Asks the node the client tunnel goes to that its Guard allow a domain for this device.
    pub async fn guard_allow_at_node(&self, domain: &str) -> Result<Value, String> {
        self.call(json!({ "cmd": "guard_allow_at_node", "domain": domain }))
            .await
    }

    /// Allows a domain (wins over every list), blocks it, or clears the node's own rule.
    pub async fn guard_rule(&self, domain: &str, action: &str) -> Result<Value, String> {
        if !["allow", "deny", "clear"].contains(&action) {
            return Err(format!("{action:?} is not allow, deny or clear"));
        }
        self.call(json!({ "cmd": "guard_rule", "domain": domain, "action": action }))
            .await
    }
}

/// The one-line state the tray shows for a status answer (or the error getting it).
pub fn tray_state(status: &Result<Value, String>) -> String {
    match status {
        Err(_) => "NX1: no daemon".to_owned(),
        Ok(s) => match &s["client"] {
            Value::Null => "NX1: not connected".to_owned(),
            c => match c["server"].as_str() {
                Some(server) => format!("NX1: connected via {server}"),
                None => "NX1: connected".to_owned(),
            },
        },
    }
}

/// Which of the exit's Guard findings for this device were already seen, so that only new
/// ones are announced.
#[derive(Debug, Default)]
pub struct FindingsSeen {
    /// (time, name) of the newest finding seen; None before the first status.
    newest: Option<(u64, String)>,
}

impl FindingsSeen {
    /// The findings of a status answer (`client.node_answer.guard`, oldest first) newer than
    /// the last seen. The first answer only sets the mark: what was blocked before the app
    /// started is on the Guard screen, not announced.
    pub fn new_ones(&mut self, status: &Result<Value, String>) -> Vec<Value> {
        let Ok(s) = status else { return Vec::new() };
        let findings: Vec<Value> = s["client"]["node_answer"]["guard"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let key = |f: &Value| {
            (
                f["at"].as_u64().unwrap_or(0),
                f["name"].as_str().unwrap_or_default().to_owned(),
            )
        };
        let first = self.newest.is_none();
        let mark = self.newest.clone().unwrap_or_default();
        let new: Vec<Value> = findings.into_iter().filter(|f| key(f) > mark).collect();
        if let Some(last) = new.iter().map(key).max() {
            self.newest = Some(last);
        } else if first {
            self.newest = Some(mark);
        }
        if first { Vec::new() } else { new }
    }
}

/// A finding in one line: the name and why.
pub fn finding_text(f: &Value) -> String {
    let list = f["list"].as_str().unwrap_or_default();
    let list = list.rsplit('/').next().unwrap_or(list);
    format!(
        "Guard blocked {} ({list})",
        f["name"].as_str().unwrap_or("a name")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_findings_after_the_first_status_are_announced() {
        let status = |names: &[(u64, &str)]| -> Result<Value, String> {
            let g: Vec<Value> = names
                .iter()
                .map(|(at, n)| json!({ "at": at, "name": n, "list": "/var/lib/nx1/lists/trackers.txt" }))
                .collect();
            Ok(json!({ "client": { "node_answer": { "guard": g } } }))
        };
        let mut seen = FindingsSeen::default();
        assert!(seen.new_ones(&status(&[(10, "old.example")])).is_empty());
        assert!(seen.new_ones(&status(&[(10, "old.example")])).is_empty());
        assert!(seen.new_ones(&Err("no daemon".into())).is_empty());
        let new = seen.new_ones(&status(&[(10, "old.example"), (12, "tracker.example")]));
        assert_eq!(new.len(), 1);
        assert_eq!(
            finding_text(&new[0]),
            "Guard blocked tracker.example (trackers.txt)"
        );
        assert!(
            seen.new_ones(&status(&[(12, "tracker.example")]))
                .is_empty()
        );
        // A client with no findings at first still hears of its first one.
        let mut fresh = FindingsSeen::default();
        assert!(fresh.new_ones(&Ok(json!({ "client": null }))).is_empty());
        assert_eq!(fresh.new_ones(&status(&[(5, "a.example")])).len(), 1);
    }

    #[test]
    fn the_tray_says_what_state_the_tunnel_is_in() {
        assert_eq!(tray_state(&Err("x".into())), "NX1: no daemon");
        assert_eq!(
            tray_state(&Ok(json!({ "client": null }))),
            "NX1: not connected"
        );
        assert_eq!(
            tray_state(&Ok(json!({ "client": { "server": "198.51.100.7:51820" } }))),
            "NX1: connected via 198.51.100.7:51820"
        );
    }

    #[tokio::test]
    async fn no_daemon_is_a_sentence_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::at(dir.path().join("nx1.sock"));
        let e = d.status().await.unwrap_err();
        assert!(e.contains("no nx1 daemon is running"), "{e}");
    }
}
