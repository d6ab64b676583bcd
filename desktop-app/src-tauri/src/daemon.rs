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

    /// The owner's balance and what the node carried.
    pub async fn credits(&self) -> Result<Value, String> {
        self.call(json!({ "cmd": "credits" })).await
    }

    /// Brings the client tunnel up from a wg-quick file (read here, by the user's app; the
    /// daemon gets its text).
    pub async fn connect(&self, config: &Path, interface: &str) -> Result<Value, String> {
        let text = tokio::fs::read_to_string(config)
            .await
            .map_err(|e| format!("reading {}: {e}", config.display()))?;
        self.call(json!({ "cmd": "connect", "config": text, "interface": interface }))
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

#[cfg(test)]
mod tests {
    use super::*;

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
