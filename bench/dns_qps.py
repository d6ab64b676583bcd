#!/usr/bin/env python3
"""Guard DNS benchmark: queries/s and latency of Guard against unbound as a forwarder.

A client namespace sends DNS queries with dnsperf to Guard, NX1's filtering DNS server on the
node's tunnel address 10.87.0.1, through a WireGuard tunnel (wireguard-go on the client, NX1 on
the node), and to unbound, configured as a pure caching forwarder in the node namespace and
reached through the same NX1 tunnel, through a wireguard-go tunnel, and over plain veth. All
forward to the same upstream, dnsmasq in a third namespace. Guard carries a generated block
list of 1,000,000 names. Mixes: names in the cache, names on the block list, names never asked
before. Also records the node's memory and start time with and without the list.
Python 3.11 standard library only; needs root, iproute2, dnsperf, unbound, dnsmasq, dig,
wireguard-go and wireguard-tools. Shares its helpers with exit_throughput.py. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import glob
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.dont_write_bytecode = True  # importing the sibling script must not leave __pycache__ behind
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exit_throughput import (  # noqa: E402
    BenchError,
    Daemon,
    cpu_seconds,
    edit_toml,
    fmt_num,
    host_cpu,
    in_ns,
    log,
    ns_exists,
    process_running,
    remove_stale_uapi,
    resolve_binary,
    run,
    uapi_path,
    write_private,
)

# --- lab layout ---------------------------------------------------------------------------

NS_CLI, NS_NODE, NS_UP = "nx1d-cli", "nx1d-node", "nx1d-up"
NAMESPACES = (NS_CLI, NS_NODE, NS_UP)
VETH_CLI, VETH_NODE_CLI = "nx1d-c0", "nx1d-n0"  # cli <-> node, 198.18.1.0/24
VETH_NODE_UP, VETH_UP = "nx1d-n1", "nx1d-u0"  # node <-> up, 198.18.2.0/24
CLI_ADDR, NODE_CLI_ADDR = "198.18.1.2", "198.18.1.1"
NODE_UP_ADDR, UPSTREAM_ADDR = "198.18.2.1", "198.18.2.2"

ZONE = "bench.test"  # cached and blocked names; dnsmasq answers every name under .test
ANSWER_ADDR = "198.18.2.80"  # the A record it gives (not private space: no rebinding refusal)
ANSWER_TTL = 86400

# NX1: its tunnel (default pool 10.87.0.0/16) and Guard on the node's tunnel address.
NX1_IF, NX1_PORT = "nx1dx", 51820
GUARD_ADDR, NX1_POOL = "10.87.0.1", "10.87.0.0/16"
# unbound behind NX1's WireGuard: an address on the node's loopback, routed into the tunnel.
UB_NX1_ADDR = "198.18.3.1"
# unbound behind wireguard-go, in the node namespace as well.
UB_WG_IF, UB_WG_PORT = "wgdu", 51821
UB_WG_ADDR, UB_WG_SERVER_CIDR, UB_WG_CLIENT, UB_POOL = (
    "10.77.0.1", "10.77.0.1/24", "10.77.0.2/32", "10.77.0.0/24")
CLI_NX1_IF, CLI_UB_IF = "wgdc", "wgdv"  # the client's wireguard-go interfaces
# UAPI sockets are global (/var/run/wireguard is not per namespace): only these names are ours.
OUR_IFACES = (NX1_IF, UB_WG_IF, CLI_NX1_IF, CLI_UB_IF)

TMP_PREFIX = "nx1dns-"
LOCK_FILE = "/run/nx1bench.lock"  # shared with exit_throughput.py: one benchmark at a time
LIST_FILE = "lists/bench-1m.hosts"  # in the node's data dir
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READY_TIMEOUT = 30.0  # a tunnel or a DNS server answering
NX1_START_TIMEOUT = 180.0  # `nx1 up` with the list, on a busy machine
START_TIMEOUT = 15.0  # a daemon's UAPI socket appearing
QUERY_TIMEOUT = 2  # dnsperf -t: a query unanswered this long is lost


@dataclass(frozen=True)
class Target:
    name: str
    server: str  # for the table
    path: str  # how the client reaches it
    addr: str
    mixes: tuple[str, ...]
    tag: str  # in the names of its uncached queries


TARGETS = {
    "guard": Target("guard", "Guard (nx1)", "WireGuard: wireguard-go → nx1", GUARD_ADDR,
                    ("cached", "blocked", "uncached"), "g"),
    "unbound-nx1": Target("unbound-nx1", "unbound", "WireGuard: wireguard-go → nx1",
                          UB_NX1_ADDR, ("cached", "uncached"), "n"),
    "unbound-wg": Target("unbound-wg", "unbound", "WireGuard: wireguard-go → wireguard-go",
                         UB_WG_ADDR, ("cached", "uncached"), "w"),
    "unbound-veth": Target("unbound-veth", "unbound", "veth, no tunnel", NODE_CLI_ADDR,
                           ("cached", "uncached"), "v"),
}
ALL_MIXES = ("cached", "blocked", "uncached")
KINDS = ("load", "light")  # closed-loop saturation, and a fixed low rate


class Interrupted(BaseException):
    """SIGTERM/SIGHUP/SIGALRM: unwind like Ctrl-C so the finally blocks clean up."""


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


# --- cleanup ------------------------------------------------------------------------------


def remove_stale_uapi_quiet(iface: str) -> None:
    with contextlib.suppress(BenchError):
        remove_stale_uapi(iface)


def purge(tmp_keep: str | None = None) -> None:
    """Removes everything a run of this script can leave: processes inside our namespaces,
    the namespaces (and with them veths and TUN devices), our UAPI sockets, our temporary
    directories. Safe to call when nothing is there."""
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
    run(["ip", "link", "add", VETH_CLI, "netns", NS_CLI, "type", "veth",
         "peer", "name", VETH_NODE_CLI, "netns", NS_NODE])
    run(["ip", "link", "add", VETH_NODE_UP, "netns", NS_NODE, "type", "veth",
         "peer", "name", VETH_UP, "netns", NS_UP])
    for ns, dev, addr in ((NS_CLI, VETH_CLI, CLI_ADDR), (NS_NODE, VETH_NODE_CLI, NODE_CLI_ADDR),
                          (NS_NODE, VETH_NODE_UP, NODE_UP_ADDR), (NS_UP, VETH_UP, UPSTREAM_ADDR)):
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    # No forwarding anywhere: cli reaches the node's own addresses, the node reaches up.


# --- generated inputs ---------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SUFFIXES = ("com", "com", "com", "net", "net", "org", "io", "info", "xyz", "top", "ru", "de",
            "cn", "biz", "online", "co.uk", "com.br", "site", "club", "pw")
PREFIXES = ("ads", "ad", "track", "tracker", "t", "pixel", "px", "metrics", "stats", "analytics",
            "cdn", "static", "img", "beacon", "log", "collect", "sync", "tag", "events", "api")


def random_label(rng: random.Random, lo: int, hi: int, digits: float = 0.15) -> str:
    label = "".join(rng.choices(LETTERS, k=rng.randint(lo, hi)))
    if rng.random() < digits:
        label += str(rng.randrange(1000))
    return label


def generate_blocklist(path: str, count: int, seed: int) -> list[str]:
    """Writes `count` distinct names in hosts format (`0.0.0.0 NAME`) and returns them.
    Random lowercase labels: a third are bare registrable domains under 20 suffixes, the rest
    have one or two labels in front (an ad/tracker word or a random label)."""
    rng = random.Random(seed)
    domains = [f"{random_label(rng, 4, 14)}.{rng.choice(SUFFIXES)}" for _ in range(count // 4)]
    names: set[str] = set()
    while len(names) < count:
        base = rng.choice(domains)
        r = rng.random()
        if r < 0.33:
            name = base
        elif r < 0.66:
            name = f"{rng.choice(PREFIXES)}{rng.randrange(100) if rng.random() < 0.5 else ''}.{base}"
        elif r < 0.9:
            name = f"{random_label(rng, 3, 12)}.{base}"
        else:
            name = f"{random_label(rng, 2, 8)}.{rng.choice(PREFIXES)}.{base}"
        names.add(name)
    ordered = sorted(names)
    rng.shuffle(ordered)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {count} generated names for bench/dns_qps.py (seed {seed})\n")
        for name in ordered:
            f.write(f"0.0.0.0 {name}\n")
    return ordered


def write_queries(path: str, names) -> int:
    n = 0
    with open(path, "w") as f:
        for name in names:
            f.write(f"{name} A\n")
            n += 1
    return n


# --- measuring helpers --------------------------------------------------------------------


def proc_memory(pid: int) -> dict:
    """VmRSS and VmHWM (peak RSS) in kB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def dnsperf_version() -> str:
    p = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, timeout=10)
    m = re.search(r"Version\s+(\S+)", p.stdout + p.stderr)
    return m.group(1) if m else "?"


def word(text: str | None, index: int) -> str:
    """Word `index` of a version line ("Version 1.17.1" -> 1: "1.17.1"), or "?"."""
    parts = (text or "").split()
    return parts[index] if len(parts) > index else "?"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def parse_dnsperf(path: str) -> dict:
    """The statistics block of a `dnsperf -v` run and the latency of every answered query
    (the `> RCODE NAME TYPE SECONDS` lines)."""
    latencies: list[float] = []
    stats: dict = {"rcodes": {}, "timeouts": 0, "end": None}
    patterns = {
        "sent": r"Queries sent:\s+(\d+)",
        "completed": r"Queries completed:\s+(\d+)",
        "lost": r"Queries lost:\s+(\d+)",
        "run_time_s": r"Run time \(s\):\s+([\d.]+)",
        "qps": r"Queries per second:\s+([\d.]+)",
        "stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
    }
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                if len(parts) == 5:
                    with contextlib.suppress(ValueError):
                        latencies.append(float(parts[4]))
                continue
            if "timed out" in line:
                stats["timeouts"] += 1
                continue
            if "Testing complete" in line:
                stats["end"] = line.split("(", 1)[-1].rstrip(")\n") if "(" in line else line.strip()
                continue
            m = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", line)
            if m:
                stats["avg_s"], stats["min_s"], stats["max_s"] = map(float, m.groups())
                continue
            m = re.search(r"Response codes:\s+(.*)", line)
            if m:
                for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
                    stats["rcodes"][code] = int(n)
                continue
            for key, pat in patterns.items():
                m = re.search(pat, line)
                if m:
                    stats[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
                    break
    latencies.sort()
    stats["latencies_parsed"] = len(latencies)
    stats["p50_s"] = percentile(latencies, 50)
    stats["p99_s"] = percentile(latencies, 99)
    return stats


def parse_guard_metrics(text: str) -> dict[str, int]:
    """guard_dns_queries counters by outcome, from the node's /metrics."""
    out = {}
    for m in re.finditer(r'^\S*guard_dns_queries(?:_total)?\{[^}]*outcome="(\w+)"[^}]*\}\s+(\S+)',
                         text, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


# --- the lab ------------------------------------------------------------------------------


class Lab:
    def __init__(self, args: argparse.Namespace, tmp: str):
        self.args, self.tmp = args, tmp
        self.daemons: list[Daemon] = []
        self.nx1: Daemon | None = None
        self.unbound: Daemon | None = None
        self.upstream: Daemon | None = None
        self.clients: dict[str, Daemon] = {}  # target name -> client-side wireguard-go
        self.tunnel_servers: dict[str, Daemon] = {}  # target name -> server-side wireguard-go
        self.config = ""
        self.peer_conf = ""  # the client config `nx1 peer add` printed
        self.cached_file = self.blocked_file = ""
        self.nx1_dir = os.path.join(tmp, "nx1")
        self.api_port = 7870  # inside the node namespace: no clash with the host
        self.queries_dir = os.path.join(tmp, "queries")
        os.makedirs(self.queries_dir, mode=0o700)

    def start(self, name: str, cmd: list[str], ns: str, env: dict | None = None) -> Daemon:
        d = Daemon(name, in_ns(ns, cmd), os.path.join(self.tmp, f"{name}.log"), env)
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.daemons):
            with contextlib.suppress(Exception):
                d.stop()
        self.daemons.clear()
        for iface in OUR_IFACES:
            remove_stale_uapi_quiet(iface)

    # --- upstream -----------------------------------------------------------------------

    def start_upstream(self) -> None:
        self.upstream = self.start("dnsmasq", [
            "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--pid-file=",
            "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={UPSTREAM_ADDR}",
            "--port=53", f"--address=/{ZONE.rsplit('.', 1)[-1]}/{ANSWER_ADDR}",
            f"--local-ttl={ANSWER_TTL}",
            "--cache-size=0",
        ], NS_UP)
        self.wait_answer(NS_NODE, UPSTREAM_ADDR, f"probe.{ZONE}", ANSWER_ADDR, self.upstream)

    def dig(self, ns: str, server: str, name: str) -> str:
        p = run(["dig", "+short", "+time=1", "+tries=1", f"@{server}", name, "A"], ns=ns,
                timeout=5, check=False)
        return p.stdout.strip() if p.returncode == 0 else ""

    def wait_answer(self, ns: str, server: str, name: str, expect: str,
                    *daemons: Daemon) -> float:
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < READY_TIMEOUT:
            for d in daemons:
                d.check_alive()
            last = self.dig(ns, server, name)
            if last == expect:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise BenchError(f"{server} did not answer {name} with {expect} from {ns} within "
                         f"{READY_TIMEOUT:g}s (last answer {last!r})")

    # --- nx1 ----------------------------------------------------------------------------

    def init_nx1(self) -> str:
        """`nx1 init`, the config edits, the generated list in the data dir."""
        nx1 = self.args.nx1_path
        data = os.path.join(self.nx1_dir, "data")
        os.makedirs(self.nx1_dir, mode=0o700)
        run([nx1, "init", "--dir", data], timeout=60)
        self.config = os.path.join(data, "nx1.toml")
        edit_toml(self.config, {
            "api": {"listen": f'"127.0.0.1:{self.api_port}"'},
            "vpn": {"interface": f'"{NX1_IF}"', "listen_port": str(NX1_PORT),
                    "endpoint": f'"{NODE_CLI_ADDR}:{NX1_PORT}"', "exit": "false"},
            "guard": {"enabled": "true", "blocklists": "[]",
                      "upstreams": f'["{UPSTREAM_ADDR}:53"]'},
        })
        return data

    def set_blocklist(self, on: bool) -> None:
        edit_toml(self.config, {"guard": {"blocklists": f'["{LIST_FILE}"]' if on else "[]"}})

    def nx1_status(self) -> dict:
        p = run([self.args.nx1_path, "--config", self.config, "status", "--json"], timeout=10)
        return json.loads(p.stdout)

    def start_nx1(self, label: str) -> tuple[Daemon, float, dict]:
        """`nx1 up` in the node namespace; returns the daemon, the seconds from spawning it to
        the first answer of `nx1 status` (which the daemon serves once Guard has loaded its
        lists), and that status."""
        remove_stale_uapi(NX1_IF)
        nx1 = self.args.nx1_path
        t0 = time.monotonic()
        d = self.start(label, [nx1, "--config", self.config, "up"], NS_NODE)
        while True:
            d.check_alive()
            try:
                p = run([nx1, "--config", self.config, "status", "--json"], timeout=10,
                        check=False)
            except BenchError:  # timed out while the daemon was busy: ask again
                p = None
            if p is not None and p.returncode == 0:
                took = time.monotonic() - t0
                break
            if time.monotonic() - t0 > NX1_START_TIMEOUT:
                raise BenchError(f"{label}: `nx1 status` still failing after "
                                 f"{NX1_START_TIMEOUT:g}s; log tail: {d.log_tail()}")
            time.sleep(0.05)
        if d.comm() != "nx1":
            log(f"warning: pid {d.pid} is {d.comm()!r}, not nx1: memory would be measured wrongly")
        return d, took, json.loads(p.stdout)

    def stop_nx1(self, d: Daemon) -> None:
        d.stop()
        remove_stale_uapi_quiet(NX1_IF)

    def guard_metrics(self) -> dict[str, int]:
        code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:{self.api_port}/metrics', timeout=5).read().decode())")
        p = run(["python3", "-c", code], ns=NS_NODE, timeout=15)
        return parse_guard_metrics(p.stdout)

    def guard_check(self, name: str) -> dict:
        p = run([self.args.nx1_path, "--config", self.config, "guard", "check", name, "--json"],
                timeout=10)
        return json.loads(p.stdout)

    # --- WireGuard ------------------------------------------------------------------------

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

    def wireguard_go(self, name: str, ns: str, iface: str) -> Daemon:
        remove_stale_uapi(iface)
        d = self.start(name, ["wireguard-go", "-f", iface], ns,
                       env={"WG_PROCESS_FOREGROUND": "1"})
        self.wait_uapi(iface, d)
        return d

    def nx1_client(self) -> Daemon:
        """wireguard-go `wgdc` in cli from the config `nx1 peer add` printed: `wg-quick strip`
        + `wg setconf`, its IPv4 address, and a route for the node's pool only."""
        conf_text = self.peer_conf
        conf = write_private(os.path.join(self.tmp, f"{CLI_NX1_IF}.conf"), conf_text)
        stripped = run(["wg-quick", "strip", conf]).stdout
        setconf = write_private(os.path.join(self.tmp, f"{CLI_NX1_IF}.setconf"), stripped)
        addresses = []
        for line in conf_text.splitlines():
            m = re.match(r"\s*Address\s*=\s*(.+?)\s*$", line, re.IGNORECASE)
            if m:
                addresses += [a.strip() for a in m.group(1).split(",") if ":" not in a]
        if not addresses:
            raise BenchError("the client config has no IPv4 Address =")
        d = self.wireguard_go("wireguard-go-client-nx1", NS_CLI, CLI_NX1_IF)
        run(["wg", "setconf", CLI_NX1_IF, setconf], ns=NS_CLI)
        for addr in addresses:
            run(["ip", "-n", NS_CLI, "addr", "add", addr, "dev", CLI_NX1_IF])
        run(["ip", "-n", NS_CLI, "link", "set", CLI_NX1_IF, "up"])
        run(["ip", "-n", NS_CLI, "-4", "route", "replace", NX1_POOL, "dev", CLI_NX1_IF])
        return d

    def unbound_tunnel(self) -> tuple[Daemon, Daemon]:
        """wireguard-go `wgdu` in node (10.77.0.1/24, UDP 51821) and `wgdv` in cli
        (10.77.0.2/32, a route for 10.77.0.0/24), configured with `wg set`."""
        keys = {}
        for side in ("server", "client"):
            priv = run(["wg", "genkey"]).stdout.strip()
            pub = run(["wg", "pubkey"], input=priv + "\n").stdout.strip()
            keys[side] = (write_private(os.path.join(self.tmp, f"{side}.key"), priv + "\n"), pub)
        server = self.wireguard_go("wireguard-go-server-unbound", NS_NODE, UB_WG_IF)
        run(["wg", "set", UB_WG_IF, "listen-port", str(UB_WG_PORT), "private-key",
             keys["server"][0], "peer", keys["client"][1], "allowed-ips", UB_WG_CLIENT],
            ns=NS_NODE)
        run(["ip", "-n", NS_NODE, "addr", "add", UB_WG_SERVER_CIDR, "dev", UB_WG_IF])
        run(["ip", "-n", NS_NODE, "link", "set", UB_WG_IF, "up"])
        client = self.wireguard_go("wireguard-go-client-unbound", NS_CLI, CLI_UB_IF)
        run(["wg", "set", CLI_UB_IF, "private-key", keys["client"][0], "peer", keys["server"][1],
             "endpoint", f"{NODE_CLI_ADDR}:{UB_WG_PORT}", "allowed-ips", UB_POOL], ns=NS_CLI)
        run(["ip", "-n", NS_CLI, "addr", "add", UB_WG_CLIENT, "dev", CLI_UB_IF])
        run(["ip", "-n", NS_CLI, "link", "set", CLI_UB_IF, "up"])
        run(["ip", "-n", NS_CLI, "-4", "route", "replace", UB_POOL, "dev", CLI_UB_IF])
        return server, client

    # --- unbound ------------------------------------------------------------------------

    def start_unbound(self, interfaces: list[str]) -> Daemon:
        d = os.path.join(self.tmp, "unbound")
        os.makedirs(d, mode=0o700)
        lines = [
            "server:",
            f'  directory: "{d}"',
            '  chroot: ""',
            '  username: ""',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            f"  num-threads: {self.args.unbound_threads}",
            *[f"  interface: {a}" for a in interfaces],
            "  port: 53",
            "  do-ip6: no",
            "  access-control: 0.0.0.0/0 allow",
            '  module-config: "iterator"',  # no validator: no DNSSEC validation
            "  qname-minimisation: no",
            "  prefetch: no",
            '  local-zone: "test." nodefault',  # by default unbound answers .test NXDOMAIN itself
            "  do-not-query-localhost: no",
            "remote-control:",
            "  control-enable: no",
            "forward-zone:",
            '  name: "."',
            f"  forward-addr: {UPSTREAM_ADDR}@53",
        ]
        conf = os.path.join(d, "unbound.conf")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        run(["unbound-checkconf", conf], timeout=15)
        self.unbound = self.start("unbound", ["unbound", "-d", "-c", conf], NS_NODE)
        return self.unbound

    # --- query files --------------------------------------------------------------------

    def uncached_file(self, tag: str, count: int) -> str:
        path = os.path.join(self.queries_dir, f"uncached-{tag}.txt")
        # Spread over many domains, as browsing is: thousands of distinct names under one
        # domain from one client is what Guard's query-volume tunnelling detection blocks.
        write_queries(path, (f"u{tag}-{i}.s{i % 65536}.test" for i in range(count)))
        return path


# --- measuring ----------------------------------------------------------------------------


def target_procs(lab: Lab, target: str) -> dict[str, Daemon]:
    """The processes whose CPU counts as the server side of a target: the DNS server and the
    WireGuard server in front of it (for Guard both are the nx1 process)."""
    if target == "guard":
        return {"nx1": lab.nx1}
    if target == "unbound-nx1":
        return {"unbound": lab.unbound, "nx1": lab.nx1}
    if target == "unbound-wg":
        return {"unbound": lab.unbound, "wireguard-go-server": lab.tunnel_servers["unbound-wg"]}
    return {"unbound": lab.unbound}


def cpu_snapshot(procs: dict[str, Daemon | None]) -> dict[str, float]:
    out = {}
    for name, d in procs.items():
        if d is not None:
            try:
                out[name] = cpu_seconds(d.pid)
            except (OSError, ValueError) as e:
                raise BenchError(f"{name} (pid {d.pid}) vanished: {e}") from None
    return out


def dnsperf(lab: Lab, target: Target, datafile: str, out_path: str, *, seconds: float | None,
            qps: int | None, once: bool, outstanding: int, clients: int) -> tuple[dict, float]:
    cmd = ["dnsperf", "-s", target.addr, "-d", datafile, "-c", str(clients), "-T", "1",
           "-q", str(outstanding), "-t", str(QUERY_TIMEOUT), "-v"]
    if seconds:
        cmd += ["-l", str(seconds)]
    if qps:
        cmd += ["-Q", str(qps)]
    if once:
        cmd += ["-n", "1"]
    limit = (seconds or 60) + QUERY_TIMEOUT + 30
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(out_path, "w") as out:
        try:
            p = subprocess.run(in_ns(NS_CLI, cmd), stdout=out, stderr=subprocess.PIPE, text=True,
                               timeout=limit)
        except subprocess.TimeoutExpired:
            raise BenchError(f"dnsperf timed out after {limit:g}s: {shlex.join(cmd)}") from None
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise BenchError(f"dnsperf exited {p.returncode}: {p.stderr.strip()[:300]}")
    stats = parse_dnsperf(out_path)
    # `ip netns exec` execs dnsperf: the child reaped here is dnsperf itself.
    stats["dnsperf_cpu_s"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 3)
    stats["command"] = shlex.join(cmd)
    stats["stderr"] = p.stderr.strip()[:500] or None
    if "qps" not in stats:
        raise BenchError(f"dnsperf printed no statistics ({shlex.join(cmd)})")
    return stats, wall


def warm(lab: Lab, target: Target) -> dict:
    """Asks every cached-mix name once, so the cached mix finds them all in the cache."""
    out = os.path.join(lab.tmp, f"warm-{target.name}.out")
    stats, _ = dnsperf(lab, target, lab.cached_file, out, seconds=None, qps=None, once=True,
                       outstanding=20, clients=1)
    os.unlink(out)
    if stats.get("completed") != lab.args.cached_names or set(stats["rcodes"]) != {"NOERROR"}:
        raise BenchError(f"warming {target.name}: {stats.get('completed')} of "
                         f"{lab.args.cached_names} answered, rcodes {stats['rcodes']}")
    return {"completed": stats["completed"], "avg_s": stats.get("avg_s")}


def measure(lab: Lab, target: Target, mix: str, kind: str, rnd: int) -> dict:
    a = lab.args
    seconds = a.duration if kind == "load" else a.light_seconds
    qps = None if kind == "load" else a.light_qps
    if mix == "cached":
        datafile = lab.cached_file
    elif mix == "blocked":
        datafile = lab.blocked_file
    else:
        # Names nobody asked before: unique to this target, kind and round. Enough of them
        # for the whole run at --uncached-rate queries/s (light runs: their fixed rate).
        count = (a.uncached_rate if kind == "load" else a.light_qps) * seconds
        count = int(count * 1.2) + 1000
        tag = f"{rnd}{target.tag}{kind}"
        datafile = lab.uncached_file(tag, count)
    procs = target_procs(lab, target.name)
    side = {"client-wireguard-go": lab.clients.get(target.name), "dnsmasq": lab.upstream}
    metrics0 = lab.guard_metrics() if target.name == "guard" else None
    cpu0, side0 = cpu_snapshot(procs), cpu_snapshot(side)
    host0 = host_cpu()
    load_avg = os.getloadavg()
    out = os.path.join(lab.tmp, f"dnsperf-{target.name}-{mix}-{kind}-{rnd}.out")
    stats, wall = dnsperf(lab, target, datafile, out, seconds=seconds, qps=qps,
                          once=mix == "uncached", outstanding=a.outstanding, clients=a.clients)
    host1 = host_cpu()
    cpu1, side1 = cpu_snapshot(procs), cpu_snapshot(side)
    metrics1 = lab.guard_metrics() if target.name == "guard" else None
    os.unlink(out)
    if mix == "uncached":
        os.unlink(datafile)
    server_cpu = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu0}
    side_cpu = {k: round(side1[k] - side0[k], 3) for k in side0}
    side_cpu["dnsperf"] = stats["dnsperf_cpu_s"]
    total_cpu = sum(server_cpu.values())
    completed = stats.get("completed") or 0
    busy, total = host1[0] - host0[0], max(host1[1] - host0[1], 1)
    r = {
        "target": target.name, "mix": mix, "kind": kind, "round": rnd,
        "seconds": seconds, "qps_limit": qps,
        "qps": stats["qps"], "sent": stats.get("sent"), "completed": completed,
        "lost": stats.get("lost"), "rcodes": stats["rcodes"],
        "run_time_s": stats.get("run_time_s"), "ended": stats.get("end"),
        "avg_ms": 1e3 * stats["avg_s"] if "avg_s" in stats else None,
        "min_ms": 1e3 * stats["min_s"] if "min_s" in stats else None,
        "max_ms": 1e3 * stats["max_s"] if "max_s" in stats else None,
        "stddev_ms": 1e3 * stats["stddev_s"] if "stddev_s" in stats else None,
        "p50_ms": 1e3 * stats["p50_s"] if stats["p50_s"] is not None else None,
        "p99_ms": 1e3 * stats["p99_s"] if stats["p99_s"] is not None else None,
        "latencies_parsed": stats["latencies_parsed"],
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_query": 1e6 * total_cpu / completed if completed else None,
        "server_core_pct": 100 * total_cpu / wall,
        "side_cpu_s": side_cpu,
        "host_busy_pct_all_cores": round(100 * busy / total, 1),
        "loadavg_before": [round(x, 2) for x in load_avg],
        "wall_s": round(wall, 3),
        "dnsperf": stats["command"],
        "dnsperf_stderr": stats["stderr"],
    }
    if metrics0 is not None and metrics1 is not None:
        r["guard_counters"] = {k: metrics1.get(k, 0) - metrics0.get(k, 0)
                               for k in sorted(set(metrics0) | set(metrics1))}
    r["checks"] = check_result(r, mix, kind, a)
    return r


def check_result(r: dict, mix: str, kind: str, a: argparse.Namespace) -> list[str]:
    """What in a run is not what the mix is meant to measure."""
    problems = []
    other = {k: v for k, v in r["rcodes"].items() if k != "NOERROR"}
    if other:
        problems.append(f"answers other than NOERROR: {other}")
    if r["lost"]:
        problems.append(f"{r['lost']} queries lost (no answer within {QUERY_TIMEOUT}s)")
    if r["ended"] and "end of file" in r["ended"] and (r["run_time_s"] or 0) < r["seconds"] - 1:
        problems.append(f"ran out of names after {r['run_time_s']:.1f}s: raise --uncached-rate")
    c = r.get("guard_counters")
    if c:
        n = r["completed"] or 1
        expect = {"cached": "cached", "blocked": "blocked", "uncached": "forwarded"}[mix]
        share = c.get(expect, 0) / n
        if share < 0.98:
            problems.append(f"only {100 * share:.1f}% of answers were {expect} by Guard")
        for bad in ("model_blocked", "tunnelling", "rebinding", "upstream_failure", "malformed"):
            if c.get(bad):
                problems.append(f"Guard counted {c[bad]} {bad}")
    return problems


# --- report -------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt_num(m, digits)
    return f"{fmt_num(m, digits)} ({fmt_num(min(values), digits)}–{fmt_num(max(values), digits)})"


def summarise(results: list[dict]) -> dict:
    summary: dict = {}
    for r in results:
        key = f"{r['target']}/{r['mix']}/{r['kind']}"
        summary.setdefault(key, []).append(r)
    out = {}
    for key, rows in summary.items():
        vals = lambda f: [r[f] for r in rows if r.get(f) is not None]  # noqa: E731
        out[key] = {
            "rounds": len(rows),
            "qps": vals("qps"),
            "qps_median": med(vals("qps")),
            "avg_ms_median": med(vals("avg_ms")),
            "p50_ms_median": med(vals("p50_ms")),
            "p99_ms_median": med(vals("p99_ms")),
            "lost_total": sum(vals("lost")),
            "server_cpu_us_per_query_median": med(vals("server_cpu_us_per_query")),
            "server_core_pct_median": med(vals("server_core_pct")),
            "server_cpu_us_per_query_by_process": {
                proc: med([1e6 * r["server_cpu_s"][proc] / r["completed"]
                           for r in rows if r["completed"]])
                for proc in rows[0]["server_cpu_s"]},
        }
    return out


def render_table(summary: dict, targets: list[str], mixes: list[str], light_qps: int,
                 failed: dict[str, str]) -> str:
    light_col = f"at {light_qps} q/s: avg / p99 ms" if light_qps else None
    head = ["server", "client → server path", "mix", "queries/s", "avg ms", "p99 ms", "lost",
            "server CPU µs/query"]
    if light_col:
        head.append(light_col)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mix in mixes:
        for tname in targets:
            t = TARGETS[tname]
            if mix not in t.mixes:
                continue
            load = summary.get(f"{tname}/{mix}/load")
            light = summary.get(f"{tname}/{mix}/light")
            cells = [t.server, t.path, mix]
            if not load:
                why = failed.get(f"{tname}/{mix}") or failed.get(tname) or "not measured"
                cells += [f"failed: {why}"] + [""] * (len(head) - 4)
            else:
                cells += [spread(load["qps"], 0), fmt_num(load["avg_ms_median"]),
                          fmt_num(load["p99_ms_median"]), str(load["lost_total"]),
                          fmt_num(load["server_cpu_us_per_query_median"], 1)]
                if light_col:
                    cells.append(f"{fmt_num(light['avg_ms_median'])} / "
                                 f"{fmt_num(light['p99_ms_median'])}" if light else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_memory(memory: dict) -> str:
    lines = ["| nx1 | `nx1 up` until `nx1 status` answers, s | VmRSS MB | VmHWM (peak) MB |",
             "|---|---|---|---|"]
    for label, key in (("no block list", "none"), (f"{memory.get('list_names', 0):,}-name list",
                                                    "list")):
        starts = [s for s in memory["starts"] if s["list"] == key]
        if not starts:
            continue
        lines.append(f"| {label}, {memory['settle_s']:g} s after start "
                     f"| {spread([s['ready_s'] for s in starts])} "
                     f"| {spread([s['VmRSS'] / 1024 for s in starts], 1)} "
                     f"| {spread([s['VmHWM'] / 1024 for s in starts], 1)} |")
    after = memory.get("after_benchmark")
    if after:
        lines.append(f"| list, after the query runs | - | {after['VmRSS'] / 1024:.1f} "
                     f"| {after['VmHWM'] / 1024:.1f} |")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--mixes", default=",".join(ALL_MIXES),
                    help=f"comma-separated subset of {','.join(ALL_MIXES)}")
    ap.add_argument("--duration", type=int, default=15, help="dnsperf -l per measurement, s")
    ap.add_argument("--rounds", type=int, default=1, help="rounds; targets interleave per mix")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=64, help="dnsperf -q")
    ap.add_argument("--light-qps", dest="light_qps", type=int, default=500,
                    help="rate of the light-load latency run (dnsperf -Q); 0: no light runs")
    ap.add_argument("--light-seconds", dest="light_seconds", type=int, default=5,
                    help="length of the light-load run, s")
    ap.add_argument("--list-names", dest="list_names", type=int, default=1_000_000,
                    help="names on Guard's generated block list")
    ap.add_argument("--cached-names", dest="cached_names", type=int, default=500,
                    help="distinct names in the cached mix")
    ap.add_argument("--blocked-names", dest="blocked_names", type=int, default=100_000,
                    help="distinct listed names in the blocked mix")
    ap.add_argument("--uncached-rate", dest="uncached_rate", type=int, default=40_000,
                    help="fresh names generated per second of an uncached run")
    ap.add_argument("--starts", type=int, default=2,
                    help="measured nx1 starts with and without the list (alternating)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after start before reading the node's memory")
    ap.add_argument("--unbound-threads", dest="unbound_threads", type=int,
                    default=os.cpu_count() or 2, help="unbound num-threads")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated names")
    ap.add_argument("--nx1", default="target/release/nx1",
                    help="nx1 binary (a relative path is tried from the cwd, then the repo root)")
    ap.add_argument("--json", metavar="FILE", help="write raw results to FILE")
    args = ap.parse_args(argv)
    for attr, allowed in (("targets", TARGETS), ("mixes", ALL_MIXES)):
        items = list(dict.fromkeys(s.strip() for s in getattr(args, attr).split(",") if s.strip()))
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            ap.error(f"unknown {attr} {bad}; choose from {','.join(allowed)}")
        setattr(args, attr, items)
    if min(args.duration, args.rounds, args.clients, args.outstanding, args.cached_names,
           args.starts, args.uncached_rate) < 1 or args.light_qps < 0 or args.light_seconds < 1:
        ap.error("counts and durations must be positive")
    if args.blocked_names > args.list_names or args.list_names < 1:
        ap.error("--blocked-names must be at most --list-names")
    return args


def time_budget(args: argparse.Namespace) -> int:
    """Seconds after which the run stops itself (SIGALRM), cleanup included."""
    runs = len(args.targets) * len(args.mixes) * args.rounds
    per_run = args.duration + (args.light_seconds if args.light_qps else 0) + 2 * 40
    return 900 + runs * per_run + args.starts * 2 * int(NX1_START_TIMEOUT)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("dns_qps.py: needs root (namespaces, TUN, port 53)", file=sys.stderr)
        return 2
    for tool in ("ip", "dnsperf", "dnsmasq", "unbound", "unbound-checkconf", "dig",
                 "wireguard-go", "wg", "wg-quick", "python3"):
        if not shutil.which(tool):
            print(f"dns_qps.py: {tool} not found", file=sys.stderr)
            return 2
    args.nx1_path = resolve_binary(args.nx1, True)
    if not args.nx1_path:
        print(f"dns_qps.py: {args.nx1} not found (build with cargo build --release)",
              file=sys.stderr)
        return 2

    lock = open(LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"dns_qps.py: another benchmark holds {LOCK_FILE}", file=sys.stderr)
        return 2

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "command": shlex.join([sys.argv[0], *argv]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "targets": args.targets, "mixes": args.mixes, "rounds": args.rounds,
        "duration_s": args.duration, "clients": args.clients, "outstanding": args.outstanding,
        "light_qps": args.light_qps, "light_seconds": args.light_seconds,
        "query_timeout_s": QUERY_TIMEOUT, "list_names": args.list_names,
        "cached_names": args.cached_names, "blocked_names": args.blocked_names,
        "unbound_threads": args.unbound_threads, "seed": args.seed, "nx1": args.nx1_path,
        "zone": ZONE, "answer": f"{ANSWER_ADDR} TTL {ANSWER_TTL}",
        # The repository revision below is the tree's at run time; this is when nx1 was built.
        "nx1_mtime": datetime.datetime.fromtimestamp(
            os.path.getmtime(args.nx1_path), datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(Exception):
        meta["dnsperf_version"] = dnsperf_version()
    for key, cmd in (("nx1_version", [args.nx1_path, "--version"]),
                     ("unbound_version", ["unbound", "-V"]),
                     ("dnsmasq_version", ["dnsmasq", "--version"]),
                     ("wireguard_go_version", ["wireguard-go", "--version"]),
                     ("git", ["git", "-C", REPO, "describe", "--always", "--dirty"])):
        with contextlib.suppress(BenchError):
            meta[key] = run(cmd, timeout=10).stdout.strip().splitlines()[0]

    results: list[dict] = []
    failures: list[dict] = []
    memory: dict = {"starts": [], "settle_s": args.settle}
    extra: dict = {}
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    # Ctrl-C raises KeyboardInterrupt even when started in the background of a script.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    budget = time_budget(args)
    signal.alarm(budget)
    interrupted = None
    tmp = None
    lab = None
    try:
        purge()
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
        lab = Lab(args, tmp)
        log(f"building namespaces {', '.join(NAMESPACES)} (time budget {budget}s)")
        build_lab()
        lab.start_upstream()

        data = lab.init_nx1()
        t0 = time.monotonic()
        names = generate_blocklist(os.path.join(data, LIST_FILE), args.list_names, args.seed)
        rng = random.Random(args.seed + 1)
        lab.blocked_file = os.path.join(lab.queries_dir, "blocked.txt")
        write_queries(lab.blocked_file, rng.sample(names, args.blocked_names))
        blocked_probe = names[0]
        del names
        lab.cached_file = os.path.join(lab.queries_dir, "cached.txt")
        write_queries(lab.cached_file, (f"c{i}.s{i}.test" for i in range(args.cached_names)))
        list_path = os.path.join(data, LIST_FILE)
        memory["list_names"] = args.list_names
        memory["list_file_bytes"] = os.path.getsize(list_path)
        log(f"generated {args.list_names:,} names ({memory['list_file_bytes'] / 1e6:.1f} MB, "
            f"hosts format) in {time.monotonic() - t0:.1f}s")

        # First start: creates the database; registers the client. Not measured.
        d, took, _ = lab.start_nx1("nx1-first-start")
        lab.peer_conf = run([args.nx1_path, "--config", lab.config, "peer", "add", "bench"]).stdout
        if "[Interface]" not in lab.peer_conf or "[Peer]" not in lab.peer_conf:
            raise BenchError(f"`nx1 peer add` printed no wg-quick config: {lab.peer_conf[:200]!r}")
        lab.stop_nx1(d)
        # Measured starts, alternating; the last one (with the list) stays up for the queries.
        for i in range(args.starts):
            for with_list in (False, True):
                lab.set_blocklist(with_list)
                key = "list" if with_list else "none"
                d, took, status = lab.start_nx1(f"nx1-{key}-{i + 1}")
                time.sleep(args.settle)
                d.check_alive()
                mem = proc_memory(d.pid)
                guard = status.get("guard") or {}
                memory["starts"].append({"list": key, "start": i + 1, "ready_s": round(took, 3),
                                         **mem, "blocked_names": guard.get("blocked_names")})
                log(f"nx1 {'with' if with_list else 'without'} the list: status after "
                    f"{took:.2f}s, VmRSS {mem['VmRSS'] / 1024:.1f} MB, VmHWM "
                    f"{mem['VmHWM'] / 1024:.1f} MB, blocked names {guard.get('blocked_names')}")
                if with_list and (guard.get("blocked_names") or 0) < args.list_names:
                    raise BenchError(f"Guard reports {guard.get('blocked_names')} blocked names, "
                                     f"expected {args.list_names}")
                if with_list and i == args.starts - 1:
                    lab.nx1 = d
                else:
                    lab.stop_nx1(d)

        # The clients and unbound.
        lab.clients["guard"] = lab.nx1_client()
        ub_ifaces = []
        if "unbound-nx1" in args.targets:
            # Delivered locally in the node namespace after NX1 decrypts it, like Guard's.
            run(["ip", "-n", NS_NODE, "addr", "add", f"{UB_NX1_ADDR}/32", "dev", "lo"])
            run(["ip", "-n", NS_CLI, "-4", "route", "replace", f"{UB_NX1_ADDR}/32", "dev",
                 CLI_NX1_IF])
            lab.clients["unbound-nx1"] = lab.clients["guard"]
            ub_ifaces.append(UB_NX1_ADDR)
        if "unbound-wg" in args.targets:
            server, client = lab.unbound_tunnel()
            lab.tunnel_servers["unbound-wg"] = server
            lab.clients["unbound-wg"] = client
            ub_ifaces.append(UB_WG_ADDR)
        if "unbound-veth" in args.targets:
            ub_ifaces.append(NODE_CLI_ADDR)
        if ub_ifaces:
            lab.start_unbound(ub_ifaces)
        for tname in args.targets:
            t = TARGETS[tname]
            daemons = [x for x in (lab.nx1, lab.unbound, lab.clients.get(tname)) if x]
            took = lab.wait_answer(NS_CLI, t.addr, f"ready.{ZONE}", ANSWER_ADDR, *daemons)
            log(f"{tname}: {t.addr} answers from {NS_CLI} after {took:.1f}s")
        if "guard" in args.targets:
            got = lab.dig(NS_CLI, GUARD_ADDR, blocked_probe)
            if got != "0.0.0.0":
                raise BenchError(f"Guard answered the listed {blocked_probe} with {got!r}")
            extra["guard_check"] = {n: lab.guard_check(n)
                                    for n in ("c0.s0.test", f"u1g{KINDS[0]}-0.s0.test",
                                              blocked_probe)}
            for n, v in extra["guard_check"].items():
                log(f"nx1 guard check {n}: {v.get('verdict')} "
                    f"{[(s['model'], round(s['score'], 3), s['flagged']) for s in v.get('scores', [])]}")
                if n != blocked_probe and v.get("verdict") == "blocked":
                    raise BenchError(f"Guard blocks the benchmark name {n}: {v}")
        if lab.unbound:
            extra["unbound_memory_at_start"] = proc_memory(lab.unbound.pid)

        for rnd in range(1, args.rounds + 1):
            for tname in args.targets:
                if "cached" in args.mixes:
                    warm(lab, TARGETS[tname])
            for mix in args.mixes:
                for tname in args.targets:
                    t = TARGETS[tname]
                    if mix not in t.mixes:
                        continue
                    for kind in KINDS:
                        if kind == "light" and not args.light_qps:
                            continue
                        log(f"round {rnd}/{args.rounds}: {tname} {mix} {kind}")
                        try:
                            r = measure(lab, t, mix, kind, rnd)
                        except BenchError as e:
                            log(f"{tname} {mix} {kind} round {rnd} FAILED: {e}")
                            failures.append({"target": tname, "mix": mix, "kind": kind,
                                             "round": rnd, "error": str(e)})
                            continue
                        results.append(r)
                        log(f"{tname} {mix} {kind}: {r['qps']:.0f} q/s, avg "
                            f"{fmt_num(r['avg_ms'])} ms, p99 {fmt_num(r['p99_ms'])} ms, lost "
                            f"{r['lost']}, server CPU {fmt_num(r['server_cpu_us_per_query'], 1)} "
                            f"µs/q ({r['server_core_pct']:.0f}% core), host busy "
                            f"{r['host_busy_pct_all_cores']}%"
                            + (f", Guard {r['guard_counters']}" if "guard_counters" in r else ""))
                        for c in r["checks"]:
                            log(f"  check: {c}")
        if lab.nx1:
            lab.nx1.check_alive()
            memory["after_benchmark"] = proc_memory(lab.nx1.pid)
        if lab.unbound:
            extra["unbound_memory_after"] = proc_memory(lab.unbound.pid)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = str(e) or "interrupted"
        log(f"interrupted ({interrupted}); cleaning up")
    except BenchError as e:
        failures.append({"target": None, "mix": None, "kind": None, "round": None,
                         "error": str(e)})
        log(f"FAILED: {e}")
    finally:
        signal.alarm(0)
        # Ignore further signals while cleaning up, so cleanup itself is not cut short.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
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

    summary = summarise(results)
    failed = {}
    for f in failures:
        if f["target"]:
            failed.setdefault(f"{f['target']}/{f['mix']}", f["error"])
    header = (f"dns_qps: {meta['date']}, kernel {meta['kernel']}, nproc {meta['nproc']}, "
              f"dnsperf {meta.get('dnsperf_version', '?')} -c {args.clients} -q "
              f"{args.outstanding}, {args.duration}s per run x {args.rounds} round(s); "
              f"command: `{meta['command']}`")
    print(header)
    print()
    print(render_table(summary, args.targets, args.mixes, args.light_qps, failed))
    if memory["starts"]:
        print()
        print(render_memory(memory))
    notes = []
    if "git" in meta:
        notes.append(f"repo {meta['git']}" + (f", {meta['nx1_version']}" if "nx1_version" in meta else "")
                     + f" (binary built {meta['nx1_mtime']})"
                     + f"; unbound {word(meta.get('unbound_version'), 1)}; dnsmasq "
                     f"{word(meta.get('dnsmasq_version'), 2)}; wireguard-go "
                     f"{word(meta.get('wireguard_go_version'), 1)}")
    notes += [f"{f['target']} {f['mix']} {f['kind']} round {f['round']} failed: {f['error']}"
              if f["target"] else f"lab failed: {f['error']}" for f in failures]
    for r in results:
        for c in r["checks"]:
            notes.append(f"{r['target']} {r['mix']} {r['kind']} round {r['round']}: {c}")
    if interrupted:
        notes.append(f"run interrupted: {interrupted}")
    notes.append(f"queries/s: dnsperf's completed queries over its run time (median over rounds, "
                 f"min–max); avg: dnsperf's average; p99: nearest-rank 99th percentile of the "
                 f"per-query latencies `dnsperf -v` prints (answered queries only); server CPU: "
                 f"utime+stime of the server-side processes, tunnel server included, per "
                 f"answered query (Guard: nx1; unbound behind nx1: unbound + nx1; behind "
                 f"wireguard-go: unbound + wireguard-go; veth: unbound)"
                 + (f"; light load: the same mix at dnsperf -Q {args.light_qps}." if args.light_qps
                    else "."))
    if memory.get("list_file_bytes"):
        notes.append(f"block list: {args.list_names:,} generated names, hosts format, "
                     f"{memory['list_file_bytes'] / 1e6:.1f} MB; memory from /proc/PID/status "
                     f"{args.settle:g} s after `nx1 status` first answered.")
    if "unbound_memory_after" in extra:
        notes.append(f"unbound VmRSS: {extra['unbound_memory_at_start']['VmRSS'] / 1024:.1f} MB at "
                     f"start, {extra['unbound_memory_after']['VmRSS'] / 1024:.1f} MB after the runs.")
    split = []
    for key, s in summary.items():
        by = s["server_cpu_us_per_query_by_process"]
        if key.endswith("/load") and len(by) > 1:
            split.append(f"{key.rsplit('/', 1)[0]}: "
                         + " + ".join(f"{p} {fmt_num(v, 1)}" for p, v in by.items()))
    if split:
        notes.append("server CPU µs/query by process (load runs, median): " + "; ".join(split))
    busy = [r["host_busy_pct_all_cores"] for r in results if r["kind"] == "load"]
    if busy:
        notes.append(f"host busy during the load runs: {min(busy):.0f}–{max(busy):.0f}% of all "
                     f"cores; load average at start {meta['loadavg_at_start']}.")
    print()
    for n in notes:
        print(f"- {n}")

    if args.json:
        out = {"meta": meta, "failures": failures, "interrupted": interrupted,
               "memory": memory, "extra": extra, "results": results, "summary": summary}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        log(f"wrote {args.json}")
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
