#!/usr/bin/env python3
"""Mesh benchmark: directory convergence and failure detection for N nodes on loopback.

Starts N `nx1 up` nodes (`[vpn] enabled = false`, gossip on 127.0.0.1, every node bootstrapping
through the first) and measures, polling every node's `GET /v1/directory` every 50 ms:

- convergence: from the moment the last node is started until every node lists all N as live
  with verified records;
- dead-node detection: from `kill -9` of one node until every other node lists it as dead;
- leave: from SIGTERM of another node until every other node has dropped it (the node
  publishes a signed goodbye and gossips it for 4 rounds before it exits).

Each number is also given in gossip rounds (`[mesh] gossip_interval_ms`, 250 by default), the
unit the protocol works in. Python 3.11 standard library only; needs the release binary
(`cargo build --release -p nx1-node`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vault import free_port, set_key  # noqa: E402


def log(msg: str) -> None:
    print(f"[mesh-bench] {msg}", file=sys.stderr, flush=True)


class MeshNode:
    def __init__(self, nx1: str, root: str, i: int, seed: str | None, interval_ms: int):
        self.dir = os.path.join(root, f"n{i}")
        out = subprocess.run([nx1, "init", "--dir", self.dir], check=True, capture_output=True,
                             text=True).stdout
        self.id = out.split()[2]
        self.config = os.path.join(self.dir, "nx1.toml")
        self.api = f"127.0.0.1:{free_port()}"
        self.gossip = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        set_key(self.config, "vpn", "enabled", "false")
        set_key(self.config, "log", "level", '"warn"')
        set_key(self.config, "api", "listen", f'"{self.api}"')
        set_key(self.config, "mesh", "enabled", "true")
        set_key(self.config, "mesh", "listen", f'"{self.gossip}"')
        set_key(self.config, "mesh", "gossip_interval_ms", str(interval_ms))
        set_key(self.config, "mesh", "bootstrap", f'["{seed}"]' if seed else "[]")
        self.nx1, self.proc = nx1, None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.nx1, "--config", self.config, "up"],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "up.log"), "w"))

    def wait_api(self) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.api}/healthz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.dir} did not start")

    def states(self) -> dict[str, str]:
        try:
            with urllib.request.urlopen(f"http://{self.api}/v1/directory", timeout=2) as r:
                d = json.load(r)
        except OSError:
            return {}
        return {k: v["state"] for k, v in d["members"].items()}

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


def until(cond, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if cond():
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise RuntimeError("timed out")


def run(nx1: str, n: int, interval_ms: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nx1-mesh-bench-") as root:
        nodes: list[MeshNode] = []
        try:
            first = MeshNode(nx1, root, 0, None, interval_ms)
            nodes.append(first)
            for i in range(1, n):
                nodes.append(MeshNode(nx1, root, i, first.gossip, interval_ms))
            for node in nodes:
                node.start()
            started = time.perf_counter()
            for node in nodes:
                node.wait_api()
            ids = {node.id for node in nodes}
            everyone_live = lambda: all(  # noqa: E731
                node.states() == {i: "live" for i in ids} for node in nodes)
            until(everyone_live, 60)
            converge = time.perf_counter() - started

            victim, leaver = nodes[-1], nodes[-2]
            rest = nodes[:-2]
            victim.stop(signal.SIGKILL)
            dead = until(lambda: all(node.states().get(victim.id) == "dead"
                                     for node in rest + [leaver]), 60)
            # From the signal: the node spends its last gossip rounds saying goodbye.
            t0 = time.perf_counter()
            leaver.proc.send_signal(signal.SIGTERM)
            until(lambda: all(leaver.id not in node.states() for node in rest), 60)
            left = time.perf_counter() - t0
        finally:
            for node in nodes:
                node.stop(signal.SIGKILL)
    rounds = interval_ms / 1000
    return {"nodes": n, "gossip_interval_ms": interval_ms,
            "converge_s": converge, "converge_rounds": converge / rounds,
            "dead_detect_s": dead, "dead_detect_rounds": dead / rounds,
            "leave_s": left, "leave_rounds": left / rounds}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx1", default=os.path.join(REPO, "target/release/nx1"))
    ap.add_argument("--nodes", default="4,16")
    ap.add_argument("--interval-ms", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=3, help="runs per size; the median is shown")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    results = []
    for n in [int(x) for x in args.nodes.split(",")]:
        runs = []
        for r in range(args.rounds):
            log(f"{n} nodes, run {r + 1}")
            runs.append(run(args.nx1, n, args.interval_ms))
        results.append({"nodes": n, "runs": runs})
    print("| nodes | converge, s (rounds) | dead node detected by all, s (rounds) | "
          "leave seen by all, s (rounds) |\n|---|---|---|---|")
    for res in results:
        med = {k: statistics.median(r[k] for r in res["runs"])
               for k in ("converge_s", "converge_rounds", "dead_detect_s",
                         "dead_detect_rounds", "leave_s", "leave_rounds")}
        print(f"| {res['nodes']} | {med['converge_s']:.2f} ({med['converge_rounds']:.1f}) | "
              f"{med['dead_detect_s']:.2f} ({med['dead_detect_rounds']:.1f}) | "
              f"{med['leave_s']:.2f} ({med['leave_rounds']:.1f}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
