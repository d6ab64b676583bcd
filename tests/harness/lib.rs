//! Harness for NX1's end-to-end tests: runs the real `nx1` binary in throw-away directories
//! (and, for the network tests, in network namespaces the tests create), with every wait
//! bounded and every process stopped when the test ends.

pub mod lab;
pub mod netns;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `nx1` binary under test: `$NX1_BIN`, or the one cargo built next to this test.
pub fn nx1_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NX1_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/nx1
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("nx1"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p nx1-node` (scripts/test does)",
        bin.display()
    );
    bin
}

/// `nx1 init --dir DIR`, run in `cwd`: the new node's nx1.toml and its id.
pub fn init_node(dir: &Path, cwd: &Path) -> (PathBuf, String) {
    let out = nx1(&["init", "--dir", dir.to_str().unwrap()], cwd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout)
        .split_whitespace()
        .nth(2)
        .expect("init prints the node id")
        .to_owned();
    (dir.join("nx1.toml"), id)
}

/// Runs `nx1 ARGS` to completion (bounded by `timeout`) and returns its output.
pub fn nx1(args: &[&str], cwd: &Path) -> Output {
    let child = Command::new(nx1_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("NX1_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nx1");
    wait_output(child, Duration::from_secs(60))
}

/// Waits for a child with a deadline, killing it if the deadline passes.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "process did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `nx1 up`, stopped with SIGKILL if the test forgets to stop it.
pub struct Daemon {
    /// The process.
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts `nx1 [--config FILE] up` in `cwd`, logging to `log`.
    pub fn start(config: Option<&Path>, cwd: &Path, log: &Path) -> Self {
        Self::start_in(None, config, cwd, log)
    }

    /// Starts `nx1 up` inside a network namespace.
    pub fn start_in(
        ns: Option<&netns::Netns>,
        config: Option<&Path>,
        cwd: &Path,
        log: &Path,
    ) -> Self {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(nx1_bin());
                c
            }
            None => Command::new(nx1_bin()),
        };
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let log = std::fs::File::create(log).expect("log file");
        let child = cmd
            .arg("up")
            .current_dir(cwd)
            .env_remove("NX1_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn nx1 up");
        Self { child: Some(child) }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` and waits (bounded) for the exit status.
    pub fn stop_with(mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) with a pid this test owns and a valid signal number; no memory is shared.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nx1 did not exit within 20 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Daemon {
    /// SIGTERM first, so the node removes what it set up (sockets, tables); SIGKILL if it
    /// has not exited within 10 s.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on a child this test spawned; no memory is shared.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.0 GET; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(status_and_body(&text))
}

/// The status code and body of an HTTP response's text.
fn status_and_body(text: &str) -> (u16, String) {
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// A loopback TCP port that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A plain HTTP/1.0 request with a body and extra headers; returns (status code, body).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // The server may answer (413) before reading a large body; a failed write is not an error.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    Ok(status_and_body(&String::from_utf8_lossy(&raw)))
}

/// Replaces `key = …` inside `[section]` of a TOML file with `key = value`.
pub fn set_config(path: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    let mut out = String::new();
    let mut in_section = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_section && !done {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            }
            in_section = t == format!("[{section}]");
        }
        if in_section && !done && t.split('=').next().map(str::trim) == Some(key) {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        if !in_section {
            out.push_str(&format!("[{section}]\n"));
        }
        out.push_str(&format!("{key} = {value}\n"));
    }
    std::fs::write(path, out).expect("write config");
}

/// A database on the PostgreSQL server the tests use, dropped again at the end.
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// A fresh database named after this process and `tag`.
    pub fn create(tag: &str) -> Self {
        let admin_url = std::env::var("NX1_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("nx1_e2e_{tag}_{}", std::process::id());
        let db = Self { admin_url, name };
        db.psql(&format!("DROP DATABASE IF EXISTS {}", db.name));
        db.psql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    /// Runs SQL as the admin user on the admin database.
    pub fn psql(&self, sql: &str) {
        let out = std::process::Command::new("psql")
            .args([&self.admin_url, "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("psql (postgresql-client) is needed");
        assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
    }

    /// `nx1 init`s a node in `tmp/dir` that keeps its state in this database (no WireGuard
    /// interface, HTTP API on a free port) and returns its config file.
    pub fn node(&self, tmp: &Path, dir: &str) -> std::path::PathBuf {
        let (config, _) = init_node(&tmp.join(dir), tmp);
        set_config(&config, "api", "listen", "\"127.0.0.1:0\"");
        set_config(&config, "vpn", "enabled", "false");
        set_config(
            &config,
            "store",
            "database_url",
            &format!("\"{}\"", self.url()),
        );
        config
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        let base = &self.admin_url[..self.admin_url.rfind('/').unwrap()];
        format!("{base}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

impl PgDatabase {
    /// Runs SQL on this database and returns what it printed (unaligned, tuples only).
    pub fn query(&self, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args([&self.url(), "-v", "ON_ERROR_STOP=1", "-Atqc", sql])
            .output()
            .expect("psql (postgresql-client) is needed");
        assert!(out.status.success(), "{sql}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Every row of every table, as `pg_dump --data-only` prints them.
    pub fn dump(&self) -> Vec<u8> {
        let out = std::process::Command::new("pg_dump")
            .args(["--data-only", &self.url()])
            .output()
            .expect("pg_dump (postgresql-client) is needed");
        assert!(out.status.success(), "pg_dump: {}", text(&out.stderr));
        out.stdout
    }
}

/// The text of a process's output streams, for assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
