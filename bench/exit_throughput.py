#!/usr/bin/env python3
"""Exit-node throughput benchmark: iperf3 through cli -> exit -> web network namespaces.

Measures TCP throughput (iperf3, 1 and 4 streams) from a client namespace through an exit
namespace to a web namespace, for several data paths in the exit (plain routing + NAT,
wireguard-go, boringtun-cli, NX1, NX1 client <-> NX1 exit), and the exit daemon's CPU time
per GB carried. Python 3.11 standard library only; needs root, iproute2, nftables, iperf3,
wireguard-go and wireguard-tools. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# --- lab layout ---------------------------------------------------------------------------

NS_CLI, NS_EXIT, NS_WEB = "nx1b-cli", "nx1b-exit", "nx1b-web"
NAMESPACES = (NS_CLI, NS_EXIT, NS_WEB)
# (namespace, interface) pairs of the two veth links.
VETH_CLI, VETH_EXIT_CLI = "nx1b-c0", "nx1b-e0"  # cli <-> exit, 198.18.1.0/24
VETH_EXIT_WEB, VETH_WEB = "nx1b-e1", "nx1b-w0"  # exit <-> web, 198.18.2.0/24
CLI_ADDR, EXIT_CLI_ADDR = "198.18.1.2", "198.18.1.1"
EXIT_WEB_ADDR, WEB_ADDR = "198.18.2.1", "198.18.2.2"

WG_PORT = 51820
WG_SERVER_IF, WG_CLIENT_IF = "wgbx", "wgbc"
NX1_EXIT_IF, NX1_CLIENT_IF = "nx1bx", "nx1bc"
# UAPI sockets are global (/var/run/wireguard is not per namespace): only these names are ours.
OUR_IFACES = (WG_SERVER_IF, WG_CLIENT_IF, NX1_EXIT_IF, NX1_CLIENT_IF)
WG_SOCK_DIR = "/var/run/wireguard"
WG_POOL, WG_SERVER_ADDR, WG_CLIENT_ADDR = "10.77.0.0/24", "10.77.0.1/24", "10.77.0.2/32"
NFT_TABLE = "nx1bench"

TMP_PREFIX = "nx1bench-"
LOCK_FILE = "/run/nx1bench.lock"
ALL_PATHS = ("veth", "wireguard-go", "boringtun-cli", "nx1", "nx1-noguard", "nx1-nx1")
REFERENCE_PATH = "wireguard-go"
STREAMS = (1, 4)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

READY_TIMEOUT = 30.0  # handshake / first ping through a path
START_TIMEOUT = 15.0  # a daemon's socket appearing
STOP_TIMEOUT = 10.0  # SIGTERM -> exit, before SIGKILL


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step failed; the message is one line for the report."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so the finally blocks clean up."""


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


# --- subprocess helpers -------------------------------------------------------------------


def in_ns(ns: str | None, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)


def run(cmd: list[str], *, ns: str | None = None, timeout: float = 15, check: bool = True,
        input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = in_ns(ns, cmd)
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                           env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:g}s: {shlex.join(cmd)}") from None
    except FileNotFoundError as e:
        raise BenchError(f"cannot run {cmd[0]}: {e}") from None
    if check and p.returncode != 0:
        why = (p.stderr.strip() or p.stdout.strip()).replace("\n", " | ")[:400]
        raise BenchError(f"{shlex.join(cmd)} exited {p.returncode}: {why}")
    return p


def write_private(path: str, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class Daemon:
    """A long-running process (started through `ip netns exec`, which execs, so `pid` is the
    daemon's own pid). Output goes to a log file; stop() sends SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log_path: str, env: dict | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self._log = open(log_path, "ab")
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.stopped = False
        log(f"started {name} (pid {self.pid}): {shlex.join(cmd)}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; "
                             f"log tail: {self.log_tail()}")

    def comm(self) -> str:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return "?"

    def log_tail(self, n: int = 6) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [l.rstrip() for l in f.readlines() if l.strip()]
            return " | ".join(lines[-n:]) or "(empty)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) ignored SIGTERM for {STOP_TIMEOUT:g}s: SIGKILL")
                self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log(f"{self.name} (pid {self.pid}) did not die after SIGKILL")
        self._log.close()
        log(f"stopped {self.name} (exit {self.proc.returncode})")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads, live and exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state), so field 14 (utime) is rest[11] and 15 (stime) rest[12].
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat (not per namespace)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])  # guest time is already counted in user
    return total - idle, total


def socket_is_live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def uapi_path(iface: str) -> str:
    return os.path.join(WG_SOCK_DIR, f"{iface}.sock")


def remove_stale_uapi(iface: str) -> None:
    path = uapi_path(iface)
    if os.path.exists(path):
        if socket_is_live(path):
            raise BenchError(f"{path} is served by a process this run does not own; "
                             f"stop it first (the bench needs the name {iface})")
        os.unlink(path)
        log(f"removed stale {path}")


# --- the lab ------------------------------------------------------------------------------


def process_running(pid: int) -> bool:
    """False once the process is gone or a zombie (waiting for a parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] not in ("Z", "X")


def ns_exists(ns: str) -> bool:
    return os.path.exists(f"/var/run/netns/{ns}")


def purge(tmp_keep: str | None = None) -> None:
    """Removes everything a run of this script can leave: processes inside our namespaces,
    the namespaces (and with them veths, TUN devices, nft tables), our UAPI sockets, our
    temporary directories. Safe to call when nothing is there."""
    for ns in NAMESPACES:
        if not ns_exists(ns):
            continue
        pids = run(["ip", "netns", "pids", ns], timeout=10, check=False).stdout.split()
        pids = [int(p) for p in pids if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    live.append(pid)
            if live:
                log(f"sent {sig.name} to leftover pids {live} in {ns}")
            deadline = time.monotonic() + 5
            while live and time.monotonic() < deadline:
                live = [p for p in live if process_running(p)]
                time.sleep(0.1)
            pids = live
            if not pids:
                break
        run(["ip", "netns", "del", ns], timeout=10, check=False)
        if ns_exists(ns):
            log(f"warning: namespace {ns} still exists after ip netns del")
    for iface in OUR_IFACES:
        try:
            remove_stale_uapi(iface)
        except BenchError as e:
            log(f"warning: {e}")
    for d in glob.glob(os.path.join(tempfile.gettempdir(), TMP_PREFIX + "*")):
        if d != tmp_keep and os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)


def build_lab() -> None:
    for ns in NAMESPACES:
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])  # nx1's HTTP API binds 127.0.0.1
    # veth ends are created directly inside their namespaces: nothing appears on the host.
    run(["ip", "link", "add", VETH_CLI, "netns", NS_CLI, "type", "veth",
         "peer", "name", VETH_EXIT_CLI, "netns", NS_EXIT])
    run(["ip", "link", "add", VETH_EXIT_WEB, "netns", NS_EXIT, "type", "veth",
         "peer", "name", VETH_WEB, "netns", NS_WEB])
    for ns, dev, addr in ((NS_CLI, VETH_CLI, CLI_ADDR), (NS_EXIT, VETH_EXIT_CLI, EXIT_CLI_ADDR),
                          (NS_EXIT, VETH_EXIT_WEB, EXIT_WEB_ADDR), (NS_WEB, VETH_WEB, WEB_ADDR)):
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    run(["sysctl", "-w", "net.ipv4.ip_forward=1"], ns=NS_EXIT)
    # web keeps only its connected 198.18.2.0/24: answers reach only masqueraded sources.
    routes = run(["ip", "-n", NS_WEB, "-4", "route", "show"]).stdout.strip().splitlines()
    if len(routes) != 1 or not routes[0].startswith("198.18.2.0/24"):
        raise BenchError(f"unexpected routes in {NS_WEB}: {routes}")


@dataclass
class PathRun:
    """A path that is up: the exit daemon to measure (None for plain routing)."""
    exit: Daemon | None = None
    client: Daemon | None = None
    handshake_iface: str | None = None  # a wireguard-tools interface in cli to poll


class Lab:
    def __init__(self, args: argparse.Namespace, tmp: str):
        self.args, self.tmp = args, tmp
        self.daemons: list[Daemon] = []
        self.iperf_server: Daemon | None = None
        self.counter = 0

    def workdir(self, name: str) -> str:
        self.counter += 1
        d = os.path.join(self.tmp, f"{self.counter:02d}-{name}")
        os.makedirs(d, mode=0o700)
        return d

    def start(self, name: str, cmd: list[str], ns: str, log_dir: str,
              env: dict | None = None) -> Daemon:
        d = Daemon(name, in_ns(ns, cmd), os.path.join(log_dir, f"{name}.log"), env)
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.daemons):
            with contextlib.suppress(Exception):
                d.stop()
        self.daemons.clear()

    # --- iperf3 server -----------------------------------------------------------------

    def ensure_iperf_server(self) -> None:
        if self.iperf_server and self.iperf_server.alive():
            return
        if self.iperf_server:
            log(f"iperf3 server died ({self.iperf_server.log_tail()}); restarting")
        self.iperf_server = self.start("iperf3-server", ["iperf3", "-s", "-B", WEB_ADDR],
                                       NS_WEB, self.tmp)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.iperf_server.check_alive()
            out = run(["ss", "-Hltn"], ns=NS_WEB, check=False).stdout
            if f"{WEB_ADDR}:5201" in out:
                return
            time.sleep(0.2)
        raise BenchError("iperf3 server did not start listening")

    # --- shared pieces of the paths -----------------------------------------------------

    def nft_masquerade(self, stack: contextlib.ExitStack, source: str) -> None:
        rules = (f"table ip {NFT_TABLE} {{\n"
                 f"  chain postrouting {{\n"
                 f"    type nat hook postrouting priority srcnat; policy accept;\n"
                 f"    ip saddr {source} oifname \"{VETH_EXIT_WEB}\" masquerade\n"
                 f"  }}\n"
                 f"}}\n")
        run(["nft", "-f", "-"], ns=NS_EXIT, input=rules)
        stack.callback(run, ["nft", "delete", "table", "ip", NFT_TABLE], ns=NS_EXIT,
                       check=False)

    def wait_uapi(self, iface: str, daemon: Daemon) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            daemon.check_alive()
            if os.path.exists(uapi_path(iface)):
                if run(["wg", "show", iface], check=False, timeout=5).returncode == 0:
                    return
            time.sleep(0.1)
        raise BenchError(f"{daemon.name}: no UAPI socket {uapi_path(iface)} after "
                         f"{START_TIMEOUT:g}s; log tail: {daemon.log_tail()}")

    def stop_wg_daemon(self, daemon: Daemon, iface: str) -> None:
        daemon.stop()
        with contextlib.suppress(BenchError):
            remove_stale_uapi(iface)

    def start_wg_server(self, stack: contextlib.ExitStack, name: str, cmd: list[str],
                        workdir: str, client_pub: str) -> tuple[Daemon, str]:
        """A UAPI-configured WireGuard server `wgbx` in exit; returns it and its public key."""
        remove_stale_uapi(WG_SERVER_IF)
        priv = run(["wg", "genkey"]).stdout.strip()
        pub = run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
        keyfile = write_private(os.path.join(workdir, "server.key"), priv + "\n")
        d = self.start(name, cmd, NS_EXIT, workdir, env={"WG_PROCESS_FOREGROUND": "1"})
        stack.callback(self.stop_wg_daemon, d, WG_SERVER_IF)
        self.wait_uapi(WG_SERVER_IF, d)
        run(["wg", "set", WG_SERVER_IF, "listen-port", str(WG_PORT), "private-key", keyfile,
             "peer", client_pub, "allowed-ips", WG_CLIENT_ADDR], ns=NS_EXIT)
        run(["ip", "-n", NS_EXIT, "addr", "add", WG_SERVER_ADDR, "dev", WG_SERVER_IF])
        run(["ip", "-n", NS_EXIT, "link", "set", WG_SERVER_IF, "up"])
        self.nft_masquerade(stack, WG_POOL)
        return d, pub

    def start_wg_client(self, stack: contextlib.ExitStack, conf_text: str,
                        workdir: str) -> Daemon:
        """wireguard-go `wgbc` in cli from a wg-quick config: `wg-quick strip` + `wg setconf`,
        the Address= addresses, and the IPv4 default route through the tunnel."""
        remove_stale_uapi(WG_CLIENT_IF)
        # wg-quick wants the file named IFNAME.conf; an absolute path avoids /etc/wireguard.
        conf = write_private(os.path.join(workdir, f"{WG_CLIENT_IF}.conf"), conf_text)
        stripped = run(["wg-quick", "strip", conf]).stdout
        setconf = write_private(os.path.join(workdir, f"{WG_CLIENT_IF}.setconf"), stripped)
        addresses = []
        for line in conf_text.splitlines():
            m = re.match(r"\s*Address\s*=\s*(.+?)\s*$", line, re.IGNORECASE)
            if m:
                addresses += [a.strip() for a in m.group(1).split(",") if a.strip()]
        if not addresses:
            raise BenchError("the client config has no Address =")
        d = self.start("wireguard-go-client", ["wireguard-go", "-f", WG_CLIENT_IF], NS_CLI,
                       workdir, env={"WG_PROCESS_FOREGROUND": "1"})
        stack.callback(self.stop_wg_daemon, d, WG_CLIENT_IF)
        self.wait_uapi(WG_CLIENT_IF, d)
        run(["wg", "setconf", WG_CLIENT_IF, setconf], ns=NS_CLI)
        for addr in addresses:
            p = run(["ip", "-n", NS_CLI, "addr", "add", addr, "dev", WG_CLIENT_IF], check=False)
            if p.returncode != 0:
                if ":" in addr:  # IPv6 is not what is measured: note it and go on
                    log(f"warning: cannot add {addr} to {WG_CLIENT_IF}: {p.stderr.strip()}")
                else:
                    raise BenchError(f"cannot add {addr} to {WG_CLIENT_IF}: {p.stderr.strip()}")
        run(["ip", "-n", NS_CLI, "link", "set", WG_CLIENT_IF, "up"])
        # The endpoint 198.18.1.1 stays on the connected /24 route, so no host route is needed.
        run(["ip", "-n", NS_CLI, "-4", "route", "replace", "default", "dev", WG_CLIENT_IF])
        return d

    def wireguard_pair(self, stack, name: str, server_cmd: list[str]) -> PathRun:
        workdir = self.workdir(name)
        cpriv = run(["wg", "genkey"]).stdout.strip()
        cpub = run(["wg", "pubkey"], input=cpriv + "\n").stdout.strip()
        server, spub = self.start_wg_server(stack, f"{name}-server", server_cmd, workdir, cpub)
        conf = (f"[Interface]\nPrivateKey = {cpriv}\nAddress = {WG_CLIENT_ADDR}\n\n"
                f"[Peer]\nPublicKey = {spub}\nEndpoint = {EXIT_CLI_ADDR}:{WG_PORT}\n"
                f"AllowedIPs = 0.0.0.0/0\n")
        client = self.start_wg_client(stack, conf, workdir)
        return PathRun(exit=server, client=client, handshake_iface=WG_CLIENT_IF)

    # --- NX1 ----------------------------------------------------------------------------

    def nx1_node(self, stack, name: str, ns: str, edits: dict[str, dict[str, str]]) -> tuple[Daemon, str]:
        """`nx1 init` a fresh data dir, edit its nx1.toml, run `nx1 up` in `ns`, wait until
        `nx1 status --json` answers. Returns the daemon and its config path."""
        nx1 = self.args.nx1_path
        workdir = self.workdir(name)
        data = os.path.join(workdir, "data")
        run([nx1, "init", "--dir", data], timeout=60)
        config = os.path.join(data, "nx1.toml")
        edit_toml(config, edits)
        d = self.start(name, [nx1, "--config", config, "up"], ns, workdir)
        stack.callback(d.stop)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            d.check_alive()
            p = run([nx1, "--config", config, "status", "--json"], timeout=5, check=False)
            if p.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: `nx1 status` still failing after {READY_TIMEOUT:g}s: "
                                 f"{p.stderr.strip()}; log tail: {d.log_tail()}")
            time.sleep(0.3)
        if d.comm() != "nx1":
            log(f"warning: pid {d.pid} is {d.comm()!r}, not nx1: CPU would be measured wrongly")
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            vpn = json.loads(p.stdout).get("vpn")
            log(f"{name} up: vpn {json.dumps(vpn)[:300]}")
        return d, config

    def nx1_exit(self, stack, guard: bool = True) -> tuple[Daemon, str, str]:
        """The NX1 exit node in exit plus one registered client; returns the daemon, the
        client's wg-quick config text, and a directory for files. `guard` switches Guard
        (its DNS filter and its per-packet inspection) on or off."""
        remove_stale_uapi(NX1_EXIT_IF)
        d, config = self.nx1_node(stack, "nx1-exit", NS_EXIT, {
            "api": {"listen": '"127.0.0.1:0"'},
            "vpn": {"interface": f'"{NX1_EXIT_IF}"', "endpoint": f'"{EXIT_CLI_ADDR}:{WG_PORT}"'},
            "guard": {"enabled": "true" if guard else "false"},
        })
        stack.callback(remove_stale_uapi_quiet, NX1_EXIT_IF)
        conf = run([self.args.nx1_path, "--config", config, "peer", "add", "bench"]).stdout
        if "[Interface]" not in conf or "[Peer]" not in conf:
            raise BenchError(f"`nx1 peer add` printed no wg-quick config: {conf[:200]!r}")
        return d, conf, os.path.dirname(os.path.dirname(config))

    # --- the paths ----------------------------------------------------------------------

    def setup(self, path: str, stack: contextlib.ExitStack) -> PathRun:
        if path == "veth":
            self.nft_masquerade(stack, "198.18.1.0/24")
            run(["ip", "-n", NS_CLI, "-4", "route", "replace", "default", "via", EXIT_CLI_ADDR])
            stack.callback(run, ["ip", "-n", NS_CLI, "-4", "route", "del", "default"],
                           check=False)
            return PathRun()
        if path == "wireguard-go":
            return self.wireguard_pair(stack, "wireguard-go",
                                       ["wireguard-go", "-f", WG_SERVER_IF])
        if path == "boringtun-cli":
            return self.wireguard_pair(stack, "boringtun-cli",
                                       [self.args.boringtun_path, WG_SERVER_IF, "--foreground",
                                        "--disable-drop-privileges"])
        if path in ("nx1", "nx1-noguard"):
            exit_d, conf, workdir = self.nx1_exit(stack, guard=path == "nx1")
            client = self.start_wg_client(stack, conf, workdir)
            return PathRun(exit=exit_d, client=client, handshake_iface=WG_CLIENT_IF)
        if path == "nx1-nx1":
            exit_d, conf, workdir = self.nx1_exit(stack)
            conffile = write_private(os.path.join(workdir, "bench.conf"), conf)
            remove_stale_uapi(NX1_CLIENT_IF)
            client, config = self.nx1_node(stack, "nx1-client", NS_CLI, {
                "api": {"listen": '"127.0.0.1:0"'},
                "vpn": {"enabled": "false"},
            })
            out = run([self.args.nx1_path, "--config", config, "connect", conffile,
                       "--interface", NX1_CLIENT_IF], timeout=30).stdout.strip()
            log(out)
            stack.callback(run, [self.args.nx1_path, "--config", config, "disconnect"],
                           timeout=15, check=False)
            return PathRun(exit=exit_d, client=client, handshake_iface=None)
        raise BenchError(f"unknown path {path}")

    def wait_ready(self, path: str, pr: PathRun) -> float:
        """Pings web through the path (which also triggers the handshake) until it answers
        and, for a wireguard-tools client, `wg show IF latest-handshakes` is non-zero."""
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT
        handshake = pr.handshake_iface is None
        pinged = False
        while time.monotonic() < deadline:
            for d in (pr.exit, pr.client):
                if d:
                    d.check_alive()
            if not pinged:
                pinged = run(["ping", "-c", "1", "-W", "1", "-q", WEB_ADDR], ns=NS_CLI,
                             timeout=5, check=False).returncode == 0
            if not handshake:
                out = run(["wg", "show", pr.handshake_iface, "latest-handshakes"], ns=NS_CLI,
                          timeout=5, check=False).stdout
                handshake = any(l.split()[-1] != "0" for l in out.splitlines() if l.split())
            if pinged and handshake:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise BenchError(f"{path}: not ready after {READY_TIMEOUT:g}s (ping ok: {pinged}, "
                         f"handshake: {handshake})")


def remove_stale_uapi_quiet(iface: str) -> None:
    with contextlib.suppress(BenchError):
        remove_stale_uapi(iface)


def edit_toml(path: str, edits: dict[str, dict[str, str]]) -> None:
    """Replaces `key = ...` lines inside `[section]`s; every key must be there exactly once
    (nx1 init writes every key at its default)."""
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    section, seen = None, set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1).strip()
            continue
        m = re.match(r"\s*([A-Za-z0-9_]+)\s*=", line)
        if m and section in edits and m.group(1) in edits[section]:
            key = (section, m.group(1))
            if key in seen:
                raise BenchError(f"{path}: [{section}] {key[1]} appears twice")
            seen.add(key)
            lines[i] = f"{key[1]} = {edits[section][key[1]]}\n"
    missing = [f"[{s}] {k}" for s, ks in edits.items() for k in ks if (s, k) not in seen]
    if missing:
        raise BenchError(f"{path}: keys not found: {', '.join(missing)}")
    with open(path, "w") as f:
        f.writelines(lines)


# --- measuring ----------------------------------------------------------------------------


def measure(lab: Lab, pr: PathRun, streams: int, seconds: int) -> dict:
    lab.ensure_iperf_server()
    cmd = in_ns(NS_CLI, ["iperf3", "-c", WEB_ADDR, "-t", str(seconds), "-P", str(streams),
                         "-J", "--connect-timeout", "3000"])
    exit_cpu0 = cpu_seconds(pr.exit.pid) if pr.exit else None
    cli_cpu0 = cpu_seconds(pr.client.pid) if pr.client else None
    host0 = host_cpu()
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        raise BenchError(f"iperf3 -P {streams} timed out after {seconds + 20}s") from None
    wall = time.monotonic() - t0
    host1 = host_cpu()
    try:
        exit_cpu = cpu_seconds(pr.exit.pid) - exit_cpu0 if pr.exit else None
        cli_cpu = cpu_seconds(pr.client.pid) - cli_cpu0 if pr.client else None
    except (OSError, ValueError) as e:
        raise BenchError(f"daemon vanished during iperf3: {e}") from None
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 -P {streams} exited {p.returncode} without JSON: "
                         f"{(p.stderr or p.stdout).strip()[:300]}") from None
    if "error" in data or p.returncode != 0:
        raise BenchError(f"iperf3 -P {streams}: {data.get('error', f'exit {p.returncode}')}")
    received = data["end"]["sum_received"]
    sent = data["end"].get("sum_sent", {})
    rbytes = int(received["bytes"])
    busy = host1[0] - host0[0]
    total = max(host1[1] - host0[1], 1)
    r = {
        "streams": streams,
        "seconds": seconds,
        "bits_per_second": float(received["bits_per_second"]),
        "bytes_received": rbytes,
        "retransmits": sent.get("retransmits"),
        "wall_s": round(wall, 3),
        "exit_cpu_s": exit_cpu,
        "exit_cpu_s_per_gb": (exit_cpu / (rbytes / 1e9)) if exit_cpu is not None and rbytes else None,
        "exit_core_pct": (100 * exit_cpu / wall) if exit_cpu is not None else None,
        "client_cpu_s": cli_cpu,
        "client_core_pct": (100 * cli_cpu / wall) if cli_cpu is not None else None,
        "host_busy_pct_all_cores": round(100 * busy / total, 1),
    }
    return r


# --- report -------------------------------------------------------------------------------


def fmt_num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt_num(med)
    return f"{fmt_num(med)} ({fmt_num(min(values))}–{fmt_num(max(values))})"


def summarise(results: list[dict], paths: list[str]) -> dict:
    summary = {}
    for path in paths:
        s = {}
        for n in STREAMS:
            rows = [r for r in results if r["path"] == path and r["streams"] == n]
            gbps = [r["bits_per_second"] / 1e9 for r in rows]
            cpu_gb = [r["exit_cpu_s_per_gb"] for r in rows if r["exit_cpu_s_per_gb"] is not None]
            core = [r["exit_core_pct"] for r in rows if r["exit_core_pct"] is not None]
            s[n] = {
                "gbps": gbps,
                "gbps_median": statistics.median(gbps) if gbps else None,
                "cpu_s_per_gb_median": statistics.median(cpu_gb) if cpu_gb else None,
                "core_pct_median": statistics.median(core) if core else None,
            }
        summary[path] = s
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pair(a, b, digits: int = 2) -> str:
    if a is None and b is None:
        return "-"
    return f"{fmt_num(a, digits)} / {fmt_num(b, digits)}"


def pct_pair(a, b) -> str:
    if a is None and b is None:
        return "-"
    return " / ".join("-" if x is None else f"{x:.0f}%" for x in (a, b))


def render_table(summary: dict, paths: list[str], skipped: dict[str, str],
                 failed: dict[str, str]) -> str:
    ref = summary.get(REFERENCE_PATH)
    lines = [
        "| path | 1 stream Gbit/s | 4 streams Gbit/s | exit CPU-s per GB (1 / 4) "
        "| exit % core (1 / 4) | throughput vs wireguard-go (1 / 4) "
        "| CPU/GB vs wireguard-go (1 / 4) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        if path in skipped and not summary[path][1]["gbps"]:
            lines.append(f"| {path} | skipped: {skipped[path]} | | | | | |")
            continue
        s = summary[path]
        if not s[1]["gbps"] and not s[4]["gbps"]:
            lines.append(f"| {path} | failed: {failed.get(path, 'not measured')} | | | | | |")
            continue
        tp = [ratio(s[n]["gbps_median"], ref[n]["gbps_median"]) if ref else None for n in STREAMS]
        cr = [ratio(s[n]["cpu_s_per_gb_median"], ref[n]["cpu_s_per_gb_median"]) if ref else None
              for n in STREAMS]
        lines.append(
            f"| {path} | {spread(s[1]['gbps'])} | {spread(s[4]['gbps'])} "
            f"| {pair(s[1]['cpu_s_per_gb_median'], s[4]['cpu_s_per_gb_median'], 1)} "
            f"| {pct_pair(s[1]['core_pct_median'], s[4]['core_pct_median'])} "
            f"| {pair(*tp)} | {pair(*cr)} |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def run_path(lab: Lab, path: str, rnd: int, stack: contextlib.ExitStack,
             results: list[dict]) -> None:
    pr = lab.setup(path, stack)
    took = lab.wait_ready(path, pr)
    who = f"; exit daemon pid {pr.exit.pid} is {pr.exit.comm()!r}" if pr.exit else ""
    log(f"{path}: ready after {took:.1f}s{who}")
    for n in STREAMS:
        r = measure(lab, pr, n, lab.args.seconds)
        r.update(path=path, round=rnd)
        results.append(r)
        cpu = (f", exit CPU {r['exit_cpu_s']:.2f}s = {r['exit_cpu_s_per_gb']:.2f} s/GB, "
               f"{r['exit_core_pct']:.0f}% core" if r["exit_cpu_s"] is not None else "")
        log(f"{path} -P {n}: {r['bits_per_second'] / 1e9:.3f} Gbit/s, "
            f"{r['bytes_received'] / 1e9:.2f} GB, retransmits {r['retransmits']}{cpu}, "
            f"host busy {r['host_busy_pct_all_cores']}%")


def resolve_binary(given: str, relative_to_repo: bool) -> str | None:
    if os.sep not in given:
        return shutil.which(given)
    candidates = [os.path.abspath(given)]
    if relative_to_repo and not os.path.isabs(given):
        candidates.append(os.path.join(REPO, given))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--paths", default=",".join(ALL_PATHS),
                    help=f"comma-separated subset of {','.join(ALL_PATHS)}")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; paths interleave per round")
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 -t per measurement")
    ap.add_argument("--nx1", default="target/release/nx1",
                    help="nx1 binary (a relative path is tried from the cwd, then the repo root)")
    ap.add_argument("--boringtun-cli", dest="boringtun_cli", default="boringtun-cli",
                    help="boringtun-cli binary (a bare name is looked up on PATH)")
    ap.add_argument("--json", metavar="FILE", help="write raw results to FILE")
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.paths if p not in ALL_PATHS]
    if bad or not args.paths:
        ap.error(f"unknown path(s) {bad}; choose from {','.join(ALL_PATHS)}")
    args.paths = list(dict.fromkeys(args.paths))
    if args.rounds < 1 or args.seconds < 1:
        ap.error("--rounds and --seconds must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("exit_throughput.py: needs root (namespaces, TUN, nftables)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "iperf3", "ping", "ss", "sysctl"):
        if not shutil.which(tool):
            print(f"exit_throughput.py: {tool} not found", file=sys.stderr)
            return 2
    wg_tools_needed = any(p != "veth" for p in args.paths)
    for tool in ("wireguard-go", "wg", "wg-quick"):
        if wg_tools_needed and not shutil.which(tool):
            print(f"exit_throughput.py: {tool} not found", file=sys.stderr)
            return 2

    skipped: dict[str, str] = {}
    args.boringtun_path = resolve_binary(args.boringtun_cli, False)
    if "boringtun-cli" in args.paths and not args.boringtun_path:
        skipped["boringtun-cli"] = f"{args.boringtun_cli} not found"
    args.nx1_path = resolve_binary(args.nx1, True)
    for p in ("nx1", "nx1-noguard", "nx1-nx1"):
        if p in args.paths and not args.nx1_path:
            skipped[p] = f"{args.nx1} not found (build with cargo build --release)"
    for p, why in skipped.items():
        log(f"skipping {p}: {why}")
    active = [p for p in args.paths if p not in skipped]

    lock = open(LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"exit_throughput.py: another run holds {LOCK_FILE}", file=sys.stderr)
        return 2

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "command": shlex.join([sys.argv[0], *argv]),
        "paths": args.paths,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "nx1": args.nx1_path,
        "boringtun_cli": args.boringtun_path,
    }
    with contextlib.suppress(Exception):
        meta["nproc"] = int(run(["nproc"], timeout=5).stdout.strip())
    if args.nx1_path and any(p.startswith("nx1") for p in active):
        with contextlib.suppress(BenchError):
            meta["nx1_version"] = run([args.nx1_path, "--version"], timeout=10).stdout.strip()
    with contextlib.suppress(BenchError):
        meta["git"] = run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                          timeout=10).stdout.strip()

    results: list[dict] = []
    failures: list[dict] = []
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    interrupted = None
    tmp = None
    lab = None
    try:
        purge()
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
        lab = Lab(args, tmp)
        log(f"building namespaces {', '.join(NAMESPACES)}")
        build_lab()
        lab.ensure_iperf_server()
        for rnd in range(1, args.rounds + 1):
            for path in active:
                log(f"round {rnd}/{args.rounds}: path {path}")
                try:
                    # The ExitStack holds each setup step's undo; it runs them (in reverse)
                    # when the path is done, failed, or the run is interrupted.
                    with contextlib.ExitStack() as stack:
                        try:
                            run_path(lab, path, rnd, stack, results)
                        finally:
                            log(f"tearing down {path}")
                except BenchError as e:
                    log(f"{path} round {rnd} FAILED: {e}")
                    failures.append({"path": path, "round": rnd, "error": str(e)})
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = str(e) or "interrupted"
        log(f"interrupted ({interrupted}); cleaning up")
    except BenchError as e:
        failures.append({"path": None, "round": None, "error": str(e)})
        log(f"FAILED: {e}")
    finally:
        # Ignore further SIGTERM/SIGINT while cleaning up, so cleanup itself is not cut short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("cleaning up")
        if lab:
            lab.stop_all()
        purge()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        left = [ns for ns in NAMESPACES if ns_exists(ns)]
        if left:
            log(f"warning: namespaces left: {left}")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    summary = summarise(results, args.paths)
    failed = {}
    for f in failures:
        if f["path"]:
            failed.setdefault(f["path"], f["error"])
    header = (f"exit_throughput: {meta['date']}, kernel {meta['kernel']}, nproc {meta['nproc']}, "
              f"iperf3 TCP {args.seconds}s x {args.rounds} round(s); command: `{meta['command']}`")
    print(header)
    print()
    print(render_table(summary, args.paths, skipped, failed))
    notes = []
    if "git" in meta:
        notes.append(f"repo {meta['git']}" + (f", {meta['nx1_version']}" if "nx1_version" in meta else ""))
    notes += [f"{p} skipped: {why}" for p, why in skipped.items()]
    notes += [f"{f['path'] or 'lab'} round {f['round']} failed: {f['error']}" for f in failures]
    if interrupted:
        notes.append(f"run interrupted: {interrupted}")
    notes.append("Gbit/s: median over rounds (min–max) of iperf3 end.sum_received; CPU: exit "
                 "daemon utime+stime over the iperf3 run, per 1e9 bytes received; % core: same "
                 "CPU over wall time; ratios: path median / wireguard-go median.")
    print()
    for n in notes:
        print(f"- {n}")

    if args.json:
        out = {"meta": meta, "skipped": skipped, "failures": failures,
               "interrupted": interrupted, "results": results,
               "summary": {p: {str(n): v for n, v in s.items()} for p, s in summary.items()}}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        log(f"wrote {args.json}")
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
