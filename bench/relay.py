#!/usr/bin/env python3
"""Relay benchmark: a standard WireGuard client's throughput through an NX1 relay, against the
direct path to the same exit and against the kernel forwarding the same datagrams.

    nx1r-cli ── 198.18.4.0/24 ── nx1r-rly ── 198.18.3.0/24 ──┐
        └────────────── 198.18.1.0/24 ────────────────── nx1r-exit ── 198.18.2.0/24 ── nx1r-web

One NX1 exit (`nx1 up` in nx1r-exit) and one NX1 relay node (`nx1 up` in nx1r-rly, relay duty
only, learning the exit from the mesh directory). The client is wireguard-go in nx1r-cli,
configured from `nx1 peer add` for each path:

- `direct`: Endpoint = the exit (198.18.1.1:51820), no relay;
- `relay`: `nx1 peer add --via 198.18.4.1:51821`, through the NX1 relay;
- `kernel-dnat`: Endpoint 198.18.4.1:51822, which nftables in nx1r-rly DNATs (and
  masquerades) to the exit: the kernel forwarding the same datagrams, the fastest a
  forwarding hop in this lab can be.

Each round measures every path (interleaved), with `iperf3 -c 198.18.2.2 -t S` and -P 1 and 4.
Reported: median Gbit/s, the ratio to `direct`, and the relay daemon's CPU seconds per GB.
Python 3.11 standard library only; needs root, iproute2, nftables, iperf3, wireguard-go,
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
from vault import set_key  # noqa: E402

CLI, RLY, EXIT, WEB = "nx1r-cli", "nx1r-rly", "nx1r-exit", "nx1r-web"
WEB_ADDR = "198.18.2.2"
CLIENT_IF = "wgrc"
PATHS = ("direct", "relay", "kernel-dnat")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[relay-bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cleanup() -> None:
    run(["ip", "link", "del", CLIENT_IF], ns=CLI, check=False)
    for ns in (CLI, RLY, EXIT, WEB):
        run(["ip", "netns", "del", ns], check=False)
    for name in (CLIENT_IF, "nx1rx"):
        try:
            os.remove(f"/var/run/wireguard/{name}.sock")
        except FileNotFoundError:
            pass


def build_lab() -> None:
    for ns in (CLI, RLY, EXIT, WEB):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    for a, a_if, a_addr, b, b_if, b_addr in (
        (CLI, "c0", "198.18.4.2/24", RLY, "r0", "198.18.4.1/24"),
        (RLY, "r1", "198.18.3.1/24", EXIT, "x0", "198.18.3.2/24"),
        (CLI, "c1", "198.18.1.2/24", EXIT, "x1", "198.18.1.1/24"),
        (EXIT, "e1", "198.18.2.1/24", WEB, "w0", "198.18.2.2/24"),
    ):
        run(["ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if,
             "netns", b])
        for ns, dev, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
    # The reference hop: the kernel forwards UDP 51822 to the exit, as a NAT box would.
    run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=RLY)
    rules = """table ip nx1rbench {
  chain pre { type nat hook prerouting priority -100; udp dport 51822 dnat to 198.18.3.2:51820; }
  chain post { type nat hook postrouting priority 100; oifname "r1" masquerade; }
}"""
    run(["nft", "-f", "-"], ns=RLY, input=rules)


def node(nx1: str, root: str, name: str) -> str:
    d = os.path.join(root, name)
    run([nx1, "init", "--dir", d])
    config = os.path.join(d, "nx1.toml")
    set_key(config, "log", "level", '"warn"')
    set_key(config, "api", "listen", '"127.0.0.1:0"')
    set_key(config, "mesh", "enabled", "true")
    return config


def status(nx1: str, config: str) -> dict | None:
    p = run([nx1, "--config", config, "status", "--json"], check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def wait(what: str, check, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def connect(root: str, conf_text: str, ns: str = CLI, ifname: str = CLIENT_IF,
            route: str = "198.18.2.0/24", target: str = WEB_ADDR) -> subprocess.Popen:
    """wireguard-go as `ifname` in `ns` from a wg-quick config, `route` into it, up once
    `target` answers a ping through it."""
    run(["ip", "link", "del", ifname], ns=ns, check=False)
    conf = os.path.join(root, f"{ifname}.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    stripped = run(["wg-quick", "strip", conf]).stdout
    setconf = os.path.join(root, "setconf.conf")
    with open(setconf, "w") as f:
        f.write(stripped)
    wg = subprocess.Popen(["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait("wireguard-go", lambda: os.path.exists(f"/var/run/wireguard/{ifname}.sock"), 10)
    run(["wg", "setconf", ifname, setconf], ns=ns)
    address = next(l.split("=", 1)[1] for l in conf_text.splitlines() if l.startswith("Address"))
    run(["ip", "-n", ns, "addr", "add", address.split(",")[0].strip(), "dev", ifname])
    run(["ip", "-n", ns, "link", "set", ifname, "up"])
    run(["ip", "-n", ns, "route", "add", route, "dev", ifname])
    wait("a ping through the tunnel",
         lambda: run(["ping", "-c1", "-W1", target], ns=ns, check=False).returncode == 0)
    return wg


def iperf(streams: int, seconds: int) -> tuple[float, int]:
    p = run(["iperf3", "-c", WEB_ADDR, "-t", str(seconds), "-P", str(streams), "-J",
             "--connect-timeout", "3000"], ns=CLI, timeout=seconds + 30)
    end = json.loads(p.stdout)["end"]["sum_received"]
    return float(end["bits_per_second"]), int(end["bytes"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx1", default=os.path.join(REPO, "target/release/nx1"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    nx1 = os.path.abspath(args.nx1)
    cleanup()
    procs: list[subprocess.Popen] = []
    results: dict[str, dict[int, list[float]]] = {p: {1: [], 4: []} for p in PATHS}
    relay_cpu_per_gb: list[float] = []
    try:
        build_lab()
        root = tempfile.mkdtemp(prefix="nx1-relay-bench-")
        exit_conf = node(nx1, root, "exit")
        set_key(exit_conf, "vpn", "interface", '"nx1rx"')
        # What the exit publishes (and the relay forwards to) is its relay-side address; the
        # direct client is given the other one.
        set_key(exit_conf, "vpn", "endpoint", '"198.18.3.2:51820"')
        set_key(exit_conf, "mesh", "listen", '"198.18.3.2:7871"')
        relay_conf = node(nx1, root, "relay")
        set_key(relay_conf, "vpn", "enabled", "false")
        set_key(relay_conf, "mesh", "listen", '"198.18.3.1:7871"')
        set_key(relay_conf, "mesh", "bootstrap", '["198.18.3.2:7871"]')
        set_key(relay_conf, "relay", "enabled", "true")
        set_key(relay_conf, "relay", "endpoint", '"198.18.4.1:51821"')
        daemons = {}
        for ns, conf in ((EXIT, exit_conf), (RLY, relay_conf)):
            p = subprocess.Popen(["ip", "netns", "exec", ns, nx1, "--config", conf, "up"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait(f"nx1 in {ns}", lambda c=conf: status(nx1, c) is not None)
            daemons[ns] = status(nx1, conf)["pid"]
        wait("the relay to learn the exit",
             lambda: (status(nx1, relay_conf) or {}).get("relay", {}).get("exits") == 1)
        configs = {}
        for path in PATHS:
            extra = {"direct": ["--endpoint", "198.18.1.1:51820"], "relay": ["--via", "198.18.4.1:51821"],
                     "kernel-dnat": ["--endpoint", "198.18.4.1:51822"]}[path]
            configs[path] = run([nx1, "--config", exit_conf, "peer", "add", f"bench-{path}",
                                 *extra]).stdout
        iperf_server = subprocess.Popen(["ip", "netns", "exec", WEB, "iperf3", "-s"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(iperf_server)
        time.sleep(0.5)
        for rnd in range(1, args.rounds + 1):
            for path in PATHS:
                wg = connect(root, configs[path])
                try:
                    for streams in (1, 4):
                        cpu0 = cpu_seconds(daemons[RLY])
                        bps, got = iperf(streams, args.seconds)
                        cpu = cpu_seconds(daemons[RLY]) - cpu0
                        results[path][streams].append(bps)
                        if path == "relay":
                            relay_cpu_per_gb.append(cpu / (got / 1e9))
                        log(f"round {rnd} {path} -P {streams}: {bps / 1e9:.2f} Gbit/s")
                finally:
                    wg.terminate()
                    wg.wait(timeout=10)
                    wait("wireguard-go to go",
                         lambda: not os.path.exists(f"/var/run/wireguard/{CLIENT_IF}.sock"), 10)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup()

    med = {p: {s: statistics.median(v) for s, v in results[p].items()} for p in PATHS}
    print("| path | 1 stream Gbit/s | ratio to direct | 4 streams Gbit/s | ratio to direct |")
    print("|---|---|---|---|---|")
    for p in PATHS:
        print(f"| {p} | {med[p][1] / 1e9:.2f} | {med[p][1] / med['direct'][1]:.2f} "
              f"| {med[p][4] / 1e9:.2f} | {med[p][4] / med['direct'][4]:.2f} |")
    print(f"\nrelay daemon CPU: {statistics.median(relay_cpu_per_gb):.2f} s per GB relayed "
          f"(median of {len(relay_cpu_per_gb)} runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
                       "seconds": args.seconds, "bits_per_second": results,
                       "median": med, "relay_cpu_s_per_gb": relay_cpu_per_gb,
                       "cores": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
