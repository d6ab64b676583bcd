#!/usr/bin/env python3
"""Failover benchmark: how long a client's traffic stops when the exit its node uses dies
(`kill -9`) or loses its uplink, and when the node an `nx1 connect` client uses dies.

    cli ── 198.18.1.0/24 ── A ── core 10.203.0.0/24 ── B, C, D ── inet 198.18.2.0/24 ── web
     └──────────────────────────── core ───────┘

A (`[vpn] exit = false`, `[mesh] egress = true`) holds the client's tunnel (wireguard-go,
configured from `nx1 peer add`) and sends its traffic out through B, C or D (exits). The
client pings web every 50 ms (`ping -D -i 0.05`); in each round the exit in use is killed
with SIGKILL (then restarted), and its uplink is taken down (then up again). Reported per
event: pings lost × 50 ms, and the longest silence between two answers (from ping's
timestamps). Then the same for a client in `nx1 connect` mode (an NX1 node in client mode in
cli, on the core network, registered on one exit, with the others standing by): in each round
the node it uses is killed and restarted. Python 3.11 standard library only; needs root, iproute2, nftables, wireguard-go,
wireguard-tools and the release binary (`cargo build --release -p nx1-node`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from relay import connect, run, wait  # noqa: E402
from vault import set_key  # noqa: E402

SW, CLI, WEB = "nx1f-sw", "nx1f-cli", "nx1f-web"
NODES = [f"nx1f-n{i}" for i in range(4)]
WEB_ADDR = "198.18.2.2"
CLIENT_IF = "wgfc"
INTERVAL = 0.05
COUNT = 120  # 6 s of pings per event; the event comes 2 s in


def log(msg: str) -> None:
    print(f"[failover-bench] {msg}", file=sys.stderr, flush=True)


def cleanup() -> None:
    for ns in (CLI, WEB, SW, *NODES):
        run(["ip", "netns", "del", ns], check=False)
    for name in (CLIENT_IF, *[f"nx1f{i}" for i in range(4)]):
        try:
            os.remove(f"/var/run/wireguard/{name}.sock")
        except FileNotFoundError:
            pass


def veth(a: str, a_if: str, a_addr: str | None, b: str, b_if: str, b_addr: str | None) -> None:
    run(["ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b])
    for ns, dev, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        if addr:
            run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
        run(["ip", "-n", ns, "link", "set", dev, "up"])


def build_lab() -> None:
    for ns in (SW, CLI, WEB, *NODES):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    for br in ("core", "inet"):
        run(["ip", "-n", SW, "link", "add", br, "type", "bridge"])
        run(["ip", "-n", SW, "link", "set", br, "up"])
    veth(SW, "pw", None, WEB, "w0", f"{WEB_ADDR}/24")
    run(["ip", "-n", SW, "link", "set", "pw", "master", "inet"])
    veth(CLI, "c0", "198.18.1.2/24", NODES[0], "e0", "198.18.1.1/24")
    veth(SW, "cc", None, CLI, "core", "10.203.0.9/24")
    run(["ip", "-n", SW, "link", "set", "cc", "master", "core"])
    for i, ns in enumerate(NODES):
        veth(SW, f"c{i}", None, ns, "core", f"10.203.0.{i + 1}/24")
        run(["ip", "-n", SW, "link", "set", f"c{i}", "master", "core"])
        if i:
            veth(SW, f"i{i}", None, ns, "inet", f"198.18.2.1{i}/24")
            run(["ip", "-n", SW, "link", "set", f"i{i}", "master", "inet"])


class Node:
    def __init__(self, nx1: str, root: str, i: int):
        self.nx1, self.i, self.ns = nx1, i, NODES[i]
        d = os.path.join(root, f"n{i}")
        self.id = run([nx1, "init", "--dir", d]).stdout.split()[2]
        self.config = os.path.join(d, "nx1.toml")
        core = f"10.203.0.{i + 1}"
        for section, key, value in (
            ("log", "level", '"warn"'),
            ("api", "listen", '"127.0.0.1:0"'),
            ("vpn", "interface", f'"nx1f{i}"'),
            ("mesh", "enabled", "true"),
            ("mesh", "listen", f'"{core}:7871"'),
            ("mesh", "bootstrap", '["10.203.0.2:7871"]'),
            ("mesh", "uplink_check", f'"{WEB_ADDR}"'),
        ):
            set_key(self.config, section, key, value)
        if i == 0:
            set_key(self.config, "vpn", "exit", "false")
            set_key(self.config, "vpn", "endpoint", '"198.18.1.1:51820"')
            set_key(self.config, "mesh", "egress", "true")
        else:
            set_key(self.config, "vpn", "endpoint", f'"{core}:51820"')
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, self.nx1, "--config", self.config, "up"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(f"node {self.i}", lambda: self.status() is not None)

    def status(self) -> dict | None:
        p = run([self.nx1, "--config", self.config, "status", "--json"], check=False)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def stop(self, sig: str = "TERM") -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(getattr(__import__("signal"), f"SIG{sig}"))
            self.proc.wait(timeout=20)
        self.proc = None


def healthy_exits(a: Node) -> int:
    e = (a.status() or {}).get("egress") or {}
    return sum(1 for x in e.get("exits", []) if x.get("healthy"))


def active(a: Node, nodes: list[Node]) -> Node:
    wanted = a.status()["egress"]["active"]
    return next(n for n in nodes if n.id == wanted)


def measure(event) -> dict:
    """Pings every 50 ms, runs `event` 2 s in, and returns what the client saw."""
    p = subprocess.Popen(["ip", "netns", "exec", CLI, "ping", "-n", "-D", "-W", "1",
                          "-i", str(INTERVAL), "-c", str(COUNT), WEB_ADDR],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(2)
    event()
    out, _ = p.communicate(timeout=COUNT * INTERVAL + 30)
    stamps = [float(l[1:l.index("]")]) for l in out.splitlines()
              if l.startswith("[") and "icmp_seq=" in l]
    lost = COUNT - len(stamps)
    silence = max((b - a for a, b in zip(stamps, stamps[1:])), default=None)
    return {"lost": lost, "gap_ms": lost * INTERVAL * 1000,
            "longest_silence_ms": None if silence is None else round(silence * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx1", default=os.path.join(REPO, "target/release/nx1"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    nx1 = os.path.abspath(args.nx1)
    cleanup()
    results: dict[str, list[dict]] = {"kill": [], "uplink": [], "connect": []}
    nodes: list[Node] = []
    client = None
    client_node = None
    try:
        build_lab()
        root = tempfile.mkdtemp(prefix="nx1-failover-bench-")
        nodes = [Node(nx1, root, i) for i in range(4)]
        for n in reversed(nodes):
            n.start()
        a = nodes[0]
        wait("three healthy exits", lambda: healthy_exits(a) == 3, 60)
        conf = run([nx1, "--config", a.config, "peer", "add", "bench"]).stdout
        path = os.path.join(root, "client.conf")
        client = connect(root, conf, ns=CLI, ifname=CLIENT_IF, route="default", target=WEB_ADDR)
        for rnd in range(1, args.rounds + 1):
            victim = active(a, nodes)
            r = measure(lambda: victim.stop("KILL"))
            results["kill"].append(r)
            log(f"round {rnd}: kill -9 of exit {victim.i}: {r}")
            victim.start()
            wait("the killed exit back", lambda: healthy_exits(a) == 3, 60)
            victim = active(a, nodes)
            r = measure(lambda: run(["ip", "-n", victim.ns, "link", "set", "inet", "down"]))
            results["uplink"].append(r)
            log(f"round {rnd}: uplink of exit {victim.i} down: {r}")
            run(["ip", "-n", victim.ns, "link", "set", "inet", "up"])
            wait("the uplink back", lambda: healthy_exits(a) == 3, 60)
        client.terminate()
        client.wait(timeout=10)
        client = None
        wait("wireguard-go to go", lambda: not os.path.exists(f"/var/run/wireguard/{CLIENT_IF}.sock"), 10)

        # nx1 connect: registered on B, standing by on the others.
        b = nodes[1]
        conf = run([nx1, "--config", b.config, "peer", "add", "connect-bench"]).stdout
        with open(path, "w") as f:
            f.write(conf)
        cdir = os.path.join(root, "client")
        run([nx1, "init", "--dir", cdir])
        cconf = os.path.join(cdir, "nx1.toml")
        for section, key, value in (("log", "level", '"warn"'), ("api", "listen", '"127.0.0.1:0"'),
                                    ("vpn", "enabled", "false")):
            set_key(cconf, section, key, value)
        cnode = subprocess.Popen(["ip", "netns", "exec", CLI, nx1, "--config", cconf, "up"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client_node = cnode
        cstatus = lambda: json.loads(run([nx1, "--config", cconf, "status", "--json"]).stdout)
        wait("the client node", lambda: run([nx1, "--config", cconf, "status"],
                                            check=False).returncode == 0)
        wait("every node standing by", lambda: all(
            ((n.status() or {}).get("standby_clients") or 0) >= 1 for n in nodes if n is not b), 60)
        run([nx1, "--config", cconf, "connect", path, "--interface", CLIENT_IF])
        wait("a ping through nx1 connect",
             lambda: run(["ping", "-c1", "-W1", WEB_ADDR], ns=CLI, check=False).returncode == 0)
        for rnd in range(1, args.rounds + 1):
            server = cstatus()["client"]["server"]
            victim = next(n for n in nodes if n.status()["wireguard_public_key"] == server)
            r = measure(lambda: victim.stop("KILL"))
            results["connect"].append(r)
            log(f"round {rnd}: kill -9 of the nx1 connect client's node {victim.i}: {r}")
            victim.start()
            wait("the killed node back", lambda: healthy_exits(a) == 3, 60)
            wait("the killed node standing by again",
                 lambda: run(["ping", "-c1", "-W1", WEB_ADDR], ns=CLI, check=False).returncode == 0)
            time.sleep(3)
        run([nx1, "--config", cconf, "disconnect"])
        cnode.terminate()
        cnode.wait(timeout=20)
        client_node = None
    finally:
        if client_node and client_node.poll() is None:
            client_node.terminate()
            client_node.wait(timeout=20)
        if client:
            client.terminate()
            client.wait(timeout=10)
        for n in nodes:
            try:
                n.stop()
            except Exception as e:  # keep cleaning up
                log(f"stopping node {n.i}: {e}")
        cleanup()

    print("| event | gap: pings lost × 50 ms, median (min–max) | longest silence between answers, ms, median |")
    print("|---|---|---|")
    for event, label in (("kill", "`kill -9` of the exit in use"),
                         ("uplink", "uplink of the exit in use down"),
                         ("connect", "`kill -9` of the node an `nx1 connect` client uses")):
        gaps = [r["gap_ms"] for r in results[event]]
        silences = [r["longest_silence_ms"] for r in results[event]
                    if r["longest_silence_ms"] is not None]
        print(f"| {label} | {statistics.median(gaps):.0f} ({min(gaps):.0f}–{max(gaps):.0f}) "
              f"| {statistics.median(silences):.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
                       "interval_ms": INTERVAL * 1000, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
