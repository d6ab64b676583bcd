//! The vault, as the app uses it: a `nx1 vault serve` child process, run as the user (never
//! by the daemon: the vault's keys stay with the user), that holds the unlocked vault and
//! answers one JSON request per line. The app keeps no vault code of its own; what it shows
//! is what the command line would show.

use serde_json::{Value, json};
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// How long one request may take: a sync that waits for unreachable nodes, an import of
/// thousands of items.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The longest answer line read (a list of every item).
const MAX_ANSWER: u64 = 64 << 20;
/// The requests the window may send (the session refuses anything else too).
const OPS: &[&str] = &[
    "state", "open", "register", "status", "list", "get", "add", "edit", "delete", "totp",
    "generate", "import", "sync", "lock",
];

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The session process, started on first use and again if it ended.
pub struct Session {
    program: OsString,
    args: Vec<OsString>,
    running: Mutex<Option<Running>>,
}

impl Session {
    /// `$NX1_BIN vault serve`, else `nx1` from the PATH. The vault directory and account
    /// follow `NX1_VAULT_DIR` and `NX1_VAULT_ACCOUNT` as on the command line.
    pub fn from_env() -> Session {
        Session::with_program(std::env::var_os("NX1_BIN").unwrap_or_else(|| "nx1".into()))
    }

    /// A session run by this nx1 binary.
    pub fn with_program(program: impl Into<OsString>) -> Session {
        Session {
            program: program.into(),
            args: Vec::new(),
            running: Mutex::new(None),
        }
    }

    /// The same, keeping the vault in `dir` instead of where `nx1 vault` keeps it.
    pub fn in_dir(mut self, dir: &std::path::Path) -> Session {
        self.args = vec!["--vault-dir".into(), dir.into()];
        self
    }

    /// Sends one request; `progress` gets each progress event before the answer. An error
    /// answer is an `Err` with the session's sentence.
    pub async fn call(&self, request: Value, progress: impl Fn(Value)) -> Result<Value, String> {
        let op = request["op"].as_str().unwrap_or_default();
        if !OPS.contains(&op) {
            return Err(format!("{op:?} is not a vault request"));
        }
        let mut guard = self.running.lock().await;
        let alive = match guard.as_mut() {
            Some(r) => matches!(r.child.try_wait(), Ok(None)),
            None => false,
        };
        if !alive {
            *guard = Some(self.spawn()?);
        }
        let running = guard.as_mut().expect("started above");
        match tokio::time::timeout(TIMEOUT, exchange(running, &request, &progress)).await {
            Ok(Ok(answer)) => {
                if answer["ok"] == true {
                    Ok(answer)
                } else {
                    Err(answer["error"]
                        .as_str()
                        .unwrap_or("the vault refused the request")
                        .to_owned())
                }
            }
            Ok(Err(e)) => {
                // The session is in an unknown state: end it (the vault is saved on disk).
                *guard = None;
                Err(e)
            }
            Err(_) => {
                *guard = None;
                Err("the vault did not answer in time; it is locked now".into())
            }
        }
    }

    fn spawn(&self) -> Result<Running, String> {
        let mut child = Command::new(&self.program)
            .args(["vault", "serve"])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} vault serve: {e} (install nx1, or set NX1_BIN)",
                    self.program.to_string_lossy()
                )
            })?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Running {
            child,
            stdin,
            stdout,
        })
    }
}

async fn exchange(
    running: &mut Running,
    request: &Value,
    progress: &impl Fn(Value),
) -> Result<Value, String> {
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    running
        .stdin
        .write_all(&line)
        .await
        .map_err(|e| format!("the vault session ended: {e}"))?;
    loop {
        let mut answer = String::new();
        let n = (&mut running.stdout)
            .take(MAX_ANSWER)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("reading the vault's answer: {e}"))?;
        if n == 0 {
            return Err("the vault session ended".into());
        }
        let value: Value = serde_json::from_str(&answer)
            .map_err(|e| format!("the vault sent an invalid answer: {e}"))?;
        if value.get("event").is_some() {
            progress(value);
        } else {
            return Ok(value);
        }
    }
}

/// The value of `field` of an item as [`Session::call`] answered `get` with it: what the
/// copy button puts on the clipboard.
pub fn field_value(answer: &Value, field: &str) -> Option<String> {
    let item = &answer["item"];
    let v = match field {
        "username" | "password" | "notes" => item[field].as_str(),
        "url" => item["urls"][0].as_str(),
        _ => None,
    }?;
    (!v.is_empty()).then(|| v.to_owned())
}

/// The request that asks for one item.
pub fn get_request(id: &str) -> Value {
    json!({ "op": "get", "id": id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_requests_never_reach_the_session() {
        let s = Session::with_program("/nonexistent/nx1");
        let e = s.call(json!({ "op": "rm -rf" }), |_| {}).await.unwrap_err();
        assert!(e.contains("is not a vault request"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_nx1_is_a_sentence() {
        let s = Session::with_program("/nonexistent/nx1");
        let e = s.call(json!({ "op": "state" }), |_| {}).await.unwrap_err();
        assert!(e.contains("cannot run /nonexistent/nx1 vault serve"), "{e}");
    }

    #[test]
    fn copy_takes_the_named_field() {
        let a = json!({ "item": { "username": "ada", "password": "pw", "urls": ["https://x"], "notes": "" } });
        assert_eq!(field_value(&a, "password").as_deref(), Some("pw"));
        assert_eq!(field_value(&a, "url").as_deref(), Some("https://x"));
        assert_eq!(field_value(&a, "notes"), None);
        assert_eq!(field_value(&a, "totp"), None);
    }
}
