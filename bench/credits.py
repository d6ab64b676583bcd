#!/usr/bin/env python3
"""Credit-ledger benchmark: spend commit cost, concurrent double spends, and reconcile time.

Everything runs on loopback with `nx1 up` nodes (`[vpn] enabled = false`, log level warn):

1. Spend commit: S sequential spends of 1 credit through `POST /v1/credits/spend`, after a grant
   of 1,000,000, on a single node without a mesh (the node alone is the account's replica) and
   on a 3-node mesh (every node is a replica; a spend counts once 2 of 3 took it). p50/p99
   latency, spends/s, and the mesh/single ratio.
2. Double spends: K rounds, each on a fresh account granted exactly X credits, where two spends
   of all X are sent at once (two threads) to two different nodes. Counts the rounds where more
   than one went through (must be 0), and those where the loser was taken (held pending) by a
   minority of the replicas; it must never be shared: after the replicas agree and the hold
   (`[credits] spend_hold_secs`, 3 s here) runs out, the account holds exactly the one spend
   and is not overdrawn.
3. Reconcile: one replica is stopped (SIGSTOP), a spend is committed on the other two, the
   replica is resumed (SIGCONT), and its `GET /v1/credits/replica/account` is polled every 50 ms
   until its decided history equals the others'. Replicas compare notes every
   `[credits] sync_interval_ms` (2000 by default), so this time scales with that interval.

Spends are signed here as a device signs them: the entry's exact JSON text, signed with
ed25519 over b"nx1-credit-entry/1\\0" + that text. Python 3.11 with the `cryptography`
package; needs the release binary (`cargo build --release -p nx1-node`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # importing the sibling script must not leave __pycache__ behind
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vault import free_port, set_key  # noqa: E402

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError:  # pragma: no cover - depends on the machine
    print("credits.py needs the Python package `cryptography` (ed25519 signatures): "
          "pip install cryptography", file=sys.stderr)
    sys.exit(2)

DOMAIN = b"nx1-credit-entry/1\0"
GRANT = 1_000_000  # what the throughput accounts are granted
POLL = 0.05  # seconds between polls of a replica's view
HTTP_TIMEOUT = 15.0  # one request (a replica that does not answer costs the node 3 s)


# How long a spend that reaches no majority holds its credits where it was taken.
HOLD_SECS = 3

def log(msg: str) -> None:
    print(f"[credits-bench] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    """SIGTERM/SIGHUP/SIGALRM: unwind like Ctrl-C so the finally blocks clean up."""


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


def query(account: str) -> str:
    """An account (base64) as a query value: `+`, `/` and `=` percent-encoded."""
    return account.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


class Account:
    """A device's key, which is its own account: it signs its spends."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.id = b64(self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def spend(self, amount: int, memo: str = "") -> tuple[str, bytes]:
        """A signed spend: its id and the request body for POST /v1/credits/spend."""
        spend_id = b64(secrets.token_bytes(16))
        entry = json.dumps({
            "kind": "spend", "v": 1, "id": spend_id, "account": self.id, "signer": self.id,
            "service": "bench", "amount": amount, "memo": memo, "at": int(time.time()),
        }, separators=(",", ":"))
        signature = b64(self.key.sign(DOMAIN + entry.encode()))
        return spend_id, json.dumps({"entry": entry, "signature": signature}).encode()


class Api:
    """One keep-alive HTTP connection to a node's API."""

    def __init__(self, address: str, timeout: float = HTTP_TIMEOUT) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port, self.timeout, self.conn = int(port), timeout, None

    def connect(self) -> None:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.connect()
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        headers = {"content-type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            try:
                self.connect()
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (OSError, http.client.HTTPException):
                # A keep-alive connection the server closed: once more on a new one (a spend
                # sent twice counts once, by its id).
                self.close()
                if attempt:
                    raise
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data.decode(errors="replace")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def clean_env() -> dict:
    env = dict(os.environ)
    env.pop("NX1_CONFIG", None)
    env.pop("RUST_LOG", None)
    return env


class LedgerNode:
    def __init__(self, nx1: str, root: str, name: str, sync_ms: int, mesh: bool):
        self.nx1, self.name, self.dir = nx1, name, os.path.join(root, name)
        out = subprocess.run([nx1, "init", "--dir", self.dir], check=True, capture_output=True,
                             text=True, timeout=60, env=clean_env()).stdout
        self.id = out.split()[2]
        self.config = os.path.join(self.dir, "nx1.toml")
        self.api = f"127.0.0.1:{free_port()}"
        self.gossip = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}" if mesh else None
        set_key(self.config, "vpn", "enabled", "false")
        set_key(self.config, "log", "level", '"warn"')
        set_key(self.config, "api", "listen", f'"{self.api}"')
        set_key(self.config, "credits", "sync_interval_ms", str(sync_ms))
        set_key(self.config, "credits", "spend_hold_secs", str(HOLD_SECS))
        if mesh:
            set_key(self.config, "mesh", "enabled", "true")
            set_key(self.config, "mesh", "listen", f'"{self.gossip}"')
            # On loopback the API is published only when named.
            set_key(self.config, "mesh", "api_url", f'"http://{self.api}"')
        self.proc: subprocess.Popen | None = None
        self.http = Api(self.api)
        self.paused = False

    def configure(self, issuers: list[str], bootstrap: list[str]) -> None:
        set_key(self.config, "credits", "issuers", json.dumps(issuers))
        if self.gossip is not None:
            set_key(self.config, "mesh", "bootstrap", json.dumps(bootstrap))

    def start(self) -> None:
        self.proc = subprocess.Popen([self.nx1, "--config", self.config, "up"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "up.log"), "w"),
                                     env=clean_env())

    def wait_api(self) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited: {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if Api(self.api, 1).request("GET", "/healthz")[0] == 200:
                    return
            time.sleep(0.05)
        raise BenchError(f"{self.name}'s API did not come up: {self.log_tail()}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.nx1, "--config", self.config, *args], capture_output=True,
                              text=True, timeout=60, env=clean_env(), cwd=self.dir)

    def grant(self, account: str, amount: int) -> int:
        """`nx1 credits grant`: how many replicas took it."""
        p = self.cli("credits", "grant", account, str(amount), "--memo", "benchmark")
        m = re.search(r"taken by (\d+) replica", p.stdout)
        if p.returncode != 0 or not m:
            raise BenchError(f"grant on {self.name}: {p.stderr.strip() or p.stdout.strip()}")
        return int(m.group(1))

    def held(self, account: str) -> dict:
        """The account as this replica holds it."""
        code, body = self.http.request("GET",
                                       f"/v1/credits/replica/account?account={query(account)}")
        if code != 200:
            raise BenchError(f"{self.name}: replica/account answered {code}: {body}")
        return body

    def directory(self) -> dict:
        with contextlib.suppress(OSError, http.client.HTTPException):
            code, body = self.http.request("GET", "/v1/directory")
            if code == 200 and isinstance(body, dict):
                return body.get("members", {})
        return {}

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 8) -> str:
        with contextlib.suppress(OSError):
            lines = open(os.path.join(self.dir, "up.log"), errors="replace").read().splitlines()
            return " | ".join(lines[-n:]) or "(empty log)"
        return "(no log)"


def until(what: str, cond, timeout: float, period: float = POLL):
    """Polls `cond` (start to start every `period`) until it returns a true value: (elapsed, value)."""
    t0 = time.perf_counter()
    while True:
        start = time.perf_counter()
        value = cond()
        if value:
            return time.perf_counter() - t0, value
        if start - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(max(0.0, period - (time.perf_counter() - start)))


def histories(nodes: list[LedgerNode], account: str) -> list[list]:
    return [n.held(account)["history"] for n in nodes]


def decided(view: dict) -> list:
    """A replica's decided entries (a pending spend is held where it was taken, not shared)."""
    return [h for h in view["history"] if not h.get("pending")]


def agreed(nodes: list[LedgerNode], account: str):
    """The view all replicas share, once their decided histories are equal and none still
    holds a pending spend."""
    views = [n.held(account) for n in nodes]
    if any(h.get("pending") for v in views for h in v["history"]):
        return None
    if all(decided(v) == decided(views[0]) for v in views[1:]):
        return views[0]
    return None


def start_nodes(nodes: list[LedgerNode]) -> None:
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_api()


def wait_mesh(nodes: list[LedgerNode]) -> float:
    def ready() -> bool:
        for n in nodes:
            m = n.directory()
            if len(m) != len(nodes) or not all(
                    v.get("state") == "live" and isinstance((v.get("record") or {}).get("api"), str)
                    for v in m.values()):
                return False
        return True
    return until("the mesh: every node listing 3 live members with an API", ready, 60)[0]


def funded(nodes: list[LedgerNode], issuer: LedgerNode, amount: int, sync_s: float) -> Account:
    """A fresh account granted `amount`, held by every replica."""
    acct = Account()
    issuer.grant(acct.id, amount)
    until("the grant on every replica",
          lambda: all(n.held(acct.id)["balance"]["balance"] == amount for n in nodes),
          10 + 3 * sync_s)
    return acct


def sequential(nodes: list[LedgerNode], acct: Account, spends: int, warmup: int,
               sync_s: float, label: str) -> dict:
    """`spends` sequential 1-credit spends, round robin over the nodes."""
    bodies = [acct.spend(1)[1] for _ in range(warmup + spends)]  # signed before the clock runs
    lat: list[float] = []
    started = None
    for i, body in enumerate(bodies):
        if i == warmup:
            started = time.perf_counter()
        api = nodes[i % len(nodes)].http
        t = time.perf_counter()
        code, answer = api.request("POST", "/v1/credits/spend", body)
        dt = time.perf_counter() - t
        if code != 200:
            raise BenchError(f"{label}: spend {i} answered {code}: {answer}")
        if i >= warmup:
            lat.append(dt)
    total = time.perf_counter() - started
    left = GRANT - warmup - spends
    # Every replica ends up with every spend (the ones a replica missed reach it by sync).
    until(f"{label}: every replica at balance {left}",
          lambda: all(n.held(acct.id)["balance"]["balance"] == left for n in nodes),
          10 + 3 * sync_s)
    ms = [x * 1000 for x in lat]
    return {"spends": spends, "warmup": warmup, "total_s": total,
            "spends_per_s": spends / total, "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms),
            "max_ms": max(ms), "latencies_ms": [round(x, 3) for x in ms]}


def post_at_once(targets: list[tuple[LedgerNode, bytes]]) -> list[dict]:
    """Sends each body to its node from its own thread, released together."""
    barrier = threading.Barrier(len(targets))
    out: list[dict] = [{} for _ in targets]

    def go(i: int, node: LedgerNode, body: bytes) -> None:
        api = Api(node.api)
        try:
            api.connect()  # connected before the race starts
            barrier.wait(timeout=10)
            t = time.perf_counter()
            code, answer = api.request("POST", "/v1/credits/spend", body)
            out[i] = {"node": node.name, "status": code, "ms": (time.perf_counter() - t) * 1000,
                      "error": answer.get("error") if isinstance(answer, dict) else answer}
        except Exception as e:  # noqa: BLE001 - reported as the round's answer
            out[i] = {"node": node.name, "status": None, "error": str(e)}
        finally:
            api.close()

    threads = [threading.Thread(target=go, args=(i, n, b), daemon=True)
               for i, (n, b) in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HTTP_TIMEOUT + 15)
    return out


def double_spends(nodes: list[LedgerNode], issuer: LedgerNode, rounds: int, amount: int,
                  sync_s: float) -> list[dict]:
    results = []
    for r in range(rounds):
        acct = funded(nodes, issuer, amount, sync_s)
        a, b = nodes[r % 3], nodes[(r + 1) % 3]
        (id_a, body_a), (id_b, body_b) = acct.spend(amount), acct.spend(amount)
        answers = post_at_once([(a, body_a), (b, body_b)])
        # Which replica took which, right after the race (before any sync round).
        held_by = {}
        for n in nodes:
            ids = [h["id"] for h in n.held(acct.id)["history"] if h["kind"] == "spend"]
            held_by[n.name] = ["a" if i == f"spend/{id_a}" else "b" if i == f"spend/{id_b}"
                               else i for i in ids]
        wait_s, view = until("the replicas to agree", lambda: agreed(nodes, acct.id),
                             15 + 6 * sync_s + HOLD_SECS)
        through = sum(1 for x in answers if x.get("status") == 200)
        spends = sum(1 for h in view["history"] if h["kind"] == "spend")
        bal = view["balance"]
        row = {"round": r + 1, "nodes": [a.name, b.name], "answers": answers,
               "through": through, "held_right_after": held_by, "agree_after_s": wait_s,
               "spends_after_reconcile": spends, "balance_after": bal["balance"],
               "overdrawn": bal["overdrawn"],
               "loser_on_minority": through == 1
               and sum(len(v) for v in held_by.values()) > 2 * 1}
        results.append(row)
        log(f"double spend {r + 1}/{rounds} ({a.name} vs {b.name}): "
            f"{[x.get('status') for x in answers]}, {through} through; right after: {held_by}; "
            f"after reconcile {spends} spend(s), balance {bal['balance']}"
            + (" (overdrawn)" if bal["overdrawn"] else ""))
    return results


def reconcile(nodes: list[LedgerNode], issuer: LedgerNode, rounds: int, sync_s: float
              ) -> list[dict]:
    results = []
    for r in range(rounds):
        acct = funded(nodes, issuer, 1000, sync_s)
        victim = nodes[(r + 2) % 3]
        others = [n for n in nodes if n is not victim]
        _, body = acct.spend(1)
        victim.pause()
        try:
            t = time.perf_counter()
            code, answer = others[r % 2].http.request("POST", "/v1/credits/spend", body)
            spend_s = time.perf_counter() - t
            if code != 200:
                raise BenchError(f"spend with {victim.name} stopped answered {code}: {answer}")
            target = decided(others[0].held(acct.id))
            if decided(others[1].held(acct.id)) != target:
                raise BenchError("the two running replicas differ after the spend")
            stopped_s = time.perf_counter() - t
        finally:
            victim.resume()
        t0 = time.perf_counter()
        polls = 0

        def level() -> bool:
            nonlocal polls
            polls += 1
            with contextlib.suppress(OSError, http.client.HTTPException):
                return decided(victim.held(acct.id)) == target
            return False

        until(f"{victim.name} to catch up", level, 30 + 10 * sync_s)
        caught = time.perf_counter() - t0
        results.append({"round": r + 1, "stopped": victim.name, "spent_on": others[r % 2].name,
                         "spend_s": spend_s, "stopped_s": stopped_s, "reconcile_s": caught,
                         "polls": polls})
        log(f"reconcile {r + 1}/{rounds}: {victim.name} stopped {stopped_s:.2f} s "
            f"(spend took {spend_s:.2f} s), level {caught:.2f} s after SIGCONT")
    return results


def time_budget(args) -> int:
    sync_s = args.sync_interval_ms / 1000
    return int(120 + args.spends * 2 * 0.5 + args.rounds * (15 + 8 * sync_s)
               + args.reconcile_rounds * (25 + 12 * sync_s))


def render(res: dict, args) -> str:
    s, m = res.get("single"), res.get("mesh")
    rows = ["| measure | single node (no mesh) | 3-node mesh (majority 2 of 3) | mesh / single |",
            "|---|---|---|---|"]

    def cell(d, k, f):
        return f.format(d[k]) if d else "–"

    def ratio(k):
        return f"{m[k] / s[k]:.2f}" if s and m else "–"

    rows.append(f"| spend commit p50, ms | {cell(s, 'p50_ms', '{:.2f}')} | "
                f"{cell(m, 'p50_ms', '{:.2f}')} | {ratio('p50_ms')} |")
    rows.append(f"| spend commit p99, ms | {cell(s, 'p99_ms', '{:.2f}')} | "
                f"{cell(m, 'p99_ms', '{:.2f}')} | {ratio('p99_ms')} |")
    rows.append(f"| sequential spends/s ({args.spends} × 1 credit) | "
                f"{cell(s, 'spends_per_s', '{:.0f}')} | {cell(m, 'spends_per_s', '{:.0f}')} | "
                f"{ratio('spends_per_s')} |")
    ds = res.get("double_spends") or []
    if ds:
        n = len(ds)
        more = sum(1 for d in ds if d["through"] > 1)
        minority = sum(1 for d in ds if d["loser_on_minority"])
        nowhere = sum(1 for d in ds if d["through"] == 1 and not d["loser_on_minority"])
        settled = sum(1 for d in ds if d["spends_after_reconcile"] == d["through"]
                      and not d["overdrawn"])
        none = sum(1 for d in ds if d["through"] == 0)
        rows.append(f"| double spends of all {args.amount} credits on two nodes at once: "
                    f"rounds with more than one through | – | {more} of {n} | |")
        rows.append(f"| … loser held pending by a minority (never shared, released after "
                    f"{HOLD_SECS} s) | – | {minority} of {n} | |")
        rows.append(f"| … loser taken nowhere | – | {nowhere} of {n} | |")
        rows.append(f"| … replicas agree on exactly the spends that went through, none "
                    f"overdrawn | – | {settled} of {n} | |")
        if none:
            rows.append(f"| … neither went through | – | {none} of {n} | |")
    rc = res.get("reconcile") or []
    if rc:
        per = ", ".join(f"{x['reconcile_s']:.2f}" for x in rc)
        rows.append(f"| stopped replica level again after SIGCONT, s "
                    f"(sync_interval_ms = {args.sync_interval_ms}): median (each round) | – | "
                    f"{statistics.median(x['reconcile_s'] for x in rc):.2f} ({per}) | |")
        rows.append(f"| spend with one replica stopped, s: median | – | "
                    f"{statistics.median(x['spend_s'] for x in rc):.2f} | |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nx1", default=os.path.join(REPO, "target/release/nx1"))
    ap.add_argument("--spends", type=int, default=300,
                    help="sequential spends of 1 credit, on each setup (default 300)")
    ap.add_argument("--warmup", type=int, default=5, help="spends before the clock (default 5)")
    ap.add_argument("--rounds", type=int, default=20, help="double-spend rounds (default 20)")
    ap.add_argument("--amount", type=int, default=100,
                    help="credits granted to each double-spend account, and spent twice")
    ap.add_argument("--reconcile-rounds", type=int, default=5, help="default 5")
    ap.add_argument("--sync-interval-ms", type=int, default=2000,
                    help="[credits] sync_interval_ms of every node (default 2000, nx1's default)")
    ap.add_argument("--json", metavar="FILE",
                    default=os.path.join(REPO, "bench/results-credits.json"))
    args = ap.parse_args(argv)
    args.nx1 = os.path.abspath(args.nx1)  # the CLI runs from the node's directory
    if not os.access(args.nx1, os.X_OK):
        log(f"{args.nx1} is missing: cargo build --release -p nx1-node")
        return 2
    if args.spends < 1 or args.rounds < 0 or args.reconcile_rounds < 0 or args.amount < 1:
        log("--spends must be at least 1, --amount at least 1, the rounds at least 0")
        return 2
    if not 100 <= args.sync_interval_ms <= 600_000:
        log("--sync-interval-ms must be 100..=600000 (nx1's bounds)")
        return 2
    sync_s = args.sync_interval_ms / 1000
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(), "command": shlex.join([sys.argv[0], *argv]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "nx1": args.nx1,
        "spends": args.spends, "warmup": args.warmup, "grant": GRANT, "rounds": args.rounds,
        "amount": args.amount, "reconcile_rounds": args.reconcile_rounds,
        "sync_interval_ms": args.sync_interval_ms, "poll_ms": int(POLL * 1000),
    }
    for key, cmd in (("nx1_version", [args.nx1, "--version"]),
                     ("git", ["git", "-C", REPO, "describe", "--always", "--dirty"])):
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            meta[key] = subprocess.run(cmd, capture_output=True, text=True,
                                       timeout=10).stdout.strip().splitlines()[0]

    res: dict = {"meta": meta}
    failures: list[str] = []
    interrupted = None
    nodes: list[LedgerNode] = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    budget = time_budget(args)
    signal.alarm(budget)
    root = tempfile.mkdtemp(prefix="nx1-credits-bench-")
    try:
        log(f"time budget {budget} s; working in {root}")
        # 1a. One node, no mesh: it is the only replica of every account.
        single = LedgerNode(args.nx1, root, "single", args.sync_interval_ms, mesh=False)
        nodes.append(single)
        single.configure([single.id], [])
        start_nodes([single])
        acct = Account()
        single.grant(acct.id, GRANT)
        log(f"single node: {args.spends} sequential spends")
        res["single"] = sequential([single], acct, args.spends, args.warmup, sync_s, "single")
        log(f"single node: p50 {res['single']['p50_ms']:.2f} ms, "
            f"{res['single']['spends_per_s']:.0f} spends/s")
        single.stop()

        # 1b. Three nodes in one mesh, node a the issuer every node honours.
        mesh = [LedgerNode(args.nx1, root, name, args.sync_interval_ms, mesh=True)
                for name in ("a", "b", "c")]
        nodes += mesh
        issuer = mesh[0]
        for i, n in enumerate(mesh):
            n.configure([issuer.id], [mesh[0].gossip] if i else [])
        start_nodes(mesh)
        meta["mesh_ready_s"] = wait_mesh(mesh)
        log(f"mesh of 3 ready after {meta['mesh_ready_s']:.2f} s")
        acct = Account()
        took = issuer.grant(acct.id, GRANT)
        if took != 3:
            raise BenchError(f"the grant was taken by {took} replica(s), not 3")
        log(f"mesh: {args.spends} sequential spends, round robin over a, b, c")
        res["mesh"] = sequential(mesh, acct, args.spends, args.warmup, sync_s, "mesh")
        log(f"mesh: p50 {res['mesh']['p50_ms']:.2f} ms, "
            f"{res['mesh']['spends_per_s']:.0f} spends/s")

        # 2. Double spends.
        if args.rounds:
            res["double_spends"] = double_spends(mesh, issuer, args.rounds, args.amount, sync_s)
        # 3. A replica that was away catches up.
        if args.reconcile_rounds:
            res["reconcile"] = reconcile(mesh, issuer, args.reconcile_rounds, sync_s)
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = str(e) or "interrupted"
        log(f"interrupted ({interrupted}); cleaning up")
    except (BenchError, OSError, http.client.HTTPException, subprocess.SubprocessError) as e:
        failures.append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}")
        for n in nodes:
            log(f"{n.name} log: {n.log_tail()}")
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        log("cleaning up")
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["failures"] = failures
    if interrupted:
        meta["interrupted"] = interrupted
    print(f"credits: {meta['date']}, nproc {meta['nproc']}, load {meta['loadavg_at_start'][0]} "
          f"at start / {meta['loadavg_at_end'][0]} at end; command: `{meta['command']}`")
    print()
    print(render(res, args))
    print()
    notes = []
    if "git" in meta:
        notes.append(f"repo {meta['git']}" + (f", {meta['nx1_version']}"
                                              if "nx1_version" in meta else "")
                     + f", binary {args.nx1}")
    ds = res.get("double_spends") or []
    if ds:
        losers = sorted({f"{x['status']} {(x.get('error') or '')[:60]}" for d in ds
                         for x in d["answers"] if x.get("status") != 200})
        notes.append("losers' answers: " + "; ".join(losers))
        notes.append("replicas agreed after a double spend within "
                     f"{max(d['agree_after_s'] for d in ds):.2f} s at most")
    rc = res.get("reconcile") or []
    if rc:
        notes.append(f"reconcile: the replica stays stopped for the spend "
                     f"({statistics.median(x['stopped_s'] for x in rc):.2f} s median); the time "
                     f"counts from SIGCONT and is polled every {int(POLL * 1000)} ms, so it "
                     f"scales with [credits] sync_interval_ms ({args.sync_interval_ms} here)")
        quick = sum(1 for x in rc if x["reconcile_s"] <= 2.5 * POLL)
        notes.append(f"reconcile: {quick} of {len(rc)} round(s) were level within two polls of "
                     f"SIGCONT (caught up as it resumed: probably its own sync round, overdue "
                     f"after a stop longer than the interval); the others waited for a sync "
                     f"round")
    notes += [f"failed: {f}" for f in failures]
    if interrupted:
        notes.append(f"run interrupted: {interrupted}")
    for n in notes:
        print(f"- {n}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    if interrupted:
        return 130
    if failures or any(d["through"] > 1 or d["overdrawn"] for d in ds):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
