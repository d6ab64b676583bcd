//! Network namespaces and veth links that a test creates and removes again.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short tag unique to this test process and call, for namespace and interface names
/// (interface names have at most 15 bytes; UAPI sockets are not per namespace).
pub fn unique_tag() -> String {
    format!(
        "{}{}",
        std::process::id() % 10_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr if it fails.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name (`ip netns` list).
    pub name: String,
}

impl Netns {
    /// Creates `nx1-<role>-<tag>` with loopback up.
    pub fn new(role: &str, tag: &str) -> Self {
        let name = format!("nx1-{role}-{tag}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> Output {
        must(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `bash -c SCRIPT` inside the namespace and returns its output (success or not).
    pub fn sh(&self, script: &str) -> Output {
        self.command("bash")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("spawn sh")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair and gives each end its addresses (CIDR form).
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    must(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            // nodad: IPv6 addresses are usable at once instead of after duplicate detection.
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", ifname, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifname]);
            }
        }
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// Connects `ns` to `bridge` in `switch`: a veth pair with `port` on the bridge and `ifname`
/// (with its addresses) in `ns`.
pub fn attach(switch: &Netns, bridge: &str, port: &str, ns: &Netns, ifname: &str, addrs: &[&str]) {
    link(switch, port, &[], ns, ifname, addrs);
    switch.ip(&["link", "set", port, "master", bridge]);
}
