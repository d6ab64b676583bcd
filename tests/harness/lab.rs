//! The exit lab: namespaces `cli` ⟷ `exit` ⟷ `web` joined by veth pairs, the node under test
//! in `exit`, and wireguard-go + wg (an independent WireGuard) as the client in `cli`,
//! configured only from what `nx1 peer add` prints. `web` has no route back to the tunnel
//! pools, so only a masquerading exit gets answers from it.

use crate::netns::{Netns, link, must, unique_tag};
use crate::{Daemon, eventually, init_node, nx1, set_config, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Address of `exit` on the client side (the Endpoint clients use).
pub const EXIT_CLI_ADDR: &str = "198.18.1.1";
/// Address of `cli` on its link.
pub const CLI_ADDR: &str = "198.18.1.2";
/// `web`'s IPv4 address.
pub const WEB_V4: &str = "198.18.2.2";
/// `web`'s IPv6 address.
pub const WEB_V6: &str = "2001:2:0:2::2";
/// In a lab with a relay: the relay's address on the client side (the Endpoint clients use).
pub const RELAY_CLI_ADDR: &str = "198.18.4.1";
/// In a lab with a relay: the relay's address on the exit side (what the exit sees).
pub const RELAY_EXIT_ADDR: &str = "198.18.3.1";
/// In a lab with a relay: the exit's address on the relay side.
pub const EXIT_RELAY_ADDR: &str = "198.18.3.2";
/// The relay's UDP port in a lab with a relay.
pub const RELAY_PORT: u16 = 51821;

/// A background process that gets SIGTERM, then SIGKILL, when dropped.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child this test spawned; no memory is shared.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three namespaces, the node's data directory and what runs in them.
pub struct ExitLab {
    /// Unique suffix of this lab's names.
    pub tag: String,
    /// Client namespace.
    pub cli: Netns,
    /// Node namespace.
    pub exit: Netns,
    /// Server namespace.
    pub web: Netns,
    /// Temporary directory with the node's data.
    pub dir: tempfile::TempDir,
    /// The node's nx1.toml.
    pub config: PathBuf,
    /// The node's id.
    pub node_id: String,
    /// The node's WireGuard interface name.
    pub node_if: String,
    /// The client's wireguard-go interface name.
    pub client_if: String,
    /// The running node.
    pub node: Option<Daemon>,
    /// In a lab with a relay: the relay's namespace, between `cli` and `exit`.
    pub relay: Option<Netns>,
    /// In a lab with a relay: the relay node's nx1.toml.
    pub relay_config: Option<PathBuf>,
    /// In a lab with a relay: the running relay node.
    pub relay_node: Option<Daemon>,
    client: Option<Background>,
    web_server: Option<Background>,
}

impl ExitLab {
    /// Builds the namespaces and a node data directory (not started).
    pub fn new() -> Self {
        Self::build(false)
    }

    /// Builds `cli` ⟷ `rly` ⟷ `exit` ⟷ `web`: the client reaches the exit only through a
    /// relay node in `rly`. Both nodes are in one mesh (gossip on the relay–exit link); the
    /// relay node runs relay duty only. Neither is started.
    pub fn with_relay() -> Self {
        Self::build(true)
    }

    fn build(with_relay: bool) -> Self {
        let tag = unique_tag();
        let cli = Netns::new("cli", &tag);
        let exit = Netns::new("exit", &tag);
        let web = Netns::new("web", &tag);
        let relay = with_relay.then(|| Netns::new("rly", &tag));
        match &relay {
            None => link(
                &cli,
                "c0",
                &["198.18.1.2/24"],
                &exit,
                "e0",
                &["198.18.1.1/24"],
            ),
            Some(rly) => {
                link(
                    &cli,
                    "c0",
                    &["198.18.4.2/24"],
                    rly,
                    "r0",
                    &[&format!("{RELAY_CLI_ADDR}/24")],
                );
                link(
                    rly,
                    "r1",
                    &[&format!("{RELAY_EXIT_ADDR}/24")],
                    &exit,
                    "e0",
                    &[&format!("{EXIT_RELAY_ADDR}/24")],
                );
            }
        }
        link(
            &exit,
            "e1",
            &["198.18.2.1/24", "2001:2:0:2::1/64"],
            &web,
            "w0",
            &["198.18.2.2/24", "2001:2:0:2::2/64"],
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, node_id) = init_node(&dir.path().join("node"), dir.path());
        let node_if = format!("nx1e{tag}");
        set_config(&config, "api", "listen", "\"127.0.0.1:0\"");
        set_config(&config, "vpn", "interface", &format!("\"{node_if}\""));
        let exit_addr = if with_relay {
            EXIT_RELAY_ADDR
        } else {
            EXIT_CLI_ADDR
        };
        set_config(
            &config,
            "vpn",
            "endpoint",
            &format!("\"{exit_addr}:51820\""),
        );
        let relay_config = relay.as_ref().map(|_| {
            set_config(&config, "mesh", "enabled", "true");
            set_config(
                &config,
                "mesh",
                "listen",
                &format!("\"{EXIT_RELAY_ADDR}:7871\""),
            );
            let (rc, _) = init_node(&dir.path().join("relay"), dir.path());
            set_config(&rc, "api", "listen", "\"127.0.0.1:0\"");
            set_config(&rc, "vpn", "enabled", "false");
            set_config(&rc, "mesh", "enabled", "true");
            set_config(
                &rc,
                "mesh",
                "listen",
                &format!("\"{RELAY_EXIT_ADDR}:7871\""),
            );
            set_config(
                &rc,
                "mesh",
                "bootstrap",
                &format!("[\"{EXIT_RELAY_ADDR}:7871\"]"),
            );
            set_config(&rc, "relay", "enabled", "true");
            set_config(&rc, "relay", "listen_port", &RELAY_PORT.to_string());
            set_config(
                &rc,
                "relay",
                "endpoint",
                &format!("\"{RELAY_CLI_ADDR}:{RELAY_PORT}\""),
            );
            rc
        });
        Self {
            client_if: format!("wgc{tag}"),
            tag,
            cli,
            exit,
            web,
            dir,
            config,
            node_id,
            node_if,
            node: None,
            relay,
            relay_config,
            relay_node: None,
            client: None,
            web_server: None,
        }
    }

    /// Starts (or restarts) `nx1 up` in `exit` and waits until it answers.
    pub fn start_node(&mut self) {
        self.start_node_in(false)
    }

    /// Starts `nx1 up` in `cli` (client mode) or `exit`, and waits until it answers.
    pub fn start_node_in(&mut self, in_cli: bool) {
        let log = self.dir.path().join("node.log");
        let log_copy = log.clone();
        let ns = if in_cli { &self.cli } else { &self.exit };
        self.node = Some(Daemon::start_in(
            Some(ns),
            Some(&self.config),
            self.dir.path(),
            &log,
        ));
        eventually("the node to answer", Duration::from_secs(30), || {
            if !self.node.as_mut().unwrap().is_running() {
                panic!(
                    "nx1 up exited: {}",
                    std::fs::read_to_string(&log_copy).unwrap_or_default()
                );
            }
            self.status()
        });
    }

    /// In a lab with a relay: starts the relay node in `rly` and waits until it answers.
    pub fn start_relay(&mut self) {
        let log = self.dir.path().join("relay.log");
        let ns = self.relay.as_ref().expect("a lab with a relay");
        self.relay_node = Some(Daemon::start_in(
            Some(ns),
            self.relay_config.as_deref(),
            self.dir.path(),
            &log,
        ));
        eventually("the relay node to answer", Duration::from_secs(30), || {
            if !self.relay_node.as_mut().unwrap().is_running() {
                panic!(
                    "the relay's nx1 up exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            self.relay_status()
        });
    }

    /// `nx1 --config RELAY ARGS…` against the relay node.
    pub fn relay_nx1(&self, args: &[&str]) -> Output {
        let config = self.relay_config.as_ref().expect("a lab with a relay");
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        nx1(&all, self.dir.path())
    }

    /// The relay node's `nx1 status --json`, if it answers.
    pub fn relay_status(&self) -> Option<serde_json::Value> {
        let out = self.relay_nx1(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// SIGTERM to the node; returns whether it exited cleanly.
    pub fn stop_node(&mut self) -> bool {
        self.node
            .take()
            .expect("node running")
            .stop_with(libc::SIGTERM)
            .success()
    }

    /// `nx1 --config … ARGS` from the host (the control socket is a file, reachable from any
    /// namespace).
    pub fn nx1(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        nx1(&all, self.dir.path())
    }

    /// `nx1 status --json`, if the node answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.nx1(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `nx1 peer list --json`.
    pub fn peers(&self) -> serde_json::Value {
        let out = self.nx1(&["peer", "list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `nx1 peer add NAME`, returning the printed config.
    pub fn add_peer(&self, name: &str) -> String {
        let out = self.nx1(&["peer", "add", name]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Brings up wireguard-go in `cli` from a wg-quick config and routes everything into it.
    pub fn connect_client(&mut self, wg_quick: &str) {
        self.client = None;
        self.client = Some(wireguard_go_client(
            &self.cli,
            self.dir.path(),
            &self.client_if,
            wg_quick,
        ));
    }

    /// Removes the client's interface (wireguard-go exits).
    pub fn disconnect_client(&mut self) {
        self.client = None;
    }

    /// Whether `ping` from `cli` to `addr` gets an answer within ~`seconds`.
    pub fn ping(&self, addr: &str, seconds: u32) -> bool {
        self.cli
            .sh(&format!("ping -c 1 -W {seconds} {addr} >/dev/null 2>&1"))
            .status
            .success()
    }

    /// Pings until one answers (bounded).
    pub fn ping_eventually(&self, addr: &str, timeout: Duration) {
        eventually(&format!("a ping answer from {addr}"), timeout, || {
            self.ping(addr, 1).then_some(())
        });
    }

    /// Serves `body` as /hello.txt over HTTP on `web`:8080.
    pub fn start_web_server(&mut self, body: &str) {
        let root = self.dir.path().join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("hello.txt"), body).unwrap();
        let child = self
            .web
            .command("python3")
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        self.web_server = Some(Background(child));
        eventually("the web server", Duration::from_secs(10), || {
            self.web
                .sh("exec 3<>/dev/tcp/127.0.0.1/8080")
                .status
                .success()
                .then_some(())
        });
    }

    /// Runs a shell script in `cli`.
    pub fn in_cli(&self, script: &str) -> Output {
        self.cli.sh(script)
    }

    /// The data directory of the node.
    pub fn data_dir(&self) -> &Path {
        self.config.parent().unwrap()
    }
}

impl Drop for ExitLab {
    /// Stops what runs in the lab (the node gets SIGTERM and cleans up after itself), then
    /// removes a UAPI socket a crashed node may have left; the namespaces go with their fields.
    fn drop(&mut self) {
        self.client = None;
        self.web_server = None;
        self.node = None;
        self.relay_node = None;
        for name in [&self.node_if, &self.client_if] {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{name}.sock"));
        }
    }
}

impl Default for ExitLab {
    fn default() -> Self {
        Self::new()
    }
}

/// Brings up wireguard-go as `ifname` in `ns`, configured from a wg-quick config with `wg
/// setconf` (after `wg-quick strip`), with the config's addresses and default routes (v4 and
/// v6) into it. Dropping the result stops it, which removes the interface.
pub fn wireguard_go_client(ns: &Netns, dir: &Path, ifname: &str, wg_quick: &str) -> Background {
    let conf = dir.join(format!("{ifname}.conf"));
    std::fs::write(&conf, wg_quick).unwrap();
    let stripped = must(Command::new("wg-quick").arg("strip").arg(&conf));
    let setconf = dir.join(format!("{ifname}.setconf"));
    std::fs::write(&setconf, &stripped.stdout).unwrap();
    let child = ns
        .command("wireguard-go")
        .args(["-f", ifname])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go");
    let client = Background(child);
    let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    eventually(
        "wireguard-go's UAPI socket",
        Duration::from_secs(10),
        || sock.exists().then_some(()),
    );
    must(ns.command("wg").args(["setconf", ifname]).arg(&setconf));
    for addr in config_value(wg_quick, "Address").split(',').map(str::trim) {
        ns.ip(&["addr", "add", addr, "dev", ifname]);
    }
    ns.ip(&["link", "set", ifname, "up"]);
    ns.ip(&["route", "add", "default", "dev", ifname]);
    ns.ip(&["-6", "route", "add", "default", "dev", ifname]);
    client
}

/// An HTTP server on port 8080 in `ns` that answers every GET with the address that asked
/// (so a test behind NAT learns which exit its traffic left through).
pub fn whoami_server(ns: &Netns) -> Background {
    let server = Background(
        ns.command("python3")
            .args(["-c", "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n  b=s.client_address[0].encode()\n  s.send_response(200);s.send_header('Content-Length',str(len(b)));s.end_headers();s.wfile.write(b)\n def log_message(s,*a): pass\nh.HTTPServer(('0.0.0.0',8080),H).serve_forever()"])
            .stdin(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    eventually("the whoami server", Duration::from_secs(10), || {
        ns.sh("exec 3<>/dev/tcp/127.0.0.1/8080")
            .status
            .success()
            .then_some(())
    });
    server
}

/// Pings `addr` from `ns` every 50 ms, `count` times, while `during` runs (2 s after the
/// first ping); returns the icmp_seq numbers that were answered.
pub fn pings_during(ns: &Netns, addr: &str, count: u32, during: impl FnOnce()) -> Vec<u32> {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_secs(2));
    during();
    let output = out.wait_with_output().expect("ping");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Removes UAPI sockets (they are not per namespace) that killed nodes leave, when dropped.
pub struct UapiSockets(pub Vec<String>);

impl Drop for UapiSockets {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{name}.sock"));
        }
    }
}

/// The value of `Key = value` in an INI-style text.
pub fn config_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}
